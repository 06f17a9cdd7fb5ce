"""Shared helpers of the Numba kernels: input checks for ``supports=`` and argument preparation.

Every Numba kernel is compiled only for C-contiguous float32 and float64 arrays (plus int64
labels and indices) and for Python floats/ints/bools as scalars. The wrappers make that true
(``np.ascontiguousarray``, ``float(...)``, ``int(...)``), so a program compiles at most two
specialisations of each kernel (one per dtype) and the on-disk cache always hits.
"""
from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Below this many elements a kernel runs serially: waking the worker threads of a parallel
# region (tens of microseconds on this 2-core virtual machine with the workqueue layer) costs
# more than splitting a memory-bound pass saves.
#
# Kernels that move several bytes per arithmetic operation (pooling, batch norm; relu unless BLAS
# shares Numba's pool, see :func:`pool_shared`) run serially at every size. Measured on this
# machine under the workqueue layer, interleaved in one process: relu forward on 2^16 .. 2^24
# float32 values was slower on two threads than on one at every size, batch norm gained 10-25% on
# a quiet machine; and while another process keeps the second core busy, a parallel region waits
# for its worker to be scheduled: 60-70 us for an empty region, up to 12 ms (a scheduler tick)
# for a batch norm.
PARALLEL_MIN_SIZE = 1 << 18

# Elementwise parallel loops work on chunks of this many elements (cache-friendly, few tasks).
CHUNK = 1 << 14


def same_float_dtype(*arrays: Any) -> bool:
    """True when every argument that is not None is a NumPy array of one float32/float64 dtype."""
    dtype = None
    for a in arrays:
        if a is None:
            continue
        if type(a) is not np.ndarray or a.dtype not in FLOAT_DTYPES:
            return False
        if dtype is None:
            dtype = a.dtype
        elif a.dtype != dtype:
            return False
    return dtype is not None


def contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` itself when already C-contiguous, else a C-contiguous copy."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def flat(a: np.ndarray) -> np.ndarray:
    """A 1-D C-contiguous view (or copy, when ``a`` is not contiguous) of ``a``."""
    return contiguous(a).reshape(-1)


# Scratch buffers per thread, dtype and use, grown as needed and kept: a fresh multi-megabyte
# array per call would be fresh pages from the OS, each page-faulted on first write (measured: the
# forward of CNN-S's second convolution took twice as long inside a training step as alone).
_buffers = threading.local()


def scratch(size: int, dtype, slot: str) -> np.ndarray:
    """``size`` uninitialised elements of ``dtype`` from this thread's buffer named ``slot``
    (two slots can be in use at once; one slot's contents last until its next request)."""
    key = (slot, np.dtype(dtype).str)
    buffers = _buffers.__dict__
    buffer = buffers.get(key)
    if buffer is None or buffer.size < size:
        buffer = buffers[key] = np.empty(size, dtype)
    return buffer[:size]


def pool_shared() -> bool:
    """Whether BLAS runs its parallel sections on Numba's pool (:mod:`refnas.kernels.numba_blas`).
    That pool's threads are then awake between loops, and parallel loops pay at sizes where
    waking a sleeping workqueue thread cost more than it saved."""
    blas = sys.modules.get("refnas.kernels.numba_blas")
    return blas is not None and blas.sharing()
