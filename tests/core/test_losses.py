"""Composites (softmax family and losses) against SciPy/NumPy closed forms and PyTorch, the fused
softmax-cross-entropy against its composed form, and stability at logits of magnitude 1e4."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.special as sp
from hypothesis import given, strategies as st

import refnas as rn
from refnas import ops
from refnas.backend import kernel


def _logits(n=4, c=5, seed=0, scale=1.0):
    return np.random.default_rng(seed).standard_normal((n, c)) * scale


# --------------------------------------------------------------------------------------------
# Softmax family against SciPy
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [-1, 0, 1, (0, 2)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_matches_scipy_and_its_gradient_is_softmax(axis, keepdims):
    data = np.random.default_rng(1).standard_normal((2, 3, 4)) * 3
    x = rn.tensor(data, requires_grad=True)
    out = ops.logsumexp(x, axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(out.data, sp.logsumexp(data, axis=axis, keepdims=keepdims),
                               rtol=1e-12)
    out.sum().backward()
    expected = np.exp(data - sp.logsumexp(data, axis=axis, keepdims=True))
    np.testing.assert_allclose(x.grad.data, expected, rtol=1e-12)


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_and_log_softmax_match_scipy(axis):
    data = _logits(3, 4, seed=2, scale=5)
    x = rn.tensor(data)
    np.testing.assert_allclose(ops.softmax(x, axis=axis).data, sp.softmax(data, axis=axis),
                               rtol=1e-12)
    np.testing.assert_allclose(ops.log_softmax(x, axis=axis).data,
                               sp.log_softmax(data, axis=axis), rtol=1e-12)


@pytest.mark.parametrize("composite", ["logsumexp", "softmax", "log_softmax"])
def test_softmax_family_gradients_first_and_second_order(composite):
    f = getattr(ops, composite)
    data = _logits(2, 3, seed=3)
    rn.gradcheck(lambda x: f(x, axis=-1), [data], name=composite)
    rn.gradgradcheck(lambda x: f(x, axis=-1), [data], name=composite)


# --------------------------------------------------------------------------------------------
# Cross-entropy: fused == composed, and == PyTorch
# --------------------------------------------------------------------------------------------
@st.composite
def _ce_problem(draw):
    n, c = draw(st.integers(1, 5)), draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c)) * draw(st.sampled_from([1.0, 10.0]))
    target = rng.integers(0, c, n)
    weight = rng.uniform(0.2, 3.0, c) if draw(st.booleans()) else None
    smoothing = draw(st.sampled_from([0.0, 0.1, 0.5]))
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    return logits, target, weight, smoothing, reduction


@given(_ce_problem())
def test_fused_cross_entropy_equals_composed_value_and_gradients(problem):
    logits, target, weight, smoothing, reduction = problem
    results = []
    for f in (ops.cross_entropy, ops.cross_entropy_composed):
        x = rn.tensor(logits, requires_grad=True)
        loss = f(x, target, weight=weight, label_smoothing=smoothing, reduction=reduction)
        (g,) = rn.grad(loss.sum(), x, create_graph=True)
        (gg,) = rn.grad((g * g).sum(), x)   # a second-order quantity through both paths
        results.append((loss.data, g.data, gg.data))
    for fused, composed in zip(*results):
        np.testing.assert_allclose(fused, composed, rtol=1e-9, atol=1e-12)


def test_fused_cross_entropy_gradchecks_with_weights_and_smoothing():
    logits, target = _logits(3, 4, seed=4), np.array([0, 3, 1])
    weight = np.array([0.5, 1.0, 2.0, 1.5])

    def loss(x):
        return ops.cross_entropy(x, target, weight=weight, label_smoothing=0.2)

    rn.gradcheck(loss, [logits], name="cross_entropy")
    rn.gradgradcheck(loss, [logits], name="cross_entropy")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_matches_torch(reduction, smoothing, weighted):
    torch = pytest.importorskip("torch")
    logits, target = _logits(6, 4, seed=5, scale=3), np.array([0, 3, 1, 1, 2, 0])
    weight = np.array([0.5, 1.0, 2.0, 1.5]) if weighted else None
    x = rn.tensor(logits, requires_grad=True)
    loss = ops.cross_entropy(x, target, weight=weight, label_smoothing=smoothing,
                             reduction=reduction)
    loss.sum().backward()
    tx = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(
        tx, torch.tensor(target), weight=None if weight is None else torch.tensor(weight),
        label_smoothing=smoothing, reduction=reduction)
    expected.sum().backward()
    np.testing.assert_allclose(loss.data, expected.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(x.grad.data, tx.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_cross_entropy_float32_matches_float64_closely():
    logits, target = _logits(8, 10, seed=6, scale=4), np.arange(8) % 10
    loss64 = ops.cross_entropy(rn.tensor(logits), target)
    loss32 = ops.cross_entropy(rn.tensor(logits.astype(np.float32)), target)
    assert loss32.dtype == np.float32
    assert loss32.item() == pytest.approx(loss64.item(), rel=1e-5)


def test_fused_kernel_reference_matches_closed_form():
    logits, target = _logits(5, 3, seed=7), np.array([2, 0, 1, 1, 0])
    rows = kernel("softmax_cross_entropy", "numpy")(logits, target, None, 0.0)
    np.testing.assert_allclose(rows, -sp.log_softmax(logits, axis=1)[np.arange(5), target])
    g = np.random.default_rng(8).standard_normal(5)
    grad_rows = kernel("softmax_cross_entropy_backward", "numpy")(logits, target, None, 0.0, g)
    one_hot = np.eye(3)[target]
    np.testing.assert_allclose(grad_rows, g[:, None] * (sp.softmax(logits, axis=1) - one_hot))


# --------------------------------------------------------------------------------------------
# Other losses
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss_matches_closed_form(weighted):
    log_probs = sp.log_softmax(_logits(4, 3, seed=9), axis=1)
    target = np.array([2, 0, 0, 1])
    weight = np.array([0.2, 1.0, 3.0]) if weighted else np.ones(3)
    loss = ops.nll_loss(rn.tensor(log_probs), target, weight=weight if weighted else None)
    picked = log_probs[np.arange(4), target]
    expected = -(weight[target] * picked).sum() / weight[target].sum()
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    rn.gradcheck(lambda lp: ops.nll_loss(lp, target, weight=weight), [log_probs])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_matches_numpy(reduction):
    rng = np.random.default_rng(10)
    prediction, target = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    loss = ops.mse_loss(rn.tensor(prediction), target, reduction=reduction)
    squared = (prediction - target) ** 2
    expected = {"mean": squared.mean(), "sum": squared.sum(), "none": squared}[reduction]
    np.testing.assert_allclose(loss.data, expected, rtol=1e-12)
    rn.gradcheck(lambda p: ops.mse_loss(p, target, reduction=reduction), [prediction])
    rn.gradgradcheck(lambda p: ops.mse_loss(p, target, reduction=reduction), [prediction])


@pytest.mark.parametrize("pos_weight", [None, 2.5])
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_cross_entropy_with_logits_matches_closed_form(pos_weight, weighted):
    rng = np.random.default_rng(11)
    z, y = rng.standard_normal(6) * 3, rng.uniform(0, 1, 6)
    weight = rng.uniform(0.5, 2, 6) if weighted else None
    loss = ops.binary_cross_entropy_with_logits(rn.tensor(z), y, weight=weight,
                                                pos_weight=pos_weight, reduction="none")
    p = 1.0 if pos_weight is None else pos_weight
    expected = -(p * y * sp.log_expit(z) + (1 - y) * sp.log_expit(-z))
    if weighted:
        expected = expected * weight
    np.testing.assert_allclose(loss.data, expected, rtol=1e-10)
    rn.gradgradcheck(lambda t: ops.binary_cross_entropy_with_logits(t, y, weight=weight,
                                                                    pos_weight=pos_weight), [z])


def test_binary_cross_entropy_with_logits_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    z, y = rng.standard_normal((3, 4)) * 4, (rng.uniform(size=(3, 4)) > 0.5).astype(float)
    loss = ops.binary_cross_entropy_with_logits(rn.tensor(z), y, pos_weight=np.full(4, 1.7))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(z), torch.tensor(y), pos_weight=torch.full((4,), 1.7, dtype=torch.float64))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


# --------------------------------------------------------------------------------------------
# Stability at logits of magnitude 1e4
# --------------------------------------------------------------------------------------------
HUGE = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3], [1e4, 1e4, -1e4]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_name", ["cross_entropy", "cross_entropy_composed"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_is_finite_and_exact_at_huge_logits(dtype, loss_name, smoothing):
    x = rn.tensor(HUGE.astype(dtype), requires_grad=True)
    target = np.array([0, 0, 2])
    loss = getattr(ops, loss_name)(x, target, label_smoothing=smoothing, reduction="none")
    loss.sum().backward()
    assert np.isfinite(loss.data).all() and np.isfinite(x.grad.data).all()
    # With gaps >= 5e3, logsumexp = max + log(number of maxima) exactly in floating point.
    top = HUGE.max(axis=1, keepdims=True)
    log_p = HUGE - top - np.log((HUGE == top).sum(axis=1, keepdims=True))
    q = np.full((3, 3), smoothing / 3)
    q[np.arange(3), target] += 1 - smoothing
    np.testing.assert_allclose(loss.data, -(q * log_p).sum(axis=1), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_family_and_bce_are_finite_at_huge_logits(dtype):
    x = rn.tensor(HUGE.astype(dtype), requires_grad=True)
    outputs = [ops.logsumexp(x, axis=1), ops.softmax(x, axis=1), ops.log_softmax(x, axis=1),
               ops.binary_cross_entropy_with_logits(x, np.ones(HUGE.shape), reduction="none")]
    for out in outputs:
        assert np.isfinite(out.data).all()
        (g,) = rn.grad(out.sum(), x)
        assert np.isfinite(g.data).all()
    np.testing.assert_allclose(outputs[0].data, sp.logsumexp(HUGE, axis=1), rtol=1e-6)
    np.testing.assert_allclose(outputs[3].data, -sp.log_expit(HUGE), rtol=1e-6)
