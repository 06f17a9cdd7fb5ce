"""Helpers for the kernel tests: drawn memory layouts and dtype-aware comparison."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st

from refnas.backend import available, kernel

# Relative tolerance on an error bound (see :func:`assert_close`) by dtype.
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-11}

needs_numba = pytest.mark.skipif("numba" not in available(), reason="Numba is not installed")


def numba_and_reference(name: str):
    """(the Numba kernel, the NumPy reference) of kernel ``name``."""
    return kernel(name, "numba"), kernel(name, "numpy")


def layout(data: st.DataObject, array: np.ndarray) -> np.ndarray:
    """``array``'s values in a drawn memory layout: C-contiguous, reversed axes (Fortran-like),
    or a strided view into a larger buffer."""
    kind = data.draw(st.sampled_from(["contiguous", "transposed", "strided"]), label="layout")
    if kind == "transposed":
        return np.asfortranarray(array)
    if kind == "strided":
        buffer = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), array.dtype)
        view = buffer[..., ::2]
        view[...] = array
        return view
    return np.ascontiguousarray(array)


def normal(data: st.DataObject, shape: tuple, dtype, scale: float = 1.0) -> np.ndarray:
    """Standard normal values (times ``scale``) from a drawn seed, in a drawn layout."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    return layout(data, (rng.standard_normal(shape) * scale).astype(dtype))


def assert_close(got: Any, want: Any, bound: Any = None) -> None:
    """``got`` equals ``want`` (array or tuple of arrays) in shape and dtype, and within
    ``TOLERANCE[dtype] * bound`` elementwise.

    ``bound`` is an error bound of the computation: the same kernel applied to the absolute
    values of its inputs for sums of products (rounding error grows with the sum of the
    magnitudes of the terms, not with the result), or by default ``|want| + 1``.
    """
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    bound = bound if isinstance(bound, tuple) else (bound,) * len(want)
    assert len(got) == len(want)
    for g, w, b in zip(got, want, bound):
        assert g.shape == w.shape, (g.shape, w.shape)
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        if w.dtype.kind in "iu":
            np.testing.assert_array_equal(g, w)
            continue
        scale = np.abs(w) + 1.0 if b is None else np.abs(b) + np.abs(w) + 1e-30
        error = np.abs(g.astype(np.float64) - w.astype(np.float64))
        tolerance = TOLERANCE[w.dtype] * scale
        worst = np.unravel_index(np.argmax(error - tolerance), error.shape) if error.size else ()
        assert np.all(error <= tolerance), (
            f"max excess at {worst}: got {g[worst]}, want {w[worst]}, tolerance {tolerance[worst]}")


def fused_multiply_adds(tmp_path, module: str,
                        jobs: dict[str, str]) -> dict[str, tuple[int, int, int]]:
    """name -> (vector, scalar) counts of fused multiply-adds, and the count of gathers and
    scatters, in the machine code of each job (an expression on ``module``, imported as m),
    compiled afresh: in a new process with an empty Numba cache (code loaded from the cache
    cannot be inspected)."""
    lines = ["import re", f"import {module} as m"]
    for name, expression in jobs.items():
        lines.append(f"asm = ({expression}).assembly()")
        lines.append(f"print({name!r}, len(re.findall(r'vfmadd\\w+ps\\s+%[yz]mm', asm)),"
                     " len(re.findall(r'vfmadd\\w+s[sd]', asm)),"
                     " len(re.findall(r'\\bv(?:p?gather|scatter)', asm)))")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", "\n".join(lines)], env=env,
                            capture_output=True, text=True, timeout=300, check=True)
    counts = {name: (int(vector), int(scalar), int(gathers))
              for name, vector, scalar, gathers in (line.split()
                                                   for line in result.stdout.splitlines())}
    assert set(counts) == set(jobs), result.stdout
    return counts
