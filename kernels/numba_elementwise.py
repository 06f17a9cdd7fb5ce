r"""Numba kernels for the fused activations (relu, exact GELU) and softmax-cross-entropy.

Each kernel is a *span* function that does the work for elements (or rows) ``[start, stop)``;
GELU and softmax-cross-entropy also have a parallel driver that splits the whole range into
chunks over ``prange``, used for large inputs only, since waking the worker threads costs more
than it saves on small ones. relu, bound by memory, always runs on one thread.

The span functions loop over 0-based ranges of views (``x[start:stop]``, then ``x[i]`` for
``i in range(stop - start)``): Numba then knows no index is negative, drops its wrap-around
check and vectorises the loop (measured: 5 us instead of 33 us for relu's gradient on 32k
float32 values).

Formulas (those of the NumPy references):

* relu: :math:`y = \max(x, 0)`, :math:`\bar x = \bar y\,[x > 0]`; add_relu: :math:`\max(x + y, 0)`;
* GELU: :math:`y = x\,\Phi(x)`, :math:`\bar x = \bar y\,(\Phi(x) + x\,\varphi(x))`,
  :math:`\Phi(x) = \tfrac12(1 + \operatorname{erf}(x/\sqrt2))`;
* softmax-cross-entropy with class weights :math:`w` and label smoothing :math:`\varepsilon`:
  :math:`\ell_i = -\sum_c w_c\,q_{ic} \log p_{ic}`, :math:`\bar z_i = g_i\,(s_i\,p_i -
  w \odot q_i)`, :math:`q_{ic} = (1-\varepsilon)[c = y_i] + \varepsilon / C`,
  :math:`s_i = \sum_c w_c q_{ic}`.
"""
from __future__ import annotations

import math
import sys

import numpy as np
from numba import njit, prange

from refnas.backend import register_kernel
from refnas.kernels.numba_support import (CHUNK, PARALLEL_MIN_SIZE, contiguous, flat, pool_shared,
                                          same_float_dtype)

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _float_arrays(*args, **kwargs) -> bool:
    return same_float_dtype(*(a for a in args if hasattr(a, "dtype")))


# --------------------------------------------------------------------------------------------
# relu: a pass that moves 8-12 bytes per comparison, bound by memory. On two threads only when
# Numba's pool is shared with BLAS (TBB; see numba_blas): its threads are then awake and a
# ResNet-18-sized relu (0.5M float32) took 52 instead of 77 us. Under the workqueue layer a
# second thread only added its wake-up (0.8M float32: 114 us serial, 190 us parallel).
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _relu_forward_span(x, y, start, stop):
    x, y = x[start:stop], y[start:stop]
    for i in range(stop - start):
        v = x[i]
        y[i] = 0 if v < 0 else v      # NaN passes through, as in np.maximum(x, 0)


@njit(cache=True)
def _relu_backward_span(g, x, out, start, stop):
    g, x, out = g[start:stop], x[start:stop], out[start:stop]
    for i in range(stop - start):
        out[i] = g[i] if x[i] > 0 else 0


@njit(cache=True)
def _add_relu_span(x, y, out, start, stop):
    x, y, out = x[start:stop], y[start:stop], out[start:stop]
    for i in range(stop - start):
        v = x[i] + y[i]
        out[i] = 0 if v < 0 else v    # NaN passes through, as in np.maximum(x + y, 0)


def _relu_parallel_min_size() -> int:
    """PARALLEL_MIN_SIZE while BLAS shares Numba's (awake) pool, else never."""
    return PARALLEL_MIN_SIZE if pool_shared() else sys.maxsize


def _map(span, *arrays: np.ndarray, kind: int, parallel_min_size: int) -> np.ndarray:
    """Apply an elementwise kernel to flat views of ``arrays`` (one shape; (x,) or (g, x)): the
    ``span`` function on one thread, or pass ``kind`` of :func:`_activation_parallel` from
    ``parallel_min_size`` elements on; the result has the arrays' shape."""
    flats = [flat(a) for a in arrays]
    out = np.empty_like(flats[-1])
    # float64 on one thread: a second specialisation of the parallel driver would add a second
    # of cold compile, for a dtype used to check derivatives rather than to train fast
    if out.size < parallel_min_size or out.dtype != np.float32:
        span(*flats, out, 0, out.size)
    else:
        _activation_parallel(kind, flats[0], flats[-1], out)
    return out.reshape(arrays[-1].shape)


@register_kernel("relu_forward", "numba", supports=_float_arrays)
def relu_forward(x: np.ndarray) -> np.ndarray:
    """relu, one pass (Numba)."""
    return _map(_relu_forward_span, x, kind=_RELU_FORWARD,
                parallel_min_size=_relu_parallel_min_size())


@register_kernel("relu_backward", "numba", supports=_float_arrays)
def relu_backward(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``g * (x > 0)``, one pass (Numba)."""
    return _map(_relu_backward_span, g, x, kind=_RELU_BACKWARD,
                parallel_min_size=_relu_parallel_min_size())


def _same_shape_floats(x, y) -> bool:
    return _float_arrays(x, y) and x.shape == y.shape


@register_kernel("add_relu_forward", "numba", supports=_same_shape_floats)
def add_relu_forward(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``max(x + y, 0)``, one pass over two operands of one shape (Numba)."""
    return _map(_add_relu_span, x, y, kind=_ADD_RELU, parallel_min_size=_relu_parallel_min_size())


# --------------------------------------------------------------------------------------------
# GELU (exact, erf form)
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _gelu_forward_span(x, y, start, stop):
    x, y = x[start:stop], y[start:stop]
    for i in range(stop - start):
        v = x[i]
        y[i] = 0.5 * v * (1.0 + math.erf(v * _SQRT_HALF))


@njit(cache=True)
def _gelu_backward_span(g, x, out, start, stop):
    g, x, out = g[start:stop], x[start:stop], out[start:stop]
    for i in range(stop - start):
        v = x[i]
        cdf = 0.5 * (1.0 + math.erf(v * _SQRT_HALF))
        pdf = math.exp(-0.5 * v * v) * _INV_SQRT_2PI
        out[i] = g[i] * (cdf + v * pdf)


# One parallel driver for the five activation passes: each parallel function costs about a
# second to compile, and the cold compile of all kernels must stay under 30 s.
_RELU_FORWARD, _RELU_BACKWARD, _GELU_FORWARD, _GELU_BACKWARD, _ADD_RELU = 0, 1, 2, 3, 4


@njit(cache=True, parallel=True)
def _activation_parallel(kind, g, x, out):
    """Pass ``kind`` over chunks of CHUNK values, one chunk per ``prange`` iteration (``g`` is
    ignored by the forward passes, and is the first operand of add_relu)."""
    for t in prange((x.size + CHUNK - 1) // CHUNK):
        k = np.int64(t)             # prange counts in uint64: one signature of the callees
        start, stop = k * CHUNK, min((k + 1) * CHUNK, x.size)
        if kind == _RELU_FORWARD:
            _relu_forward_span(x, out, start, stop)
        elif kind == _RELU_BACKWARD:
            _relu_backward_span(g, x, out, start, stop)
        elif kind == _GELU_FORWARD:
            _gelu_forward_span(x, out, start, stop)
        elif kind == _ADD_RELU:
            _add_relu_span(g, x, out, start, stop)
        else:
            _gelu_backward_span(g, x, out, start, stop)


# erf costs ~10 ns a value: the parallel loop pays off on 8x smaller inputs than relu's.
_GELU_PARALLEL_MIN_SIZE = PARALLEL_MIN_SIZE // 8


@register_kernel("gelu_forward", "numba", supports=_float_arrays)
def gelu_forward(x: np.ndarray) -> np.ndarray:
    """Exact GELU, one pass (Numba)."""
    return _map(_gelu_forward_span, x, kind=_GELU_FORWARD,
                parallel_min_size=_GELU_PARALLEL_MIN_SIZE)


@register_kernel("gelu_backward", "numba", supports=_float_arrays)
def gelu_backward(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``g * (Phi(x) + x phi(x))``, one pass (Numba)."""
    return _map(_gelu_backward_span, g, x, kind=_GELU_BACKWARD,
                parallel_min_size=_GELU_PARALLEL_MIN_SIZE)


# --------------------------------------------------------------------------------------------
# Softmax-cross-entropy, one row per task
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _row_log_normalizer(logits, i):
    """(max_c z_ic, log sum_c exp(z_ic - max)) of row i, accumulated in float64."""
    row = logits[i]
    m = row[0]
    for j in range(1, row.size):
        if row[j] > m:
            m = row[j]
    total = 0.0
    for j in range(row.size):
        total += math.exp(row[j] - m)
    return m, math.log(total)


@njit(cache=True)
def _ce_forward_rows(logits, target, weight, has_weight, eps, out, start, stop):
    c = logits.shape[1]
    for i in range(start, stop):
        m, log_total = _row_log_normalizer(logits, i)
        t = target[i]
        w_t = weight[t] if has_weight else 1.0
        loss = -w_t * (logits[i, t] - m - log_total)
        if eps != 0.0:
            smooth = 0.0
            for j in range(c):
                w_j = weight[j] if has_weight else 1.0
                smooth += w_j * (logits[i, j] - m - log_total)
            loss = (1.0 - eps) * loss - eps * smooth / c
        out[i, 0] = loss                  # out is (N, 1): the backward's layout, one driver


@njit(cache=True)
def _ce_backward_rows(logits, target, weight, has_weight, eps, g, out, start, stop):
    c = logits.shape[1]
    weight_total = 0.0
    for j in range(c):
        weight_total += weight[j] if has_weight else 1.0
    for i in range(start, stop):
        m, log_total = _row_log_normalizer(logits, i)
        t = target[i]
        w_t = weight[t] if has_weight else 1.0
        s = (1.0 - eps) * w_t + eps / c * weight_total        # s_i = sum_c w_c q_ic
        for j in range(c):
            w_j = weight[j] if has_weight else 1.0
            q = eps / c + (1.0 - eps if j == t else 0.0)
            p = math.exp(logits[i, j] - m - log_total)
            out[i, j] = g[i] * (s * p - w_j * q)


@njit(cache=True, parallel=True)
def _ce_parallel(backward, logits, target, weight, has_weight, eps, g, out):
    """Rows of the loss (out (N, 1)) or, when ``backward``, of its gradient (out (N, C)), in
    chunks over ``prange``: one parallel driver for both (each costs ~1 s to compile)."""
    n, rows = logits.shape[0], max(CHUNK // logits.shape[1], 1)
    for t in prange((n + rows - 1) // rows):
        k = np.int64(t)             # prange counts in uint64: one signature of the callees
        start, stop = k * rows, min((k + 1) * rows, n)
        if backward:
            _ce_backward_rows(logits, target, weight, has_weight, eps, g, out, start, stop)
        else:
            _ce_forward_rows(logits, target, weight, has_weight, eps, out, start, stop)


def _ce_supported(logits, target, weight, label_smoothing, *g) -> bool:
    return (same_float_dtype(logits, weight, *g) and logits.ndim == 2 and logits.shape[1] > 0
            and type(target) is np.ndarray and target.dtype.kind in "iu")


def _ce_arguments(logits, target, weight):
    """Contiguous logits, int64 labels, and a weight array (empty when there is none)."""
    weight = (np.empty(0, logits.dtype) if weight is None else contiguous(weight))
    return contiguous(logits), contiguous(target.astype(np.int64, copy=False)), weight


@register_kernel("softmax_cross_entropy", "numba", supports=_ce_supported)
def softmax_cross_entropy(logits, target, weight, label_smoothing):
    """Per-row fused softmax-cross-entropy (Numba)."""
    z, t, w = _ce_arguments(logits, target, weight)
    out = np.empty((z.shape[0], 1), z.dtype)
    if z.size < PARALLEL_MIN_SIZE:
        _ce_forward_rows(z, t, w, weight is not None, float(label_smoothing), out, 0,
                         z.shape[0])
    else:
        _ce_parallel(False, z, t, w, weight is not None, float(label_smoothing),
                     np.empty(0, z.dtype), out)
    return out[:, 0]


@register_kernel("softmax_cross_entropy_backward", "numba", supports=_ce_supported)
def softmax_cross_entropy_backward(logits, target, weight, label_smoothing, g):
    """Gradient of the per-row loss with respect to the logits (Numba)."""
    z, t, w = _ce_arguments(logits, target, weight)
    out = np.empty_like(z)
    args = (z, t, w, weight is not None, float(label_smoothing), contiguous(g), out)
    if z.size < PARALLEL_MIN_SIZE:
        _ce_backward_rows(*args, 0, z.shape[0])
    else:
        _ce_parallel(True, *args)
    return out


__all__ = ["relu_forward", "relu_backward", "gelu_forward", "gelu_backward",
           "softmax_cross_entropy", "softmax_cross_entropy_backward"]
