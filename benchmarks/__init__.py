"""The refnas benchmark suite: ``python -m benchmarks`` or ``refnas bench`` (see __main__)."""
