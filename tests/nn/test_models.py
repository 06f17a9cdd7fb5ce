"""Model builders: shapes, configs and rebuilding, parameter and FLOP counts, ResNet-18 training."""
from __future__ import annotations

import time

import numpy as np
import pytest

import refnas as rn
from refnas import nn, ops, optim
from tests.nn.helpers import assert_same_state


def test_mlp_structure_and_config_rebuild():
    model = nn.MLP([64, 32, 16, 10], activation="tanh", dropout=0.1, batch_norm=True, seed=3)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "Tanh", "Dropout", "Linear",
                     "BatchNorm1d", "Tanh", "Dropout", "Linear"]
    assert_same_state(nn.build_model(model.config).state_dict(), model.state_dict())
    assert model(rn.zeros(5, 1, 8, 8)).shape == (5, 10)


def test_mlp_parameter_and_flop_counts_by_hand():
    model = nn.MLP([64, 128, 10], seed=0)
    assert model.num_parameters() == 64 * 128 + 128 + 128 * 10 + 10
    # two matmuls at 2·in·out (multiply-adds, bias adds included) plus one relu per unit
    assert nn.count_flops(model, (64,)) == 2 * 64 * 128 + 128 + 2 * 128 * 10


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_mlp_runs_each_hidden_linear_and_its_relu_as_one_op(backend):
    """A hidden Linear and its ReLU are one ``linear`` node with ``relu=True``; the values and
    every gradient are those of the layers run one by one (Sequential's forward)."""
    if backend not in rn.backend.available():
        pytest.skip(f"{backend} backend not available")
    model = nn.MLP([6, 5, 4, 3], seed=0).to(np.float64)
    x = rn.randn(7, 6, seed=1).astype(np.float64)
    results = []
    with rn.use_backend(backend):
        for forward in (model.forward, lambda t: nn.Sequential.forward(model, t)):
            model.zero_grad()
            out = forward(x)
            hidden = out._inputs[0]                        # the last Linear's input
            assert (hidden._op.name, hidden._kwargs) == (
                ("linear", {"relu": True}) if not results else ("relu", {}))
            (out * out).sum().backward()
            results.append([out.data] + [p.grad.data for p in model.parameters()])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_mlp_keeps_a_hooked_relu_a_module_of_its_own():
    model = nn.MLP([6, 5, 3], seed=0)
    seen = []
    model[2].register_forward_hook(lambda module, inputs, output: seen.append(output))
    x = rn.randn(4, 6, seed=2)
    out = model(x)
    assert len(seen) == 1 and seen[0].data.min() >= 0 and seen[0]._op.name == "relu"
    np.testing.assert_allclose(out.data, nn.Sequential.forward(model, x).data, rtol=1e-6)
    with pytest.raises(rn.OpError, match="linear: activation must be None or 'relu', got 'tanh'"):
        ops.linear(x, model[1].weight, model[1].bias, activation="tanh")


def test_seeds_change_the_weights():
    a, b = nn.MLP([4, 8, 2], seed=0), nn.MLP([4, 8, 2], seed=1)
    assert not np.array_equal(a[1].weight.data, b[1].weight.data)


@pytest.mark.parametrize("input_size", [(8, 8), (28, 28)])
def test_small_cnn_shapes(input_size):
    model = nn.SmallCNN(in_channels=1, num_classes=7, width=4, input_size=input_size, seed=0)
    x = rn.randn(2, 1, *input_size, seed=0)
    assert model(x).shape == (2, 7)
    assert model.input_shape == (1, *input_size)
    assert nn.build_model(model.config).num_parameters() == model.num_parameters()


def test_small_cnn_flops_by_hand():
    model = nn.SmallCNN(width=4, input_size=(8, 8), seed=0)
    convs = [(1, 4, 8), (4, 4, 8), (4, 8, 4), (8, 8, 4)]          # (in, out, side)
    expected = sum(out * side * side * (2 * cin * 9 - 1) for cin, out, side in convs)
    expected += sum(3 * out * side * side for _, out, side in convs)  # BN (2) + ReLU (1)
    expected += 4 * 4 * 4 * 4 + 8 * 2 * 2 * 4                            # 2×2 max-pools
    expected += 8 * 2 * 2 + 2 * 8 * 10                                   # pool, linear
    assert nn.count_flops(model, (1, 8, 8)) == expected
    per_module = nn.count_flops(model, (1, 8, 8), by_module=True)
    assert per_module["features.0"] == 4 * 64 * 17 and sum(per_module.values()) == expected


def test_count_flops_restores_training_mode():
    model = nn.SmallCNN(width=4, seed=0)
    nn.count_flops(model, (1, 8, 8))
    assert all(m.training for m in model.modules())
    assert not model.features[0]._forward_hooks


def test_small_cnn_channels_override_and_validation():
    model = nn.SmallCNN(channels=[3, 5, 6, 2], seed=0)
    assert model.classifier.in_features == 2
    with pytest.raises(ValueError, match="channels needs 4 entries"):
        nn.SmallCNN(channels=[3, 5, 6])
    with pytest.raises(ValueError, match="too small"):
        nn.SmallCNN(input_size=(3, 3))


def test_resnet18_parameter_count_and_layout():
    # the CIFAR ResNet-18 of the literature: 11,173,962 parameters for 10 classes
    model = nn.resnet18(num_classes=10, width=64)
    assert model.num_parameters() == 11_173_962
    names = dict(model.named_modules())
    assert isinstance(names["layer2.0.shortcut"], nn.Sequential)
    assert isinstance(names["layer1.0.shortcut"], nn.Identity)
    assert names["layer4.1.conv2"].weight.shape == (512, 512, 3, 3)
    assert model.config == {"name": "resnet18", "num_classes": 10, "in_channels": 3,
                            "width": 64, "seed": 0}


def test_resnet18_width16_loss_falls_on_a_tiny_batch():
    with rn.use_backend("numpy"):
        model = nn.resnet18(num_classes=4, width=16, seed=0)
        x = rn.randn(4, 3, 32, 32, seed=0)
        y = np.array([0, 1, 2, 3])
        optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses = []
        start = time.perf_counter()
        for _ in range(3):
            optimizer.zero_grad()
            loss = ops.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if time.perf_counter() - start > 60:  # guard: a slow machine stops early
                break
    assert len(losses) >= 2 and losses[-1] < losses[0]


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        nn.build_model({"name": "vgg"})
    with pytest.raises(ValueError, match="does not fit mlp"):
        nn.build_model({"name": "mlp", "sizes": [4, 2], "depth": 3})
    with pytest.raises(ValueError, match="name"):
        nn.build_model({"sizes": [4, 2]})
