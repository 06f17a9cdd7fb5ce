"""numba_jobs: every parallel Numba kernel is a C callback run task by task by one ``prange``
driver. Each task must run exactly once, read the launcher's arrays in place, and the driver must
serve several Python threads at once."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.kernels.helpers import needs_numba

pytestmark = needs_numba
numba = pytest.importorskip("numba")

from refnas.kernels.numba_jobs import (block_of, job, launch, launch_serially,  # noqa: E402
                                      put_vector, vector)


def _visit(task, address, tasks):
    """Task ``task`` adds scale * tasks + task + 1 to its own mark."""
    block = block_of(address, 4)
    marks = vector(block, 2, np.int64)
    marks[task] += block[0] * tasks + task + 1


@numba.njit(cache=True)
def _launch_visits(address, scale, marks, tasks, serial=False):
    block = np.zeros(4, np.int64)
    block[0] = scale
    put_vector(block, 2, marks)
    if serial:
        launch_serially(address, tasks, block)
    else:
        launch(address, tasks, block)


@pytest.fixture(scope="module")
def visit_job():
    return job(_visit)


@pytest.mark.parametrize("tasks", [0, 1, 2, 3, 64, 1001])
def test_each_task_runs_once_on_the_launchers_arrays(visit_job, tasks):
    marks = np.zeros(tasks + 1, np.int64)        # one slot past the last task stays untouched
    _launch_visits(visit_job.addresses, 7, marks, tasks)
    expected = np.append(7 * tasks + np.arange(1, tasks + 1), 0)
    np.testing.assert_array_equal(marks, expected)


@pytest.mark.parametrize("tasks", [0, 1, 5])
def test_a_job_runs_serially_too(visit_job, tasks):
    """launch_serially: the same tasks, once each, in the calling thread."""
    marks = np.zeros(tasks + 1, np.int64)
    _launch_visits(visit_job.addresses, 3, marks, tasks, True)
    np.testing.assert_array_equal(marks, np.append(3 * tasks + np.arange(1, tasks + 1), 0))


@pytest.mark.timeout(120)
def test_python_threads_launch_jobs_at_once(visit_job):
    """Eight launches from two Python threads: each sees only its own tasks' marks."""
    _launch_visits(visit_job.addresses, 0, np.zeros(1, np.int64), 1)    # the pool has started
    if numba.threading_layer() not in ("tbb", "omp"):
        pytest.skip("the workqueue layer aborts on parallel loops from two threads at once")

    def run(scale):
        marks = np.zeros(500, np.int64)
        for _ in range(20):
            _launch_visits(visit_job.addresses, scale, marks, 500)
        return scale, marks

    with ThreadPoolExecutor(2) as pool:
        for scale, marks in pool.map(run, range(8)):
            np.testing.assert_array_equal(marks, 20 * (scale * 500 + np.arange(1, 501)))


def test_a_kernel_imported_directly_starts_the_pool_itself():
    """In a fresh process whose first parallel loop is a kernel's cached launcher (no parallel
    function called from Python before, BLAS not on Numba's pool), the job starts the pool:
    this had crashed with a segmentation fault, since the cached code calls into a threading
    layer that was not running yet."""
    script = ("import numpy as np\n"
              "from refnas.kernels import numba_direct\n"
              "x = np.ones((32, 16, 32, 32), np.float32)\n"
              "w = np.ones((32, 16, 3, 3), np.float32)\n"
              "y = numba_direct.forward(x, w, None, (1, 1), (1, 1), (2, 2))\n"
              "print(y[0, 0, 8, 8], y[0, 0, 0, 0])\n")
    env = {**os.environ, "REFNAS_SHARED_BLAS_POOL": "0", "NUMBA_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # an interior output sums 16 channels x 9 taps of ones; the corner sees 2 x 2 taps
    assert result.stdout.split() == ["144.0", "64.0"]
