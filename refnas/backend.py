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
"""
from __future__ import annotations

import importlib
import os
import threading
import warnings
from typing import Any, Callable

__all__ = ["register_kernel", "kernel", "use_backend", "current_backend", "available",
           "kernels", "BACKENDS"]

BACKENDS = ("numpy", "numba", "cupy")
_EXTENSION_MODULES = {"numba": "refnas.kernels.numba_cpu", "cupy": "refnas.kernels.cupy_gpu"}

_registry: dict[tuple[str, str], Callable] = {}
_supports: dict[tuple[str, str], Callable[..., bool]] = {}
_loaded: dict[str, bool] = {"numpy": True}
_load_errors: dict[str, str] = {}
_warned: set[tuple[str, str]] = set()
_lock = threading.Lock()


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
        raise ValueError(f"register_kernel: unknown backend {backend!r}; expected one of {BACKENDS}")

    def decorator(fn: Callable) -> Callable:
        _registry[(name, backend)] = fn
        if supports is not None:
            _supports[(name, backend)] = supports
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
            importlib.import_module(_EXTENSION_MODULES[backend])
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


def kernel(name: str, backend: str | None = None) -> Callable:
    """The implementation of kernel ``name`` for ``backend`` (default: the active one).

    CuPy inputs are routed to the cupy kernel when there is one. Missing or unsupported
    accelerated kernels fall back to the NumPy reference.
    """
    reference = _registry.get((name, "numpy"))
    if reference is None:
        raise KeyError(f"kernel {name!r} has no NumPy reference; registered kernels: "
                       f"{sorted({n for n, _ in _registry})}")
    chosen = backend or current_backend()
    if chosen == "numpy":
        return _dispatch_device(name, reference)
    _load(chosen)
    fast = _registry.get((name, chosen))
    if fast is None:
        return _dispatch_device(name, reference)
    supports = _supports.get((name, chosen))

    def call(*args: Any, **kwargs: Any) -> Any:
        if any(_is_device_array(a) for a in args):
            return _dispatch_device(name, reference)(*args, **kwargs)
        if supports is not None and not supports(*args, **kwargs):
            _warn_once(name, chosen, args)
            return reference(*args, **kwargs)
        return fast(*args, **kwargs)

    return call


def _dispatch_device(name: str, reference: Callable) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        if any(_is_device_array(a) for a in args) and _load("cupy"):
            gpu = _registry.get((name, "cupy"))
            if gpu is not None:
                return gpu(*args, **kwargs)
        return reference(*args, **kwargs)

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
        _load(backend) if backend != "numpy" else None
        return sorted(n for n, b in _registry if b == backend)
    return sorted({n for n, _ in _registry})
