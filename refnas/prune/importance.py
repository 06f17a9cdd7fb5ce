r"""Importance of units (neurons, channels) from activations and their gradients.

First-order Taylor importance (Molchanov et al. 2017, "Pruning Convolutional Neural Networks for
Resource Efficient Inference", ICLR): removing unit :math:`c` (setting its activation
:math:`a_c` to zero) changes the loss by about :math:`-\sum a\,\partial L/\partial a` over the
unit's positions. With :math:`S` spatial positions per unit (:math:`S = H W`, or 1 for a dense
layer) and the per-example, per-unit average

.. math::

    p_{n,c} = \frac{1}{S} \sum_{s} a_{n,c,s}\, g_{n,c,s}, \qquad
    g = \frac{\partial L}{\partial a},

the aggregation ``mode`` over the N examples is

* ``"signed_sum"``: :math:`\sum_n \sum_s a_{n,c,s} g_{n,c,s} = S \sum_n p_{n,c}` (the signed
  first-order loss change of the batch);
* ``"abs_mean"``: :math:`\left|\frac1N \sum_n p_{n,c}\right|`;
* ``"mean_abs"``: :math:`\frac1N \sum_n |p_{n,c}|` (Molchanov et al. 2017, eq. 7);
* ``"squared"``: :math:`\frac1N \sum_n p_{n,c}^2` (Molchanov et al. 2019, "Importance
  Estimation for Neural Network Pruning", CVPR).

The reduction is a registered kernel (``taylor_importance``), so pruning a large network uses
the Numba version; the result is always float64.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from refnas.backend import kernel, register_kernel

__all__ = ["TAYLOR_MODES", "taylor_importance", "taylor_importance_reference"]

TAYLOR_MODES = ("signed_sum", "abs_mean", "mean_abs", "squared")


@register_kernel("taylor_importance")
def taylor_importance_reference(activation: np.ndarray, grad: np.ndarray, mode: str) -> np.ndarray:
    r"""Per-unit Taylor importance, shape (C,) float64 (NumPy reference kernel; formulas in the
    module docstring)."""
    n, c = activation.shape[:2]
    product = activation.astype(np.float64) * grad.astype(np.float64)
    per_example = product.reshape(n, c, -1).mean(axis=2)            # p_{n,c}
    if mode == "signed_sum":
        return per_example.sum(axis=0) * product[0, 0].size          # S sum_n p_{n,c}
    if mode == "abs_mean":
        return np.abs(per_example.mean(axis=0))
    if mode == "mean_abs":
        return np.abs(per_example).mean(axis=0)
    if mode == "squared":
        return (per_example ** 2).mean(axis=0)
    raise ValueError(f"taylor_importance: mode must be one of {TAYLOR_MODES}, got {mode!r}")


def _array(value: Any, name: str) -> np.ndarray:
    data = getattr(value, "data", value)       # a Tensor's array, or the array itself
    if not hasattr(data, "dtype"):
        data = np.asarray(data)
    if data.dtype.kind != "f":
        raise ValueError(f"taylor_importance: {name} must be floating point, got {data.dtype} "
                         f"(shape {tuple(data.shape)})")
    return data


def taylor_importance(activation: Any, grad: Any, mode: str = "mean_abs") -> np.ndarray:
    """First-order Taylor importance of each unit (axis 1) of ``activation``, shape (C,) float64.

    ``activation`` and ``grad`` (arrays or Tensors) have one shape, (N, C) or (N, C, H, W);
    ``grad`` is :math:`\\partial L/\\partial a`, e.g. read with a tensor hook.
    """
    a, g = _array(activation, "activation"), _array(grad, "grad")
    if mode not in TAYLOR_MODES:
        raise ValueError(f"taylor_importance: mode must be one of {TAYLOR_MODES}, got {mode!r}")
    if a.shape != g.shape or a.ndim not in (2, 4) or a.shape[0] == 0:
        raise ValueError(f"taylor_importance: activation {tuple(a.shape)} ({a.dtype}) and grad "
                         f"{tuple(g.shape)} ({g.dtype}) must share one shape, (N, C) or "
                         f"(N, C, H, W) with N >= 1")
    return kernel("taylor_importance")(a, g, mode)
