"""CUDA C sources compile with nvcc (where it exists); CuPy kernels equal the NumPy references
on a GPU (skipped without CuPy and a device)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import refnas.ops  # noqa: F401
import refnas.optim  # noqa: F401
from refnas.backend import kernel
from tests.kernels.helpers import assert_close

CUDA_DIR = Path(__file__).resolve().parents[2] / "kernels" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))


def test_cuda_sources_are_present():
    assert {p.name for p in SOURCES} >= {"softmax_cross_entropy.cu", "optimizers.cu"}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("real", ["float", "double"])
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles_with_nvcc(source, real, tmp_path):
    result = subprocess.run(["nvcc", "--ptx", f"-DREAL={real}", str(source), "-o",
                             str(tmp_path / "out.ptx")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.ptx").stat().st_size > 0


def _cupy_with_device():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except cp.cuda.runtime.CUDARuntimeError:
        pytest.skip("no CUDA device")
    from refnas.kernels import cupy_gpu  # noqa: F401  (registers the kernels)
    return cp


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cupy_kernels_equal_the_references(dtype):
    cp = _cupy_with_device()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 11)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    target = rng.integers(0, 11, 37)
    weight = rng.uniform(0.5, 2, 11).astype(dtype)
    rows = rng.standard_normal(37).astype(dtype)
    cases = [("relu_forward", (x,)), ("relu_backward", (g, x)), ("gelu_forward", (x,)),
             ("gelu_backward", (g, x)),
             ("softmax_cross_entropy", (x, target, weight, 0.1)),
             ("softmax_cross_entropy_backward", (x, target, None, 0.0, rows))]
    for name, args in cases:
        on_device = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
        got = kernel(name, "cupy")(*on_device)
        assert isinstance(got, cp.ndarray), name
        want = kernel(name, "numpy")(*args)
        assert_close(cp.asnumpy(got), want, bound=np.abs(want) + 10)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cupy_optimizer_updates_equal_the_references(dtype):
    cp = _cupy_with_device()
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(1000).astype(dtype) for _ in range(3)]
    arrays.append(np.abs(rng.standard_normal(1000)).astype(dtype))
    for name, count, scalars in [("sgd_update", 3, (0.1, 0.9, 0.0, True, 1e-2, False)),
                                 ("adam_update", 4, (3, 1e-2, 0.9, 0.999, 1e-8, 1e-2, True))]:
        host = [a.copy() for a in arrays[:count]]
        device = [cp.asarray(a) for a in arrays[:count]]
        kernel(name, "numpy")(*host, *scalars)
        kernel(name, "cupy")(*device, *scalars)
        for h, d in zip(host, device):
            assert_close(cp.asnumpy(d), h, bound=np.abs(h) + 1)
