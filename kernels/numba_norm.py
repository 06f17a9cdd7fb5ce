r"""Numba kernels for training-mode batch normalisation (Ioffe & Szegedy 2015), forward and
backward, with the per-channel statistics fused into the same parallel task.

For channel c, over the :math:`M = N \cdot S` values (every axis but axis 1):
:math:`\mu = \frac1M\sum x`, :math:`\sigma^2 = \frac1M\sum (x-\mu)^2` (biased),
:math:`r = 1/\sqrt{\sigma^2 + \epsilon}`, :math:`\hat x = (x - \mu) r`,
:math:`y = \gamma \hat x + \beta`; backward:
:math:`\bar\beta = \sum \bar y`, :math:`\bar\gamma = \sum \bar y\,\hat x`,
:math:`\bar x = \gamma r\,\big(\bar y - \bar\beta/M - \hat x\,\bar\gamma/M\big)`.

One task per channel (in parallel for large inputs); sums accumulate in float64 (two passes
for the variance, which stays accurate when :math:`|\mu| \gg \sigma`).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from refnas.backend import register_kernel
from refnas.kernels.numba_support import PARALLEL_MIN_SIZE, contiguous, same_float_dtype

_FASTMATH = {"reassoc", "contract", "nsz"}     # lets LLVM vectorise the sums; NaN still flows


@njit(cache=True, fastmath=_FASTMATH)
def _forward_channels(x, weight, bias, eps, y, mean, invstd, start, stop):
    n, s = x.shape[0], x.shape[2]
    count = n * s
    for ch in range(start, stop):
        total = 0.0
        for i in range(n):
            for k in range(s):
                total += x[i, ch, k]
        mu = total / count
        squares = 0.0
        for i in range(n):
            for k in range(s):
                d = x[i, ch, k] - mu
                squares += d * d
        r = 1.0 / math.sqrt(squares / count + eps)
        mean[ch], invstd[ch] = mu, r
        scale = weight[ch] * r
        shift = bias[ch] - mu * scale
        for i in range(n):
            for k in range(s):
                y[i, ch, k] = x[i, ch, k] * scale + shift


@njit(cache=True, parallel=True)
def _forward_parallel(x, weight, bias, eps, y, mean, invstd):
    for ch in prange(x.shape[1]):
        _forward_channels(x, weight, bias, eps, y, mean, invstd, ch, ch + 1)


@njit(cache=True, fastmath=_FASTMATH)
def _backward_channels(gy, x, weight, mean, invstd, gx, gweight, gbias, start, stop):
    n, s = x.shape[0], x.shape[2]
    count = n * s
    for ch in range(start, stop):
        mu, r = mean[ch], invstd[ch]
        sum_g, sum_g_xhat = 0.0, 0.0
        for i in range(n):
            for k in range(s):
                g = gy[i, ch, k]
                sum_g += g
                sum_g_xhat += g * (x[i, ch, k] - mu)
        sum_g_xhat *= r
        gbias[ch], gweight[ch] = sum_g, sum_g_xhat
        scale = weight[ch] * r
        mean_g, mean_g_xhat = sum_g / count, sum_g_xhat / count
        for i in range(n):
            for k in range(s):
                xhat = (x[i, ch, k] - mu) * r
                gx[i, ch, k] = scale * (gy[i, ch, k] - mean_g - xhat * mean_g_xhat)


@njit(cache=True, parallel=True)
def _backward_parallel(gy, x, weight, mean, invstd, gx, gweight, gbias):
    for ch in prange(x.shape[1]):
        _backward_channels(gy, x, weight, mean, invstd, gx, gweight, gbias, ch, ch + 1)


def _run(channels, parallel, *args) -> None:
    """One task per channel in parallel for large inputs, all channels serially otherwise."""
    x = args[0]
    if x.size >= PARALLEL_MIN_SIZE and x.shape[1] > 1:
        parallel(*args)
    else:
        channels(*args, 0, x.shape[1])


def _as_3d(a):
    """(N, C) or (N, C, H, W) -> a contiguous (N, C, S) view."""
    a = contiguous(a)
    return a.reshape(a.shape[0], a.shape[1], -1)


def _supported_forward(x, weight, bias, eps) -> bool:
    return same_float_dtype(x, weight, bias) and x.ndim in (2, 3, 4)


def _supported_backward(gy, x, weight, mean, invstd) -> bool:
    return same_float_dtype(gy, x, weight, mean, invstd) and x.ndim in (2, 3, 4)


def _affine(weight, bias, channels, dtype):
    weight = np.ones(channels, dtype) if weight is None else contiguous(weight)
    bias = np.zeros(channels, dtype) if bias is None else contiguous(bias)
    return weight, bias


@register_kernel("batch_norm_forward", "numba", supports=_supported_forward)
def batch_norm_forward(x, weight, bias, eps):
    """(y, mean, invstd) with batch statistics over every axis but 1 (Numba)."""
    x3 = _as_3d(x)
    c = x3.shape[1]
    weight, bias = _affine(weight, bias, c, x3.dtype)
    y = np.empty_like(x3)
    mean, invstd = np.empty(c, x3.dtype), np.empty(c, x3.dtype)
    _run(_forward_channels, _forward_parallel, x3, weight, bias, float(eps), y, mean, invstd)
    return y.reshape(x.shape), mean, invstd


@register_kernel("batch_norm_backward", "numba", supports=_supported_backward)
def batch_norm_backward(gy, x, weight, mean, invstd):
    """(gx, gweight, gbias) of training-mode batch norm (Numba)."""
    x3 = _as_3d(x)
    c = x3.shape[1]
    weight = np.ones(c, x3.dtype) if weight is None else contiguous(weight)
    gx = np.empty_like(x3)
    gweight, gbias = np.empty(c, x3.dtype), np.empty(c, x3.dtype)
    _run(_backward_channels, _backward_parallel, _as_3d(gy), x3, weight, contiguous(mean),
         contiguous(invstd), gx, gweight, gbias)
    return gx.reshape(x.shape), gweight, gbias


__all__ = ["batch_norm_forward", "batch_norm_backward"]
