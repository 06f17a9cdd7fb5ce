r"""Matrix product, batched and broadcasting (NumPy ``matmul`` semantics)."""
from __future__ import annotations

import numpy as np

from refnas.ops import sampling as S
from refnas.ops.registry import OpError, primitive
from refnas.ops.shape import reshape, transpose


def _sample_matmul(draw):
    n, k, m = draw.integers(1, 4), draw.integers(1, 4), draw.integers(1, 4)
    kind = draw.choice(["matrix", "batched", "broadcast", "vector-left", "vector-right"])
    if kind == "matrix":
        sx, sy = (n, k), (k, m)
    elif kind == "batched":
        b = draw.integers(1, 3)
        sx, sy = (b, n, k), (b, k, m)
    elif kind == "broadcast":
        sx, sy = (2, 1, n, k), (3, k, m)
    elif kind == "vector-left":
        sx, sy = (k,), (2, k, m)
    else:
        sx, sy = (2, n, k), (k,)
    return (S.array(draw, sx), S.array(draw, sy)), {}


def _swap_last(t):
    axes = tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2)
    return transpose(t, axes=axes)


@primitive(sample=_sample_matmul)
def matmul(x, y):
    r"""Matrix product over the last two axes, broadcasting the leading (batch) axes.

    :math:`Z = X Y`; :math:`\bar X = \bar Z Y^\top`, :math:`\bar Y = X^\top \bar Z`.
    A 1-D operand is a row (left) or column (right) vector whose axis is dropped from the result.
    """
    if x.ndim == 0 or y.ndim == 0:
        raise OpError(f"matmul: operands must have at least one dimension, got shapes "
                      f"{tuple(x.shape)} ({x.dtype}) and {tuple(y.shape)} ({y.dtype})")
    inner_x = x.shape[-1]
    inner_y = y.shape[-2] if y.ndim > 1 else y.shape[0]
    if inner_x != inner_y:
        raise OpError(f"matmul: shapes {tuple(x.shape)} ({x.dtype}) and {tuple(y.shape)} "
                      f"({y.dtype}) do not align on the inner axis ({inner_x} != {inner_y})")
    try:
        np.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    except ValueError:
        raise OpError(f"matmul: batch axes of shapes {tuple(x.shape)} and {tuple(y.shape)} "
                      f"do not broadcast") from None
    return np.matmul(x, y)


@matmul.defvjp
def matmul_vjp(g, out, x, y):
    # Treat vectors as 1×k / k×1 matrices so one pair of formulas serves every case.
    x2 = reshape(x, shape=(1,) + x.shape) if x.ndim == 1 else x
    y2 = reshape(y, shape=y.shape + (1,)) if y.ndim == 1 else y
    batch = g.shape[:g.ndim - (x.ndim > 1) - (y.ndim > 1)]
    target = batch + (x2.shape[-2], y2.shape[-1])
    g2 = g if g.shape == target else reshape(g, shape=target)
    gx = matmul(g2, _swap_last(y2)) if x.requires_grad else None
    gy = matmul(_swap_last(x2), g2) if y.requires_grad else None
    if gx is not None and x.ndim == 1:
        gx = reshape(gx, shape=gx.shape[:-2] + gx.shape[-1:])   # (..., 1, k) -> (..., k)
    if gy is not None and y.ndim == 1:
        gy = reshape(gy, shape=gy.shape[:-1])                    # (..., k, 1) -> (..., k)
    return gx, gy
