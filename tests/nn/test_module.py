"""Module API: registration, traversal order, state dicts, hooks, modes, repr, devices."""
from __future__ import annotations

import numpy as np
import pytest

import refnas as rn
from refnas import nn
from tests.nn.helpers import assert_same_state


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4, rng=0)
        self.bn = nn.BatchNorm1d(4)
        self.scale = nn.Parameter(np.ones(4, dtype=np.float32))
        self.register_buffer("count", np.zeros(1, dtype=np.float32))

    def forward(self, x):
        return self.bn(self.fc(x)) * self.scale


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(4, 2, rng=1))

    def forward(self, x):
        return self.head(self.block(x))


def test_parameters_are_registered_in_assignment_order():
    names = [name for name, _ in Net().named_parameters()]
    assert names == ["block.scale", "block.fc.weight", "block.fc.bias", "block.bn.weight",
                     "block.bn.bias", "head.1.weight", "head.1.bias"]
    assert len(list(Net().parameters())) == len(names)


def test_children_and_modules():
    net = Net()
    assert [name for name, _ in net.named_children()] == ["block", "head"]
    assert [name for name, _ in net.named_modules()] == [
        "", "block", "block.fc", "block.bn", "head", "head.0", "head.1"]
    assert len(list(net.modules())) == 7
    assert list(net.children())[0] is net.block


def test_shared_parameter_counted_once():
    net = nn.Sequential(nn.Linear(3, 3, rng=0))
    net.add_module("again", net[0])
    assert len(list(net.parameters())) == 2
    assert net.num_parameters() == 12


def test_num_parameters_from_shapes():
    net = Net()
    expected = sum(int(np.prod(p.shape)) for p in net.parameters())
    assert net.num_parameters() == expected == 4 + 12 + 4 + 4 + 4 + 8 + 2


def test_state_dict_holds_parameters_and_buffers_as_copies():
    net = Net()
    state = net.state_dict()
    assert list(state) == ["block.scale", "block.count", "block.fc.weight", "block.fc.bias",
                           "block.bn.weight", "block.bn.bias", "block.bn.running_mean",
                           "block.bn.running_var", "head.1.weight", "head.1.bias"]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    state["head.1.bias"][...] = 42.0
    assert not np.any(net.head[1].bias.data == 42.0)


def test_state_dict_round_trip_gives_identical_outputs():
    source, target = Net(), Net()
    source.block.fc.weight.data[...] += 1.0
    source.block.bn.running_mean[...] = 0.5
    x = rn.randn(5, 3, seed=0)
    target.load_state_dict(source.state_dict())
    source.eval(), target.eval()
    np.testing.assert_array_equal(source(x).data, target(x).data)
    np.testing.assert_array_equal(target.block.bn.running_mean, 0.5)


def test_strict_load_lists_missing_unexpected_and_misshaped_keys_and_changes_nothing():
    net = Net()
    before = net.state_dict()
    state = net.state_dict()
    del state["head.1.bias"]
    state["extra.weight"] = np.zeros(3)
    state["block.fc.weight"] = np.zeros((5, 3))
    state["block.scale"] = np.full(4, 7.0)
    with pytest.raises(nn.StateDictError) as info:
        net.load_state_dict(state)
    message = str(info.value)
    assert "missing keys (1): head.1.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "block.fc.weight: given (5, 3), model (4, 3)" in message
    assert_same_state(net.state_dict(), before)


def test_non_strict_load_returns_the_key_lists():
    net = Net()
    state = {"block.scale": np.full(4, 3.0), "other": np.zeros(2)}
    result = net.load_state_dict(state, strict=False)
    assert result.unexpected_keys == ["other"]
    assert "head.1.bias" in result.missing_keys
    np.testing.assert_array_equal(net.block.scale.data, 3.0)


def test_non_strict_load_still_rejects_wrong_shapes():
    with pytest.raises(nn.StateDictError, match="block.scale"):
        Net().load_state_dict({"block.scale": np.zeros(5)}, strict=False)


def test_forward_hooks_fire_and_can_be_removed():
    net = Net()
    seen = []
    handle = net.block.fc.register_forward_hook(
        lambda module, inputs, output: seen.append((module, inputs[0].shape, output.shape)))
    net(rn.randn(2, 3, seed=0))
    assert seen == [(net.block.fc, (2, 3), (2, 4))]
    handle.remove()
    net(rn.randn(2, 3, seed=0))
    assert len(seen) == 1


def test_forward_hook_can_replace_output_and_pre_hook_the_input():
    layer = nn.Identity()
    pre = layer.register_forward_pre_hook(lambda module, inputs: (inputs[0] * 2,))
    post = layer.register_forward_hook(lambda module, inputs, output: output + 1)
    np.testing.assert_allclose(layer(rn.tensor([1.0, 2.0])).data, [3.0, 5.0])
    pre.remove(), post.remove()
    np.testing.assert_allclose(layer(rn.tensor([1.0, 2.0])).data, [1.0, 2.0])


def test_hooks_let_pruning_read_activation_gradients():
    net = Net()
    grads = []

    def keep_gradient(module, inputs, output):
        output.register_hook(lambda g: grads.append(g.data.copy()))

    net.block.register_forward_hook(keep_gradient)
    net(rn.randn(4, 3, seed=1)).sum().backward()
    assert len(grads) == 1 and grads[0].shape == (4, 4)


def test_train_and_eval_reach_every_descendant():
    net = Net()
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_zero_grad_and_apply():
    net = Net()
    net(rn.randn(3, 3, seed=0)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    visited = []
    net.apply(lambda m: visited.append(type(m).__name__))
    assert visited[-1] == "Net" and visited.index("Linear") < visited.index("Block")


def test_repr_is_nested_like_pytorch():
    text = repr(Net())
    assert text.splitlines()[0] == "Net("
    assert "  (block): Block(" in text
    assert "    (fc): Linear(in_features=3, out_features=4, bias=True)" in text
    assert "    (0): ReLU()" in text


def test_assigning_a_parameter_over_a_module_re_registers_it():
    net = Net()
    net.head = nn.Parameter(np.zeros(2, dtype=np.float32))
    assert "head" not in dict(net.named_children())
    assert "head" in dict(net.named_parameters())
    with pytest.raises(TypeError, match="cannot assign"):
        net.head = np.zeros(2)


def test_to_casts_parameters_and_buffers_in_place():
    net = Net()
    weight = net.block.fc.weight
    net.to(np.float64)
    assert net.block.fc.weight is weight and weight.dtype == np.float64
    assert net.block.bn.running_var.dtype == np.float64
    assert net(rn.randn(2, 3, seed=0, dtype=np.float64)).dtype == np.float64
    with pytest.raises(ValueError, match="unknown device"):
        net.to("tpu")


def test_sequential_indexing_and_iteration():
    seq = nn.Sequential(nn.Linear(2, 3, rng=0), nn.ReLU(), nn.Linear(3, 1, rng=0))
    assert len(seq) == 3 and isinstance(seq[-1], nn.Linear)
    assert isinstance(seq[1:], nn.Sequential) and len(seq[1:]) == 2
    assert [type(m).__name__ for m in seq] == ["Linear", "ReLU", "Linear"]
    x = rn.randn(4, 2, seed=0)
    np.testing.assert_allclose(seq(x).data, seq[2](seq[1](seq[0](x))).data)
    with pytest.raises(IndexError):
        seq[3]


def test_module_list_registers_children():
    layers = nn.ModuleList([nn.Linear(2, 2, rng=0) for _ in range(3)])
    layers.append(nn.ReLU())
    assert len(layers) == 4
    assert [name for name, _ in layers.named_parameters()][:2] == ["0.weight", "0.bias"]
