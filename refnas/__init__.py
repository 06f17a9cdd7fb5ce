"""refnas: a readable NumPy reference for neural networks, model search and pruning.

The public core::

    import refnas as rn
    x = rn.tensor([[1.0, 2.0]], requires_grad=True)
    loss = (x * x).sum()
    loss.backward()            # x.grad == 2 x

Every op lives in :mod:`refnas.ops`; the most used ones are re-exported here.
"""
from refnas.tensor import (AnomalyError, GraphFreedError, Tensor, arange, as_tensor, backward,
                           detect_anomaly, enable_grad, full, grad, is_anomaly_enabled,
                           is_grad_enabled, no_grad, ones, ones_like, rand, randn,
                           set_grad_enabled, tensor, zeros, zeros_like)
from refnas import ops
from refnas.ops import REGISTRY, OpError
from refnas.ops import (abs, binary_cross_entropy_with_logits, broadcast_to, clip, concatenate,
                        cross_entropy, exp, gelu, leaky_relu, log, log_softmax, logsumexp, matmul,
                        maximum, minimum, mse_loss, nll_loss, pad, permute, relu, reshape,
                        sigmoid, softmax, softplus, sqrt, squeeze, stack, tanh, transpose,
                        unsqueeze, where)
from refnas.backend import available as available_backends, current_backend, use_backend
from refnas.gradcheck import GradcheckError, gradcheck, gradgradcheck

__version__ = "0.1.0"
