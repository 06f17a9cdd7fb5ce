"""JIT compile time of the Numba kernels on a cold cache, and what a warm cache adds to a start.

Both run in fresh interpreters: the cold one with ``NUMBA_CACHE_DIR`` pointing to an empty
temporary folder (so every kernel compiles), the warm ones reusing that folder.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

# Calls every Numba kernel once on small float32 inputs (float64 too with --float64) and prints
# the seconds spent, as JSON. Runs in a child interpreter.
_EXERCISE = r'''
import json, sys, time
start = time.perf_counter()
import numpy as np
import refnas, refnas.ops, refnas.optim, refnas.prune
from refnas.backend import kernel
imported = time.perf_counter()
backend = sys.argv[1]
dtypes = [np.float32, np.float64] if "--float64" in sys.argv else [np.float32]
for dtype in dtypes:
    rng = np.random.default_rng(0)
    k = lambda name: kernel(name, backend)
    x = rng.standard_normal((2, 4, 8, 8)).astype(dtype)
    w = rng.standard_normal((4, 2, 3, 3)).astype(dtype)
    geometry = ((1, 1), (1, 1), (1, 1), 2)
    y = k("conv2d_forward")(x, w, *geometry)
    k("conv2d_input_grad")(y, w, x.shape, *geometry)
    k("conv2d_weight_grad")(x, y, w.shape, *geometry)
    wide = rng.standard_normal((2, 4, 32, 32)).astype(dtype)     # the per-sample layout too
    w1 = rng.standard_normal((4, 4, 3, 3)).astype(dtype)
    g1 = ((1, 1), (1, 1), (1, 1), 1)
    y1 = k("conv2d_forward")(wide, w1, *g1)
    k("conv2d_input_grad")(y1, w1, wide.shape, *g1)
    k("conv2d_weight_grad")(wide, y1, w1.shape, *g1)
    strided = ((2, 2), (0, 0), (1, 1), 1)         # a projection shortcut (6+ channels each side)
    x2 = rng.standard_normal((2, 8, 32, 32)).astype(dtype)
    w2 = rng.standard_normal((8, 8, 1, 1)).astype(dtype)
    y2 = k("conv2d_forward")(x2, w2, *strided)
    k("conv2d_backward")(y2, x2, w2, *strided)
    pooled, argmax = k("max_pool2d_forward")(x, (2, 2), (2, 2), (0, 0))
    k("max_pool2d_backward")(pooled, argmax, x.shape, (2, 2), (2, 2), (0, 0))
    avg = k("avg_pool2d_forward")(x, (2, 2), (2, 2), (0, 0), True)
    k("avg_pool2d_backward")(avg, x.shape, (2, 2), (2, 2), (0, 0), True)
    gamma, beta = np.ones(4, dtype), np.zeros(4, dtype)
    for image in (x, rng.standard_normal((2, 4, 128, 1025)).astype(dtype)):  # serial, parallel
        out, mean, invstd = k("batch_norm_forward")(image, gamma, beta, 1e-5, True)
        k("batch_norm_backward")(out, image, gamma, mean, invstd, beta, True)
    for size in (10, 1 << 17):                                  # serial and parallel paths
        v = rng.standard_normal(size).astype(dtype)
        for name in ("relu", "gelu"):
            k(name + "_forward")(v)
            k(name + "_backward")(v, v)
        k("add_relu_forward")(v, v)
        k("add")(v, v)
        param, buf = v.copy(), np.zeros_like(v)
        k("sgd_update")(param, v, buf, 0.1, 0.9, 0.0, False, 0.0, False)
        k("adam_update")(param, v, buf, np.ones_like(v), 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, True)
    for rows in (4, 1 << 14):
        logits = rng.standard_normal((rows, 10)).astype(dtype)
        labels = rng.integers(0, 10, rows)
        k("softmax_cross_entropy")(logits, labels, None, 0.0)
        k("softmax_cross_entropy_backward")(logits, labels, None, 0.0, np.ones(rows, dtype))
    k("taylor_importance")(x, x, "mean_abs")
done = time.perf_counter()
print(json.dumps({"import_s": imported - start, "kernels_s": done - imported,
                  "total_s": done - start}))
'''


def _child(backend: str, cache_dir: str, *flags: str) -> dict[str, float]:
    environment = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    result = subprocess.run([sys.executable, "-c", _EXERCISE, backend, *flags],
                            capture_output=True, text=True, env=environment, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"compile-time child failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_compile(float64: bool = False) -> dict[str, Any]:
    """Cold compile of every kernel (float32, and float64 when asked) and warm-start overhead."""
    flags = ("--float64",) if float64 else ()
    with tempfile.TemporaryDirectory(prefix="refnas-numba-cache-") as cache_dir:
        cold = _child("numba", cache_dir, *flags)
        warm = _child("numba", cache_dir, *flags)
        reference = _child("numpy", cache_dir, *flags)
    return {"dtypes": ["float32", "float64"] if float64 else ["float32"],
            "cold_compile_s": cold["kernels_s"], "cold_total_s": cold["total_s"],
            "warm_total_s": warm["total_s"], "numpy_total_s": reference["total_s"],
            "warm_start_overhead_s": warm["total_s"] - reference["total_s"]}
