r"""Numba kernel for the first-order Taylor importance reduction used by pruning.

:math:`p_{n,c} = \frac1S \sum_s a_{n,c,s}\, g_{n,c,s}` is computed once per (n, c) (float64
accumulation; large float32 inputs in ranges of (n, c) as a job on Numba's pool,
:mod:`refnas.kernels.numba_jobs`), then reduced over n by the aggregation mode (formulas in
:mod:`refnas.prune.importance`).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit

from refnas.backend import register_kernel
from refnas.kernels.numba_jobs import block_of, job, launch, put_vector, vector
from refnas.kernels.numba_support import PARALLEL_MIN_SIZE, contiguous, same_float_dtype
from refnas.prune.importance import TAYLOR_MODES

_MODE_CODES = {mode: code for code, mode in enumerate(TAYLOR_MODES)}


@njit(cache=True)
def _per_example(a, g, out, first, last):
    """out[n, c] = mean over s of a[n, c, s] * g[n, c, s], for the flat (n, c) indices in
    [first, last)."""
    n, c, s = a.shape
    for task in range(first, last):
        i, j = task // c, task % c
        total = 0.0
        for k in range(s):
            total += np.float64(a[i, j, k]) * np.float64(g[i, j, k])
        out[i, j] = total / s


_BLOCK = 9      # (n, c, s), then (address, length) of a, g and out


def _per_example_task(task, address, tasks):
    """Range ``task`` of ``tasks`` of the (n, c) indices of :func:`_per_example` (float32)."""
    block = block_of(address, _BLOCK)
    shape = (block[0], block[1], block[2])
    a, g = vector(block, 3, np.float32).reshape(shape), vector(block, 5, np.float32).reshape(shape)
    out = vector(block, 7, np.float64).reshape((shape[0], shape[1]))
    count = shape[0] * shape[1]
    t = np.int64(task)
    _per_example(a, g, out, t * count // tasks, (t + 1) * count // tasks)


_per_example_job = job(_per_example_task)


@njit(cache=True)
def _launch_per_example(address, a, g, out, tasks):
    block = np.empty(_BLOCK, np.int64)
    block[0], block[1], block[2] = a.shape
    put_vector(block, 3, a)
    put_vector(block, 5, g)
    put_vector(block, 7, out)
    launch(address, tasks, block)


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
    if a.dtype == np.float32 and a.size >= PARALLEL_MIN_SIZE and n * c > 1:
        tasks = min(n * c, 4 * numba.get_num_threads())
        _launch_per_example(_per_example_job.addresses, a, g, p, tasks)
    else:
        _per_example(a, g, p, 0, n * c)
    return _aggregate(p, _MODE_CODES[mode], a.shape[2])


__all__ = ["taylor_importance"]
