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


def _host_features() -> dict[str, bool]:
    import llvmlite.binding as llvm
    return dict(llvm.get_host_cpu_features())


@pytest.fixture
def no_cpu_choice(monkeypatch):
    """No NUMBA_CPU_* choice in the environment (this process's own import of the kernels
    set NUMBA_CPU_FEATURES)."""
    for name in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_ENABLE_AVX"):
        monkeypatch.delenv(name, raising=False)


@needs_numba
def test_numba_compiles_for_the_host_without_avx512_and_gathers(no_cpu_choice, monkeypatch):
    """On an x86-64 host with AVX2, Numba is told the host's features with AVX-512 off and,
    on LLVM 17+, a preference for no gathers and scatters; every other feature the host has
    stays on. The user's own NUMBA_CPU_* choice is left alone."""
    import llvmlite.binding as llvm
    host = _host_features()
    features = backend.numba_cpu_features()
    if not host.get("avx2"):
        assert features is None
        return
    named = dict((item[1:], item[0] == "+") for item in features.split(","))
    for name, on in host.items():
        avx512 = "avx512" in name or name.startswith("avx10") or name == "evex512"
        assert named[name] == (on and not avx512), name
    gathers = llvm.llvm_version_info >= (17,)
    assert named.get("prefer-no-gather", False) == gathers
    assert named.get("prefer-no-scatter", False) == gathers
    for name, value in (("NUMBA_CPU_FEATURES", "+avx2"), ("NUMBA_CPU_NAME", "generic"),
                        ("NUMBA_ENABLE_AVX", "0")):
        monkeypatch.setenv(name, value)
        assert backend.numba_cpu_features() is None
        monkeypatch.delenv(name)


@needs_numba
def test_numba_code_is_generated_with_those_features(no_cpu_choice):
    """In a new process, importing the kernels sets NUMBA_CPU_FEATURES before Numba is
    imported, and Numba's code generator (whose features also key its disk cache) uses it;
    a value the user set is used as it is."""
    expected = backend.numba_cpu_features()
    if expected is None:                               # not x86-64 with AVX2
        pytest.skip("Numba keeps the host's features here")
    code = ("import refnas.kernels.numba_cpu; from numba.core.registry import cpu_target; "
            "print(cpu_target.target_context.codegen()._tm_features)")
    assert _python(code) == expected
    user = "+avx2,+fma,+prefer-no-gather"
    assert _python(code, NUMBA_CPU_FEATURES=user) == user
    # Numba imported first, nothing compiled yet: the features still reach its code generator
    assert _python("import numba; " + code) == expected
    # something compiled first: too late, and said so where it matters (AVX-512 on)
    late = subprocess.run(
        [sys.executable, "-W", "always", "-c",
         "import numba; numba.njit(lambda v: v + 1)(1); " + code],
        env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert late.returncode == 0, late.stderr
    import llvmlite.binding as llvm
    assert late.stdout.strip() == llvm.get_host_cpu_features().flatten()    # Numba's own
    assert ("compiled code before refnas" in late.stderr) == _host_features().get("avx512f",
                                                                                  False)


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
