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
from refnas.kernels.numba_jobs import block_of, job, launch, put_vector, vector
from refnas.kernels.numba_support import CHUNK, FLOAT_DTYPES, flat, pool_shared

# float32 parameters of at least this many values update on the pool (see below)
UPDATE_PARALLEL_MIN_SIZE = 1 << 17


# The scalars arrive as Python floats and are converted to the parameters' dtype inside the
# kernels (``param.dtype.type``), so float32 parameters are updated in float32 arithmetic, 8 lanes
# wide, as NumPy's reference does, without building NumPy scalars in Python for every parameter
# (that, not the loop, is most of the step's time on small layers). The loops run over 0-based
# views, so Numba drops its wrap-around checks and vectorises them. ``error_model="numpy"``: a
# division by zero gives inf/nan as in NumPy instead of a Python ZeroDivisionError, whose check
# inside the loop would keep LLVM from vectorising Adam's division (it ran 8x slower).
#
# Threads. Float32 parameters of UPDATE_PARALLEL_MIN_SIZE values or more update in chunks of
# CHUNK values on Numba's pool while BLAS shares it (its threads are then awake; see
# :mod:`refnas.kernels.numba_blas`), the others on one thread. Measured in the fourth session
# under the workqueue layer, whose sleeping threads had to be woken, a parallel version was
# slower at every size (SGD 59 vs 200 us at 2^18 float32 values). On the shared TBB pool, back
# to back (sixteenth session): SGD 14.3 vs 14.9 us at 2^16, 27.6 vs 22.5 at 2^17, 47.8 vs 32.2
# at 2^18; Adam 30.5 vs 23.3, 60.2 vs 39.3, 104 vs 61 (after a pass of NumPy's that let the
# pool fall asleep, the wake-up costs 40-50 us, which only sizes of 2^20 and more earn back).
# In a training step the pool is awake from the backward: MLP-M's step (a 784x256 weight)
# 1.6-1.7% faster in calm periods, and 12% in the machine's slow ones (2.61-2.65 against
# 2.29-2.35 ms), where the one-thread update had taken 0.53 instead of 0.08 ms a step
# (presumably two cores keep more loads in flight than one, and memory is what is slow then).
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


# --------------------------------------------------------------------------------------------
# Both updates on the pool: one job, a chunk of CHUNK values per task
# --------------------------------------------------------------------------------------------
_SGD, _ADAM = 0, 1
_BLOCK = 11     # kind, (address, length) of param, grad, and two state vectors, and of scalars


def _update_task(task, address, tasks):
    """Chunk ``task`` of an SGD update (a = the momentum buffer; scalars = lr, weight decay,
    momentum, 1 - dampening, Nesterov, first step) or an Adam one (a, b = the two moments;
    scalars as :func:`_adam_span` takes them) of float32 vectors."""
    block = block_of(address, _BLOCK)
    param, grad = vector(block, 1, np.float32), vector(block, 3, np.float32)
    a, b = vector(block, 5, np.float32), vector(block, 7, np.float32)
    s = vector(block, 9, np.float64)
    start = np.int64(task) * CHUNK
    stop = min(start + CHUNK, param.size)
    if block[0] == _SGD:
        _sgd_span(param, grad, a, s[0], s[1], s[2], s[3], s[4] != 0, s[5] != 0, start, stop)
    else:
        _adam_span(param, grad, a, b, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8],
                   start, stop)


_update_job = job(_update_task)


@njit(cache=True)
def _launch_update(address, kind, param, grad, a, b, scalars):
    block = np.empty(_BLOCK, np.int64)
    block[0] = kind
    put_vector(block, 1, param)
    put_vector(block, 3, grad)
    put_vector(block, 5, a)
    put_vector(block, 7, b)
    put_vector(block, 9, scalars)
    launch(address, (param.size + CHUNK - 1) // CHUNK, block)


def _on_the_pool(param) -> bool:
    """Whether an update of ``param`` runs in chunks on the pool (see the note above)."""
    return (param.dtype == np.float32 and param.size >= UPDATE_PARALLEL_MIN_SIZE
            and pool_shared())


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
    if _on_the_pool(p):
        scalars = np.array([lr, weight_decay, momentum, 1.0 - dampening, bool(nesterov),
                            bool(first_step)], np.float64)
        _launch_update(_update_job.addresses, _SGD, p, flat(grad), b, b, scalars)
        return
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
    vectors = (param.reshape(-1), flat(grad), exp_avg.reshape(-1), exp_avg_sq.reshape(-1))
    scalars = (float(decay), float(l2), float(beta1), 1.0 - float(beta1), float(beta2),
               1.0 - float(beta2), float(lr / bias1), float(1.0 / bias2), float(eps))
    if _on_the_pool(vectors[0]):
        _launch_update(_update_job.addresses, _ADAM, *vectors, np.array(scalars, np.float64))
        return
    _adam_span(*vectors, *scalars, 0, param.size)


__all__ = ["sgd_update", "adam_update"]
