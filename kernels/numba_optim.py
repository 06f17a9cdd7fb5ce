r"""Numba kernels for the in-place optimizer updates: SGD (momentum, Nesterov, weight decay), Adam
and AdamW, each one pass over the parameter instead of NumPy's many temporaries.

SGD (PyTorch's published rule): :math:`g \leftarrow \nabla + \lambda\theta`; with momentum
:math:`\mu`: :math:`b \leftarrow g` on the first step, else :math:`b \leftarrow \mu b +
(1-\tau) g`; :math:`g \leftarrow g + \mu b` (Nesterov) or :math:`g \leftarrow b`;
:math:`\theta \leftarrow \theta - \eta g`.

Adam (Kingma & Ba 2015) / AdamW (Loshchilov & Hutter 2019, ``decoupled``):
:math:`m \leftarrow \beta_1 m + (1-\beta_1) g`, :math:`v \leftarrow \beta_2 v + (1-\beta_2)
g^2`, :math:`\theta \leftarrow \theta - \eta\,\hat m / (\sqrt{\hat v} + \epsilon)` with
:math:`\hat m = m / (1 - \beta_1^t)`, :math:`\hat v = v / (1 - \beta_2^t)`; the weight decay
:math:`\lambda` is added to the gradient (Adam) or applied as
:math:`\theta \leftarrow (1 - \eta\lambda)\theta` (AdamW).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from refnas.backend import register_kernel
from refnas.kernels.numba_support import FLOAT_DTYPES, flat


# The scalars arrive as Python floats and are converted to the parameters' dtype inside the
# kernels (``param.dtype.type``), so float32 parameters are updated in float32 arithmetic, 8 lanes
# wide, as NumPy's reference does, without building NumPy scalars in Python for every parameter
# (that, not the loop, is most of the step's time on small layers). The loops run over 0-based
# views, so Numba drops its wrap-around checks and vectorises them. ``error_model="numpy"``: a
# division by zero gives inf/nan as in NumPy instead of a Python ZeroDivisionError, whose check
# inside the loop would keep LLVM from vectorising Adam's division (it ran 8x slower).
#
# Both updates run on one thread at every size: they move 16-20 bytes per few flops, and on this
# 2-core machine a parallel version was slower at every size measured (2^18 to 2^22 float32
# elements, interleaved in one process: SGD 59 vs 200 us at 2^18, 1.9 vs 2.0 ms at 2^22; Adam
# 125 vs 288 us, 2.8 vs 3.2 ms), as for the other memory-bound kernels (see
# ``refnas.kernels.numba_support.PARALLEL_MIN_SIZE``).
@njit(cache=True, error_model="numpy")
def _sgd_span(param, grad, buf, lr, weight_decay, momentum, dampening_complement, nesterov,
              first_step, start, stop):
    real = param.dtype.type
    lr, weight_decay, momentum = real(lr), real(weight_decay), real(momentum)
    dampening_complement = real(dampening_complement)
    param, grad, buf = param[start:stop], grad[start:stop], buf[start:stop]
    for i in range(stop - start):
        g = grad[i] + weight_decay * param[i]
        if momentum != 0:
            b = g if first_step else momentum * buf[i] + dampening_complement * g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        param[i] -= lr * g


@njit(cache=True, error_model="numpy")
def _adam_span(param, grad, exp_avg, exp_avg_sq, decay, l2, beta1, beta1_complement, beta2,
               beta2_complement, step_size, inv_bias2, eps, start, stop):
    real = param.dtype.type
    decay, l2, beta1, beta1_complement = real(decay), real(l2), real(beta1), real(beta1_complement)
    beta2, beta2_complement = real(beta2), real(beta2_complement)
    step_size, inv_bias2, eps = real(step_size), real(inv_bias2), real(eps)
    param, grad = param[start:stop], grad[start:stop]
    exp_avg, exp_avg_sq = exp_avg[start:stop], exp_avg_sq[start:stop]
    for i in range(stop - start):
        g = grad[i] + l2 * param[i]                      # l2 = 0 for AdamW
        m = beta1 * exp_avg[i] + beta1_complement * g
        v = beta2 * exp_avg_sq[i] + beta2_complement * (g * g)
        exp_avg[i] = m
        exp_avg_sq[i] = v
        param[i] = decay * param[i] - step_size * m / (np.sqrt(v * inv_bias2) + eps)


def _fits(a, dtype, shape, written: bool) -> bool:
    """``a`` is a NumPy array of ``dtype`` and ``shape``; C-contiguous and writeable if
    ``written``. Plain comparisons: this runs for every parameter at every step."""
    return (type(a) is np.ndarray and a.dtype == dtype and a.shape == shape
            and (not written or (a.flags.c_contiguous and a.flags.writeable)))


def _sgd_supported(param, grad, buf, *args, **kwargs) -> bool:
    if type(param) is not np.ndarray or param.dtype not in FLOAT_DTYPES:
        return False
    dtype, shape = param.dtype, param.shape
    return (_fits(param, dtype, shape, True) and _fits(grad, dtype, shape, False)
            and (buf is None or _fits(buf, dtype, shape, True)))


@register_kernel("sgd_update", "numba", supports=_sgd_supported)
def sgd_update(param, grad, buf, lr, momentum, dampening, nesterov, weight_decay,
               first_step) -> None:
    """SGD with momentum / Nesterov / weight decay, in place on ``param`` and ``buf`` (Numba)."""
    if buf is None and momentum != 0:
        raise ValueError("sgd_update: momentum != 0 needs a momentum buffer, got buf=None")
    p = param.reshape(-1)
    b = p if buf is None else buf.reshape(-1)      # never read when momentum == 0
    _sgd_span(p, flat(grad), b, float(lr), float(weight_decay), float(momentum),
              1.0 - float(dampening), bool(nesterov), bool(first_step), 0, p.size)


def _adam_supported(param, grad, exp_avg, exp_avg_sq, *args, **kwargs) -> bool:
    if type(param) is not np.ndarray or param.dtype not in FLOAT_DTYPES:
        return False
    dtype, shape = param.dtype, param.shape
    return (_fits(param, dtype, shape, True) and _fits(grad, dtype, shape, False)
            and _fits(exp_avg, dtype, shape, True) and _fits(exp_avg_sq, dtype, shape, True))


@register_kernel("adam_update", "numba", supports=_adam_supported)
def adam_update(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
                decoupled) -> None:
    """Adam / AdamW, in place on ``param``, ``exp_avg`` and ``exp_avg_sq`` (Numba)."""
    bias1, bias2 = 1.0 - beta1 ** int(step), 1.0 - beta2 ** int(step)
    decay, l2 = (1.0 - lr * weight_decay, 0.0) if decoupled else (1.0, weight_decay)
    args = (param.reshape(-1), flat(grad), exp_avg.reshape(-1), exp_avg_sq.reshape(-1),
            float(decay), float(l2), float(beta1), 1.0 - float(beta1), float(beta2),
            1.0 - float(beta2), float(lr / bias1), float(1.0 / bias2), float(eps))
    _adam_span(*args, 0, param.size)


__all__ = ["sgd_update", "adam_update"]
