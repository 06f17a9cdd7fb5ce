r"""Neural-network ops: the fully connected layer's affine map (:mod:`refnas.ops.linalg`),
convolution (:mod:`refnas.ops.conv`), pooling (:mod:`refnas.ops.pool`), batch normalisation
(:mod:`refnas.ops.norm`), and dropout (here).
"""
from __future__ import annotations

import numpy as np

from refnas.ops.conv import conv2d, conv2d_input_grad, conv2d_primitive, conv2d_weight_grad
from refnas.ops.elementwise import _const, mul
from refnas.ops.linalg import linear, linear_primitive
from refnas.ops.norm import (ACTIVATIONS as BATCH_NORM_ACTIVATIONS, batch_norm,
                             batch_norm_composed, batch_norm_primitive)
from refnas.ops.pool import (adaptive_avg_pool2d, adaptive_pool_matrix, avg_pool2d,
                             avg_pool2d_backward, avg_pool2d_primitive, global_avg_pool2d,
                             max_pool2d, max_pool2d_backward, max_pool2d_primitive)
from refnas.ops.registry import OpError
from refnas.tensor import Tensor

__all__ = ["linear", "linear_primitive",
           "conv2d", "conv2d_primitive", "conv2d_input_grad", "conv2d_weight_grad",
           "max_pool2d", "max_pool2d_primitive", "max_pool2d_backward",
           "avg_pool2d", "avg_pool2d_primitive", "avg_pool2d_backward",
           "adaptive_avg_pool2d", "adaptive_pool_matrix", "global_avg_pool2d",
           "batch_norm", "batch_norm_primitive", "batch_norm_composed", "BATCH_NORM_ACTIVATIONS",
           "dropout", "dropout_mask"]


def dropout_mask(shape: tuple[int, ...], p: float, rng: np.random.Generator | int,
                 dtype=np.float64) -> np.ndarray:
    r"""The inverted-dropout mask :math:`m_i = [u_i \ge p] / (1 - p)`, :math:`u_i \sim U[0, 1)`
    i.i.d. (Srivastava et al. 2014): each unit is kept with probability :math:`1 - p` and
    scaled so that :math:`\mathbb E[m_i] = 1`. ``p == 1`` gives zeros."""
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    keep = generator.random(shape) >= p          # all False for p == 1
    scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0
    return (keep * scale).astype(dtype)


def dropout(x: Tensor, p: float = 0.5, training: bool = True,
            rng: np.random.Generator | int | None = None) -> Tensor:
    r"""Inverted dropout: :math:`y = x \odot m` with the constant mask of :func:`dropout_mask`,
    so :math:`\bar x = \bar y \odot m` and :math:`\mathbb E[y] = x`.

    The identity when not training or ``p == 0``. The mask comes from ``rng`` (a NumPy
    Generator, advanced by the call, or an int seed); refnas draws no hidden randomness, so
    ``rng`` is required whenever a mask is drawn.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not 0.0 <= p <= 1.0:
        raise OpError(f"dropout: p must be a probability in [0, 1], got {p!r}")
    if not training or p == 0.0:
        return x
    if rng is None:
        raise OpError(f"dropout: training with p={p} draws a random mask; pass rng= (a "
                      f"numpy.random.Generator or an int seed)")
    x = x if isinstance(x, Tensor) else Tensor._wrap(np.asarray(x))
    mask = dropout_mask(x.shape, float(p), rng, x.dtype)
    return mul(x, _const(x.xp.asarray(mask)))
