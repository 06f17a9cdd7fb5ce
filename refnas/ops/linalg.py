r"""Matrix product, batched and broadcasting (NumPy ``matmul`` semantics), and the affine map of a
fully connected layer as one op (:func:`linear`)."""
from __future__ import annotations

import math

import numpy as np

from refnas.ops import sampling as S
from refnas.ops.registry import OpError, primitive
from refnas.ops.reduce import sum as sum_op
from refnas.ops.shape import reshape, transpose
from refnas.tensor import Tensor

__all__ = ["matmul", "linear", "linear_primitive"]


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
    if x.ndim > 2 and y.ndim > 2:  # only then are there batch axes on both sides to broadcast
        try:
            np.broadcast_shapes(x.shape[:-2], y.shape[:-2])
        except ValueError:
            raise OpError(f"matmul: batch axes of shapes {tuple(x.shape)} and {tuple(y.shape)} "
                          f"do not broadcast") from None
    return np.matmul(x, y)


@matmul.defvjp
def matmul_vjp(g, out, x, y):
    if x.ndim == 2 and y.ndim == 2:  # the common case needs none of the reshapes below
        return (matmul(g, transpose(y)) if x.requires_grad else None,
                matmul(transpose(x), g) if y.requires_grad else None)
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


# --------------------------------------------------------------------------------------------
# Linear (fully connected) layer
# --------------------------------------------------------------------------------------------
def _sample_linear(draw):
    n_in, n_out = draw.integers(1, 4), draw.integers(1, 4)
    lead = S.shape(draw, 0, 2)                      # x of any rank >= 1: (..., in)
    x = S.array(draw, lead + (n_in,))
    weight = S.array(draw, (n_out, n_in))
    if draw.boolean():
        return (x, weight), {}
    return (x, weight, S.array(draw, (n_out,))), {}


@primitive(name="linear", sample=_sample_linear)
def linear_primitive(x, weight, bias=None):
    r"""Affine map of a fully connected layer (PyTorch's ``F.linear``, BLAS ``gemm`` + bias):
    :math:`y = x W^\top + b`, x (..., in), W (out, in), b (out,) or absent.

    :math:`\bar x = \bar y\, W`, :math:`\bar W = \bar y^\top x` and
    :math:`\bar b = \sum_i \bar y_i`, with the leading axes of x and :math:`\bar y` flattened
    into the rows :math:`i`. One graph node instead of three (transpose, matmul, broadcast
    add), and :math:`\bar W` comes out in W's own C layout, which the optimizer's kernels read
    as one flat array (the transpose of the composed form had to be copied first).
    """
    if x.ndim < 1 or weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise OpError(f"linear: input of shape {tuple(x.shape)} ({x.dtype}) does not fit a weight "
                      f"of shape {tuple(weight.shape)} ({weight.dtype}); expected input "
                      f"(..., {weight.shape[-1] if weight.ndim == 2 else 'in'}) and weight "
                      f"(out, in)")
    y = np.matmul(x, weight.T)
    if bias is None:
        return y
    if bias.shape != (weight.shape[0],):
        raise OpError(f"linear: bias of shape {tuple(bias.shape)} ({bias.dtype}) does not fit a "
                      f"weight of shape {tuple(weight.shape)} ({weight.dtype}); expected "
                      f"({weight.shape[0]},)")
    if np.promote_types(y.dtype, bias.dtype) == y.dtype:
        y += bias  # y is a fresh array: add in place, no temporary
        return y
    return y + bias


@linear_primitive.defvjp
def linear_vjp(g, out, x, weight, bias=None):
    gx = matmul(g, weight) if x.requires_grad else None
    gw = gb = None
    if x.ndim == 1:  # a single example: the rows are one row
        if weight.requires_grad:
            gw = matmul(reshape(g, shape=(g.shape[0], 1)), reshape(x, shape=(1, x.shape[0])))
        gb = g
    else:
        if weight.requires_grad:
            rows = math.prod(x.shape[:-1])
            rows_g = g if g.ndim == 2 else reshape(g, shape=(rows, g.shape[-1]))
            rows_x = x if x.ndim == 2 else reshape(x, shape=(rows, x.shape[-1]))
            gw = matmul(transpose(rows_g), rows_x)
        if bias is not None and bias.requires_grad:
            gb = sum_op(g, axis=0 if g.ndim == 2 else tuple(range(g.ndim - 1)))
    if bias is None:
        return gx, gw
    return gx, gw, gb


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    r""":math:`y = x W^\top + b` (:func:`linear_primitive`); ``bias=None`` leaves out :math:`b`."""
    if bias is None:
        return linear_primitive(x, weight)
    return linear_primitive(x, weight, bias)
