"""refnas: a readable NumPy reference for neural networks, model search and pruning.

The public core::

    import refnas as rn
    x = rn.tensor([[1.0, 2.0]], requires_grad=True)
    loss = (x * x).sum()
    loss.backward()            # x.grad == 2 x
"""
from refnas.tensor import (AnomalyError, GraphFreedError, Tensor, arange, as_tensor, detect_anomaly,
                           enable_grad, full, grad, is_anomaly_enabled, is_grad_enabled, no_grad,
                           ones, ones_like, rand, randn, set_grad_enabled, tensor, zeros, zeros_like)
from refnas import ops
from refnas.ops import OpError
from refnas.ops import (abs, concatenate, exp, log, matmul, maximum, minimum, relu, reshape,
                        sigmoid, softmax, log_softmax, logsumexp, sqrt, stack, tanh, transpose,
                        where)
from refnas.backend import available as available_backends, current_backend, use_backend
from refnas.gradcheck import GradcheckError, gradcheck, gradgradcheck

__version__ = "0.1.0"
