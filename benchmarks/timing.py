"""Timing helpers shared by the benchmarks: interleaved medians and the machine's matmul rate."""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import numpy as np


def interleaved_medians(functions: dict[str, Callable[[], object]], repeats: int,
                        warmup: int = 2, budget_s: float | None = None) -> dict[str, float]:
    """Median seconds per call of each function, the calls interleaved round by round.

    Interleaving spreads any slow-down of the machine (another process, frequency changes)
    over every contender alike, so the ratios stay fair. ``budget_s`` stops early (after at
    least three rounds) when the rounds take longer than that.
    """
    for function in functions.values():
        for _ in range(warmup):
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    start = time.perf_counter()
    for round_ in range(repeats):
        for name, function in functions.items():
            t = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - t)
        if budget_s is not None and round_ >= 2 and time.perf_counter() - start > budget_s:
            break
    return {name: statistics.median(values) for name, values in times.items()}


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """float32 ``n x n @ n x n`` GFLOP/s of NumPy's BLAS (median of ``repeats``)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    seconds = interleaved_medians({"matmul": lambda: a @ b}, repeats)["matmul"]
    return 2.0 * n ** 3 / seconds / 1e9


def machine() -> dict[str, object]:
    """What the numbers depend on: cores, load, BLAS, versions, thread settings."""
    info: dict[str, object] = {"cpu_count": os.cpu_count(), "numpy": np.__version__,
                               "load_average_1min": _load_average()}
    try:
        import threadpoolctl
        info["blas"] = [{k: p.get(k) for k in ("internal_api", "version", "architecture",
                                               "num_threads")}
                        for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    except ImportError:
        pass
    for variable in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "REFNAS_NUM_THREADS",
                     "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if variable in os.environ:
            info[variable] = os.environ[variable]
    try:
        import numba
        info["numba"] = numba.__version__
    except ImportError:
        pass
    info.update(_numba_target())
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def _numba_target() -> dict[str, str]:
    """The CPU LLVM sees ("cpu", e.g. znver4) and the widest vectors Numba's code is compiled
    for ("numba_vectors": AVX-512, AVX2 or other; refnas turns AVX-512 off, see
    :func:`refnas.backend.numba_cpu_features`)."""
    try:
        import llvmlite.binding as llvm
        features = os.environ.get("NUMBA_CPU_FEATURES") or llvm.get_host_cpu_features().flatten()
        name = os.environ.get("NUMBA_CPU_NAME") or llvm.get_host_cpu_name()
    except (ImportError, RuntimeError):
        return {}
    on = set(item[1:] for item in features.split(",") if item.startswith("+"))
    return {"cpu": name, "numba_vectors": "AVX-512" if "avx512f" in on else
            "AVX2" if "avx2" in on else "other"}


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None
