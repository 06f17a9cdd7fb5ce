r"""Numba kernels for 2-D max and average pooling, forward and backward.

Window :math:`(i, j)` covers input rows :math:`i s_h - \pi_h + [0, KH)` and columns
:math:`j s_w - \pi_w + [0, KW)`, clipped to the input:

* max: :math:`y_{ij} = \max_{\text{window}} x` (padding is :math:`-\infty`), ``argmax`` the flat
  index :math:`h W + w` (int64) of the first maximum in row-major window order, a NaN counting as
  the maximum (as ``np.argmax``); :math:`\bar x_{hw} = \sum_{(i,j):\,\operatorname{argmax}_{ij}
  = hW + w} \bar y_{ij}`;
* average: :math:`y_{ij} = \frac1D \sum_{\text{window}} x`, with :math:`D = KH\,KW` when
  ``count_include_pad`` else the number of input cells in the window;
  :math:`\bar x_{hw} = \sum_{(i,j) \ni (h,w)} \bar y_{ij} / D_{ij}`.

The kernels run plane by plane, (sample, channel) in memory order, on one thread: pooling moves
a few bytes per comparison, and on this 2-core machine a second thread never made it faster
(measurements in :mod:`refnas.kernels.numba_support`).

Max pooling with a 2x2 window, stride 2 and no padding (nearly every CNN's) has its own forward
loop: output row :math:`i` reads input rows :math:`2i` and :math:`2i+1`, with none of the general
loop's window clipping; its three comparisons compile without mispredicted branches (random and
sorted inputs take the same time), 3-4x the general loop on the CNN-S shapes. A plane holding a
NaN goes through the general loop, which alone implements the first-NaN rule. The argmax stays
int64: an int32 one was measured no faster, forward or backward.

The max backward zeroes each plane of :math:`\bar x` and adds every :math:`\bar y_{ij}` at its
argmax. Writing every cell of :math:`\bar x` directly instead (:math:`\bar y_{ij}` or 0, no
zeroing; possible when windows do not overlap) was measured 7x slower: which of the four cells
gets the gradient depends on the data, and those branches mispredict.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from refnas.backend import register_kernel
from refnas.kernels.numba_support import contiguous, same_float_dtype


@njit(cache=True, inline="always")
def _window(o, stride, padding, kernel, size):
    """[start, stop) of the input cells under output position o, clipped to [0, size)."""
    start = o * stride - padding
    return max(start, 0), min(start + kernel, size)


@njit(cache=True, inline="always")
def _has_nan(values):
    found = False
    for k in range(values.size):
        found |= values[k] != values[k]
    return found


@njit(cache=True, inline="always")
def _max_forward_plane(plane, kh, kw, sh, sw, ph, pw, nan, y, argmax):
    """Any window, stride and padding: one (H, W) plane into (OH, OW) ``y`` and ``argmax``.
    ``nan``: whether the plane holds a NaN; without one the inner test is a single, well
    predicted comparison (3x faster than testing ``v != v`` in it)."""
    h, w = plane.shape
    oh, ow = y.shape
    for oy in range(oh):
        r0, r1 = _window(oy, sh, ph, kh, h)
        for ox in range(ow):
            c0, c1 = _window(ox, sw, pw, kw, w)
            where = r0 * w + c0
            best = plane[r0, c0]
            for r in range(r0, r1):
                for col in range(c0, c1):
                    v = plane[r, col]
                    if v > best or (nan and v != v and best == best):
                        best, where = v, r * w + col
            y[oy, ox] = best
            argmax[oy, ox] = where


@njit(cache=True)
def _max_forward_plane_2x2(plane, y, argmax):
    """2x2 windows, stride 2, no padding, NaN-free plane. Output row ``oy`` reads input rows
    ``top`` and ``bottom``; the comparisons go in window order, strictly, so ties keep the
    first."""
    w = plane.shape[1]
    oh, ow = y.shape
    for oy in range(oh):
        top, bottom = plane[2 * oy], plane[2 * oy + 1]
        y_row, argmax_row = y[oy], argmax[oy]
        corner = 2 * oy * w
        for ox in range(ow):
            left = 2 * ox
            best, where = top[left], corner + left
            v = top[left + 1]
            if v > best:
                best, where = v, corner + left + 1
            v = bottom[left]
            if v > best:
                best, where = v, corner + w + left
            v = bottom[left + 1]
            if v > best:
                best, where = v, corner + w + left + 1
            y_row[ox] = best
            argmax_row[ox] = where


@njit(cache=True)
def _max_forward(x, kh, kw, sh, sw, ph, pw, y, argmax):
    n, c, h, w = x.shape
    fast = kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0
    for i in range(n):
        for ch in range(c):
            plane = x[i, ch]
            nan = _has_nan(plane.reshape(h * w))
            if fast and not nan:
                _max_forward_plane_2x2(plane, y[i, ch], argmax[i, ch])
            else:
                _max_forward_plane(plane, kh, kw, sh, sw, ph, pw, nan, y[i, ch], argmax[i, ch])


@njit(cache=True)
def _max_backward(gy, argmax, gx):
    n, c, h, w = gx.shape
    oh, ow = gy.shape[2], gy.shape[3]
    for i in range(n):
        for ch in range(c):
            plane = gx[i, ch].reshape(h * w)
            plane[:] = 0
            for oy in range(oh):
                g_row, argmax_row = gy[i, ch, oy], argmax[i, ch, oy]
                for ox in range(ow):
                    where = argmax_row[ox]
                    if where < 0 or where >= h * w:     # Numba does not check bounds
                        raise ValueError("max_pool2d_backward: an argmax index lies outside "
                                         "its (H, W) input plane")
                    plane[where] += g_row[ox]


@njit(cache=True, inline="always")
def _divisor(r0, r1, c0, c1, kh, kw, count_include_pad):
    return kh * kw if count_include_pad else (r1 - r0) * (c1 - c0)


@njit(cache=True)
def _avg_forward(x, kh, kw, sh, sw, ph, pw, count_include_pad, y):
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for i in range(n):
        for ch in range(c):
            plane = x[i, ch]
            for oy in range(oh):
                r0, r1 = _window(oy, sh, ph, kh, h)
                for ox in range(ow):
                    c0, c1 = _window(ox, sw, pw, kw, w)
                    total = 0.0
                    for r in range(r0, r1):
                        for col in range(c0, c1):
                            total += plane[r, col]
                    y[i, ch, oy, ox] = total / _divisor(r0, r1, c0, c1, kh, kw,
                                                        count_include_pad)


@njit(cache=True)
def _avg_backward(gy, kh, kw, sh, sw, ph, pw, count_include_pad, gx):
    n, c, h, w = gx.shape
    oh, ow = gy.shape[2], gy.shape[3]
    for i in range(n):
        for ch in range(c):
            plane = gx[i, ch]
            plane[:, :] = 0
            for oy in range(oh):
                r0, r1 = _window(oy, sh, ph, kh, h)
                for ox in range(ow):
                    c0, c1 = _window(ox, sw, pw, kw, w)
                    share = gy[i, ch, oy, ox] / _divisor(r0, r1, c0, c1, kh, kw,
                                                         count_include_pad)
                    for r in range(r0, r1):
                        for col in range(c0, c1):
                            plane[r, col] += share


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
    _max_forward(x, *kernel_size, *stride, *padding, y, argmax)
    return y, argmax


@register_kernel("max_pool2d_backward", "numba", supports=_supported_max_backward)
def max_pool2d_backward(gy, argmax, input_shape, kernel_size, stride, padding):
    """Input gradient of max pooling: each gy added at its argmax (Numba)."""
    gx = np.empty(tuple(input_shape), gy.dtype)
    _max_backward(contiguous(gy), contiguous(argmax.astype(np.int64, copy=False)), gx)
    return gx


@register_kernel("avg_pool2d_forward", "numba", supports=_supported_4d)
def avg_pool2d_forward(x, kernel_size, stride, padding, count_include_pad):
    """2-D average pooling (Numba)."""
    x = contiguous(x)
    y = np.empty((*x.shape[:2], *_out_hw(x.shape[2:], kernel_size, stride, padding)), x.dtype)
    _avg_forward(x, *kernel_size, *stride, *padding, bool(count_include_pad), y)
    return y


@register_kernel("avg_pool2d_backward", "numba", supports=_supported_4d)
def avg_pool2d_backward(gy, input_shape, kernel_size, stride, padding, count_include_pad):
    """Input gradient of average pooling (Numba)."""
    gx = np.empty(tuple(input_shape), gy.dtype)
    _avg_backward(contiguous(gy), *kernel_size, *stride, *padding, bool(count_include_pad), gx)
    return gx


__all__ = ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
           "avg_pool2d_backward"]
