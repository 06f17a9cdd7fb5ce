"""The Numba backend: importing this module registers every Numba kernel with
:mod:`refnas.backend` (it raises ImportError when Numba is missing, which marks the backend
unavailable).

Every kernel is ``@njit(cache=True)``, so a new process loads the machine code compiled by an
earlier one from ``__pycache__`` (or ``NUMBA_CACHE_DIR``) instead of compiling again. Each is
compiled for C-contiguous float32 and float64 arrays only: the Python wrappers make their inputs
contiguous, and inputs of other dtypes fall back to the NumPy reference with a warning.
"""
from __future__ import annotations

import numba  # noqa: F401  (ImportError here marks the backend unavailable)

from refnas.kernels import (numba_conv, numba_elementwise, numba_importance,  # noqa: F401
                            numba_norm, numba_optim, numba_pool)

MODULES = (numba_elementwise, numba_conv, numba_pool, numba_norm, numba_optim, numba_importance)

__all__ = ["MODULES"]
