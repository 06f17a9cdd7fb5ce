"""Kernel registry and backend selection (numpy | numba | cupy).

The hot loops of refnas (convolution, pooling, batch norm, fused softmax-cross-entropy, optimizer
updates, importance reductions) are *kernels*: plain functions on arrays, registered by
``(kernel name, backend)``. The NumPy reference of every kernel is mandatory and lives beside its
op in ``refnas/ops/``; the Numba and CuPy variants live in ``kernels/`` (installed as
``refnas.kernels``) and register themselves when their import succeeds.

Choosing a backend::

    refnas.use_backend("numpy")            # for the rest of the program
    with refnas.use_backend("numba"):      # for a block, restored afterwards
        ...

The default is the environment variable ``REFNAS_BACKEND`` if set, otherwise the fastest
available CPU backend (numba when it imports, else numpy). CuPy arrays always go to the ``cupy``
kernels (or to the NumPy reference, which is written against the array namespace ``xp`` and runs
on CuPy arrays too).

An accelerated kernel may declare which inputs it ``supports`` (dtypes, layouts); for anything
else the call falls back to the reference with a one-time warning — never a wrong answer.

Threads: Numba's parallel loops and the BLAS behind ``np.matmul`` each use
:func:`num_threads` threads, ``REFNAS_NUM_THREADS`` if set, else every core this process may run
on. :func:`set_num_threads` changes both at run time. With Intel TBB installed (the ``tbb``
package, a dependency on x86-64) Numba runs on its TBB threading layer, and OpenBLAS's parallel
sections run on that same pool (:mod:`refnas.kernels.numba_blas`): one pool, as in PyTorch,
instead of two whose idle threads poll the same cores. Without TBB, Numba runs on its
``workqueue`` layer (whose idle threads sleep; see :func:`_prepare_numba`) and BLAS keeps its own
pool. ``NUMBA_THREADING_LAYER`` overrides the choice, ``REFNAS_SHARED_BLAS_POOL=0`` keeps BLAS's
own pool. Under the workqueue layer, which is not thread-safe, calls into Numba kernels from
several Python threads are serialised by a lock; TBB and OpenMP are, and need none.

Memory: on Linux, importing this module asks glibc's malloc to keep freed blocks of up to 32 MiB
for reuse (see :func:`_keep_freed_memory`; ``REFNAS_MALLOC_TUNING=0`` turns it off), which
spares every training step from page-faulting its arrays afresh.

:class:`profile` times every kernel call made inside a ``with`` block (used by the benchmarks to
split a training step into kernel time and the rest).
"""
from __future__ import annotations

import importlib
import os
import sys
import threading
import warnings
from typing import Any, Callable

__all__ = ["register_kernel", "kernel", "use_backend", "current_backend", "available",
           "kernels", "BACKENDS", "num_threads", "set_num_threads", "profile"]

BACKENDS = ("numpy", "numba", "cupy")
_EXTENSION_MODULES = {"numba": "refnas.kernels.numba_cpu", "cupy": "refnas.kernels.cupy_gpu"}

_registry: dict[tuple[str, str], Callable] = {}
_supports: dict[tuple[str, str], Callable[..., bool]] = {}
_loaded: dict[str, bool] = {"numpy": True}
_load_errors: dict[str, str] = {}
_warned: set[tuple[str, str]] = set()
_lock = threading.RLock()  # re-entrant: an extension module may look up kernels on import


class _State(threading.local):
    backend: str | None = None


_state = _State()
_default_backend: str | None = None


def register_kernel(name: str, backend: str = "numpy",
                    supports: Callable[..., bool] | None = None) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as kernel ``name`` for ``backend``.

    ``supports(*args, **kwargs) -> bool`` says whether this implementation handles a call; when
    it returns False the reference is used instead (with a one-time warning).
    """
    if backend not in BACKENDS:
        raise ValueError(f"register_kernel: unknown backend {backend!r}; "
                         f"expected one of {BACKENDS}")

    def decorator(fn: Callable) -> Callable:
        _registry[(name, backend)] = fn
        if supports is not None:
            _supports[(name, backend)] = supports
        _dispatchers.clear()
        return fn

    return decorator


def _load(backend: str) -> bool:
    """Import the extension module of ``backend`` once; True if it registered its kernels."""
    if backend in _loaded:
        return _loaded[backend]
    with _lock:
        if backend in _loaded:
            return _loaded[backend]
        try:
            if backend == "numba":
                _prepare_numba()
            importlib.import_module(_EXTENSION_MODULES[backend])
            if backend == "numba" and (_threads is not None or _requested_threads()):
                set_num_threads(num_threads())
            if backend == "numba":
                _share_blas_pool()
                _serialise_numba_calls()
            ok = True
        except Exception as error:  # ImportError, or a CUDA runtime that is absent
            _load_errors[backend] = f"{type(error).__name__}: {error}"
            ok = False
        _loaded[backend] = ok
        return ok


def available() -> list[str]:
    """Backends whose kernels imported on this machine, e.g. ``['numpy', 'numba']``."""
    return [b for b in BACKENDS if _load(b)]


def load_errors() -> dict[str, str]:
    """Why each unavailable backend failed to import (for ``refnas bench`` and bug reports)."""
    available()
    return dict(_load_errors)


def _check_name(name: str) -> str:
    if name not in BACKENDS or not _load(name):
        raise ValueError(f"unknown or unavailable backend {name!r}; available backends: "
                         f"{', '.join(available())}" +
                         (f" ({name}: {_load_errors[name]})" if name in _load_errors else ""))
    return name


def _default() -> str:
    global _default_backend
    if _default_backend is None:
        requested = os.environ.get("REFNAS_BACKEND")
        if requested:
            _default_backend = _check_name(requested)
        else:
            _default_backend = "numba" if _load("numba") else "numpy"
    return _default_backend


def current_backend() -> str:
    """The CPU backend in force for this thread."""
    return _state.backend or _default()


class use_backend:
    """Select the CPU backend: a plain call switches it, ``with`` switches it for a block.

    ``use_backend("cupy")`` is accepted too; it only makes sense together with tensors moved to
    the GPU (``tensor.to("cuda")``), which dispatch to CuPy kernels by their array type anyway.
    """

    def __init__(self, name: str) -> None:
        self.name = _check_name(name)
        self.previous = _state.backend
        _state.backend = self.name

    def __enter__(self) -> "use_backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        _state.backend = self.previous


def _is_device_array(value: Any) -> bool:
    return type(value).__module__.startswith("cupy")


def _has_device_array(args: tuple) -> bool:
    """Whether any argument is a CuPy array (never, and checked for free, while CuPy is not
    imported)."""
    if "cupy" not in sys.modules:
        return False
    return any(_is_device_array(a) for a in args)


# Backends whose kernels must not run in two Python threads at once: Numba's workqueue threading
# layer aborts the process on concurrent parallel loops. Dropped for Numba once its pool runs on
# a thread-safe layer (see :func:`_serialise_numba_calls`).
_exclusive: dict[str, threading.Lock] = {"numba": threading.Lock()}

# (kernel name, backend) -> the dispatching callable; built once, since ``kernel(name)(...)``
# runs on every op call. Cleared when a kernel is registered.
_dispatchers: dict[tuple[str, str], Callable] = {}


def kernel(name: str, backend: str | None = None) -> Callable:
    """The implementation of kernel ``name`` for ``backend`` (default: the active one).

    CuPy inputs are routed to the cupy kernel when there is one. Missing or unsupported
    accelerated kernels fall back to the NumPy reference.
    """
    chosen = backend or _state.backend or _default()
    dispatcher = _dispatchers.get((name, chosen))
    if dispatcher is None:
        dispatcher = _build_dispatcher(name, chosen)
        if _profiler is not None:
            dispatcher = _timed(name, dispatcher, _profiler)
        _dispatchers[(name, chosen)] = dispatcher
    return dispatcher


def _build_dispatcher(name: str, chosen: str) -> Callable:
    reference = _registry.get((name, "numpy"))
    if reference is None:
        raise KeyError(f"kernel {name!r} has no NumPy reference; registered kernels: "
                       f"{sorted({n for n, _ in _registry})}")
    if chosen == "numpy":
        return _dispatch_device(name, reference)
    _check_name(chosen)
    fast = _registry.get((name, chosen))
    if fast is None:
        return _dispatch_device(name, reference)
    supports = _supports.get((name, chosen))
    on_device = _dispatch_device(name, reference)
    exclusive = _exclusive.get(chosen)

    def call(*args: Any, **kwargs: Any) -> Any:
        if _has_device_array(args):
            return on_device(*args, **kwargs)
        if supports is not None and not supports(*args, **kwargs):
            _warn_once(name, chosen, args)
            return reference(*args, **kwargs)
        if exclusive is None:
            return fast(*args, **kwargs)
        with exclusive:
            return fast(*args, **kwargs)

    call.__name__ = f"{name}[{chosen}]"
    call.__doc__ = fast.__doc__
    return call


def _dispatch_device(name: str, reference: Callable) -> Callable:
    """The reference, except for CuPy arrays, which go to the cupy kernel when it supports them."""
    def call(*args: Any, **kwargs: Any) -> Any:
        if _has_device_array(args) and _load("cupy"):
            gpu = _registry.get((name, "cupy"))
            supports = _supports.get((name, "cupy"))
            if gpu is not None and (supports is None or supports(*args, **kwargs)):
                return gpu(*args, **kwargs)
        return reference(*args, **kwargs)

    call.__name__ = f"{name}[numpy]"
    call.__doc__ = reference.__doc__
    return call


def _warn_once(name: str, backend: str, args: tuple) -> None:
    key = (name, backend)
    if key in _warned:
        return
    _warned.add(key)
    described = ", ".join(
        f"{tuple(a.shape)} {a.dtype}" + ("" if a.flags.c_contiguous else " non-contiguous")
        for a in args if hasattr(a, "dtype") and hasattr(a, "flags"))
    warnings.warn(f"kernel {name!r}: the {backend} backend does not support inputs "
                  f"({described}); using the NumPy reference", RuntimeWarning, stacklevel=3)


def kernels(backend: str | None = None) -> list[str]:
    """Names of the kernels registered for ``backend`` (all names if None)."""
    if backend is not None:
        if backend != "numpy":
            _load(backend)
        return sorted(n for n, b in _registry if b == backend)
    return sorted({n for n, _ in _registry})


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------
def _cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _requested_threads() -> int | None:
    value = os.environ.get("REFNAS_NUM_THREADS")
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"REFNAS_NUM_THREADS must be a positive integer, got {value!r}")
    return n


def num_threads() -> int:
    """Threads for Numba's parallel loops and for BLAS: ``REFNAS_NUM_THREADS``, or the cores."""
    return _threads if _threads is not None else (_requested_threads() or _cores())


_threads: int | None = None


def _keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks up to 32 MiB for reuse instead of returning them
    to the OS (``REFNAS_MALLOC_TUNING=0`` leaves malloc alone).

    A training step allocates and frees the same multi-megabyte arrays every step. By default
    glibc maps each from the OS afresh and unmaps it on free, so every step page-faults its
    whole working set again (measured on this 2-core virtual machine: a CNN-S step took 38 ms
    instead of 21 ms). Process-wide: it speeds up NumPy and PyTorch in the same process alike.
    """
    if os.environ.get("REFNAS_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3          # from glibc's <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)
                    and libc.mallopt(m_trim_threshold, 512 << 20))
    except (OSError, AttributeError):                          # not glibc (e.g. musl)
        return False


def _prepare_numba() -> None:
    """Settings Numba reads once, at import, so they are made before it is first imported:

    * its thread pool holds :func:`num_threads` threads and at least one per core;
    * its threading layer is TBB when Intel TBB can be loaded, else ``workqueue`` (never
      OpenMP by default: GNU OpenMP aborts a forked child that starts a parallel loop, and the
      search's worker processes are forked), unless ``NUMBA_THREADING_LAYER`` or
      ``NUMBA_THREADING_LAYER_PRIORITY`` says otherwise. TBB is thread-safe and fork-safe, so
      OpenBLAS's parallel sections can run on its pool (:func:`_share_blas_pool`). Under
      workqueue BLAS keeps its own pool: OpenMP's or BLAS's polling threads next to another
      pool made a parallel loop followed by an sgemm take about 10x the sum of the two here,
      workqueue's sleeping threads about their sum. The workqueue layer is not thread-safe, so
      calls into Numba kernels are serialised by a lock (see :func:`kernel`);
    * the instruction set it compiles for, :func:`numba_cpu_features`. Numba reads that one
      when it builds its code generator, at its first compile, so it is set even when Numba
      was imported first (see :func:`_late_cpu_features`).
    """
    features = numba_cpu_features()
    if "numba" not in sys.modules:
        os.environ.setdefault("NUMBA_NUM_THREADS", str(max(num_threads(), _cores())))
        os.environ.setdefault("NUMBA_THREADING_LAYER", "default")
        os.environ.setdefault("NUMBA_THREADING_LAYER_PRIORITY", "tbb workqueue omp")
        if features is not None:
            os.environ["NUMBA_CPU_FEATURES"] = features
    elif features is not None:
        _late_cpu_features(features)


def _late_cpu_features(features: str) -> None:
    """Numba was imported before refnas: give it ``features`` if it has compiled nothing yet
    (its code generator, built at the first compile, takes them then), else warn when the
    code generator it built has AVX-512 on (see :func:`numba_cpu_features`)."""
    import numba
    try:
        from numba.core.registry import cpu_target
        built = "_toplevel_target_context" in vars(cpu_target)
        current = cpu_target.target_context.codegen()._tm_features if built else ""
    except (ImportError, AttributeError):        # another Numba's internals: set them anyway
        built, current = False, ""
    if not built:
        os.environ["NUMBA_CPU_FEATURES"] = features
        numba.config.CPU_FEATURES = features
    elif "+avx512f" in current.split(","):
        warnings.warn(
            "refnas: Numba compiled code before refnas could choose its CPU features, so its "
            "kernels are compiled with AVX-512 on, which can make the convolutions many times "
            "slower. Import refnas.kernels (or call refnas.backend.available()) before "
            "compiling any Numba code, or set NUMBA_CPU_FEATURES to "
            "refnas.backend.numba_cpu_features() before starting Python.",
            RuntimeWarning, stacklevel=3)


# LLVM's x86 tunings that keep its vectorisers from gathers and scatters (LLVM 17 and later)
_NO_GATHERS = (17, ",+prefer-no-gather,+prefer-no-scatter")


def numba_cpu_features() -> str | None:
    """The CPU features refnas gives Numba (:func:`_prepare_numba`): the host's, with AVX-512
    off and LLVM told to prefer no gathers and scatters; None (Numba's own choice, the host's
    features) off x86-64, or when ``NUMBA_CPU_NAME``, ``NUMBA_CPU_FEATURES`` or
    ``NUMBA_ENABLE_AVX`` is set (the user's choice stands).

    Why: the register-blocked loops of the direct convolution and the 1x1 products hold their
    partial sums in a small stack array that LLVM's SLP vectoriser turns into AVX2 registers
    (see :mod:`refnas.kernels.numba_direct`). Where AVX-512 is on, gathers and scatters are
    legal, and on an AMD EPYC of the Zen 4 generation LLVM 22 vectorised those sums across
    the wrong axis, as 4-wide gathers and scatters of the stack array: a 3x3 convolution ran
    at 2 GFLOP/s instead of 150. With ``prefer-no-gather`` and ``prefer-no-scatter`` alone the
    loops became 512-bit FMAs, but whole steps were slower than as AVX2 code (the loops' blocks
    are sized for AVX2's sixteen 256-bit registers, and Zen 4 runs a 512-bit FMA as two
    256-bit halves): ResNet-18 59.6-59.8 ms against 52.9-53.2 ms, 256-bit vectors with
    AVX-512's registers 54.6-56.0 ms (processes taking turns, two calm rounds each).

    Process-wide: Numba code of your own compiled in the same process gets the same
    features. Set ``NUMBA_CPU_FEATURES`` (or ``NUMBA_CPU_NAME``) to choose otherwise."""
    if any(name in os.environ for name in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES",
                                           "NUMBA_ENABLE_AVX")):
        return None
    try:
        import llvmlite.binding as llvm
        features = llvm.get_host_cpu_features()
    except (ImportError, RuntimeError):
        return None
    if not features.get("avx2"):               # not x86-64, or too old to matter
        return None
    for name in features:         # (and what needs AVX-512, such as amx-avx512)
        if "avx512" in name or name.startswith("avx10") or name == "evex512":
            features[name] = False
    version, no_gathers = _NO_GATHERS
    return features.flatten() + (no_gathers if llvm.llvm_version_info >= (version,) else "")


def _share_blas_pool() -> bool:
    """Run OpenBLAS's parallel sections on Numba's pool when that is safe (a thread-safe,
    fork-safe threading layer) and not turned off by ``REFNAS_SHARED_BLAS_POOL=0``."""
    if os.environ.get("REFNAS_SHARED_BLAS_POOL", "1") == "0":
        return False
    import numba

    from refnas.kernels import numba_blas
    return numba_blas.share_with_blas(numba.config.NUMBA_NUM_THREADS)


def _serialise_numba_calls() -> None:
    """Keep the lock around Numba kernel calls only under a threading layer that is not
    thread-safe (workqueue). Starts Numba's pool, which picks the layer. The lock cost a small
    MLP's training step 2% (about 1 µs per kernel call, in a step's cold caches)."""
    import numba

    from refnas.kernels import numba_jobs
    numba_jobs.start_pool()
    if numba.threading_layer() in ("tbb", "omp"):
        _exclusive.pop("numba", None)


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in Numba's parallel loops (in this thread) and in BLAS (process-wide).

    Numba's count cannot exceed the pool it started with (``NUMBA_NUM_THREADS``, the number of
    cores by default); BLAS is limited through threadpoolctl when it is installed.
    """
    global _threads
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    _threads = n
    if "numba" in sys.modules:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        import threadpoolctl
    except ImportError:  # BLAS keeps its own default (all cores)
        return
    # BLAS's jobs on Numba's pool must all run at once: never more of them than the pool holds
    from refnas.kernels.numba_support import pool_shared
    if pool_shared():
        import numba
        n = min(n, numba.config.NUMBA_NUM_THREADS)
    threadpoolctl.threadpool_limits(n, user_api="blas")


MALLOC_TUNED = _keep_freed_memory()


# --------------------------------------------------------------------------------------------
# Profiling
# --------------------------------------------------------------------------------------------
class profile:
    """Context manager that times every kernel looked up with :func:`kernel` inside it::

        with refnas.backend.profile() as timing:
            train_step()
        timing.seconds   # {"conv2d_forward": 0.012, ...}: total seconds per kernel name
        timing.calls     # {"conv2d_forward": 2, ...}: number of calls per kernel name
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def __enter__(self) -> "profile":
        global _profiler
        _profiler = self
        _dispatchers.clear()
        return self

    def __exit__(self, *exc: Any) -> None:
        global _profiler
        _profiler = None
        _dispatchers.clear()


_profiler: profile | None = None


def _timed(name: str, function: Callable, profiler: profile) -> Callable:
    from time import perf_counter

    def call(*args: Any, **kwargs: Any) -> Any:
        start = perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            profiler.seconds[name] = profiler.seconds.get(name, 0.0) + perf_counter() - start
            profiler.calls[name] = profiler.calls.get(name, 0) + 1

    return call
