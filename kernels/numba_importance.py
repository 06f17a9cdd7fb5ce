r"""Numba kernel for the first-order Taylor importance reduction used by pruning.

:math:`p_{n,c} = \frac1S \sum_s a_{n,c,s}\, g_{n,c,s}` is computed once per (n, c) in parallel
(float64 accumulation), then reduced over n by the aggregation mode (formulas in
:mod:`refnas.prune.importance`).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from refnas.backend import register_kernel
from refnas.kernels.numba_support import contiguous, same_float_dtype
from refnas.prune.importance import TAYLOR_MODES

_MODE_CODES = {mode: code for code, mode in enumerate(TAYLOR_MODES)}


@njit(cache=True)
def _per_example(a, g, out):
    """out[n, c] = mean over s of a[n, c, s] * g[n, c, s]. On one thread: pruning calls it once
    per scoring pass, and its parallel version cost 1.2 s of the cold compile of all kernels."""
    n, c, s = a.shape
    for task in range(n * c):
        i, j = task // c, task % c
        total = 0.0
        for k in range(s):
            total += np.float64(a[i, j, k]) * np.float64(g[i, j, k])
        out[i, j] = total / s


@njit(cache=True)
def _aggregate(p, mode, s):
    n, c = p.shape
    out = np.zeros(c)
    for i in range(n):
        for j in range(c):
            v = p[i, j]
            if mode == 2:
                out[j] += abs(v)
            elif mode == 3:
                out[j] += v * v
            else:
                out[j] += v
    for j in range(c):
        if mode == 0:
            out[j] *= s
        elif mode == 1:
            out[j] = abs(out[j] / n)
        else:
            out[j] /= n
    return out


def _supported(activation, grad, mode) -> bool:
    return same_float_dtype(activation, grad) and activation.shape == grad.shape


@register_kernel("taylor_importance", "numba", supports=_supported)
def taylor_importance(activation: np.ndarray, grad: np.ndarray, mode: str) -> np.ndarray:
    """Per-unit Taylor importance, shape (C,) float64 (Numba)."""
    if mode not in _MODE_CODES:
        raise ValueError(f"taylor_importance: mode must be one of {TAYLOR_MODES}, got {mode!r}")
    n, c = activation.shape[:2]
    a = contiguous(activation).reshape(n, c, -1)
    g = contiguous(grad).reshape(n, c, -1)
    p = np.empty((n, c))
    _per_example(a, g, p)
    return _aggregate(p, _MODE_CODES[mode], a.shape[2])


__all__ = ["taylor_importance"]
