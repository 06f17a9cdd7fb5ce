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
from numba import njit, prange

from refnas.backend import register_kernel
from refnas.kernels.numba_support import CHUNK, PARALLEL_MIN_SIZE, flat, same_float_dtype


# The scalars reach the loops in the parameters' dtype (converted by the wrappers), so float32
# parameters are updated in float32 arithmetic, 8 lanes wide, as NumPy's reference does; the
# loops run over 0-based views, so Numba drops its wrap-around checks and vectorises them.
@njit(cache=True)
def _sgd_span(param, grad, buf, lr, weight_decay, momentum, dampening_complement, nesterov,
              first_step, start, stop):
    param, grad, buf = param[start:stop], grad[start:stop], buf[start:stop]
    for i in range(stop - start):
        g = grad[i] + weight_decay * param[i]
        if momentum != 0:
            b = g if first_step else momentum * buf[i] + dampening_complement * g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        param[i] -= lr * g


@njit(cache=True, parallel=True)
def _sgd_parallel(param, grad, buf, lr, weight_decay, momentum, dampening_complement, nesterov,
                  first_step):
    for k in prange((param.size + CHUNK - 1) // CHUNK):
        _sgd_span(param, grad, buf, lr, weight_decay, momentum, dampening_complement, nesterov,
                  first_step, k * CHUNK, min((k + 1) * CHUNK, param.size))


@njit(cache=True)
def _adam_span(param, grad, exp_avg, exp_avg_sq, decay, l2, beta1, beta1_complement, beta2,
               beta2_complement, step_size, inv_bias2, eps, start, stop):
    param, grad = param[start:stop], grad[start:stop]
    exp_avg, exp_avg_sq = exp_avg[start:stop], exp_avg_sq[start:stop]
    for i in range(stop - start):
        g = grad[i] + l2 * param[i]                      # l2 = 0 for AdamW
        m = beta1 * exp_avg[i] + beta1_complement * g
        v = beta2 * exp_avg_sq[i] + beta2_complement * (g * g)
        exp_avg[i] = m
        exp_avg_sq[i] = v
        param[i] = decay * param[i] - step_size * m / (np.sqrt(v * inv_bias2) + eps)


@njit(cache=True, parallel=True)
def _adam_parallel(param, grad, exp_avg, exp_avg_sq, decay, l2, beta1, beta1_complement, beta2,
                   beta2_complement, step_size, inv_bias2, eps):
    for k in prange((param.size + CHUNK - 1) // CHUNK):
        _adam_span(param, grad, exp_avg, exp_avg_sq, decay, l2, beta1, beta1_complement, beta2,
                   beta2_complement, step_size, inv_bias2, eps, k * CHUNK,
                   min((k + 1) * CHUNK, param.size))


def _writable_contiguous(*arrays) -> bool:
    return all(a is None or (a.flags.c_contiguous and a.flags.writeable) for a in arrays)


def _sgd_supported(param, grad, buf, *args, **kwargs) -> bool:
    return (same_float_dtype(param, grad, buf) and _writable_contiguous(param, buf)
            and grad.shape == param.shape and (buf is None or buf.shape == param.shape))


@register_kernel("sgd_update", "numba", supports=_sgd_supported)
def sgd_update(param, grad, buf, lr, momentum, dampening, nesterov, weight_decay,
               first_step) -> None:
    """SGD with momentum / Nesterov / weight decay, in place on ``param`` and ``buf`` (Numba)."""
    if buf is None and momentum != 0:
        raise ValueError("sgd_update: momentum != 0 needs a momentum buffer, got buf=None")
    real = param.dtype.type
    p, g = param.reshape(-1), flat(grad)
    b = p if buf is None else buf.reshape(-1)      # never read when momentum == 0
    args = (p, g, b, real(lr), real(weight_decay), real(momentum), real(1.0 - dampening),
            bool(nesterov), bool(first_step))
    if p.size < PARALLEL_MIN_SIZE:
        _sgd_span(*args, 0, p.size)
    else:
        _sgd_parallel(*args)


def _adam_supported(param, grad, exp_avg, exp_avg_sq, *args, **kwargs) -> bool:
    return (same_float_dtype(param, grad, exp_avg, exp_avg_sq)
            and _writable_contiguous(param, exp_avg, exp_avg_sq)
            and param.shape == grad.shape == exp_avg.shape == exp_avg_sq.shape)


@register_kernel("adam_update", "numba", supports=_adam_supported)
def adam_update(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
                decoupled) -> None:
    """Adam / AdamW, in place on ``param``, ``exp_avg`` and ``exp_avg_sq`` (Numba)."""
    real = param.dtype.type
    bias1, bias2 = 1.0 - beta1 ** int(step), 1.0 - beta2 ** int(step)
    decay, l2 = (1.0 - lr * weight_decay, 0.0) if decoupled else (1.0, weight_decay)
    args = (param.reshape(-1), flat(grad), exp_avg.reshape(-1), exp_avg_sq.reshape(-1),
            real(decay), real(l2), real(beta1), real(1.0 - beta1), real(beta2),
            real(1.0 - beta2), real(lr / bias1), real(1.0 / bias2), real(eps))
    if param.size < PARALLEL_MIN_SIZE:
        _adam_span(*args, 0, param.size)
    else:
        _adam_parallel(*args)


__all__ = ["sgd_update", "adam_update"]
