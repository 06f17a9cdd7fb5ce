r"""2-D pooling: max and average pooling (kernel-backed primitives, each with a backward primitive
so that second derivatives exist), adaptive and global average pooling (composites).

Notation as in :mod:`refnas.ops.conv`: window (KH, KW), stride s, padding :math:`\pi`, and the
window of output cell (i, j) covers input rows :math:`i s_h - \pi_h + p`, :math:`0 \le p < KH`
(columns likewise). As in PyTorch, padding may be at most half the kernel, so every window holds
at least one real input element.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from refnas.backend import kernel, register_kernel
from refnas.ops import sampling as S
from refnas.ops.conv import (Pair, add_windows, check_4d, crop_hw, output_hw, pad_hw, pair,
                             windows)
from refnas.ops.elementwise import _const
from refnas.ops.linalg import matmul
from refnas.ops.reduce import mean
from refnas.ops.registry import OpError, primitive
from refnas.ops.shape import getitem
from refnas.tensor import Tensor, _array_module

__all__ = ["max_pool2d", "max_pool2d_primitive", "max_pool2d_backward", "avg_pool2d",
           "avg_pool2d_primitive", "avg_pool2d_backward", "adaptive_avg_pool2d",
           "adaptive_pool_matrix", "global_avg_pool2d"]


def _geometry(op: str, x_shape: tuple, kernel_size, stride, padding) -> dict:
    """Checked (kernel_size, stride, padding) pairs; ``stride=None`` means the kernel size."""
    if len(x_shape) != 4:
        raise OpError(f"{op}: input must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    kernel_size = pair(kernel_size, "kernel_size", op)
    stride = kernel_size if stride is None else pair(stride, "stride", op)
    padding = pair(padding, "padding", op, 0)
    if any(p > k // 2 for p, k in zip(padding, kernel_size)):
        raise OpError(f"{op}: padding {padding} must be at most half the kernel size "
                      f"{kernel_size}")
    output_hw(op, x_shape, kernel_size, stride, padding)
    return {"kernel_size": kernel_size, "stride": stride, "padding": padding}


def _sample_geometry(draw) -> tuple[tuple, dict]:
    """A small pooling problem: (input shape, geometry)."""
    kernel_size = (draw.integers(1, 3), draw.integers(1, 3))
    geometry = {"kernel_size": kernel_size,
                "stride": (draw.integers(1, 2), draw.integers(1, 2)),
                "padding": tuple(draw.integers(0, min(1, k // 2)) for k in kernel_size)}
    hw = tuple(draw.integers(max(k - 2 * p, 1), 5)
               for k, p in zip(kernel_size, geometry["padding"]))
    return (draw.integers(1, 2), draw.integers(1, 3)) + hw, geometry


# --------------------------------------------------------------------------------------------
# Max pooling
# --------------------------------------------------------------------------------------------
@register_kernel("max_pool2d_forward")
def max_pool2d_forward_reference(x, kernel_size: Pair, stride: Pair, padding: Pair):
    r""":math:`y_{n,c,i,j} = \max_{p,q} x_{n,c,\,i s_h - \pi_h + p,\, j s_w - \pi_w + q}` (padding
    is :math:`-\infty`), and ``argmax``: the flat index :math:`h W + w` of that maximum in the
    (unpadded) plane — the first one in window order (p, then q) on ties (NumPy reference)."""
    xp = _array_module(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    win = windows(pad_hw(x, padding, -np.inf), kernel_size, stride)
    oh, ow = win.shape[2:4]
    flat = win.reshape(n, c, oh, ow, kh * kw)
    k = flat.argmax(axis=-1)
    y = xp.take_along_axis(flat, k[..., None], axis=-1)[..., 0]
    rows = xp.arange(oh)[:, None] * sh + k // kw - ph
    cols = xp.arange(ow)[None, :] * sw + k % kw - pw
    return y, (rows * w + cols).astype(np.int64)


@register_kernel("max_pool2d_backward")
def max_pool2d_backward_reference(gy, argmax, input_shape, kernel_size: Pair, stride: Pair,
                                  padding: Pair):
    r""":math:`\bar x_{n,c,h,w} = \sum_{(i,j):\ \operatorname{argmax}_{n,c,i,j} = hW + w}
    \bar y_{n,c,i,j}` — overlapping windows may pick the same element (NumPy reference)."""
    xp = _array_module(gy)
    n, c, h, w = input_shape
    plane_start = xp.arange(n * c).reshape(n, c, 1, 1) * (h * w)
    gx = xp.bincount((argmax + plane_start).ravel(), weights=gy.ravel(), minlength=n * c * h * w)
    return gx.reshape(tuple(input_shape)).astype(gy.dtype)


def _distinct(draw, shape: tuple) -> np.ndarray:
    """Values 0.1 apart in random order (ties would be kinks of max), in a drawn memory layout."""
    x = S.array(draw, shape)
    rng = np.random.default_rng(draw.seed())
    x[...] = (rng.permutation(x.size).reshape(shape) - x.size / 2) * 0.1
    return x


def _sample_max_pool(draw):
    shape, geometry = _sample_geometry(draw)
    return (_distinct(draw, shape),), geometry


@primitive(name="max_pool2d", saves=True, sample=_sample_max_pool)
def max_pool2d_primitive(x, *, kernel_size, stride=None, padding=(0, 0)):
    r"""Max pooling; :math:`\bar x` routes each :math:`\bar y_{n,c,i,j}` to its argmax
    (:func:`max_pool2d_backward`)."""
    check_4d("max_pool2d", "input", x)
    geometry = _geometry("max_pool2d", x.shape, kernel_size, stride, padding)
    y, argmax = kernel("max_pool2d_forward")(x, *geometry.values())
    return y, {"argmax": argmax}


@max_pool2d_primitive.defvjp
def max_pool2d_vjp(g, out, x, *, argmax, **geometry):
    return max_pool2d_backward(g, argmax=argmax, input_shape=x.shape, **geometry)


def _sample_max_pool_backward(draw):
    shape, geometry = _sample_geometry(draw)
    checked = _geometry("sample", shape, **geometry)
    y, argmax = max_pool2d_forward_reference(_distinct(draw, shape), *checked.values())
    return (S.array(draw, y.shape),), {**geometry, "argmax": argmax, "input_shape": shape}


@primitive(sample=_sample_max_pool_backward)
def max_pool2d_backward(gy, *, argmax, input_shape, kernel_size, stride=None, padding=(0, 0)):
    r"""Scatter :math:`\bar y` to the argmax positions (see the kernel). Linear in
    :math:`\bar y`; its VJP gathers the cotangent back from the same positions,
    :math:`\bar{\bar y}_{n,c,i,j} = G_{n,c,\operatorname{argmax}_{n,c,i,j}}`."""
    input_shape = tuple(int(s) for s in input_shape)
    geometry = _geometry("max_pool2d_backward", input_shape, kernel_size, stride, padding)
    if tuple(argmax.shape) != tuple(gy.shape):
        raise OpError(f"max_pool2d_backward: gy {tuple(gy.shape)} ({gy.dtype}) and argmax "
                      f"{tuple(argmax.shape)} ({argmax.dtype}) must have the same shape")
    return kernel("max_pool2d_backward")(gy, argmax, input_shape, *geometry.values())


@max_pool2d_backward.defvjp
def max_pool2d_backward_vjp(G, out, gy, *, argmax, input_shape, **geometry):
    xp = _array_module(argmax)
    n, c, _, w = input_shape
    index = (xp.arange(n).reshape(n, 1, 1, 1), xp.arange(c).reshape(1, c, 1, 1),
             argmax // w, argmax % w)
    return getitem(G, index=index)


def max_pool2d(x: Tensor, kernel_size: int | Pair, stride: int | Pair | None = None,
               padding: int | Pair = 0) -> Tensor:
    r"""2-D max pooling, :math:`y_{n,c,i,j} = \max_{0\le p<KH,\,0\le q<KW}
    x_{n,c,\,i s_h - \pi_h + p,\, j s_w - \pi_w + q}`; ``stride`` defaults to ``kernel_size``."""
    return max_pool2d_primitive(x, kernel_size=kernel_size, stride=stride, padding=padding)


# --------------------------------------------------------------------------------------------
# Average pooling
# --------------------------------------------------------------------------------------------
def _divisor(xp, hw: Pair, kernel_size: Pair, stride: Pair, padding: Pair,
             count_include_pad: bool, dtype) -> Any:
    """KH*KW, or with ``count_include_pad=False`` the number of real (unpadded) input cells in
    each window, shape (OH, OW) — the window sums of a plane of ones."""
    if count_include_pad:
        return kernel_size[0] * kernel_size[1]
    ones = pad_hw(xp.ones(hw, dtype=dtype), padding)
    return windows(ones, kernel_size, stride).sum(axis=(-2, -1))


@register_kernel("avg_pool2d_forward")
def avg_pool2d_forward_reference(x, kernel_size: Pair, stride: Pair, padding: Pair,
                                 count_include_pad: bool):
    r""":math:`y_{n,c,i,j} = \frac{1}{D_{ij}} \sum_{p,q} x_{n,c,\,i s_h - \pi_h + p,\,
    j s_w - \pi_w + q}`, :math:`D_{ij} = KH\,KW` or the count of real cells (NumPy reference)."""
    xp = _array_module(x)
    win = windows(pad_hw(x, padding), kernel_size, stride)
    divisor = _divisor(xp, x.shape[2:], kernel_size, stride, padding, count_include_pad, x.dtype)
    return (win.sum(axis=(-2, -1)) / divisor).astype(x.dtype, copy=False)


@register_kernel("avg_pool2d_backward")
def avg_pool2d_backward_reference(gy, input_shape, kernel_size: Pair, stride: Pair,
                                  padding: Pair, count_include_pad: bool):
    r"""The adjoint of average pooling: each :math:`\bar y_{n,c,i,j}/D_{ij}` is added to every
    cell of window (i, j), then the padding is cropped (NumPy reference)."""
    xp = _array_module(gy)
    h, w = input_shape[2:]
    share = gy / _divisor(xp, (h, w), kernel_size, stride, padding, count_include_pad, gy.dtype)
    cols = xp.broadcast_to(share[..., None, None], share.shape + tuple(kernel_size))
    padded = add_windows(cols, (h + 2 * padding[0], w + 2 * padding[1]), stride)
    return crop_hw(padded, padding, (h, w)).astype(gy.dtype, copy=False)


def _sample_avg_pool(draw):
    shape, geometry = _sample_geometry(draw)
    return (S.array(draw, shape),), {**geometry, "count_include_pad": draw.boolean()}


@primitive(name="avg_pool2d", sample=_sample_avg_pool)
def avg_pool2d_primitive(x, *, kernel_size, stride=None, padding=(0, 0), count_include_pad=True):
    r"""Average pooling, :math:`y_{n,c,i,j} = \frac{1}{D_{ij}}\sum_{p,q} x_{n,c,\,i s_h - \pi_h + p,
    \, j s_w - \pi_w + q}`; linear, with :func:`avg_pool2d_backward` as its adjoint (VJP)."""
    check_4d("avg_pool2d", "input", x)
    geometry = _geometry("avg_pool2d", x.shape, kernel_size, stride, padding)
    return kernel("avg_pool2d_forward")(x, *geometry.values(), bool(count_include_pad))


@avg_pool2d_primitive.defvjp
def avg_pool2d_vjp(g, out, x, **options):
    return avg_pool2d_backward(g, input_shape=x.shape, **options)


def _sample_avg_pool_backward(draw):
    (x,), options = _sample_avg_pool(draw)
    checked = _geometry("sample", x.shape, options["kernel_size"], options["stride"],
                        options["padding"])
    oh, ow = output_hw("sample", x.shape, *checked.values())
    return (S.array(draw, x.shape[:2] + (oh, ow)),), {**options, "input_shape": x.shape}


@primitive(sample=_sample_avg_pool_backward)
def avg_pool2d_backward(gy, *, input_shape, kernel_size, stride=None, padding=(0, 0),
                        count_include_pad=True):
    r"""The adjoint of :func:`avg_pool2d` (its VJP); linear in :math:`\bar y`, and its own VJP
    is :func:`avg_pool2d` again (the adjoint of an adjoint is the map itself)."""
    input_shape = tuple(int(s) for s in input_shape)
    geometry = _geometry("avg_pool2d_backward", input_shape, kernel_size, stride, padding)
    expected = input_shape[:2] + output_hw("avg_pool2d_backward", input_shape, *geometry.values())
    if tuple(gy.shape) != expected:
        raise OpError(f"avg_pool2d_backward: gy has shape {tuple(gy.shape)} ({gy.dtype}), "
                      f"expected {expected} for an input of shape {input_shape}")
    return kernel("avg_pool2d_backward")(gy, input_shape, *geometry.values(),
                                         bool(count_include_pad))


@avg_pool2d_backward.defvjp
def avg_pool2d_backward_vjp(G, out, gy, *, input_shape, **options):
    return avg_pool2d_primitive(G, **options)


def avg_pool2d(x: Tensor, kernel_size: int | Pair, stride: int | Pair | None = None,
               padding: int | Pair = 0, count_include_pad: bool = True) -> Tensor:
    r"""2-D average pooling, :math:`y_{n,c,i,j} = \frac{1}{D_{ij}}\sum_{p,q}
    x_{n,c,\,i s_h - \pi_h + p,\, j s_w - \pi_w + q}` (zero padding). :math:`D_{ij} = KH\,KW`
    with ``count_include_pad``, else the number of real input cells in the window."""
    return avg_pool2d_primitive(x, kernel_size=kernel_size, stride=stride, padding=padding,
                                count_include_pad=count_include_pad)


# --------------------------------------------------------------------------------------------
# Adaptive and global average pooling (composites)
# --------------------------------------------------------------------------------------------
def adaptive_pool_matrix(in_size: int, out_size: int, dtype: Any = np.float64) -> np.ndarray:
    r"""The averaging matrix :math:`A \in \mathbb R^{\text{out}\times\text{in}}` of adaptive
    pooling along one axis: :math:`A_{i,h} = 1/(e_i - s_i)` for :math:`s_i \le h < e_i`, with
    PyTorch's bins :math:`s_i = \lfloor i\,n/m \rfloor`, :math:`e_i = \lceil (i+1)\,n/m \rceil`
    (n = in_size, m = out_size; bins may overlap when m does not divide n)."""
    a = np.zeros((out_size, in_size), dtype=dtype)
    for i in range(out_size):
        start, end = (i * in_size) // out_size, -(-(i + 1) * in_size // out_size)
        a[i, start:end] = 1.0 / (end - start)
    return a


def adaptive_avg_pool2d(x: Tensor, output_size: int | tuple[int | None, int | None]) -> Tensor:
    r"""Average pooling to a fixed output size (OH, OW) whatever the input size.

    A bin's mean over a rectangle of rows and columns is separable, so
    :math:`y_{n,c} = A_H\, x_{n,c}\, A_W^\top` with the matrices of :func:`adaptive_pool_matrix`;
    built from ``matmul``, so every derivative comes from its VJP. ``None`` in ``output_size``
    keeps that input size.
    """
    x = x if isinstance(x, Tensor) else Tensor._wrap(np.asarray(x))
    check_4d("adaptive_avg_pool2d", "input", x.data)
    sizes = (output_size, output_size) if not isinstance(output_size, (tuple, list)) \
        else tuple(output_size)
    sizes = tuple(n if s is None else s for s, n in zip(sizes, x.shape[2:]))
    oh, ow = pair(sizes, "output_size", "adaptive_avg_pool2d")
    xp = _array_module(x.data)
    rows = _const(xp.asarray(adaptive_pool_matrix(x.shape[2], oh, x.dtype)))
    cols = _const(xp.asarray(adaptive_pool_matrix(x.shape[3], ow, x.dtype).T))
    return matmul(matmul(rows, x), cols)


def global_avg_pool2d(x: Tensor) -> Tensor:
    r""":math:`y_{n,c} = \frac{1}{HW}\sum_{h,w} x_{n,c,h,w}`: shape (N, C), no spatial axes."""
    x = x if isinstance(x, Tensor) else Tensor._wrap(np.asarray(x))
    check_4d("global_avg_pool2d", "input", x.data)
    return mean(x, axis=(2, 3))
