"""Numba activation, softmax-cross-entropy, optimizer and Taylor-importance kernels equal their
NumPy references, on small inputs and on inputs past PARALLEL_MIN_SIZE (where GELU and
softmax-cross-entropy take their parallel path, and relu too while BLAS shares Numba's pool; the
optimizer updates always run on one thread, so for them the large inputs check the long
vectorised loops)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refnas.ops  # noqa: F401  (registers the NumPy references)
import refnas.optim  # noqa: F401
from refnas.kernels.numba_support import PARALLEL_MIN_SIZE
from refnas.prune.importance import TAYLOR_MODES
from tests.kernels.helpers import assert_close, needs_numba, normal, numba_and_reference

pytestmark = needs_numba
DTYPES = st.sampled_from([np.float32, np.float64])


def _shape(data) -> tuple:
    """A small odd shape, or (rarely) one past PARALLEL_MIN_SIZE."""
    if data.draw(st.integers(0, 3), label="large") == 0:
        return (3, PARALLEL_MIN_SIZE // 3 + data.draw(st.integers(1, 99)))
    return tuple(data.draw(st.lists(st.integers(1, 7), min_size=1, max_size=4), label="shape"))


@pytest.mark.parametrize("name", ["relu", "gelu"])
@given(data=st.data(), dtype=DTYPES)
def test_activations(name, data, dtype):
    shape = _shape(data)
    x, g = normal(data, shape, dtype, scale=3.0), normal(data, shape, dtype)
    fast, reference = numba_and_reference(f"{name}_forward")
    assert_close(fast(x), reference(x))
    fast, reference = numba_and_reference(f"{name}_backward")
    assert_close(fast(g, x), reference(g, x), bound=np.abs(g) * 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_parallel_path_whatever_the_pool(dtype, monkeypatch):
    """relu's parallel driver (chunks of CHUNK over prange, a partial last chunk, NaN passing
    through) equals the reference even where the pool would not choose it."""
    from refnas.kernels import numba_elementwise
    monkeypatch.setattr(numba_elementwise, "_relu_parallel_min_size", lambda: 0)
    rng = np.random.default_rng(8)
    x = rng.standard_normal(3 * numba_elementwise.CHUNK + 17).astype(dtype)
    x[::1000] = np.nan
    g = rng.standard_normal(x.shape).astype(dtype)
    fast, reference = numba_and_reference("relu_forward")
    np.testing.assert_array_equal(fast(x), reference(x))
    fast, reference = numba_and_reference("relu_backward")
    np.testing.assert_array_equal(fast(g, x), reference(g, x))
    fast, reference = numba_and_reference("add_relu_forward")
    np.testing.assert_array_equal(fast(g, x), reference(g, x))
    fast, reference = numba_and_reference("add")
    np.testing.assert_array_equal(fast(g, x), reference(g, x))


@given(data=st.data(), dtype=DTYPES)
def test_add(data, dtype):
    """x + y in one pass equals the reference exactly (one rounding each), on one thread or on
    the parallel driver; infinities and NaN flow as in NumPy."""
    shape = _shape(data)
    x, y = normal(data, shape, dtype, scale=3.0), normal(data, shape, dtype)
    if data.draw(st.booleans(), label="specials"):
        count = min(3, x.size)
        x.flat[:count] = [np.inf, -np.inf, np.nan][:count]
    fast, reference = numba_and_reference("add")
    np.testing.assert_array_equal(fast(x, y), reference(x, y))


def test_the_backward_pass_sums_gradients_with_the_add_kernel():
    """A tensor used by two ops gets the sum of their gradients through kernel "add" (on two
    threads past PARALLEL_MIN_SIZE while the pool is shared), equal to the NumPy backend's."""
    import refnas as rn
    from refnas import backend
    x = np.random.default_rng(4).standard_normal((3, PARALLEL_MIN_SIZE // 3 + 5)).astype(
        np.float32)
    grads = {}
    for name in ("numpy", "numba"):
        t = rn.tensor(x, requires_grad=True)
        with rn.use_backend(name), backend.profile() as timing:
            (rn.ops.relu(t) * 3.0 + rn.ops.tanh(t)).sum().backward()
        assert timing.calls.get("add") == 1, timing.calls
        grads[name] = t.grad.data
    np.testing.assert_allclose(grads["numba"], grads["numpy"], rtol=1e-6, atol=1e-6)


@given(data=st.data(), dtype=DTYPES)
def test_add_relu(data, dtype):
    """max(x + y, 0) in one pass equals the reference (exactly: one rounding each), on one
    thread or, past PARALLEL_MIN_SIZE, on the parallel driver while the pool is shared."""
    shape = _shape(data)
    x, y = normal(data, shape, dtype, scale=3.0), normal(data, shape, dtype)
    fast, reference = numba_and_reference("add_relu_forward")
    np.testing.assert_array_equal(fast(x, y), reference(x, y))


@given(data=st.data(), dtype=DTYPES, with_bias=st.booleans())
def test_a_linear_layers_bias_and_relu(data, dtype, with_bias):
    """A linear layer's epilogue, max(y + b, 0) in place, and its backward, z's gradient masked
    by [z > 0] with the bias's gradient (sums over every axis but the last) in the same pass,
    equal the references; NaN flows as in NumPy."""
    shape = _shape(data)
    y, g = normal(data, shape, dtype, scale=3.0), normal(data, shape, dtype)
    if data.draw(st.booleans(), label="NaN"):
        y.flat[0] = g.flat[-1] = np.nan
    bias = normal(data, shape[-1:], dtype) if with_bias else None
    fast, reference = numba_and_reference("bias_relu_forward")
    want, work = reference(y.copy(), bias), y.copy()
    got = fast(work, bias)
    assert got is work                                  # in place, on the fresh product
    np.testing.assert_array_equal(got, want)            # one rounding each
    fast, reference = numba_and_reference("relu_backward_column_sums")
    masked, sums = reference(g, want)
    got_masked, got_sums = fast(g, want)
    np.testing.assert_array_equal(got_masked, masked)
    finite = np.isfinite(sums)                          # a NaN column sums to NaN in both
    np.testing.assert_array_equal(np.isnan(got_sums), np.isnan(sums))
    assert_close(got_sums[finite], sums[finite],
                 bound=np.abs(masked).reshape(-1, shape[-1]).sum(axis=0)[finite])


def test_add_relu_leaves_broadcasting_to_the_reference(monkeypatch):
    """Operands of two shapes are not the Numba kernel's: the registry falls back to the
    reference, which broadcasts, with its one-time warning."""
    from refnas import backend
    from refnas.kernels import numba_elementwise
    monkeypatch.setattr(backend, "_warned", set())          # as if no test had warned yet
    x, y = np.ones((2, 3), np.float32), np.full((3,), -2.0, np.float32)
    assert not numba_elementwise._same_shape_floats(x, y)
    import refnas as rn
    with rn.use_backend("numba"), pytest.warns(RuntimeWarning, match="add_relu_forward"):
        z = rn.ops.add_relu(rn.tensor(x), rn.tensor(y))
    np.testing.assert_array_equal(z.data, np.zeros((2, 3), np.float32))


@given(data=st.data(), dtype=DTYPES, weighted=st.booleans(),
       label_smoothing=st.sampled_from([0.0, 0.1]))
def test_softmax_cross_entropy(data, dtype, weighted, label_smoothing):
    large = data.draw(st.integers(0, 3), label="large") == 0
    c = data.draw(st.integers(1, 12))
    n = PARALLEL_MIN_SIZE // c + 3 if large else data.draw(st.integers(1, 9))
    logits = normal(data, (n, c), dtype, scale=data.draw(st.sampled_from([1.0, 30.0])))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    target = rng.integers(0, c, n)
    weight = rng.uniform(0.5, 2.0, c).astype(dtype) if weighted else None
    g = normal(data, (n,), dtype)
    args = (logits, target, weight, label_smoothing)
    fast, reference = numba_and_reference("softmax_cross_entropy")
    loss = reference(*args)
    assert_close(fast(*args), loss, bound=np.abs(loss) + np.abs(logits).max(axis=1) * 2)
    fast, reference = numba_and_reference("softmax_cross_entropy_backward")
    assert_close(fast(*args, g), reference(*args, g), bound=np.abs(g)[:, None] * 4)


def _apply_in_place(name, arrays, scalars):
    """Run the Numba and the reference update on copies; return both sets of arrays."""
    fast, reference = numba_and_reference(name)
    ours, theirs = copy.deepcopy(arrays), copy.deepcopy(arrays)
    fast(*ours, *scalars)
    reference(*theirs, *scalars)
    return tuple(a for a in ours if a is not None), tuple(a for a in theirs if a is not None)


@given(data=st.data(), dtype=DTYPES, momentum=st.sampled_from([0.0, 0.9]),
       nesterov=st.booleans(), dampening=st.sampled_from([0.0, 0.1]),
       weight_decay=st.sampled_from([0.0, 1e-2]), first_step=st.booleans())
def test_sgd_update(data, dtype, momentum, nesterov, dampening, weight_decay, first_step):
    shape = _shape(data)
    param = np.ascontiguousarray(normal(data, shape, dtype))
    grad = normal(data, shape, dtype)
    buf = np.ascontiguousarray(normal(data, shape, dtype)) if momentum else None
    ours, theirs = _apply_in_place(
        "sgd_update", (param, grad, buf),
        (0.1, momentum, dampening, nesterov and momentum > 0, weight_decay, first_step))
    assert_close(ours, theirs, bound=tuple(np.abs(a) + 2 for a in theirs))


@given(data=st.data(), dtype=DTYPES, decoupled=st.booleans(), step=st.integers(1, 5),
       weight_decay=st.sampled_from([0.0, 1e-2]))
def test_adam_update(data, dtype, decoupled, step, weight_decay):
    shape = _shape(data)
    param = np.ascontiguousarray(normal(data, shape, dtype))
    exp_avg = np.ascontiguousarray(normal(data, shape, dtype, scale=0.1))
    exp_avg_sq = np.abs(np.ascontiguousarray(normal(data, shape, dtype, scale=0.1)))
    grad = normal(data, shape, dtype)
    ours, theirs = _apply_in_place(
        "adam_update", (param, grad, exp_avg, exp_avg_sq),
        (step, 1e-2, 0.9, 0.999, 1e-8, weight_decay, decoupled))
    assert_close(ours, theirs, bound=tuple(np.abs(a) + 1 for a in theirs))


@given(data=st.data(), dtype=DTYPES, mode=st.sampled_from(TAYLOR_MODES))
def test_taylor_importance(data, dtype, mode):
    n, c = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    shape = data.draw(st.sampled_from([(n, c), (n, c, data.draw(st.integers(1, 5)), 3)]))
    if data.draw(st.integers(0, 4), label="large") == 0:       # float32: ranges of (n, c) on
        shape = (n, c, PARALLEL_MIN_SIZE // (n * c) + 7)        # the pool, unevenly split
    a, g = normal(data, shape, dtype), normal(data, shape, dtype)
    fast, reference = numba_and_reference("taylor_importance")
    want = reference(a, g, mode)
    assert want.dtype == np.float64
    bound = reference(np.abs(a), np.abs(g), "signed_sum" if mode == "signed_sum" else "mean_abs")
    if mode == "squared":
        bound = bound * bound
    # float32 inputs are widened exactly, so only the float64 sums differ: tolerance of float64
    assert_close(fast(a, g, mode), want, bound=bound)


@needs_numba
@pytest.mark.parametrize("name, scalars", [
    ("sgd_update", (0.1, 0.9, 0.0, False, 0.0, False)),
    ("sgd_update", (0.1, 0.9, 0.1, True, 1e-2, False)),
    ("sgd_update", (0.1, 0.9, 0.0, False, 0.0, True)),
    ("sgd_update", (0.1, 0.0, 0.0, False, 1e-2, False)),
    ("adam_update", (3, 1e-2, 0.9, 0.999, 1e-8, 1e-2, False)),
    ("adam_update", (1, 1e-2, 0.9, 0.999, 1e-8, 1e-2, True))])
def test_updates_of_large_parameters_on_the_pool_equal_the_serial_loop(name, scalars,
                                                                        monkeypatch):
    """A float32 parameter past UPDATE_PARALLEL_MIN_SIZE updates chunk by chunk on the pool
    (the last chunk short): to the bit what the one-thread loop gives, and close to the
    reference."""
    from refnas.kernels import numba_optim
    size = numba_optim.UPDATE_PARALLEL_MIN_SIZE + numba_optim.CHUNK // 3
    rng = np.random.default_rng(7)
    param, grad, first = (rng.standard_normal(size).astype(np.float32) for _ in range(3))
    state = (first,) if name == "sgd_update" else (first * 0.1, np.abs(first) * 0.1)
    if name == "sgd_update" and scalars[1] == 0.0:
        state = (None,)                                    # no momentum, no buffer
    arrays = (param, grad, *state)
    if not numba_optim._on_the_pool(param):
        pytest.skip("BLAS does not share Numba's pool here: updates run on one thread")
    pooled, reference = _apply_in_place(name, arrays, scalars)
    monkeypatch.setattr(numba_optim, "UPDATE_PARALLEL_MIN_SIZE", size + 1)
    assert not numba_optim._on_the_pool(param)
    serial, _ = _apply_in_place(name, arrays, scalars)
    for a, b in zip(pooled, serial):
        np.testing.assert_array_equal(a, b)
    assert_close(pooled, reference, bound=tuple(np.abs(a) + 2 for a in reference))
