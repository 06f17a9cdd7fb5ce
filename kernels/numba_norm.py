r"""Numba kernels for training-mode batch normalisation (Ioffe & Szegedy 2015), forward and
backward, each two passes over memory in order.

For channel c, over the :math:`M = N \cdot S` values (every axis but axis 1):
:math:`\mu = \frac1M\sum x`, :math:`\sigma^2 = \frac1M\sum (x-\mu)^2` (biased),
:math:`r = 1/\sqrt{\sigma^2 + \epsilon}`, :math:`\hat x = (x - \mu) r`,
:math:`y = \gamma \hat x + \beta`; backward:
:math:`\bar\beta = \sum \bar y`, :math:`\bar\gamma = \sum \bar y\,\hat x`,
:math:`\bar x = \gamma r\,\big(\bar y - \bar\beta/M - \hat x\,\bar\gamma/M\big)`.

The statistics take one pass, with *shifted* sums (Chan, Golub & LeVeque, "Algorithms for
computing the sample variance", 1983): for a shift :math:`K` near the mean,
:math:`T = \sum (x - K)`, :math:`Q = \sum (x - K)^2`, :math:`\mu = K + T/M`,
:math:`\sigma^2 = Q/M - (T/M)^2`. Unshifted (:math:`K = 0`) that difference cancels
catastrophically when :math:`|\mu| \gg \sigma`; with :math:`K` the mean of the channel's first
row its error is that of the sums times :math:`1 + (\mu - K)^2/\sigma^2`, a small factor. Sums run
in the input's dtype over blocks of ``BLOCK`` values (vectorised without conversions) and are
added up in float64.

The forward walks the array in memory order, sample by sample and channel by channel, so the
hardware prefetcher streams it even when a channel's plane is short (4x4 in the last ResNet
stage); (N, C) inputs have loops along each row of channels instead (13x the per-channel loop on
128x256). The backward goes channel by channel instead, its second pass reading the channel
while the first has left it in L2: on ResNet-18's maps, 32x32 to 4x4, 159, 93, 86 and 75 us
instead of 262, 145, 144 and 135 (the forward gained nothing that way).

They run on one thread. Split over two ranges of channels per thread while BLAS shares
Numba's pool (no sum crosses threads), they were faster: a ResNet-18-w16 step 82.0 instead of
85.4 ms before the backward went channel by channel, and after it the backward alone still took
144 instead of 226 us on 32x32x16 maps and 76 instead of 124 on 16x16x32 ones (about 0.7 ms per
step). But each parallel driver added 1.6 s (float32) to 3 s (both dtypes) to the cold compile
of all kernels, which has to stay under 30 s, and was removed; it is the first thing to bring
back if that budget grows.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from refnas.backend import register_kernel
from refnas.kernels.numba_support import contiguous, same_float_dtype

_FASTMATH = {"reassoc", "contract", "nsz"}     # lets LLVM vectorise the sums; NaN still flows

# Values per block summed in the input's dtype before the float64 total: the rounding error of a
# float32 block sum is then at most ~BLOCK / 8 (vector lanes) units in the last place.
BLOCK = 256


@njit(cache=True, fastmath=_FASTMATH)
def _shifted_sums(x, shift, total, squares, c0, c1):
    r"""``total[c]`` :math:`= \sum (x - K_c)`, ``squares[c]`` :math:`= \sum (x - K_c)^2`
    over every sample and position of channels c0 <= c < c1 (``shift`` holds :math:`K_c` in
    x's dtype)."""
    n, _, s = x.shape
    zero = x.dtype.type(0)
    total[c0:c1] = 0.0
    squares[c0:c1] = 0.0
    for i in range(n):
        for ch in range(c0, c1):
            row, k = x[i, ch], shift[ch]
            for start in range(0, s, BLOCK):
                block = row[start:min(start + BLOCK, s)]
                t, q = zero, zero
                for j in range(block.size):
                    d = block[j] - k
                    t += d
                    q += d * d
                total[ch] += t
                squares[ch] += q


@njit(cache=True)
def _statistics(total, squares, count, shift, weight, eps, mean, invstd, scale, c0, c1):
    r"""mean, invstd and weight*invstd of channels c0 <= c < c1 from the sums of x - K and
    (x - K)^2 over ``count`` values (K = ``shift``): :math:`\mu = K + \bar d`,
    :math:`\sigma^2 = \overline{d^2} - \bar d^2`."""
    for ch in range(c0, c1):
        offset = total[ch] / count
        variance = squares[ch] / count - offset * offset
        if variance < 0.0:                 # rounding; a NaN stays NaN
            variance = 0.0
        r = 1.0 / math.sqrt(variance + eps)
        mean[ch], invstd[ch] = shift[ch] + offset, r
        scale[ch] = weight[ch] * r


@njit(cache=True, fastmath=_FASTMATH)
def _forward(x, weight, bias, eps, relu, y, mean, invstd, shift, scale, c0, c1):
    """Channels c0 <= c < c1 of the forward."""
    n, c, s = x.shape
    count = n * s
    for ch in range(c0, c1):               # K_c: the mean of the channel's first row
        first = 0.0
        for j in range(s):
            first += x[0, ch, j]
        shift[ch] = first / s
    total, squares = np.empty(c), np.empty(c)
    _shifted_sums(x, shift, total, squares, c0, c1)
    _statistics(total, squares, count, shift, weight, eps, mean, invstd, scale, c0, c1)
    for i in range(n):
        for ch in range(c0, c1):
            row, out = x[i, ch], y[i, ch]
            mu, a, b = mean[ch], scale[ch], bias[ch]
            if relu:
                for j in range(s):
                    v = (row[j] - mu) * a + b
                    out[j] = v if not v < 0 else 0       # NaN stays NaN, as np.maximum
            else:
                for j in range(s):
                    out[j] = (row[j] - mu) * a + b


@njit(cache=True)
def _coefficients(weight, invstd, sum_g, sum_g_centred, count, gweight, gbias, coef_g, coef_x,
                  coef_1, c0, c1):
    r"""``gbias``, ``gweight``, and :math:`\bar x = a\,\bar y + b\,(x - \mu) + d` for channels
    c0 <= c < c1: :math:`a = \gamma r`, :math:`b = -\gamma r^3 \sum \bar y (x - \mu) / M`,
    :math:`d = -\gamma r \sum \bar y / M` (the module formula, one multiply-add per term)."""
    for ch in range(c0, c1):
        r = np.float64(invstd[ch])
        gbias[ch], gweight[ch] = sum_g[ch], sum_g_centred[ch] * r
        scale = weight[ch] * r
        coef_g[ch] = scale
        coef_x[ch] = -scale * r * r * sum_g_centred[ch] / count
        coef_1[ch] = -scale * sum_g[ch] / count


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _masked(g, centred, scale, shift, relu):
    """``g``, or with ``relu`` g [scale * centred + shift > 0]: the ReLU's mask, from x."""
    if relu:
        return g * (centred * scale + shift > 0)
    return g


@njit(cache=True, fastmath=_FASTMATH)
def _backward(gy, x, weight, bias, mean, invstd, relu, gx, gweight, gbias, coef_g, coef_x,
              coef_1, c0, c1):
    """Channels c0 <= c < c1 of the backward."""
    n, c, s = x.shape
    count = n * s
    zero = x.dtype.type(0)
    sum_g, sum_g_centred = np.zeros(c), np.zeros(c)
    for ch in range(c0, c1):
        mu = mean[ch]
        scale, shift = weight[ch] * invstd[ch], bias[ch]
        for i in range(n):
            g_row, row = gy[i, ch], x[i, ch]
            for start in range(0, s, BLOCK):
                stop = min(start + BLOCK, s)
                a, b = zero, zero
                for j in range(start, stop):
                    centred = row[j] - mu
                    g = _masked(g_row[j], centred, scale, shift, relu)
                    a += g
                    b += g * centred
                sum_g[ch] += a
                sum_g_centred[ch] += b
        _coefficients(weight, invstd, sum_g, sum_g_centred, count, gweight, gbias, coef_g,
                      coef_x, coef_1, ch, ch + 1)
        a, b, d = coef_g[ch], coef_x[ch], coef_1[ch]
        for i in range(n):                 # the channel again, while it is in L2
            g_row, row, out = gy[i, ch], x[i, ch], gx[i, ch]
            for j in range(s):
                centred = row[j] - mu
                out[j] = a * _masked(g_row[j], centred, scale, shift, relu) + b * centred + d


@njit(cache=True, fastmath=_FASTMATH)
def _forward_2d(x, weight, bias, eps, relu, y, mean, invstd, scale):
    """The forward for (N, C) inputs (S = 1): loops run along a row of channels, so they still
    vectorise; the shift is the first sample and the sums are float64 throughout."""
    n, c = x.shape
    shift = x[0]
    total, squares = np.zeros(c), np.zeros(c)
    for i in range(n):
        row = x[i]
        for ch in range(c):
            d = np.float64(row[ch] - shift[ch])
            total[ch] += d
            squares[ch] += d * d
    _statistics(total, squares, n, shift, weight, eps, mean, invstd, scale, 0, c)
    for i in range(n):
        row, out = x[i], y[i]
        for ch in range(c):
            v = (row[ch] - mean[ch]) * scale[ch] + bias[ch]
            out[ch] = v if not (relu and v < 0) else 0


@njit(cache=True, fastmath=_FASTMATH)
def _backward_2d(gy, x, weight, bias, mean, invstd, relu, gx, gweight, gbias, coef_g, coef_x,
                 coef_1):
    """The backward for (N, C) inputs, along rows of channels like :func:`_forward_2d`."""
    n, c = x.shape
    sum_g, sum_g_centred = np.zeros(c), np.zeros(c)
    for i in range(n):
        g_row, row = gy[i], x[i]
        for ch in range(c):
            centred = row[ch] - mean[ch]
            g = np.float64(_masked(g_row[ch], centred, weight[ch] * invstd[ch], bias[ch], relu))
            sum_g[ch] += g
            sum_g_centred[ch] += g * np.float64(centred)
    _coefficients(weight, invstd, sum_g, sum_g_centred, n, gweight, gbias, coef_g, coef_x,
                  coef_1, 0, c)
    for i in range(n):
        g_row, row, out = gy[i], x[i], gx[i]
        for ch in range(c):
            centred = row[ch] - mean[ch]
            g = _masked(g_row[ch], centred, weight[ch] * invstd[ch], bias[ch], relu)
            out[ch] = coef_g[ch] * g + coef_x[ch] * centred + coef_1[ch]


def _as_3d(a):
    """(N, C) or (N, C, H, W) -> a contiguous (N, C, S) view."""
    a = contiguous(a)
    return a.reshape(a.shape[0], a.shape[1], -1)


def _supported_forward(x, weight, bias, eps, relu=False) -> bool:
    return same_float_dtype(x, weight, bias) and x.ndim in (2, 3, 4) and x.size > 0


def _supported_backward(gy, x, weight, mean, invstd, bias=None, relu=False) -> bool:
    return (same_float_dtype(gy, x, weight, mean, invstd, bias) and x.ndim in (2, 3, 4)
            and x.size > 0)


def _affine(weight, bias, channels, dtype):
    weight = np.ones(channels, dtype) if weight is None else contiguous(weight)
    bias = np.zeros(channels, dtype) if bias is None else contiguous(bias)
    return weight, bias


@register_kernel("batch_norm_forward", "numba", supports=_supported_forward)
def batch_norm_forward(x, weight, bias, eps, relu=False):
    """(y, mean, invstd) with batch statistics over every axis but 1, y clipped at 0 with
    ``relu`` (Numba)."""
    x3 = _as_3d(x)
    n, c, s = x3.shape
    weight, bias = _affine(weight, bias, c, x3.dtype)
    y = np.empty_like(x3)
    mean, invstd = np.empty(c, x3.dtype), np.empty(c, x3.dtype)
    if s == 1:
        _forward_2d(x3.reshape(n, c), weight, bias, float(eps), bool(relu), y.reshape(n, c),
                    mean, invstd, np.empty(c, x3.dtype))
    else:
        scratch = (np.empty(c, x3.dtype), np.empty(c, x3.dtype))
        _forward(x3, weight, bias, float(eps), bool(relu), y, mean, invstd, *scratch, 0, c)
    return y.reshape(x.shape), mean, invstd


@register_kernel("batch_norm_backward", "numba", supports=_supported_backward)
def batch_norm_backward(gy, x, weight, mean, invstd, bias=None, relu=False):
    """(gx, gweight, gbias) of training-mode batch norm, of max(y, 0) with ``relu`` (Numba)."""
    x3 = _as_3d(x)
    n, c, s = x3.shape
    gy3 = _as_3d(gy)
    weight, bias = _affine(weight, bias, c, x3.dtype)
    gx = np.empty_like(x3)
    gweight, gbias = np.empty(c, x3.dtype), np.empty(c, x3.dtype)
    statistics = (weight, bias, contiguous(mean), contiguous(invstd), bool(relu))
    outputs = (gweight, gbias, *(np.empty(c, x3.dtype) for _ in range(3)))
    if s == 1:
        _backward_2d(gy3.reshape(n, c), x3.reshape(n, c), *statistics, gx.reshape(n, c),
                     *outputs)
    else:
        _backward(gy3, x3, *statistics, gx, *outputs, 0, c)
    return gx.reshape(x.shape), gweight, gbias


__all__ = ["batch_norm_forward", "batch_norm_backward"]
