"""OpenBLAS's parallel sections on Numba's thread pool: products stay exact, OpenBLAS really calls
the callback, and the pool survives several Python threads, a fork, and being handed back."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from refnas import backend
from tests.kernels.helpers import needs_numba

pytestmark = needs_numba


@pytest.fixture(scope="module")
def blas():
    assert backend._load("numba")
    from refnas.kernels import numba_blas
    if not numba_blas.sharing():
        pytest.skip("OpenBLAS keeps its own pool here (no TBB layer, or no callback API)")
    return numba_blas


def _callback_in_openblas(numba_blas) -> int:
    library = numba_blas._installed[0][0]
    return ctypes.c_void_p.in_dll(library, "openblas_threads_callback_").value or 0


def _exact(a, b):
    return (a.astype(np.longdouble) @ b.astype(np.longdouble))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 700, 5), (257, 129, 300), (600, 600, 600)])
def test_products_on_the_shared_pool_are_right(blas, dtype, shape):
    """Large enough products are split by OpenBLAS into jobs that run on Numba's threads; the
    result is the product (float32 within its rounding bound)."""
    m, k, n = shape
    rng = np.random.default_rng(m + k + n)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    bound = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    error = np.abs((a @ b).astype(np.longdouble) - _exact(a, b))
    assert np.all(error <= 4 * k * np.finfo(dtype).eps * bound + 1e-30)


def test_openblas_calls_our_callback(blas):
    """The callback OpenBLAS holds is the compiled one refnas installed."""
    callback = blas._installed[0][2]
    assert _callback_in_openblas(blas) == callback.address != 0


@pytest.mark.timeout(120)
def test_two_python_threads_share_the_pool(blas):
    """BLAS called from two Python threads at once (each splitting its product into jobs on the
    one pool) finishes, with the right products."""
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal((400, 400)), rng.standard_normal((400, 400)))
             for _ in range(8)]
    with ThreadPoolExecutor(2) as pool:
        products = list(pool.map(lambda pair: pair[0] @ pair[1], pairs))
    for (a, b), c in zip(pairs, products):
        np.testing.assert_allclose(c, _exact(a, b).astype(np.float64), rtol=1e-9, atol=1e-9)


def test_stop_sharing_hands_openblas_its_pool_back(blas):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((500, 500))
    pool_size = backend.num_threads()
    blas.stop_sharing()
    try:
        assert not blas.sharing() and _openblas_callback_is_null()
        np.testing.assert_allclose(a @ a, _exact(a, a).astype(np.float64), rtol=1e-9, atol=1e-9)
    finally:
        import numba
        assert blas.share_with_blas(max(pool_size, numba.config.NUMBA_NUM_THREADS))
    assert blas.sharing()
    np.testing.assert_allclose(a @ a, _exact(a, a).astype(np.float64), rtol=1e-9, atol=1e-9)


def _openblas_callback_is_null() -> bool:
    from refnas.kernels import numba_blas
    found = numba_blas._openblas()
    return found is not None and \
        (ctypes.c_void_p.in_dll(found[0], "openblas_threads_callback_").value or 0) == 0


_FORK_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    import refnas
    from refnas import backend, ops
    assert backend._load("numba")
    from refnas.kernels import numba_blas
    a = np.random.default_rng(0).standard_normal((600, 600)).astype(np.float32)
    x = refnas.tensor(np.random.default_rng(1).standard_normal((4, 8, 16, 16)).astype(np.float32))
    w = refnas.tensor(np.random.default_rng(2).standard_normal((8, 8, 3, 3)).astype(np.float32))
    expected = a @ a
    with refnas.use_backend("numba"):
        y = ops.conv2d(x, w, padding=1).data          # a parallel Numba loop in the parent
    pid = os.fork()
    if pid == 0:                                      # the child: BLAS and Numba again
        ok = np.allclose(a @ a, expected, rtol=1e-5, atol=1e-3)
        with refnas.use_backend("numba"):
            ok = ok and np.allclose(ops.conv2d(x, w, padding=1).data, y, rtol=1e-5, atol=1e-4)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    print("sharing", numba_blas.sharing(), "child", os.waitstatus_to_exitcode(status))
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_can_use_blas_and_numba():
    """The search's worker processes are forked from a parent that already ran Numba's pool and
    BLAS on it; the child's products and parallel loops must work (GNU OpenMP would abort it)."""
    result = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "0", result.stdout


def test_the_shared_pool_can_be_turned_off():
    script = ("from refnas import backend\n"
              "assert backend._load('numba')\n"
              "from refnas.kernels import numba_blas\n"
              "print(numba_blas.sharing())\n")
    env = {**os.environ, "REFNAS_SHARED_BLAS_POOL": "0"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=300, check=True)
    assert result.stdout.split()[-1] == "False"
