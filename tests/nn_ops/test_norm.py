"""Batch norm: fused vs composed, PyTorch (train/eval, running statistics), derivatives, errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refnas as rn
from refnas import ops
from tests.nn_ops.support import assert_matches_torch


@st.composite
def batches(draw):
    """(x, weight, bias): x (N, C) or (N, C, H, W) with at least two values per channel."""
    c = draw(st.integers(1, 4))
    if draw(st.booleans()):
        shape = (draw(st.integers(2, 6)), c)
    else:
        shape = (draw(st.integers(1, 3)), c, draw(st.integers(1, 4)), draw(st.integers(2, 4)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0]))
    x = rng.standard_normal(shape) * scale + rng.standard_normal((1, c) + (1,) * (len(shape) - 2))
    return x, rng.standard_normal(c), rng.standard_normal(c)


@given(batches())
def test_fused_equals_composed_in_values_and_gradients(batch):
    x, w, b = batch
    results = []
    for f in (ops.batch_norm, lambda x, w, b: ops.batch_norm_composed(x, w, b)):
        leaves = [rn.Tensor(a, requires_grad=True) for a in (x, w, b)]
        y = f(*leaves)
        gy = np.random.default_rng(0).standard_normal(y.shape)
        y.backward(gy)
        results.append([y.data] + [t.grad.data for t in leaves])
    for fused, composed in zip(*results):
        np.testing.assert_allclose(fused, composed, rtol=1e-9, atol=1e-9)


@given(batches(), st.floats(0.0, 1.0), st.sampled_from([1e-5, 1e-2]))
def test_training_matches_torch_including_running_stats(batch, momentum, eps):
    torch = pytest.importorskip("torch")
    c = batch[0].shape[1]
    running = [np.random.default_rng(1).standard_normal(c), np.random.default_rng(2).uniform(0.5, 2, c)]
    t_running = [torch.tensor(a.copy()) for a in running]
    assert_matches_torch(
        lambda x, w, b: ops.batch_norm(x, w, b, *running, momentum=momentum, eps=eps),
        lambda x, w, b: torch.nn.functional.batch_norm(x, *t_running, w, b, training=True,
                                                       momentum=momentum, eps=eps),
        batch, atol=1e-9)
    for mine, theirs in zip(running, t_running):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-12, atol=1e-12)


@given(batches())
def test_eval_matches_torch_and_leaves_running_stats_alone(batch):
    torch = pytest.importorskip("torch")
    c = batch[0].shape[1]
    rm, rv = np.linspace(-1, 1, c), np.linspace(0.5, 2, c)
    assert_matches_torch(
        lambda x, w, b: ops.batch_norm(x, w, b, rn.Tensor(rm), rv, training=False),
        lambda x, w, b: torch.nn.functional.batch_norm(x, torch.tensor(rm), torch.tensor(rv),
                                                       w, b, training=False),
        batch, atol=1e-10)
    np.testing.assert_array_equal(rm, np.linspace(-1, 1, c))
    np.testing.assert_array_equal(rv, np.linspace(0.5, 2, c))


def test_running_stats_follow_the_published_update():
    """Independently of torch: mean and *unbiased* variance, averaged with the momentum."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 2, 3, 3))
    rm, rv = np.zeros(2), np.ones(2)
    with rn.no_grad():
        ops.batch_norm(rn.Tensor(x), running_mean=rm, running_var=rv, momentum=0.25)
    values = x.transpose(1, 0, 2, 3).reshape(2, -1)
    np.testing.assert_allclose(rm, 0.25 * values.mean(axis=1))
    np.testing.assert_allclose(rv, 0.75 + 0.25 * values.var(axis=1, ddof=1))


@pytest.mark.parametrize("shape", [(5, 3), (2, 2, 3, 2)])
def test_batch_norm_first_and_second_derivatives(shape):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape) + np.arange(np.prod(shape)).reshape(shape) % 3
    w, b = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    rn.gradcheck(ops.batch_norm, [x, w, b])
    rn.gradgradcheck(ops.batch_norm, [x, w, b])
    rn.gradgradcheck(lambda x, w, b: ops.batch_norm(x, w, b, training=False,
                                                    running_mean=np.zeros(shape[1]),
                                                    running_var=np.ones(shape[1])), [x, w, b])


def test_first_order_backward_uses_the_fused_kernel(monkeypatch):
    """A plain backward calls the ``batch_norm_backward`` kernel once; a recorded one (for
    second order) does not need it."""
    from refnas.ops import norm

    calls = []
    original = norm.kernel

    def spy(name, *args):
        calls.append(name)
        return original(name, *args)

    monkeypatch.setattr(norm, "kernel", spy)
    x = rn.Tensor(np.random.default_rng(7).standard_normal((4, 3)), requires_grad=True)
    ops.batch_norm(x).sum().backward()
    assert calls == ["batch_norm_forward", "batch_norm_backward"]
    calls.clear()
    (g,) = rn.grad((ops.batch_norm(x) ** 3).sum(), [x], create_graph=True)
    assert calls == ["batch_norm_forward"]


def test_batch_norm_float32():
    x = rn.Tensor(np.random.default_rng(8).standard_normal((8, 3)).astype(np.float32),
                  requires_grad=True)
    y = ops.batch_norm(x)
    y.sum().backward()
    assert y.dtype == x.grad.dtype == np.float32
    np.testing.assert_allclose(y.data.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(y.data.var(axis=0), 1, atol=1e-3)


@pytest.mark.parametrize("kwargs, words", [
    ({"x": np.zeros((1, 3))}, ["more than one value per channel", "(1, 3)"]),
    ({"x": np.zeros((2, 3, 4))}, ["(N, C) or (N, C, H, W)", "(2, 3, 4)"]),
    ({"weight": rn.Tensor(np.ones(2))}, ["weight", "(3,)", "(2,)"]),
    ({"bias": rn.Tensor(np.ones(3, dtype=np.float32))}, ["bias", "float32"]),
    ({"running_mean": np.zeros(4)}, ["running_mean", "(4,)"]),
    ({"momentum": 1.5}, ["momentum"]),
    ({"eps": 0.0}, ["eps"]),
    ({"training": False}, ["running_mean and running_var"]),
])
def test_batch_norm_errors_change_no_state(kwargs, words):
    args = {"x": np.random.default_rng(9).standard_normal((4, 3)), "running_var": np.ones(3),
            **kwargs}
    running_var = args["running_var"]
    with pytest.raises(rn.OpError) as info:
        ops.batch_norm(rn.Tensor(args.pop("x")), **args)
    for word in ["batch_norm"] + words:
        assert word in str(info.value)
    np.testing.assert_array_equal(running_var, np.ones(3))


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("record", [True, False])
def test_running_stats_equal_with_and_without_a_recorded_graph(dtype, rtol, record):
    """With a recorded graph the running variance is read back from the primitive's saved
    1/sqrt(var + eps); without one it is recomputed from x. Both give the published update."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((6, 3, 5, 4)) * [[[[0.01]], [[1.0]], [[300.0]]]] + 2.0).astype(dtype)
    rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
    weight = rn.tensor(np.ones(3, dtype), requires_grad=record)
    with rn.enable_grad() if record else rn.no_grad():
        y = ops.batch_norm(rn.Tensor(x), weight=weight, running_mean=rm, running_var=rv,
                           momentum=0.25)
    assert (y._op is not None) == record
    values = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(rm, 0.25 * values.mean(axis=1), rtol=rtol)
    np.testing.assert_allclose(rv, 0.75 + 0.25 * values.var(axis=1, ddof=1), rtol=rtol)


@given(batches(), st.booleans())
def test_fused_relu_equals_relu_after_batch_norm(batch, training):
    """``activation="relu"`` gives relu(batch_norm(x)) in values, running statistics and
    gradients, training (one fused kernel each way) and in evaluation, and to second order."""
    x, w, b = batch
    results = []
    for fused in (True, False):
        leaves = [rn.Tensor(a, requires_grad=True) for a in (x, w, b)]
        running = [np.linspace(-1, 1, x.shape[1]), np.linspace(0.5, 2, x.shape[1])]
        kwargs = dict(running_mean=running[0], running_var=running[1], training=training)
        y = (ops.batch_norm(*leaves, activation="relu", **kwargs) if fused
             else ops.relu(ops.batch_norm(*leaves, **kwargs)))
        gy = np.random.default_rng(0).standard_normal(y.shape)
        grads = rn.grad((y * rn.Tensor(gy)).sum(), leaves, create_graph=True)
        second = rn.grad(sum((g * g).sum() for g in grads), leaves)
        results.append([y.data, *running, *(g.data for g in grads), *(g.data for g in second)])
    for fused, unfused in zip(*results):
        np.testing.assert_allclose(fused, unfused, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_fused_relu_plain_backward_uses_the_kernels(backend, monkeypatch):
    """A plain backward of ``activation="relu"`` is the two batch-norm kernels and nothing
    else (no separate relu pass), and equals relu(batch_norm(x)) in float32."""
    if backend not in rn.backend.available():
        pytest.skip(f"{backend} backend not available")
    from refnas.ops import elementwise, norm
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 5, 5)).astype(np.float32)
    w, b = (rng.standard_normal(6).astype(np.float32) for _ in range(2))
    results = []
    for fused in (True, False):
        calls = []
        for module in (norm, elementwise):
            original = module.kernel
            monkeypatch.setattr(module, "kernel", (lambda original: lambda name, *a: (
                calls.append(name), original(name, *a))[1])(original))
        leaves = [rn.Tensor(a, requires_grad=True) for a in (x, w, b)]
        with rn.use_backend(backend):
            y = (ops.batch_norm(*leaves, activation="relu") if fused
                 else ops.relu(ops.batch_norm(*leaves)))
            y.backward(np.ones_like(x))
        monkeypatch.undo()
        if fused:
            assert calls == ["batch_norm_forward", "batch_norm_backward"], calls
        results.append([y.data, *(t.grad.data for t in leaves)])
    for fused, unfused in zip(*results):
        np.testing.assert_allclose(fused, unfused, rtol=1e-4, atol=1e-4)


def test_batch_norm_activation_errors():
    from refnas import nn
    x = rn.Tensor(np.zeros((2, 3)))
    with pytest.raises(rn.OpError, match="activation must be one of .*'gelu'"):
        ops.batch_norm(x, activation="gelu")
    with pytest.raises(ValueError, match="BatchNorm2d: activation must be one of .*'tanh'"):
        nn.BatchNorm2d(3, activation="tanh")
    assert "activation='relu'" in repr(nn.BatchNorm2d(3, activation="relu"))
