"""Numba's on-disk cache works: a new process loads the compiled kernels instead of compiling."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

import refnas.ops  # noqa: F401
from tests.kernels.helpers import needs_numba

pytestmark = needs_numba

_CALLS = """
import json, numpy as np
import refnas.ops
from refnas.backend import kernel
from refnas.kernels import numba_conv, numba_elementwise
x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
w = np.ones((4, 3, 3, 3), np.float32)
kernel("conv2d_forward", "numba")(x, w, (1, 1), (1, 1), (1, 1), 1)
kernel("relu_forward", "numba")(x)
stats = {f.__name__: (sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values()))
         for f in (numba_conv._im2col_planes, numba_elementwise._relu_forward_span)}
print(json.dumps(stats))
"""


def test_second_process_loads_the_cache_instead_of_compiling():
    first = subprocess.run([sys.executable, "-c", _CALLS], capture_output=True, text=True,
                           timeout=300, env=os.environ.copy())
    assert first.returncode == 0, first.stderr                   # compiles if the cache was cold
    second = subprocess.run([sys.executable, "-c", _CALLS], capture_output=True, text=True,
                            timeout=300, env=os.environ.copy())
    assert second.returncode == 0, second.stderr
    stats = json.loads(second.stdout)
    assert all(misses == 0 for _, misses in stats.values()), stats
    assert stats["_im2col_planes"][0] >= 1, stats
    assert stats["_relu_forward_span"][0] >= 1, stats


def test_cache_index_files_exist_beside_the_kernels():
    from refnas.kernels import numba_elementwise
    numba_elementwise.relu_forward(np.ones(3, np.float32))
    cache = numba_elementwise._relu_forward_span.stats.cache_path
    assert cache and any(name.endswith(".nbi") for name in os.listdir(cache))
