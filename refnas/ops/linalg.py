r"""Matrix product, batched and broadcasting (NumPy ``matmul`` semantics), and the affine map of a
fully connected layer as one op (:func:`linear`)."""
from __future__ import annotations

import math

import numpy as np

from refnas.backend import kernel, register_kernel
from refnas.ops import sampling as S
from refnas.ops.elementwise import relu_backward
from refnas.ops.registry import OpError, primitive
from refnas.ops.reduce import sum as sum_op
from refnas.ops.shape import reshape, transpose
from refnas.tensor import Tensor, is_grad_enabled

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
@register_kernel("bias_relu_forward")
def bias_relu_forward_reference(y, bias=None):
    r""":math:`y \leftarrow \max(y + b, 0)` in place on a fresh product y (..., out), b (out,) or
    absent; returns y (NumPy reference kernel)."""
    if bias is not None:
        y += bias
    return np.maximum(y, y.dtype.type(0), out=y)


@register_kernel("relu_backward_column_sums")
def relu_backward_column_sums_reference(g, out):
    r"""(:math:`\bar y = \bar z\,[z > 0]`, :math:`\sum_i \bar y_i`) for :math:`z = \max(y, 0)`
    with rows i (every axis but the last): the masked gradient and the bias's gradient of a
    linear layer with its ReLU (NumPy reference kernel)."""
    masked = g * (out > 0)
    return masked, masked.reshape(-1, masked.shape[-1]).sum(axis=0)


def _sample_linear(draw):
    n_in, n_out = draw.integers(1, 4), draw.integers(1, 4)
    lead = S.shape(draw, 0, 2)                      # x of any rank >= 1: (..., in)
    x = S.array(draw, lead + (n_in,))
    weight = S.array(draw, (n_out, n_in))
    operands = (x, weight) if draw.boolean() else (x, weight, S.array(draw, (n_out,)))
    y = np.matmul(x, weight.T) + (operands[2] if len(operands) == 3 else 0)
    # with the ReLU only when no output lies within 0.05 of the kink
    return operands, {"relu": draw.boolean() and bool(np.abs(y).min() > 0.05)}


@primitive(name="linear", sample=_sample_linear)
def linear_primitive(x, weight, bias=None, *, relu=False):
    r"""Affine map of a fully connected layer (PyTorch's ``F.linear``, BLAS ``gemm`` + bias):
    :math:`y = x W^\top + b`, x (..., in), W (out, in), b (out,) or absent; with ``relu``,
    :math:`z = \max(y, 0)`.

    :math:`\bar x = \bar y\, W`, :math:`\bar W = \bar y^\top x` and
    :math:`\bar b = \sum_i \bar y_i`, with the leading axes of x and :math:`\bar y` flattened
    into the rows :math:`i`. One graph node instead of three (transpose, matmul, broadcast
    add), and :math:`\bar W` comes out in W's own C layout, which the optimizer's kernels read
    as one flat array (the transpose of the composed form had to be copied first).

    With ``relu`` (a hidden layer and its activation, as :class:`refnas.nn.MLP` runs them), the
    bias and the ReLU go into the product in place, one pass (``bias_relu_forward``), and the
    VJP starts from :math:`\bar y = \bar z\,[z > 0]`, computed with :math:`\bar b` in one
    pass (``relu_backward_column_sums``): a ReLU node of its own had cost a pass and an array
    each way, and the bias's sum a pass.
    """
    if x.ndim < 1 or weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise OpError(f"linear: input of shape {tuple(x.shape)} ({x.dtype}) does not fit a weight "
                      f"of shape {tuple(weight.shape)} ({weight.dtype}); expected input "
                      f"(..., {weight.shape[-1] if weight.ndim == 2 else 'in'}) and weight "
                      f"(out, in)")
    y = np.matmul(x, weight.T)
    if relu and (bias is None or (bias.shape == (weight.shape[0],) and bias.dtype == y.dtype)):
        return kernel("bias_relu_forward")(y, bias)
    if bias is None:
        return y
    if bias.shape != (weight.shape[0],):
        raise OpError(f"linear: bias of shape {tuple(bias.shape)} ({bias.dtype}) does not fit a "
                      f"weight of shape {tuple(weight.shape)} ({weight.dtype}); expected "
                      f"({weight.shape[0]},)")
    if np.promote_types(y.dtype, bias.dtype) == y.dtype:
        y += bias  # y is a fresh array: add in place, no temporary
    else:
        y = y + bias
    return np.maximum(y, y.dtype.type(0), out=y) if relu else y


@linear_primitive.defvjp
def linear_vjp(g, out, x, weight, bias=None, *, relu=False):
    gb = None
    if relu:            # from z's gradient to y's: the ReLU's mask [z > 0]
        if not is_grad_enabled() and bias is not None and bias.requires_grad:
            masked, sums = kernel("relu_backward_column_sums")(g.data, out.data)
            g, gb = Tensor._wrap(masked), Tensor._wrap(sums)
        else:
            g = relu_backward(g, out)
    gx = matmul(g, weight) if x.requires_grad else None
    gw = None
    if x.ndim == 1:  # a single example: the rows are one row
        if weight.requires_grad:
            gw = matmul(reshape(g, shape=(g.shape[0], 1)), reshape(x, shape=(1, x.shape[0])))
        gb = g if gb is None else gb
    else:
        if weight.requires_grad:
            rows = math.prod(x.shape[:-1])
            rows_g = g if g.ndim == 2 else reshape(g, shape=(rows, g.shape[-1]))
            rows_x = x if x.ndim == 2 else reshape(x, shape=(rows, x.shape[-1]))
            gw = matmul(transpose(rows_g), rows_x)
        if bias is not None and bias.requires_grad and gb is None:
            gb = sum_op(g, axis=0 if g.ndim == 2 else tuple(range(g.ndim - 1)))
    if bias is None:
        return gx, gw
    return gx, gw, gb


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
           activation: str | None = None) -> Tensor:
    r""":math:`y = x W^\top + b` (:func:`linear_primitive`); ``bias=None`` leaves out :math:`b`;
    ``activation="relu"`` gives :math:`\max(y, 0)`, fused into the layer's passes."""
    if activation not in (None, "relu"):
        raise OpError(f"linear: activation must be None or 'relu', got {activation!r}")
    relu = activation == "relu"
    if bias is None:
        return linear_primitive(x, weight, relu=relu)
    return linear_primitive(x, weight, bias, relu=relu)
