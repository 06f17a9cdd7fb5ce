"""The backward engine: graph shapes, accumulation, graph freeing, grad mode, hooks, anomaly mode
and higher-order derivatives, each against a hand-derived or independently computed answer."""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

import refnas as rn
from refnas import ops
from refnas.tensor import AnomalyError, GraphFreedError, backward


def leaf(values, dtype=np.float64):
    return rn.tensor(np.asarray(values, dtype=dtype), requires_grad=True)


# --------------------------------------------------------------------------------------------
# Graph shapes and accumulation
# --------------------------------------------------------------------------------------------
def test_diamond_sums_both_paths():
    x = leaf([1.0, -2.0, 3.0])
    a = x * 3.0
    b = ops.exp(x)
    (a * b).sum().backward()        # d/dx (3x e^x) = 3 e^x (1 + x)
    np.testing.assert_allclose(x.grad.data, 3 * np.exp(x.data) * (1 + x.data))


def test_reused_leaf_accumulates_every_use():
    x = leaf([0.5, 2.0])
    y = x * x * x + x               # x used four times: 3x^2 + 1
    y.sum().backward()
    np.testing.assert_allclose(x.grad.data, 3 * x.data ** 2 + 1)


def test_gradients_accumulate_across_backward_calls():
    x = leaf([1.0, 2.0])
    (x * 2.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.data, 2.0 + 2 * x.data)


def test_only_leaves_keep_grad_unless_retain_grad():
    x = leaf([1.0, 2.0])
    hidden = x * 3.0
    kept = ops.tanh(hidden).retain_grad()
    out = (kept * kept).sum()
    out.backward()
    assert hidden.grad is None
    np.testing.assert_allclose(kept.grad.data, 2 * np.tanh(3 * x.data))
    assert kept.grad.requires_grad is False


def test_constant_inputs_get_no_grad():
    x = leaf([1.0, 2.0])
    c = rn.tensor(np.array([3.0, 4.0]))
    (x * c).sum().backward()
    assert c.grad is None and not c.requires_grad
    np.testing.assert_allclose(x.grad.data, c.data)


def test_broadcast_gradient_is_summed_to_each_input_shape():
    x = leaf(np.arange(6.0).reshape(2, 3))
    row = leaf([[1.0, 2.0, 3.0]])      # (1, 3) stretched over axis 0
    bias = leaf(0.5)                   # 0-d stretched over everything
    ((x * row) + bias).sum().backward()
    np.testing.assert_allclose(row.grad.data, x.data.sum(axis=0, keepdims=True))
    assert bias.grad.shape == () and bias.grad.item() == pytest.approx(6.0)
    np.testing.assert_allclose(x.grad.data, np.broadcast_to(row.data, (2, 3)))


def test_backward_with_explicit_grad_on_non_scalar():
    x = leaf([1.0, 2.0, 3.0])
    weights = np.array([0.1, -1.0, 2.0])
    (x * x).backward(weights)
    np.testing.assert_allclose(x.grad.data, 2 * x.data * weights)


def test_functional_grad_leaves_dot_grad_alone_and_reports_unused():
    x, unused = leaf([1.0, 2.0]), leaf([5.0])
    y = (x ** 3).sum()
    gx, gu = rn.grad(y, [x, unused], allow_unused=True)
    np.testing.assert_allclose(gx.data, 3 * x.data ** 2)
    assert gu is None and x.grad is None
    with pytest.raises(ValueError, match=r"input 1 \(shape \(1,\), float64\) is not used"):
        rn.grad((x * 2.0).sum(), [x, unused])


def test_grad_of_intermediate_tensor():
    x = leaf([1.0, 2.0])
    h = x * 3.0
    (gh,) = rn.grad((h * h).sum(), h)
    np.testing.assert_allclose(gh.data, 2 * h.data)


def test_deep_chain_of_100000_ops_has_no_recursion_limit():
    x = leaf([0.5])
    y = x
    for _ in range(100_000):
        y = y + 1e-6
    y = y * 2.0
    y.sum().backward()
    assert x.grad.item() == pytest.approx(2.0)
    del y  # freeing a 100,000-deep chain must not overflow the C stack either


def test_multiple_roots_with_backward_function():
    x = leaf([1.0, 2.0])
    a, b = (x * 2.0).sum(), (x * x).sum()
    backward([a, b])
    np.testing.assert_allclose(x.grad.data, 2.0 + 2 * x.data)


# --------------------------------------------------------------------------------------------
# Freed graphs and retain_graph
# --------------------------------------------------------------------------------------------
def test_second_backward_through_freed_graph_raises_and_changes_nothing():
    x = leaf([1.0, 2.0])
    y = (ops.exp(x) * 2.0).sum()
    y.backward()
    before = x.grad.data.copy()
    with pytest.raises(GraphFreedError, match=r"second time.*(mul|sum|exp).*retain_graph=True"):
        y.backward()
    np.testing.assert_array_equal(x.grad.data, before)


def test_freed_shared_subgraph_is_detected_from_another_root():
    x = leaf([1.0, 2.0])
    shared = ops.exp(x)
    first, second = shared.sum(), (shared * 3.0).sum()
    first.backward()
    before = x.grad.data.copy()
    with pytest.raises(GraphFreedError, match="exp"):
        second.backward()
    np.testing.assert_array_equal(x.grad.data, before)


def test_retain_graph_allows_a_second_backward():
    x = leaf([1.0, 2.0])
    y = (ops.exp(x) * 2.0).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.data, 2 * 2 * np.exp(x.data))


# --------------------------------------------------------------------------------------------
# Grad mode
# --------------------------------------------------------------------------------------------
def test_no_grad_records_nothing_and_enable_grad_reenables():
    x = leaf([1.0])
    with rn.no_grad():
        y = x * 2.0
        with rn.enable_grad():
            z = x * 2.0
    assert not y.requires_grad and y.is_leaf
    assert z.requires_grad and z.op_name == "mul"
    assert rn.is_grad_enabled()


def test_no_grad_is_thread_local():
    x = leaf([1.0])
    entered, release = threading.Event(), threading.Event()
    seen = {}

    def worker():
        with rn.no_grad():
            seen["worker"] = (x * 2.0).requires_grad
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=worker)
    thread.start()
    entered.wait(5)
    seen["main"] = (x * 2.0).requires_grad   # while the worker sits inside no_grad
    release.set()
    thread.join()
    assert seen == {"worker": False, "main": True}


def test_set_grad_enabled_restores_on_error():
    with pytest.raises(KeyError):
        with rn.set_grad_enabled(False):
            raise KeyError
    assert rn.is_grad_enabled()


# --------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------
def test_hook_reads_activation_gradient():
    x = leaf([1.0, -2.0])
    h = x * 3.0
    seen = []
    h.register_hook(lambda g: seen.append(g.data.copy()))
    (h * h).sum().backward()
    np.testing.assert_allclose(seen[0], 2 * h.data)
    assert h.grad is None  # a hook does not make the tensor keep .grad


def test_hook_sees_the_total_gradient_once():
    x = leaf([1.0, 2.0])
    calls = []
    x.register_hook(lambda g: calls.append(g.data.copy()))
    (x * 2.0 + x * x).sum().backward()
    assert len(calls) == 1
    np.testing.assert_allclose(calls[0], 2.0 + 2 * x.data)


def test_hook_can_replace_gradient_and_be_removed():
    x = leaf([1.0, 2.0])
    remove = x.register_hook(lambda g: g * 0.0)
    (x * 5.0).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [0.0, 0.0])
    remove()
    x.grad = None
    (x * 5.0).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [5.0, 5.0])


def test_hook_on_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match=r"register_hook.*\(2,\) \(float32\)"):
        rn.zeros(2).register_hook(print)


# --------------------------------------------------------------------------------------------
# Anomaly mode
# --------------------------------------------------------------------------------------------
def test_anomaly_names_forward_op_and_creation_site():
    x = leaf([1.0, -1.0])
    with rn.detect_anomaly():
        with pytest.raises(AnomalyError) as info:
            ops.log(x)  # ANOMALY-FORWARD-SITE
    message = str(info.value)
    assert message.startswith("log: forward produced NaN/Inf")
    assert "(2,) float64" in message
    assert "test_engine.py" in message and "ANOMALY-FORWARD-SITE" in message


def test_anomaly_names_op_whose_vjp_produced_inf_and_leaves_grad_unchanged():
    x = leaf([0.0, 4.0])
    x.grad = rn.tensor(np.array([7.0, 7.0]))
    with rn.detect_anomaly():
        root = ops.sqrt(x)  # ANOMALY-VJP-SITE: finite forward, d/dx sqrt(0) = inf
        with pytest.raises(AnomalyError) as info:
            root.sum().backward()
    message = str(info.value)
    assert message.startswith("sqrt: VJP")
    assert "ANOMALY-VJP-SITE" in message
    np.testing.assert_array_equal(x.grad.data, [7.0, 7.0])


def test_anomaly_mode_is_off_by_default_and_costs_no_site():
    x = leaf([1.0])
    assert not rn.is_anomaly_enabled()
    assert (x * 2.0)._site is None
    with np.errstate(invalid="ignore"):
        assert np.isnan(ops.log(-x).item())  # no error outside anomaly mode


# --------------------------------------------------------------------------------------------
# Higher order
# --------------------------------------------------------------------------------------------
def _hessian(f, x):
    """Row by row: the gradient of each component of the (recorded) gradient."""
    (g,) = rn.grad(f(x), x, create_graph=True)
    rows = [rn.grad(g[i], x, retain_graph=True)[0].data for i in range(x.size)]
    return np.stack(rows)


def test_hessian_of_cubic_plus_cross_term():
    x = leaf([0.7, -1.3, 2.0])
    hessian = _hessian(lambda t: (t ** 3).sum() + t[0] * t[1], x)
    expected = np.diag(6 * x.data)
    expected[0, 1] = expected[1, 0] = 1.0
    np.testing.assert_allclose(hessian, expected, atol=1e-12)


def test_hessian_of_quadratic_form_is_a_plus_a_transpose():
    a = np.random.default_rng(3).standard_normal((4, 4))
    x = leaf(np.random.default_rng(4).standard_normal(4))
    hessian = _hessian(lambda t: t @ (rn.tensor(a) @ t), x)
    np.testing.assert_allclose(hessian, a + a.T, atol=1e-12)


def test_backward_create_graph_gives_differentiable_grad():
    x = leaf([1.5])
    (x ** 4).sum().backward(create_graph=True)
    first = x.grad                      # 4 x^3, recorded
    assert first.requires_grad
    (second,) = rn.grad(first.sum(), x)
    assert second.item() == pytest.approx(12 * 1.5 ** 2)


def test_third_derivative_of_tanh():
    x = leaf([0.3])
    (g1,) = rn.grad(ops.tanh(x).sum(), x, create_graph=True)
    (g2,) = rn.grad(g1.sum(), x, create_graph=True)
    (g3,) = rn.grad(g2.sum(), x)
    t = np.tanh(0.3)
    assert g3.item() == pytest.approx(-2 * (1 - t * t) * (1 - 3 * t * t))


def test_explicit_grad_of_another_dtype_is_cast_to_the_output_dtype():
    x = rn.tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    (x * 3.0).backward(np.array([1.0, 0.5]))          # float64 cotangent
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad.data, [3.0, 1.5])


# --------------------------------------------------------------------------------------------
# Gradient parts: a tensor used twice, whose op adds its two gradients itself
# --------------------------------------------------------------------------------------------
def _block_end(rng):
    """Leaves of a residual block's end, z = relu(BN(x) + s): x, gamma, beta, s (float64)."""
    x = leaf(rng.standard_normal((4, 3, 5, 6)) * 2 + 1)
    weight, bias = leaf([1.5, -0.5, 0.8]), leaf([0.1, 0.0, -0.2])
    return x, weight, bias, leaf(rng.standard_normal((4, 3, 5, 6)))


def _fused(x, weight, bias, s):
    return ops.batch_norm(x, weight, bias, activation="relu", shortcut=s)


def _composed(x, weight, bias, s):
    return ops.relu(ops.batch_norm_composed(x, weight, bias) + s)


def _counting_parts(monkeypatch):
    """Count the GradientParts the engine makes (the VJP still recognises them)."""
    engine = sys.modules["refnas.tensor"]
    made = []

    class Counted(engine.GradientParts):
        __slots__ = ()

        def __init__(self, first, second):
            made.append(self)
            super().__init__(first, second)

    monkeypatch.setattr(engine, "GradientParts", Counted)
    return made


@pytest.mark.parametrize("uses", [2, 3])
def test_a_tensor_used_twice_hands_its_op_both_gradients_unadded(uses, monkeypatch):
    """z used twice reaches batch_norm_add_relu's VJP as GradientParts, which its kernel adds;
    used three times, the parts are added up first. Either way the gradients of every input are
    those of the composed ops (relu, add, batch_norm_composed)."""
    made = _counting_parts(monkeypatch)
    rng = np.random.default_rng(0)
    upstream = [rng.standard_normal((4, 3, 5, 6)) for _ in range(uses)]
    grads = []
    for block in (_fused, _composed):
        leaves = _block_end(np.random.default_rng(1))
        z = block(*leaves)
        loss = sum(((z * (0.5 + k)) ** 2 * rn.tensor(u)).sum() if k % 2 else
                   (z * rn.tensor(u)).sum() for k, u in enumerate(upstream))
        loss.backward()
        grads.append([t.grad.data for t in leaves])
    assert len(made) == 1       # the fused z's first two gradients (a third is added to them)
    for got, want in zip(*grads):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_whoever_looks_at_a_gradient_in_parts_sees_their_sum(monkeypatch):
    """A hook, retain_grad and refnas.grad's targets get the summed Tensor: the parts are made,
    then added up before anything looks at them."""
    made = _counting_parts(monkeypatch)
    rng = np.random.default_rng(2)
    u1, u2 = rng.standard_normal((4, 3, 5, 6)), rng.standard_normal((4, 3, 5, 6))

    def loss_of(z):
        return (z * rn.tensor(u1)).sum() + (z * z * rn.tensor(u2)).sum()

    seen = []
    z = _fused(*_block_end(rng))
    z.register_hook(lambda g: seen.append(g))
    z.retain_grad()
    loss_of(z).backward()
    want = u1 + 2 * z.data * u2                         # d loss / dz, by hand
    assert len(seen) == 1 and isinstance(seen[0], rn.Tensor)
    np.testing.assert_allclose(seen[0].data, want, rtol=1e-12)
    np.testing.assert_allclose(z.grad.data, want, rtol=1e-12)
    z = _fused(*_block_end(rng))
    (gz,) = rn.grad(loss_of(z), [z])
    np.testing.assert_allclose(gz.data, u1 + 2 * z.data * u2, rtol=1e-12)
    assert len(made) == 2                      # one per backward pass, each added up
