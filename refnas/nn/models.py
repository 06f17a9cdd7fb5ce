"""Model builders: ``MLP``, ``SmallCNN``, ``resnet18`` — seeded, self-describing, countable.

Every model keeps the arguments it was built from in ``model.config`` (a JSON-able dict with the
builder's ``name``), so a checkpoint can rebuild it with :func:`build_model`. Parameter counts
(``model.num_parameters()``) and FLOPs (:func:`count_flops`) are computed from the shapes.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np

from refnas.nn import init
from refnas.nn.layers import (AdaptiveAvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout,
                              Flatten, Identity, Linear, MaxPool2d, ReLU,
                              activation as make_activation)
from refnas.nn.module import Module, Sequential
from refnas.tensor import Tensor, no_grad

__all__ = ["MLP", "SmallCNN", "BasicBlock", "ResNet", "resnet18", "build_model",
           "register_model", "MODELS", "count_flops"]

MODELS: dict[str, Callable[..., Module]] = {}


def register_model(name: str) -> Callable:
    """Decorator: make the builder ``fn(**config)`` available to :func:`build_model` as ``name``."""
    def decorator(builder: Callable) -> Callable:
        MODELS[name] = builder
        return builder

    return decorator


def build_model(config: dict[str, Any]) -> Module:
    """Rebuild a model from its ``config`` (``{"name": "mlp", "sizes": [64, 128, 10], ...}``)."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"build_model: expected a config dict with a 'name' entry, got {config!r}")
    name = config["name"]
    if name not in MODELS:
        raise ValueError(f"build_model: unknown model {name!r}; known models: "
                         f"{', '.join(sorted(MODELS))}")
    arguments = {k: v for k, v in config.items() if k != "name"}
    try:
        return MODELS[name](**arguments)
    except TypeError as error:
        raise ValueError(f"build_model: config {config!r} does not fit {name}: {error}") from error


def _check_sizes(sizes: Sequence[int], owner: str, minimum: int) -> list[int]:
    sizes = list(sizes)
    if len(sizes) < minimum or any(isinstance(s, bool) or not isinstance(s, (int, np.integer))
                                   or s < 1 for s in sizes):
        raise ValueError(f"{owner}: expected at least {minimum} positive ints, got {sizes!r}")
    return [int(s) for s in sizes]


# --------------------------------------------------------------------------------------------
# MLP
# --------------------------------------------------------------------------------------------
@register_model("mlp")
class MLP(Sequential):
    """Multi-layer perceptron: Flatten, then per hidden size Linear [-BatchNorm1d] -activation
    [-Dropout], then a final Linear to ``sizes[-1]`` outputs (logits).

    ``sizes = [in_features, hidden_1, ..., out_features]``; inputs of any trailing shape are
    flattened, so (N, 1, 8, 8) digits feed an ``MLP([64, ...])`` directly.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = False, seed: int = 0) -> None:
        sizes = _check_sizes(sizes, "MLP: sizes", 2)
        rng = np.random.default_rng(seed)
        layers: list[Module] = [Flatten()]
        for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1]):
            layers.append(Linear(fan_in, fan_out, rng=rng))
            if batch_norm:
                layers.append(BatchNorm1d(fan_out))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(Dropout(dropout, rng=rng))
        layers.append(Linear(sizes[-2], sizes[-1], rng=rng))
        super().__init__(*layers)
        self.config = {"name": "mlp", "sizes": sizes, "activation": activation,
                       "dropout": float(dropout), "batch_norm": bool(batch_norm),
                       "seed": int(seed)}

    def forward(self, x: Tensor) -> Tensor:
        # a Linear and the ReLU after it run as one op (Linear.forward_relu: the ReLU's node,
        # array and passes saved) unless a hook watches either of them
        layers = list(self._modules.values())
        i = 0
        while i < len(layers):
            layer = layers[i]
            if (i + 1 < len(layers) and type(layer) is Linear and type(layers[i + 1]) is ReLU
                    and not layer._hooked() and not layers[i + 1]._hooked()):
                x = layer.forward_relu(x)
                i += 2
            else:
                x = layer(x)
                i += 1
        return x

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.config["sizes"][0],)


# --------------------------------------------------------------------------------------------
# Small CNN
# --------------------------------------------------------------------------------------------
def conv_bn_relu(in_channels: int, out_channels: int, rng: np.random.Generator,
                 stride: int = 1) -> list[Module]:
    """3×3 convolution (no bias: the batch norm's shift replaces it), batch norm, ReLU."""
    return [Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False, rng=rng),
            BatchNorm2d(out_channels), ReLU()]


@register_model("small_cnn")
class SmallCNN(Module):
    """A VGG-style CNN for small images.

    ``features``: ``stages`` stages of [conv3×3-BN-ReLU, conv3×3-BN-ReLU, max-pool 2×2], the
    channels doubling each stage (width, 2·width, ...); then a global average pool, Flatten and
    a Linear ``classifier``. Two stages take 8×8 digits to 2×2 maps and 28×28 MNIST to 7×7.
    ``channels`` (one entry per conv) overrides the width rule, e.g. after pruning.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16,
                 input_size: Sequence[int] = (8, 8), stages: int = 2, seed: int = 0,
                 channels: Sequence[int] | None = None) -> None:
        super().__init__()
        if channels is None:
            channels = [width * 2 ** (i // 2) for i in range(2 * stages)]
        channels = _check_sizes(channels, "SmallCNN: channels", 1)
        if len(channels) != 2 * stages:
            raise ValueError(f"SmallCNN: channels needs {2 * stages} entries (two convs per "
                             f"stage), got {channels}")
        input_size = tuple(_check_sizes(input_size, "SmallCNN: input_size", 2))
        if min(input_size) < 2 ** stages:
            raise ValueError(f"SmallCNN: input_size {input_size} is too small for {stages} "
                             f"2×2 max-pools")
        rng = np.random.default_rng(seed)
        layers: list[Module] = []
        previous = in_channels
        for stage in range(stages):
            for c in channels[2 * stage:2 * stage + 2]:
                layers += conv_bn_relu(previous, c, rng)
                previous = c
            layers.append(MaxPool2d(2))
        self.features = Sequential(*layers)
        self.pool = AdaptiveAvgPool2d(1)
        self.flatten = Flatten()
        self.classifier = Linear(previous, num_classes, rng=rng)
        self.config = {"name": "small_cnn", "in_channels": int(in_channels),
                       "num_classes": int(num_classes), "width": int(width),
                       "input_size": list(input_size), "stages": int(stages), "seed": int(seed),
                       "channels": channels}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.config["in_channels"], *self.config["input_size"])

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


# --------------------------------------------------------------------------------------------
# ResNet-18 (CIFAR variant)
# --------------------------------------------------------------------------------------------
class BasicBlock(Module):
    r"""Residual block (He et al. 2016): :math:`y = \operatorname{relu}(F(x) + S(x))`,
    :math:`F` = conv3×3(stride)-BN-ReLU-conv3×3-BN, :math:`S` the identity, or conv1×1(stride)-BN
    when the block changes the resolution or the width."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *,
                 rng: np.random.Generator) -> None:
        super().__init__()
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False,
                            rng=rng)
        self.bn1 = BatchNorm2d(out_channels, activation="relu")     # BN + ReLU, fused
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=False, rng=rng)
        self.bn2 = BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = Sequential(
                Conv2d(in_channels, out_channels, 1, stride=stride, bias=False, rng=rng),
                BatchNorm2d(out_channels))
        else:
            self.shortcut = Identity()

    def forward(self, x: Tensor) -> Tensor:
        # the shortcut first, while x is still in the cache from the layer that wrote it (after
        # the main branch, the 1x1 projection read x from memory: a ResNet-18 step 0.3-1.0 ms
        # slower, six rounds side by side, same losses)
        shortcut = self.shortcut(x)
        # relu(bn2(out) + shortcut): in training, one op (the sum and the ReLU in the batch
        # norm's passes; the fused op's docstring counts the memory passes saved)
        return self.bn2.add_relu(self.conv2(self.bn1(self.conv1(x))), shortcut)

    def flops(self, inputs: tuple, output: Any) -> int:
        return 2 * int(math.prod(output.shape))  # the residual addition and the ReLU after it


class ResNet(Module):
    """ResNet for small images: 3×3 stem (stride 1, no max-pool), stages of BasicBlocks, global
    average pool, linear classifier. Children are named as torchvision's (conv1, bn1, layer1..4,
    fc) except the projection, ``shortcut``."""

    def __init__(self, blocks: Sequence[int], num_classes: int = 10, in_channels: int = 3,
                 width: int = 64, seed: int = 0, name: str = "resnet") -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.conv1 = Conv2d(in_channels, width, 3, padding=1, bias=False, rng=rng)
        self.bn1 = BatchNorm2d(width, activation="relu")            # BN + ReLU, fused
        previous = width
        for stage, count in enumerate(blocks):
            out_channels = width * 2 ** stage
            stride = 1 if stage == 0 else 2
            stage_blocks = []
            for i in range(count):
                stage_blocks.append(BasicBlock(previous, out_channels, stride if i == 0 else 1,
                                               rng=rng))
                previous = out_channels
            self.add_module(f"layer{stage + 1}", Sequential(*stage_blocks))
        self.avgpool = AdaptiveAvgPool2d(1)
        self.flatten = Flatten()
        self.fc = Linear(previous, num_classes, rng=rng)
        self._reinitialise(rng)
        self.config = {"name": name, "num_classes": int(num_classes),
                       "in_channels": int(in_channels), "width": int(width), "seed": int(seed)}
        if name == "resnet":
            self.config["blocks"] = [int(b) for b in blocks]

    def _reinitialise(self, rng: np.random.Generator) -> None:
        """torchvision's ResNet init: kaiming_normal(fan_out, relu) convs; BN weight 1, bias 0."""
        for module in self.modules():
            if isinstance(module, Conv2d):
                init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", rng=rng)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.config["in_channels"], 32, 32)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn1(self.conv1(x))
        for stage in range(1, 5):
            block = self._modules.get(f"layer{stage}")
            if block is not None:
                x = block(x)
        return self.fc(self.flatten(self.avgpool(x)))


MODELS["resnet"] = ResNet


@register_model("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64,
             seed: int = 0) -> ResNet:
    """ResNet-18, CIFAR variant: four stages of two BasicBlocks, widths w, 2w, 4w, 8w,
    strides 1, 2, 2, 2 (11.2 M parameters at width 64 and 10 classes)."""
    return ResNet([2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels, width=width,
                  seed=seed, name="resnet18")


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------
def count_flops(model: Module, input_shape: Sequence[int], by_module: bool = False,
                dtype: Any = None) -> int | "OrderedDict[str, int]":
    """Floating-point operations of one forward pass for ONE example of ``input_shape``
    (without the batch axis), counted by forward hooks from the shapes each module sees.

    A multiply-add counts as two FLOPs (a Linear layer costs :math:`2\\,\\text{in}\\cdot
    \\text{out}` plus the bias adds). The model runs in eval mode (batch norm as a scale and a
    shift, dropout off) under ``no_grad``; its mode is restored. ``by_module=True`` returns the
    count of each module that does work, keyed by qualified name.
    """
    counts: OrderedDict[str, int] = OrderedDict()
    handles = []
    for name, module in model.named_modules():
        def hook(mod: Module, inputs: tuple, output: Any, name: str = name) -> None:
            counts[name] = counts.get(name, 0) + int(mod.flops(inputs, output))

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    dtype = model.dtype if dtype is None else dtype
    try:
        model.eval()
        with no_grad():
            model(Tensor(np.zeros((1, *input_shape), dtype=dtype)))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    counts = OrderedDict((k, v) for k, v in counts.items() if v)
    return counts if by_module else sum(counts.values())
