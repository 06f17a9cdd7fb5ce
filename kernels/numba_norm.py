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

A residual block's end, :math:`z = \max(y + s, 0)` with the shortcut s, runs in the same passes
(``batch_norm_add_relu_forward/backward``): the forward adds s and clips in its second pass, and
the backward first writes each channel's :math:`\bar s = \bar z\,[z > 0]`, then reads it as
:math:`\bar y` while it is in L2. Apart, the sum and its ReLU had cost a forward pass writing
:math:`y` and one reading it back, and the ReLU's backward a pass writing :math:`\bar s` that the
batch norm then read from memory: ResNet-18 steps 0.6-1.0% faster side by side.

Threads. While BLAS shares Numba's pool (its threads then awake; see
:mod:`refnas.kernels.numba_blas`), float32 images of PARALLEL_MIN_SIZE values or more are split
into two ranges of channels per thread, run as a job (:func:`_channels_parallel`,
:mod:`refnas.kernels.numba_jobs`): channels are independent, so no sum crosses threads. The
backward took 144 instead of 226 us on 32x32x16 maps and 76 instead of 124 on 16x16x32 ones; a
ResNet-18 step 1.6-2.8 ms less. Otherwise they run on one thread: a sleeping second one costs
its wake-up, up to milliseconds on a busy machine (see :mod:`refnas.kernels.numba_support`).
float64 always runs on one thread: it serves to check derivatives, not to train fast.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit

from refnas.backend import register_kernel
from refnas.kernels.numba_jobs import block_of, job, launch, put_vector, vector
from refnas.kernels.numba_support import contiguous, pool_shared, same_float_dtype

_FASTMATH = {"reassoc", "contract", "nsz"}     # lets LLVM vectorise the sums; NaN still flows

# Values per block summed in the input's dtype before the float64 total: the rounding error of a
# float32 block sum is then at most ~BLOCK / 8 (vector lanes) units in the last place.
BLOCK = 256


@njit(cache=True, fastmath=_FASTMATH, inline="always")
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


@njit(cache=True, inline="always")
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
def _forward(x, weight, bias, eps, relu, y, mean, invstd, shift, scale, c0, c1, shortcut,
             add_shortcut):
    """Channels c0 <= c < c1 of the forward; with ``add_shortcut``, max(y + shortcut, 0)."""
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
            if add_shortcut:
                s_row = shortcut[i, ch]
                for j in range(s):
                    v = (row[j] - mu) * a + b + s_row[j]
                    out[j] = v if not v < 0 else 0
            elif relu:
                for j in range(s):
                    v = (row[j] - mu) * a + b
                    out[j] = v if not v < 0 else 0       # NaN stays NaN, as np.maximum
            else:
                for j in range(s):
                    out[j] = (row[j] - mu) * a + b


@njit(cache=True, inline="always")
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
              coef_1, c0, c1, z, g_shortcut, add_shortcut, gy_more, two_parts):
    r"""Channels c0 <= c < c1 of the backward. With ``add_shortcut``, of
    :math:`z = \max(\gamma\hat x + \beta + s, 0)`: gy is :math:`\bar z` (with ``two_parts``,
    gy + gy_more: z's two gradients, added here instead of in a pass of their own), and each
    channel's :math:`\bar s = \bar z\,[z > 0]` is written to ``g_shortcut`` first, then read
    as the batch norm's :math:`\bar y` by both passes while it is in L2."""
    n, c, s = x.shape
    count = n * s
    zero = x.dtype.type(0)
    sum_g, sum_g_centred = np.zeros(c), np.zeros(c)
    grad = g_shortcut if add_shortcut else gy
    for ch in range(c0, c1):
        if add_shortcut:
            for i in range(n):
                g_row, z_row, masked = gy[i, ch], z[i, ch], g_shortcut[i, ch]
                if two_parts:
                    more = gy_more[i, ch]
                    for j in range(s):
                        masked[j] = (g_row[j] + more[j]) * (z_row[j] > 0)
                else:
                    for j in range(s):
                        masked[j] = g_row[j] * (z_row[j] > 0)
        mu = mean[ch]
        scale, shift = weight[ch] * invstd[ch], bias[ch]
        for i in range(n):
            g_row, row = grad[i, ch], x[i, ch]
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
            g_row, row, out = grad[i, ch], x[i, ch], gx[i, ch]
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


# a job's arguments: backward?, mode (1: relu, 2: + shortcut, then relu, 3: that with z's
# gradient in two parts), (n, c, s), then
# (address, length) of gy, x, out, weight, bias, mean, invstd, a..e, of eps (a float64 vector of
# one), and of the shortcut s (forward) or the output z (backward), of s's gradient, and of z's
# gradient's second part
_CHANNELS_BLOCK = 37


def _channels_task(task, address, tasks):
    """Range ``task`` of ``tasks`` of the channels (float32): the forward (``out`` = y, a, b =
    shift, scale scratch) or backward (``out`` = gx, a..e = gweight, gbias and the three
    coefficient vectors). Channels are independent, so nothing is reduced across tasks."""
    block = block_of(address, _CHANNELS_BLOCK)
    shape = (block[2], block[3], block[4])
    gy, x, out = (vector(block, 5, np.float32).reshape(shape),
                  vector(block, 7, np.float32).reshape(shape),
                  vector(block, 9, np.float32).reshape(shape))
    weight, bias = vector(block, 11, np.float32), vector(block, 13, np.float32)
    mean, invstd = vector(block, 15, np.float32), vector(block, 17, np.float32)
    a, b, c = (vector(block, 19, np.float32), vector(block, 21, np.float32),
               vector(block, 23, np.float32))
    d, e = vector(block, 25, np.float32), vector(block, 27, np.float32)
    eps, relu, add_shortcut = vector(block, 29, np.float64)[0], block[1] == 1, block[1] >= 2
    other = vector(block, 31, np.float32).reshape(shape)
    g_shortcut = vector(block, 33, np.float32).reshape(shape)
    gy_more = vector(block, 35, np.float32).reshape(shape)
    t = np.int64(task)
    c0, c1 = t * shape[1] // tasks, (t + 1) * shape[1] // tasks
    if block[0]:
        _backward(gy, x, weight, bias, mean, invstd, relu, out, a, b, c, d, e, c0, c1, other,
                  g_shortcut, add_shortcut, gy_more, block[1] == 3)
    else:
        _forward(x, weight, bias, eps, relu, out, mean, invstd, a, b, c0, c1, other,
                 add_shortcut)


_channels_job = job(_channels_task)


@njit(cache=True)
def _launch_channels(address, backward, gy, x, weight, bias, eps, mode, out, mean, invstd, a, b,
                     c, d, e, other, g_shortcut, gy_more, tasks):
    block = np.empty(_CHANNELS_BLOCK, np.int64)
    block[0], block[1] = backward, mode
    block[2], block[3], block[4] = x.shape
    put_vector(block, 5, gy)
    put_vector(block, 7, x)
    put_vector(block, 9, out)
    for at, vector_ in ((11, weight), (13, bias), (15, mean), (17, invstd), (19, a), (21, b),
                        (23, c), (25, d), (27, e)):
        put_vector(block, at, vector_)
    epsilon = np.full(1, eps)
    put_vector(block, 29, epsilon)
    put_vector(block, 31, other)
    put_vector(block, 33, g_shortcut)
    put_vector(block, 35, gy_more)
    launch(address, tasks, block)


def _channels_parallel(backward, gy, x, weight, bias, eps, relu, out, mean, invstd, a, b, c, d,
                       e, tasks, other=None, g_shortcut=None, gy_more=None):
    """:func:`_channels_task` over ``tasks`` ranges of channels on Numba's pool (float32,
    C-contiguous (n, c, s) images and (c,) vectors); ``other`` (the shortcut s in a forward, the
    output z in a backward) selects z = max(BN(x) + s, 0), and ``g_shortcut`` takes s's
    gradient; ``gy_more``, the second part of z's gradient."""
    mode = (3 if gy_more is not None else 2) if other is not None else int(bool(relu))
    other = x if other is None else other              # read in modes 2 and 3 only
    g_shortcut = x if g_shortcut is None else g_shortcut
    gy_more = x if gy_more is None else gy_more
    _launch_channels(_channels_job.addresses, backward, gy, x, weight, bias, float(eps), mode,
                     out, mean, invstd, a, b, c, d, e, other, g_shortcut, gy_more, tasks)


# Images of at least this many values split over channels (while the pool is shared). ResNet-18
# steps alternating in one process: 80.1-80.6 ms from 64K values (its 8x8 and 4x4 stages too)
# against 81.0 ms from 256K; 16K (no smaller image there) the same as 64K.
PARALLEL_MIN_SIZE = 1 << 16


def _tasks(x3) -> int:
    """Ranges of channels: two per thread for large float32 inputs while BLAS shares Numba's
    (awake) pool, else one (a serial call)."""
    if (x3.dtype != np.float32 or x3.size < PARALLEL_MIN_SIZE or x3.shape[1] < 2
            or not pool_shared()):
        return 1
    return min(x3.shape[1], 2 * numba.get_num_threads())


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


def _normalise(x, weight, bias, eps, relu, shortcut=None):
    """The forward of the kernels below; with ``shortcut`` s, max(BN(x) + s, 0)."""
    x3 = _as_3d(x)
    n, c, s = x3.shape
    weight, bias = _affine(weight, bias, c, x3.dtype)
    shortcut3 = None if shortcut is None else _as_3d(shortcut)
    y = np.empty_like(x3)
    mean, invstd = np.empty(c, x3.dtype), np.empty(c, x3.dtype)
    if s == 1:    # (N, C): the shortcut's sum and the ReLU as NumPy passes
        _forward_2d(x3.reshape(n, c), weight, bias, float(eps), bool(relu) and shortcut3 is None,
                    y.reshape(n, c), mean, invstd, np.empty(c, x3.dtype))
        if shortcut3 is not None:
            y += shortcut3
            np.maximum(y, 0, out=y)
    else:
        scratch = (np.empty(c, x3.dtype), np.empty(c, x3.dtype))
        tasks = _tasks(x3)
        if tasks == 1:
            _forward(x3, weight, bias, float(eps), bool(relu), y, mean, invstd, *scratch, 0, c,
                     x3 if shortcut3 is None else shortcut3, shortcut3 is not None)
        else:
            _channels_parallel(False, x3, x3, weight, bias, float(eps), bool(relu), y, mean,
                               invstd, *scratch, *scratch[:1] * 3, tasks, other=shortcut3)
    return y.reshape(x.shape), mean, invstd


def _gradients(gy, x, weight, mean, invstd, bias=None, relu=False, z=None, gy_more=None):
    """The backward of the kernels below: (gx, gweight, gbias). Given the output ``z`` of
    max(BN(x) + s, 0), gy is z's gradient (plus ``gy_more`` when it comes in two parts), and
    s's gradient, gy [z > 0], comes last."""
    x3 = _as_3d(x)
    n, c, s = x3.shape
    gy3 = _as_3d(gy)
    more3 = None if gy_more is None else _as_3d(gy_more)
    weight, bias = _affine(weight, bias, c, x3.dtype)
    gx = np.empty_like(x3)
    z3 = None if z is None else _as_3d(z)
    g_shortcut = None if z is None else np.empty_like(x3)
    gweight, gbias = np.empty(c, x3.dtype), np.empty(c, x3.dtype)
    statistics = (weight, bias, contiguous(mean), contiguous(invstd), bool(relu) and z is None)
    outputs = (gweight, gbias, *(np.empty(c, x3.dtype) for _ in range(3)))
    if s == 1:
        if z3 is not None:
            total = gy3 if more3 is None else gy3 + more3
            np.multiply(total, z3 > 0, out=g_shortcut)
            gy3 = g_shortcut
        _backward_2d(gy3.reshape(n, c), x3.reshape(n, c), *statistics, gx.reshape(n, c),
                     *outputs)
    else:
        tasks = _tasks(x3)
        if tasks == 1:      # (x3 stands in for the arrays a plain batch norm does not read)
            _backward(gy3, x3, *statistics, gx, *outputs, 0, c, x3 if z3 is None else z3,
                      x3 if z3 is None else g_shortcut, z3 is not None,
                      x3 if more3 is None else more3, more3 is not None)
        else:
            weight, bias, mean, invstd, relu = statistics
            _channels_parallel(True, gy3, x3, weight, bias, 0.0, relu, gx, mean, invstd,
                               *outputs, tasks, other=z3, g_shortcut=g_shortcut,
                               gy_more=more3)
    grads = (gx.reshape(x.shape), gweight, gbias)
    return grads if z is None else (*grads, g_shortcut.reshape(x.shape))


@register_kernel("batch_norm_forward", "numba", supports=_supported_forward)
def batch_norm_forward(x, weight, bias, eps, relu=False):
    """(y, mean, invstd) with batch statistics over every axis but 1, y clipped at 0 with
    ``relu`` (Numba)."""
    return _normalise(x, weight, bias, eps, relu)


@register_kernel("batch_norm_backward", "numba", supports=_supported_backward)
def batch_norm_backward(gy, x, weight, mean, invstd, bias=None, relu=False):
    """(gx, gweight, gbias) of training-mode batch norm, of max(y, 0) with ``relu`` (Numba)."""
    return _gradients(gy, x, weight, mean, invstd, bias, relu)


def _supported_add_relu_forward(x, weight, bias, shortcut, eps) -> bool:
    return (_supported_forward(x, weight, bias, eps) and same_float_dtype(x, shortcut)
            and shortcut.shape == x.shape)


def _supported_add_relu_backward(gz, x, z, weight, mean, invstd, bias=None, gz_more=None) -> bool:
    return (_supported_backward(gz, x, weight, mean, invstd, bias)
            and same_float_dtype(x, z, gz_more) and z.shape == x.shape == gz.shape
            and (gz_more is None or gz_more.shape == gz.shape))


@register_kernel("batch_norm_add_relu_forward", "numba", supports=_supported_add_relu_forward)
def batch_norm_add_relu_forward(x, weight, bias, shortcut, eps):
    """(max(BN(x) + shortcut, 0), mean, invstd): batch norm, a residual block's sum and its ReLU
    in the batch norm's passes (Numba)."""
    return _normalise(x, weight, bias, eps, True, contiguous(shortcut))


@register_kernel("batch_norm_add_relu_backward", "numba", supports=_supported_add_relu_backward)
def batch_norm_add_relu_backward(gz, x, z, weight, mean, invstd, bias=None, gz_more=None):
    """(gx, gweight, gbias, gshortcut) of z = max(BN(x) + shortcut, 0), from z; z's gradient is
    gz, or gz + gz_more added in the first pass (Numba)."""
    return _gradients(gz, x, weight, mean, invstd, bias, z=z, gy_more=gz_more)


__all__ = ["batch_norm_forward", "batch_norm_backward", "batch_norm_add_relu_forward",
           "batch_norm_add_relu_backward"]
