"""Every available accelerated CPU backend gives the NumPy reference's values and gradients for
the nn ops, on Hypothesis-drawn problems in float32 and float64 (op level; the kernels
themselves are compared in the kernel tests)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refnas as rn
from refnas import ops
from refnas.backend import available, use_backend
from tests.nn_ops.support import conv_problems, pool_problems

ACCELERATED = [b for b in available() if b not in ("numpy", "cupy")]
pytestmark = [pytest.mark.any_backend,
              pytest.mark.skipif(not ACCELERATED, reason="no accelerated CPU backend")]
TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}


def _values_and_grads(backend, f, arrays):
    with use_backend(backend):
        leaves = [rn.Tensor(a, requires_grad=True) for a in arrays]
        y = f(*leaves)
        y.backward(np.cos(np.arange(y.size)).reshape(y.shape).astype(y.dtype))
        return [y.data] + [t.grad.data for t in leaves]


def _same_on_every_backend(f, arrays):
    expected = _values_and_grads("numpy", f, arrays)
    tol = TOLERANCE[arrays[0].dtype.type]
    for backend in ACCELERATED:
        for got, want in zip(_values_and_grads(backend, f, arrays), expected):
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=backend)


@given(conv_problems(), st.sampled_from([np.float32, np.float64]))
def test_conv2d(problem, dtype):
    x, w, geometry = problem
    _same_on_every_backend(lambda x, w: ops.conv2d(x, w, **geometry),
                           [x.astype(dtype), w.astype(dtype)])


@given(pool_problems(), st.sampled_from([np.float32, np.float64]), st.booleans())
def test_pools(problem, dtype, count_include_pad):
    x, kernel, stride, padding = problem
    x = x.astype(dtype)
    _same_on_every_backend(lambda x: ops.max_pool2d(x, kernel, stride, padding), [x])
    _same_on_every_backend(
        lambda x: ops.avg_pool2d(x, kernel, stride, padding, count_include_pad), [x])


@given(st.sampled_from([(6, 3), (2, 3, 4, 5), (1, 2, 1, 3)]),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_batch_norm(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(dtype) for s in (shape, shape[1:2], shape[1:2])]
    _same_on_every_backend(ops.batch_norm, arrays)
