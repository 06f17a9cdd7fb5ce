"""refnas operations: primitives (forward + VJP, registered in :data:`REGISTRY`) and composites.

Import order matters only in that every module registers its primitives on import.
"""
from refnas.ops.registry import REGISTRY, OpError, Primitive, primitive
from refnas.ops.elementwise import (abs, add, add_relu, astype, clip, div, exp, gelu, gelu_backward, gelu_grad,
                                    leaky_relu, relu_backward,
                                    log, maximum, minimum, mul, neg, pow, relu, sigmoid, softplus,
                                    sqrt, sub, tanh, where)
from refnas.ops.shape import (broadcast_to, concatenate, getitem, getitem_adjoint, pad, permute,
                              reshape, squeeze, stack, transpose, unsqueeze)
from refnas.ops.reduce import max, mean, min, sum, var
from refnas.ops.linalg import matmul
from refnas.ops.losses import (binary_cross_entropy_with_logits, cross_entropy,
                               cross_entropy_composed, log_softmax, logsumexp, mse_loss, nll_loss,
                               softmax, softmax_cross_entropy, softmax_cross_entropy_backward)

from refnas.ops.nn import *  # noqa: F401,F403  (conv, pooling, normalisation, dropout)

__all__ = [name for name in dir() if not name.startswith("_")]
