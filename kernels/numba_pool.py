r"""Numba kernels for 2-D max and average pooling, forward and backward.

One parallel task per (sample, channel) plane. Window :math:`(i, j)` covers input rows
:math:`i s_h - \pi_h + [0, KH)` and columns :math:`j s_w - \pi_w + [0, KW)`, clipped to the input:

* max: :math:`y_{ij} = \max_{\text{window}} x` (padding is :math:`-\infty`), ``argmax`` the flat
  index :math:`h W + w` of the first maximum in row-major window order;
  :math:`\bar x_{hw} = \sum_{(i,j):\,\operatorname{argmax}_{ij} = hW + w} \bar y_{ij}`;
* average: :math:`y_{ij} = \frac1D \sum_{\text{window}} x`, with :math:`D = KH\,KW` when
  ``count_include_pad`` else the number of input cells in the window;
  :math:`\bar x_{hw} = \sum_{(i,j) \ni (h,w)} \bar y_{ij} / D_{ij}`.

The backward kernels add into the input-gradient plane that their task owns, so no element is
written by two tasks.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from refnas.backend import register_kernel
from refnas.kernels.numba_support import PARALLEL_MIN_SIZE, contiguous, same_float_dtype


@njit(cache=True)
def _window(o, stride, padding, kernel, size):
    """[start, stop) of the input cells under output position o, clipped to [0, size)."""
    start = o * stride - padding
    return max(start, 0), min(start + kernel, size)


# Each kernel is a function over the planes [start, stop) and a parallel driver that hands one
# plane to each prange task; small inputs call the plane function directly (no thread start-up).
@njit(cache=True)
def _has_nan(values):
    found = False
    for k in range(values.size):
        found |= values[k] != values[k]
    return found


@njit(cache=True)
def _max_forward_planes(x, kh, kw, sh, sw, ph, pw, y, argmax, start, stop):
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = y.shape[2], y.shape[3]
    for task in range(start, stop):
        i, ch = task // c, task % c
        plane = x[i, ch].reshape(h * w)
        # np.argmax takes the first NaN; checking for one per plane first keeps the common
        # NaN-free loop to a single, well-predicted comparison (3x faster than testing v != v
        # in it).
        nan = _has_nan(plane)
        for oy in range(oh):
            r0, r1 = _window(oy, sh, ph, kh, h)
            for ox in range(ow):
                c0, c1 = _window(ox, sw, pw, kw, w)
                where = r0 * w + c0
                best = plane[where]
                for r in range(r0, r1):
                    for col in range(c0, c1):
                        v = plane[r * w + col]
                        if v > best or (nan and v != v and best == best):
                            best, where = v, r * w + col
                y[i, ch, oy, ox] = best
                argmax[i, ch, oy, ox] = where


@njit(cache=True, parallel=True)
def _max_forward_parallel(x, kh, kw, sh, sw, ph, pw, y, argmax):
    for task in prange(x.shape[0] * x.shape[1]):
        _max_forward_planes(x, kh, kw, sh, sw, ph, pw, y, argmax, task, task + 1)


@njit(cache=True)
def _max_backward_planes(gy, argmax, gx, start, stop):
    c, h, w = gx.shape[1], gx.shape[2], gx.shape[3]
    oh, ow = gy.shape[2], gy.shape[3]
    for task in range(start, stop):
        i, ch = task // c, task % c
        plane = gx[i, ch].reshape(h * w)
        plane[:] = 0
        for oy in range(oh):
            for ox in range(ow):
                plane[argmax[i, ch, oy, ox]] += gy[i, ch, oy, ox]


@njit(cache=True, parallel=True)
def _max_backward_parallel(gy, argmax, gx):
    for task in prange(gx.shape[0] * gx.shape[1]):
        _max_backward_planes(gy, argmax, gx, task, task + 1)


@njit(cache=True)
def _divisor(r0, r1, c0, c1, kh, kw, count_include_pad):
    return kh * kw if count_include_pad else (r1 - r0) * (c1 - c0)


@njit(cache=True)
def _avg_forward_planes(x, kh, kw, sh, sw, ph, pw, count_include_pad, y, start, stop):
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = y.shape[2], y.shape[3]
    for task in range(start, stop):
        i, ch = task // c, task % c
        plane = x[i, ch]
        for oy in range(oh):
            r0, r1 = _window(oy, sh, ph, kh, h)
            for ox in range(ow):
                c0, c1 = _window(ox, sw, pw, kw, w)
                total = 0.0
                for r in range(r0, r1):
                    for col in range(c0, c1):
                        total += plane[r, col]
                y[i, ch, oy, ox] = total / _divisor(r0, r1, c0, c1, kh, kw, count_include_pad)


@njit(cache=True, parallel=True)
def _avg_forward_parallel(x, kh, kw, sh, sw, ph, pw, count_include_pad, y):
    for task in prange(x.shape[0] * x.shape[1]):
        _avg_forward_planes(x, kh, kw, sh, sw, ph, pw, count_include_pad, y, task, task + 1)


@njit(cache=True)
def _avg_backward_planes(gy, kh, kw, sh, sw, ph, pw, count_include_pad, gx, start, stop):
    c, h, w = gx.shape[1], gx.shape[2], gx.shape[3]
    oh, ow = gy.shape[2], gy.shape[3]
    for task in range(start, stop):
        i, ch = task // c, task % c
        plane = gx[i, ch]
        plane[:, :] = 0
        for oy in range(oh):
            r0, r1 = _window(oy, sh, ph, kh, h)
            for ox in range(ow):
                c0, c1 = _window(ox, sw, pw, kw, w)
                share = gy[i, ch, oy, ox] / _divisor(r0, r1, c0, c1, kh, kw, count_include_pad)
                for r in range(r0, r1):
                    for col in range(c0, c1):
                        plane[r, col] += share


@njit(cache=True, parallel=True)
def _avg_backward_parallel(gy, kh, kw, sh, sw, ph, pw, count_include_pad, gx):
    for task in prange(gx.shape[0] * gx.shape[1]):
        _avg_backward_planes(gy, kh, kw, sh, sw, ph, pw, count_include_pad, gx, task, task + 1)


def _run(planes, parallel, size: int, *args) -> None:
    """The parallel driver for inputs of ``size`` elements or more than PARALLEL_MIN_SIZE, the
    plane function over all (N*C) planes of the first argument otherwise."""
    if size >= PARALLEL_MIN_SIZE:
        parallel(*args)
    else:
        planes(*args, 0, args[0].shape[0] * args[0].shape[1])


def _out_hw(hw, kernel_size, stride, padding):
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(hw, kernel_size, stride, padding))


def _supported_4d(a, *args, **kwargs) -> bool:
    return same_float_dtype(a) and a.ndim == 4


def _supported_max_backward(gy, argmax, *args, **kwargs) -> bool:
    return (same_float_dtype(gy) and gy.ndim == 4 and type(argmax) is np.ndarray
            and argmax.shape == gy.shape and argmax.dtype.kind in "iu")


@register_kernel("max_pool2d_forward", "numba", supports=_supported_4d)
def max_pool2d_forward(x, kernel_size, stride, padding):
    """(y, argmax) of 2-D max pooling, argmax int64 flat indices h*W + w (Numba)."""
    x = contiguous(x)
    shape = (*x.shape[:2], *_out_hw(x.shape[2:], kernel_size, stride, padding))
    y, argmax = np.empty(shape, x.dtype), np.empty(shape, np.int64)
    _run(_max_forward_planes, _max_forward_parallel, x.size, x, *kernel_size, *stride, *padding,
         y, argmax)
    return y, argmax


@register_kernel("max_pool2d_backward", "numba", supports=_supported_max_backward)
def max_pool2d_backward(gy, argmax, input_shape, kernel_size, stride, padding):
    """Input gradient of max pooling: each gy routed to its argmax (Numba)."""
    gx = np.empty(tuple(input_shape), gy.dtype)
    _run(_max_backward_planes, _max_backward_parallel, gx.size, contiguous(gy),
         contiguous(argmax.astype(np.int64, copy=False)), gx)
    return gx


@register_kernel("avg_pool2d_forward", "numba", supports=_supported_4d)
def avg_pool2d_forward(x, kernel_size, stride, padding, count_include_pad):
    """2-D average pooling (Numba)."""
    x = contiguous(x)
    y = np.empty((*x.shape[:2], *_out_hw(x.shape[2:], kernel_size, stride, padding)), x.dtype)
    _run(_avg_forward_planes, _avg_forward_parallel, x.size, x, *kernel_size, *stride, *padding,
         bool(count_include_pad), y)
    return y


@register_kernel("avg_pool2d_backward", "numba", supports=_supported_4d)
def avg_pool2d_backward(gy, input_shape, kernel_size, stride, padding, count_include_pad):
    """Input gradient of average pooling (Numba)."""
    gx = np.empty(tuple(input_shape), gy.dtype)
    _run(_avg_backward_planes, _avg_backward_parallel, gx.size, contiguous(gy), *kernel_size,
         *stride, *padding, bool(count_include_pad), gx)
    return gx


__all__ = ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
           "avg_pool2d_backward"]
