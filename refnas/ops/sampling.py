"""Example inputs for the registry walk: every primitive carries a ``sample(draw)`` function.

``draw`` is a small source of choices with two implementations: :class:`RngDraw` (a NumPy
Generator; used by ``refnas verify``) and, in the tests, a Hypothesis-backed one, so that shapes,
broadcasting pairs, layouts and static arguments are drawn — and shrunk — by Hypothesis.

Values come from *domains* chosen per op, keeping finite differences meaningful:

``real``       standard normal
``positive``   uniform on [0.5, 2] (log, sqrt, pow bases, divisors)
``nonzero``    |x| in [0.3, 2] with random sign (abs, relu and friends: away from the kink)
``unit``       uniform on [0.1, 0.9]
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

__all__ = ["Draw", "RngDraw", "shape", "broadcast_pair", "array", "unary", "binary", "reduction"]


class Draw(Protocol):
    def integers(self, low: int, high: int) -> int: ...       # inclusive bounds
    def boolean(self) -> bool: ...
    def choice(self, options: Sequence[Any]) -> Any: ...
    def seed(self) -> int: ...


class RngDraw:
    """A :class:`Draw` backed by a NumPy Generator."""

    def __init__(self, seed: int | np.random.Generator = 0) -> None:
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def integers(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def boolean(self) -> bool:
        return bool(self.rng.integers(0, 2))

    def choice(self, options: Sequence[Any]) -> Any:
        return options[int(self.rng.integers(0, len(options)))]

    def seed(self) -> int:
        return int(self.rng.integers(0, 2**31 - 1))


def shape(draw: Draw, min_dims: int = 0, max_dims: int = 3, min_side: int = 1,
          max_side: int = 4) -> tuple[int, ...]:
    ndim = draw.integers(min_dims, max_dims)
    return tuple(draw.integers(min_side, max_side) for _ in range(ndim))


def broadcast_pair(draw: Draw, max_dims: int = 3) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Two shapes that broadcast: a full shape, and a copy with some axes set to 1 or dropped."""
    full = shape(draw, 0, max_dims)
    other = [1 if draw.boolean() else n for n in full]
    drop = draw.integers(0, len(other))
    other = tuple(other[drop:])
    return (full, other) if draw.boolean() else (other, full)


def _values(rng: np.random.Generator, shape: tuple[int, ...], domain: str) -> np.ndarray:
    if domain == "real":
        return rng.standard_normal(shape)
    if domain == "positive":
        return rng.uniform(0.5, 2.0, shape)
    if domain == "nonzero":
        return rng.uniform(0.3, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    if domain == "unit":
        return rng.uniform(0.1, 0.9, shape)
    raise ValueError(f"unknown sampling domain {domain!r}")


def array(draw: Draw, shape: tuple[int, ...], domain: str = "real",
          dtype: Any = np.float64) -> np.ndarray:
    """An array of ``shape`` from ``domain``; sometimes a permuted or strided (non-contiguous) view."""
    rng = np.random.default_rng(draw.seed())
    layout = draw.choice(["contiguous", "transposed", "strided"]) if len(shape) >= 1 else "contiguous"
    if layout == "transposed" and len(shape) >= 2:
        return np.transpose(_values(rng, shape[::-1], domain).astype(dtype))
    if layout == "strided":
        base = _values(rng, shape[:-1] + (2 * shape[-1],), domain).astype(dtype)
        return base[..., ::2]
    return np.asarray(_values(rng, shape, domain), dtype=dtype)  # 0-d: an array, not a scalar


def unary(domain: str = "real", max_dims: int = 3):
    """Sampler for an elementwise op of one input."""
    def sample(draw: Draw):
        return (array(draw, shape(draw, 0, max_dims), domain),), {}

    return sample


def binary(domain_x: str = "real", domain_y: str = "real"):
    """Sampler for an elementwise op of two inputs with broadcasting shapes."""
    def sample(draw: Draw):
        sx, sy = broadcast_pair(draw)
        return (array(draw, sx, domain_x), array(draw, sy, domain_y)), {}

    return sample


def axes(draw: Draw, ndim: int) -> int | tuple[int, ...] | None:
    """None (all axes), a single (possibly negative) axis, or a tuple of distinct axes."""
    if ndim == 0:
        return None
    kind = draw.choice(["all", "one", "several"])
    if kind == "all":
        return None
    if kind == "one":
        return draw.integers(-ndim, ndim - 1)
    chosen = sorted({draw.integers(0, ndim - 1) for _ in range(draw.integers(1, ndim))})
    return tuple(chosen)


def reduction(domain: str = "real", distinct: bool = False):
    """Sampler for a reduction: array, axes and keepdims.

    ``distinct`` spreads the values apart (max/min: a tie would be a kink).
    """
    def sample(draw: Draw):
        s = shape(draw, 1, 3)
        x = array(draw, s, domain)
        if distinct:
            rng = np.random.default_rng(draw.seed())
            x = (rng.permutation(x.size).reshape(s) * 0.5 + rng.uniform(-0.1, 0.1, s))
        return (x,), {"axis": axes(draw, len(s)), "keepdims": draw.boolean()}

    return sample
