"""Neural-network primitives: convolution, pooling, normalisation, dropout (being written)."""
__all__: list[str] = []
