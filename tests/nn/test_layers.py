"""Layers: wrong-shape errors, default initialisation, agreement with PyTorch, FLOPs."""
from __future__ import annotations

import math

import numpy as np
import pytest

import refnas as rn
from refnas import nn

WRONG_SHAPES = [
    (lambda: nn.Linear(64, 10), (32, 63), r"Linear\(in_features=64, out_features=10, bias=True\): "
                                          r"expected input \(\.\.\., 64\), got \(32, 63\) float32"),
    (lambda: nn.Conv2d(3, 8, 3), (2, 4, 8, 8), r"Conv2d\(3, 8, .*expected input \(N, 3, H, W\), "
                                               r"got \(2, 4, 8, 8\) float32"),
    (lambda: nn.Conv2d(3, 8, 5), (2, 3, 4, 4), r"Conv2d\(3, 8.*large enough.*got \(2, 3, 4, 4\)"),
    (lambda: nn.Conv2d(3, 8, 3), (3, 8, 8), r"Conv2d.*got \(3, 8, 8\) float32"),
    (lambda: nn.MaxPool2d(2), (2, 3, 8), r"MaxPool2d\(kernel_size=\(2, 2\).*got \(2, 3, 8\)"),
    (lambda: nn.AvgPool2d(3), (1, 1, 2, 2), r"AvgPool2d.*got \(1, 1, 2, 2\)"),
    (lambda: nn.AdaptiveAvgPool2d(1), (2, 3), r"AdaptiveAvgPool2d.*expected input \(N, C, H, W\)"),
    (lambda: nn.BatchNorm1d(4), (8, 5), r"BatchNorm1d\(4.*expected input \(N, 4\) or \(N, 4, L\), "
                                        r"got \(8, 5\) float32"),
    (lambda: nn.BatchNorm2d(4), (8, 4), r"BatchNorm2d\(4.*expected input \(N, 4, H, W\)"),
    (lambda: nn.BatchNorm1d(4), (1, 4), r"BatchNorm1d.*more than one value per channel"),
    (lambda: nn.Flatten(), (5,), r"Flatten.*got \(5,\)"),
]


@pytest.mark.parametrize("make, shape, message", WRONG_SHAPES)
def test_wrong_input_shape_names_layer_expected_and_given(make, shape, message):
    with pytest.raises(ValueError, match=message):
        make()(rn.zeros(*shape))


@pytest.mark.parametrize("bad", [
    lambda: nn.Linear(0, 3), lambda: nn.Conv2d(3, 4, 0), lambda: nn.Conv2d(3, 4, 3, groups=2),
    lambda: nn.MaxPool2d(2, padding=2), lambda: nn.Dropout(1.0), lambda: nn.BatchNorm2d(3, eps=0),
])
def test_bad_hyperparameters_are_rejected(bad):
    with pytest.raises(ValueError):
        bad()


def test_default_init_bounds_follow_pytorch():
    layer = nn.Conv2d(16, 32, 3, rng=0)
    bound = 1.0 / math.sqrt(16 * 9)  # kaiming_uniform(a=sqrt(5)) and the bias rule coincide
    for values in (layer.weight.data, layer.bias.data):
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.9 * bound
    assert layer.weight.data.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_layers_are_deterministic_for_a_seed():
    a, b, c = nn.Linear(5, 7, rng=3), nn.Linear(5, 7, rng=3), nn.Linear(5, 7, rng=4)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert not np.array_equal(a.weight.data, c.weight.data)


def test_dropout_uses_its_generator_and_is_identity_in_eval():
    x = rn.ones(1000)
    first, second = nn.Dropout(0.5, rng=1)(x).data, nn.Dropout(0.5, rng=1)(x).data
    np.testing.assert_array_equal(first, second)
    assert set(np.unique(first)) <= {0.0, 2.0}
    assert 0.4 < (first == 0).mean() < 0.6
    layer = nn.Dropout(0.5, rng=1).eval()
    np.testing.assert_array_equal(layer(x).data, x.data)


def test_flatten_and_activations():
    x = rn.randn(2, 3, 4, 5, seed=0)
    assert nn.Flatten()(x).shape == (2, 60)
    assert nn.Flatten(1, 2)(x).shape == (2, 12, 5)
    np.testing.assert_allclose(nn.ReLU()(x).data, np.maximum(x.data, 0))
    leaky = np.where(x.data > 0, x.data, 0.2 * x.data)
    np.testing.assert_allclose(nn.LeakyReLU(0.2)(x).data, leaky, rtol=1e-6)
    np.testing.assert_allclose(nn.Tanh()(x).data, np.tanh(x.data), rtol=1e-6)
    np.testing.assert_allclose(nn.Sigmoid()(x).data, 1 / (1 + np.exp(-x.data)), rtol=1e-5)
    assert nn.GELU()(x).shape == x.shape and nn.Identity()(x) is x


def test_batchnorm_running_stats_are_buffers_that_move_in_training_only():
    bn = nn.BatchNorm2d(3)
    x = rn.randn(4, 3, 5, 5, seed=0) * 2 + 1
    bn(x)
    moved = bn.running_mean.copy()
    assert np.all(moved != 0)
    bn.eval()
    bn(x)
    np.testing.assert_array_equal(bn.running_mean, moved)
    assert "running_var" in bn.state_dict()


def test_layers_match_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, rng=1)
    bn = nn.BatchNorm2d(6)
    linear = nn.Linear(6, 5, rng=2)
    t_conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2).double()
    t_bn = torch.nn.BatchNorm2d(6).double()
    t_linear = torch.nn.Linear(6, 5).double()
    for mine, theirs in ((conv, t_conv), (linear, t_linear)):
        mine.to(np.float64)
        theirs.weight.data = torch.from_numpy(mine.weight.data.copy())
        theirs.bias.data = torch.from_numpy(mine.bias.data.copy())
    bn.to(np.float64)
    x = rng.standard_normal((3, 4, 9, 9))

    def ours(x, training):
        for m in (conv, bn, linear):
            m.train(training)
        h = nn.MaxPool2d(2)(nn.ReLU()(bn(conv(rn.tensor(x)))))
        h = nn.AdaptiveAvgPool2d(1)(nn.AvgPool2d(2, stride=1, padding=1)(h))
        return linear(nn.Flatten()(h)).data

    def theirs(x, training):
        t_bn.train(training)
        h = torch.nn.functional.max_pool2d(torch.relu(t_bn(t_conv(torch.from_numpy(x)))), 2)
        h = torch.nn.functional.avg_pool2d(h, 2, stride=1, padding=1)
        h = torch.nn.functional.adaptive_avg_pool2d(h, 1)
        return t_linear(torch.flatten(h, 1)).detach().numpy()

    for training in (True, True, False):
        np.testing.assert_allclose(ours(x, training), theirs(x, training), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.running_var, t_bn.running_var.numpy(), rtol=1e-12)


def test_linear_and_conv_flops_from_shapes():
    x = rn.zeros(1, 3, 8, 8)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    y = conv(x)
    assert conv.flops((x,), y) == 4 * 8 * 8 * (2 * 3 * 9 - 1)
    linear = nn.Linear(10, 6)
    assert linear.flops((rn.zeros(1, 10),), linear(rn.zeros(1, 10))) == 2 * 10 * 6


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_batchnorm_add_relu_fuses_relu_of_batchnorm_plus_shortcut(backend):
    """``bn.add_relu(x, s)`` (a residual block's end, one fused op in training) gives the values,
    gradients and running statistics of ``add_relu(bn(x), s)``."""
    if backend not in rn.backend.available():
        pytest.skip(f"{backend} backend not available")
    rng = np.random.default_rng(0)
    x0, s0 = rng.standard_normal((4, 3, 5, 6)) * 2 + 1, rng.standard_normal((4, 3, 5, 6))
    upstream = rng.standard_normal(x0.shape)
    results = []
    with rn.use_backend(backend):
        for fused in (True, False):
            bn = nn.BatchNorm2d(3).to(np.float64)
            bn.weight.data[:] = [1.5, -0.5, 0.8]
            x, s = rn.tensor(x0, requires_grad=True), rn.tensor(s0, requires_grad=True)
            z = bn.add_relu(x, s) if fused else rn.ops.add_relu(bn(x), s)
            assert (z._op.name == "batch_norm_add_relu") == fused
            (z * rn.tensor(upstream)).sum().backward()
            results.append((z.data, x.grad.data, s.grad.data, bn.weight.grad.data,
                            bn.bias.grad.data, bn.running_mean, bn.running_var))
    assert np.any(results[0][0] == 0) and np.any(results[0][0] > 0)   # the ReLU clips some
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_batchnorm_add_relu_leaves_a_hooked_or_evaluating_module_unfused():
    """A hook on the batch norm sees its own output, as with ``add_relu(bn(x), s)``; in eval
    mode the running statistics normalise and nothing is fused."""
    bn = nn.BatchNorm2d(2)
    x, s = rn.randn(3, 2, 4, 4, seed=1), rn.randn(3, 2, 4, 4, seed=2)
    seen = []
    handle = bn.register_forward_hook(lambda module, inputs, output: seen.append(output))
    z = bn.add_relu(x, s)
    handle.remove()
    assert len(seen) == 1 and np.any(seen[0].data < 0)             # BN's output, before the ReLU
    np.testing.assert_allclose(z.data, np.maximum(seen[0].data + s.data, 0), rtol=1e-6)
    bn.eval()
    z = bn.add_relu(x, s)
    assert z._op is None or z._op.name != "batch_norm_add_relu"
    np.testing.assert_allclose(z.data, np.maximum(bn(x).data + s.data, 0), rtol=1e-6)


def test_batch_norm_shortcut_of_another_shape_is_refused_before_the_statistics_move():
    bn = nn.BatchNorm2d(2)
    x, s = rn.randn(3, 2, 4, 4, seed=1), rn.randn(3, 2, 4, 5, seed=2)
    with pytest.raises(rn.OpError, match=r"batch_norm: shortcut must have the input's shape and "
                                         r"dtype, got input \(3, 2, 4, 4\) float32 and shortcut "
                                         r"\(3, 2, 4, 5\) float32"):
        bn.add_relu(x, s)
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
