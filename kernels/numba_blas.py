"""One thread pool for Numba and BLAS: OpenBLAS's parallel work runs on Numba's threads.

OpenBLAS keeps a pool of its own. After each multi-threaded product its worker polls the other
cores for about 2^28 cycles (~0.1 s) before it sleeps, so a Numba parallel loop that follows a
product within that window finds its second core taken: inside a ResNet-18 training step the
direct convolutions ran at half their speed, and under Numba's OpenMP layer (whose idle threads
poll too) the step took 1.5x as long. PyTorch avoids this by running everything on one OpenMP
pool. OpenBLAS >= 0.3.27 lets its caller do the same: ``openblas_set_threads_callback_function``
hands every parallel section (``numjobs`` jobs that must run at the same time, since they wait
for each other's packed panels) to a callback. Ours is a Numba ``@cfunc`` that runs the jobs
in a ``prange`` on Numba's pool (:func:`refnas.kernels.numba_jobs.run_tasks`, the driver the
parallel kernels use too).

That pool must be thread-safe (several Python threads may call BLAS at once) and survive a
``fork`` (the search's worker processes): Numba's TBB layer is both, so refnas selects it when
the ``tbb`` package is installed (:func:`refnas.backend._prepare_numba`) and shares the pool
only then (or under OpenMP, when asked for by ``NUMBA_THREADING_LAYER=omp``). Measured on this
2-core machine, one process per configuration, three rounds: ResNet-18 step 96-100 ms against
122-136 ms with OpenBLAS's own pool; MLPs unchanged.
"""
from __future__ import annotations

import ctypes
import os

import numba
import numpy as np
from numba import cfunc, types

from refnas.kernels.numba_jobs import run_tasks, start_pool

# the layers whose pools may be entered from several threads at once (workqueue may not)
SHAREABLE_LAYERS = ("tbb", "omp")


# void callback(int sync, dojob_fn dojob, int numjobs, size_t size, void *data, int extra);
# pointers and size_t are passed as 64-bit integers (the same registers in the x86-64 and
# AArch64 calling conventions)
_CALLBACK = types.void(types.intc, types.intp, types.intc, types.intp, types.intp, types.intc)


def _run_blas_jobs(sync, dojob, numjobs, size, data, extra):
    """Run OpenBLAS's jobs 0..numjobs-1, job i on ``data + i*size``, at once on the pool.

    The jobs wait for one another, so they need ``numjobs`` threads at the same moment: BLAS's
    thread count is capped at the pool's size, and :func:`refnas.backend.set_num_threads` sets
    Numba's and BLAS's counts together. (Lowering only Numba's, with ``numba.set_num_threads``,
    in a thread that then calls a multi-threaded BLAS routine would leave jobs waiting forever.)
    """
    run_tasks(dojob, numjobs, size, data, extra)


def _callback():
    """The C callback, compiled (or loaded from the cache) once the pool has started: its
    machine code calls into the threading layer, whose symbols exist only from then on."""
    start_pool()
    return cfunc(_CALLBACK, cache=True)(_run_blas_jobs)


def _openblas():
    """(ctypes library, callback setter, thread count) of the OpenBLAS NumPy calls, when it has
    the callback API; else None."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    for info in threadpoolctl.threadpool_info():
        if info.get("internal_api") != "openblas" or not _is_numpys(info["filepath"]):
            continue
        try:
            library = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        for name in ("scipy_openblas_set_threads_callback_function64_",
                     "scipy_openblas_set_threads_callback_function",
                     "openblas_set_threads_callback_function"):
            setter = getattr(library, name, None)
            if setter is not None:
                setter.argtypes = [ctypes.c_void_p]
                setter.restype = None
                return library, setter, info["num_threads"]
    return None


def _is_numpys(path: str) -> bool:
    """Whether the library at ``path`` is the BLAS NumPy itself calls (SciPy may bundle one
    of its own)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    return os.path.abspath(path).startswith(here) and "numpy" in path


_installed: list = []


def share_with_blas(pool_size: int) -> bool:
    """Route OpenBLAS's parallel sections onto Numba's pool; True when done (or already done).

    Only with a thread-safe threading layer and an OpenBLAS that has the callback API;
    OpenBLAS's thread count is capped at ``pool_size`` (jobs must all run at once).
    """
    if _installed:
        return True
    found = _openblas()
    if found is None:
        return False
    callback = _callback()                       # starts the pool (and picks its layer)
    if numba.threading_layer() not in SHAREABLE_LAYERS:
        return False
    library, setter, threads = found
    if threads > pool_size:                      # threadpoolctl is there: _openblas used it
        import threadpoolctl
        threadpoolctl.threadpool_limits(pool_size, user_api="blas")
    setter(callback.address)
    _installed.append((library, setter, callback))        # keep the machine code alive
    return True


def stop_sharing() -> None:
    """Give OpenBLAS its own pool back."""
    while _installed:
        _, setter, _ = _installed.pop()
        setter(None)


def sharing() -> bool:
    """Whether OpenBLAS currently runs its parallel sections on Numba's pool."""
    return bool(_installed)
