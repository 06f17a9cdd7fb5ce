"""Accelerated kernels of refnas, installed as ``refnas.kernels``.

* :mod:`refnas.kernels.numba_cpu` registers the Numba (CPU) kernels; it imports the modules
  ``numba_elementwise`` (relu, add, add_relu, GELU, softmax-cross-entropy), ``numba_conv``
  (convolution; most float32 ones go to the register-blocked loops of ``numba_direct``),
  ``numba_pool`` (max / average pooling), ``numba_norm`` (batch norm), ``numba_optim``
  (SGD, Adam, AdamW) and ``numba_importance`` (Taylor importance). Their parallel loops are
  jobs run by the one ``prange`` driver of ``numba_jobs``, which also runs OpenBLAS's parallel
  sections on Numba's thread pool (``numba_blas``, :func:`refnas.backend._share_blas_pool`).
* :mod:`refnas.kernels.cupy_gpu` registers the CuPy (GPU) kernels; CUDA C sources in ``cuda/``.

Nothing here is imported by ``import refnas``: :mod:`refnas.backend` imports a backend's module
the first time that backend is asked for, and records why when the import fails.
"""
from refnas.backend import _prepare_numba

# Numba reads its threading layer and pool size once, at import: set them before any kernel
# module imports Numba, even when one is imported directly rather than through the backend.
_prepare_numba()
