"""The CuPy backend: GPU kernels for CuPy arrays, registered with :mod:`refnas.backend`.

Importing this module raises ImportError without CuPy (the backend is then unavailable, and
CuPy arrays, if any, run through the NumPy references, which are written against ``xp``).

* relu and exact GELU, forward and backward: ``cupy.ElementwiseKernel`` (one fused pass);
* softmax-cross-entropy forward and backward, SGD and Adam/AdamW updates: CUDA C in
  ``kernels/cuda/*.cu``, compiled by NVRTC through ``cupy.RawModule`` once per dtype
  (``-DREAL=float`` / ``-DREAL=double``). The same sources are compile-checked with ``nvcc``
  by the test suite where nvcc exists.

The formulas are those of the NumPy references (see :mod:`refnas.kernels.numba_elementwise`
and :mod:`refnas.kernels.numba_optim`).
"""
from __future__ import annotations

import functools
from pathlib import Path

import cupy as cp
import numpy as np

from refnas.backend import register_kernel

CUDA_DIR = Path(__file__).with_name("cuda")
_THREADS = 256
_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def _supported(*arrays) -> bool:
    """CuPy arrays of one float32/float64 dtype (None entries ignored)."""
    present = [a for a in arrays if a is not None and hasattr(a, "dtype")]
    return (bool(present) and all(isinstance(a, cp.ndarray) for a in present)
            and len({a.dtype for a in present}) == 1 and present[0].dtype in _TYPES)


@functools.lru_cache(maxsize=None)
def _module(name: str, dtype: np.dtype) -> cp.RawModule:
    source = (CUDA_DIR / f"{name}.cu").read_text()
    return cp.RawModule(code=source, options=(f"-DREAL={_TYPES[np.dtype(dtype)]}",))


def _blocks(size: int) -> int:
    return max(1, min((size + _THREADS - 1) // _THREADS, 65535))


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------
_relu_forward = cp.ElementwiseKernel("T x", "T y", "y = x < 0 ? (T)0 : x", "refnas_relu_forward")
_relu_backward = cp.ElementwiseKernel("T g, T x", "T out", "out = x > 0 ? g : (T)0",
                                      "refnas_relu_backward")
_gelu_forward = cp.ElementwiseKernel(
    "T x", "T y", "y = (T)(0.5 * (double)x * (1.0 + erf((double)x * M_SQRT1_2)))",
    "refnas_gelu_forward")
_gelu_backward = cp.ElementwiseKernel(
    "T g, T x", "T out",
    """double v = (double)x;
    double cdf = 0.5 * (1.0 + erf(v * M_SQRT1_2));
    double pdf = exp(-0.5 * v * v) * 0.3989422804014327;
    out = (T)((double)g * (cdf + v * pdf));""",
    "refnas_gelu_backward")


@register_kernel("relu_forward", "cupy", supports=lambda x: _supported(x))
def relu_forward(x):
    return _relu_forward(x)


@register_kernel("relu_backward", "cupy", supports=lambda g, x: _supported(g, x))
def relu_backward(g, x):
    return _relu_backward(g, x)


@register_kernel("gelu_forward", "cupy", supports=lambda x: _supported(x))
def gelu_forward(x):
    return _gelu_forward(x)


@register_kernel("gelu_backward", "cupy", supports=lambda g, x: _supported(g, x))
def gelu_backward(g, x):
    return _gelu_backward(g, x)


# --------------------------------------------------------------------------------------------
# Softmax-cross-entropy
# --------------------------------------------------------------------------------------------
def _ce_supported(logits, target, weight, label_smoothing, *g) -> bool:
    return (_supported(logits, weight, *g) and logits.ndim == 2
            and isinstance(target, cp.ndarray) and target.dtype.kind in "iu")


def _ce_arguments(logits, target, weight):
    logits = cp.ascontiguousarray(logits)
    target = cp.ascontiguousarray(target.astype(cp.int64, copy=False))
    has_weight = weight is not None
    weight = cp.ascontiguousarray(weight) if has_weight else cp.empty(1, logits.dtype)
    return logits, target, weight, np.int32(has_weight)


@register_kernel("softmax_cross_entropy", "cupy", supports=_ce_supported)
def softmax_cross_entropy(logits, target, weight, label_smoothing):
    logits, target, weight, has_weight = _ce_arguments(logits, target, weight)
    rows, classes = logits.shape
    loss = cp.empty(rows, logits.dtype)
    kernel = _module("softmax_cross_entropy", logits.dtype).get_function(
        "softmax_cross_entropy_forward")
    kernel((_blocks(rows),), (_THREADS,),
           (logits, target, weight, has_weight, np.float64(label_smoothing), np.int32(rows),
            np.int32(classes), loss))
    return loss


@register_kernel("softmax_cross_entropy_backward", "cupy", supports=_ce_supported)
def softmax_cross_entropy_backward(logits, target, weight, label_smoothing, g):
    logits, target, weight, has_weight = _ce_arguments(logits, target, weight)
    rows, classes = logits.shape
    grad = cp.empty_like(logits)
    kernel = _module("softmax_cross_entropy", logits.dtype).get_function(
        "softmax_cross_entropy_backward")
    kernel((_blocks(rows),), (_THREADS,),
           (logits, target, weight, has_weight, np.float64(label_smoothing),
            cp.ascontiguousarray(g), np.int32(rows), np.int32(classes), grad))
    return grad


# --------------------------------------------------------------------------------------------
# Optimizer updates (in place)
# --------------------------------------------------------------------------------------------
def _in_place_supported(param, *others) -> bool:
    arrays = [param, *(a for a in others if hasattr(a, "dtype"))]
    return _supported(*arrays) and all(
        a.flags.c_contiguous for a in arrays if a is not None) and all(
        a.shape == param.shape for a in arrays if a is not None)


@register_kernel("sgd_update", "cupy",
                 supports=lambda param, grad, buf, *rest: _in_place_supported(param, grad, buf))
def sgd_update(param, grad, buf, lr, momentum, dampening, nesterov, weight_decay,
               first_step) -> None:
    if buf is None and momentum != 0:
        raise ValueError("sgd_update: momentum != 0 needs a momentum buffer, got buf=None")
    kernel = _module("optimizers", param.dtype).get_function("sgd_update")
    kernel((_blocks(param.size),), (_THREADS,),
           (param, grad, param if buf is None else buf, np.int64(param.size), np.float64(lr),
            np.float64(momentum), np.float64(dampening), np.int32(bool(nesterov)),
            np.float64(weight_decay), np.int32(bool(first_step))))


@register_kernel("adam_update", "cupy",
                 supports=lambda param, grad, m, v, *rest: _in_place_supported(param, grad, m, v))
def adam_update(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
                decoupled) -> None:
    kernel = _module("optimizers", param.dtype).get_function("adam_update")
    kernel((_blocks(param.size),), (_THREADS,),
           (param, grad, exp_avg, exp_avg_sq, np.int64(param.size), np.float64(lr),
            np.float64(beta1), np.float64(beta2), np.float64(eps), np.float64(weight_decay),
            np.int32(bool(decoupled)), np.float64(1.0 - beta1 ** int(step)),
            np.float64(1.0 - beta2 ** int(step))))


__all__ = ["relu_forward", "relu_backward", "gelu_forward", "gelu_backward",
           "softmax_cross_entropy", "softmax_cross_entropy_backward", "sgd_update",
           "adam_update", "CUDA_DIR"]
