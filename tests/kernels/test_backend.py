"""Backend selection: names, the context manager, the environment defaults, thread counts, and
the fall-back to the reference for inputs an accelerated kernel does not support."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import refnas
import refnas.ops  # noqa: F401
import refnas.optim  # noqa: F401  (registers the optimizer updates' NumPy references)
from refnas import backend
from tests.kernels.helpers import needs_numba


def _python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter with extra environment variables; return stdout."""
    environment = {**os.environ, **env}
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_unknown_backend_lists_the_available_ones():
    with pytest.raises(ValueError) as error:
        refnas.use_backend("tpu")
    for name in backend.available():
        assert name in str(error.value)


def test_available_always_has_the_reference():
    assert backend.available()[0] == "numpy"


def test_use_backend_as_context_manager_restores_the_previous_choice():
    before = backend.current_backend()
    with refnas.use_backend("numpy"):
        assert backend.current_backend() == "numpy"
    assert backend.current_backend() == before


def test_unknown_kernel_name_is_a_key_error():
    with pytest.raises(KeyError, match="no NumPy reference"):
        backend.kernel("no_such_kernel")


def test_environment_chooses_the_default_backend():
    code = "import refnas; print(refnas.current_backend())"
    assert _python(code, REFNAS_BACKEND="numpy") == "numpy"
    failed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "REFNAS_BACKEND": "nope"}, timeout=120)
    assert failed.returncode != 0 and "available backends" in failed.stderr


@needs_numba
def test_default_is_the_fastest_available_backend():
    environment = {k: v for k, v in os.environ.items() if k != "REFNAS_BACKEND"}
    code = "import refnas; print(refnas.current_backend())"
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip() == "numba"


@needs_numba
def test_thread_count_from_the_environment():
    code = ("from refnas import backend; backend.available(); import numba, threadpoolctl; "
            "blas = [p['num_threads'] for p in threadpoolctl.threadpool_info() "
            "if p['user_api'] == 'blas']; "
            "print(backend.num_threads(), numba.get_num_threads(), min(blas))")
    assert _python(code, REFNAS_NUM_THREADS="1").split() == ["1", "1", "1"]
    code = "from refnas import backend; backend.num_threads()"
    bad = subprocess.run([sys.executable, "-c", code],
                         env={**os.environ, "REFNAS_NUM_THREADS": "zero"}, capture_output=True,
                         text=True, timeout=120)
    assert "REFNAS_NUM_THREADS" in bad.stderr


def test_set_num_threads_rejects_bad_counts():
    with pytest.raises(ValueError, match="positive int"):
        backend.set_num_threads(0)


@needs_numba
def test_unsupported_dtype_falls_back_to_the_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(backend, "_warned", set())
    x = np.linspace(-2, 2, 9, dtype=np.float16)
    relu = backend.kernel("relu_forward", "numba")
    with pytest.warns(RuntimeWarning, match="relu_forward.*float16"):
        y = relu(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert y.dtype == np.float16
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # the second call is silent
        relu(x)


@needs_numba
def test_non_contiguous_parameter_is_updated_by_the_reference(monkeypatch):
    """An in-place update cannot write through a copy: a strided parameter goes to NumPy."""
    monkeypatch.setattr(backend, "_warned", set())
    param = np.arange(12, dtype=np.float64).reshape(3, 4)[:, ::2]
    grad = np.ones_like(param)
    expected = param - 0.5 * grad
    with pytest.warns(RuntimeWarning, match="sgd_update"):
        backend.kernel("sgd_update", "numba")(param, grad, None, 0.5, 0.0, 0.0, False, 0.0, True)
    np.testing.assert_array_equal(param, expected)


@needs_numba
def test_calls_are_serialised_only_under_the_workqueue_layer():
    """The lock around Numba kernel calls exists under workqueue (not thread-safe) and is gone
    under the layer Numba picks by default here (TBB, which is)."""
    code = ("from refnas import backend; backend.available(); import numba; "
            "print(numba.threading_layer(), 'numba' in backend._exclusive)")
    layer, locked = _python(code).split()
    assert locked == str(layer == "workqueue")
    assert _python(code, NUMBA_THREADING_LAYER="workqueue").split() == ["workqueue", "True"]


@needs_numba
def test_kernels_may_be_called_from_several_threads():
    """Numba's workqueue layer aborts on concurrent parallel loops, so the backend serialises
    them there; under TBB (the default here) they run at once."""
    from concurrent.futures import ThreadPoolExecutor
    x = np.linspace(-1, 1, 1 << 17, dtype=np.float32)      # large: the parallel path
    relu = backend.kernel("relu_forward", "numba")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: relu(x), range(16)))
    for y in results:
        np.testing.assert_array_equal(y, np.maximum(x, 0))
