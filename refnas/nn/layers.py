r"""Layers: thin Modules around refnas ops, holding their weights and checking their input.

Default initialisation follows PyTorch: the weight of ``Linear`` and ``Conv2d`` is
``kaiming_uniform_(a=sqrt(5))``, i.e. :math:`U(-1/\sqrt{\text{fan\_in}}, 1/\sqrt{\text{fan\_in}})`,
and the bias :math:`U(-1/\sqrt{\text{fan\_in}}, 1/\sqrt{\text{fan\_in}})`. Every layer that draws
random numbers takes ``rng`` (a ``numpy.random.Generator`` or an int seed; ``None`` means seed 0,
so a layer is deterministic by default — pass one Generator to all layers of a model to give
them independent draws).

An input of the wrong shape raises ``ValueError`` naming the layer, the expected and the given
shapes: ``Linear(in_features=64, out_features=10, bias=True): expected input (..., 64), got
(32, 63) float32``.

Each layer's :meth:`flops` counts its own floating-point operations for one call (a multiply-add
is two), from the shapes; :func:`refnas.nn.count_flops` sums them over a model.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from refnas import ops
from refnas.nn import init
from refnas.nn.module import Module, Parameter, Sequential
from refnas.tensor import Tensor

__all__ = ["Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm1d",
           "BatchNorm2d", "Dropout", "Flatten", "Identity", "ReLU", "LeakyReLU", "GELU", "Tanh",
           "Sigmoid", "Sequential"]

Pair = tuple[int, int]


def _pair(value: int | tuple[int, int], name: str, owner: str, minimum: int = 1) -> Pair:
    values = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if (len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                for v in values) or min(values) < minimum):
        raise ValueError(f"{owner}: {name} must be an int >= {minimum} or a pair of them, "
                         f"got {value!r}")
    return int(values[0]), int(values[1])


def _positive(value: Any, name: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return int(value)


def _tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(np.asarray(x))


def _window_output(size: Pair, kernel: Pair, stride: Pair, padding: Pair,
                   dilation: Pair = (1, 1)) -> Pair:
    """(OH, OW) = ((H + 2p - d(k-1) - 1)//s + 1, ...) for each axis."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(size, kernel, stride, padding, dilation))


def _elements(t: Any) -> int:
    return int(math.prod(t.shape))


# --------------------------------------------------------------------------------------------
# Linear and convolution
# --------------------------------------------------------------------------------------------
class Linear(Module):
    r"""Affine map :math:`y = x W^\top + b`; x (..., in_features), W (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 rng: np.random.Generator | int | None = None, dtype: Any = np.float32) -> None:
        super().__init__()
        self.in_features = _positive(in_features, "in_features", "Linear")
        self.out_features = _positive(out_features, "out_features", "Linear")
        self.weight = Parameter(np.empty((self.out_features, self.in_features), dtype=dtype))
        self.register_parameter(
            "bias", Parameter(np.empty(self.out_features, dtype=dtype)) if bias else None)
        self.reset_parameters(rng)

    def reset_parameters(self, rng: np.random.Generator | int | None = None) -> None:
        _default_init(self.weight, self.bias, init.as_generator(rng))

    def forward(self, x: Tensor) -> Tensor:
        return ops.linear(self._input(x), self.weight, self.bias)

    def forward_relu(self, x: Tensor) -> Tensor:
        r""":math:`\max(x W^\top + b, 0)`: this layer and the ReLU after it as one op, the bias
        and the ReLU in one pass over the product (:func:`refnas.ops.linalg.linear_primitive`).
        :class:`refnas.nn.MLP` calls it for a Linear followed by a ReLU when neither has hooks."""
        return ops.linear(self._input(x), self.weight, self.bias, activation="relu")

    def _input(self, x: Tensor) -> Tensor:
        x = _tensor(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise self.shape_error(f"(..., {self.in_features})", x)
        return x

    def flops(self, inputs: tuple, output: Any) -> int:
        rows = _elements(output) // self.out_features
        return rows * self.out_features * (2 * self.in_features - 1 + (self.bias is not None))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


def _default_init(weight: Parameter, bias: Parameter | None, rng: np.random.Generator) -> None:
    """PyTorch's default for Linear and Conv2d: kaiming_uniform(a=sqrt(5)) and a fan-in bias."""
    init.kaiming_uniform_(weight, a=math.sqrt(5.0), rng=rng)
    if bias is not None:
        fan_in, _ = init.fan_in_and_fan_out(weight.shape)
        bound = 1.0 / math.sqrt(fan_in)
        init.uniform_(bias, -bound, bound, rng=rng)


class Conv2d(Module):
    r"""2-D convolution over (N, C, H, W): :math:`y = w \star x + b` (:func:`refnas.ops.conv2d`).

    Weight (out_channels, in_channels // groups, KH, KW).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Pair,
                 stride: int | Pair = 1, padding: int | Pair = 0, dilation: int | Pair = 1,
                 groups: int = 1, bias: bool = True, *,
                 rng: np.random.Generator | int | None = None, dtype: Any = np.float32) -> None:
        super().__init__()
        self.in_channels = _positive(in_channels, "in_channels", "Conv2d")
        self.out_channels = _positive(out_channels, "out_channels", "Conv2d")
        self.kernel_size = _pair(kernel_size, "kernel_size", "Conv2d")
        self.stride = _pair(stride, "stride", "Conv2d")
        self.padding = _pair(padding, "padding", "Conv2d", minimum=0)
        self.dilation = _pair(dilation, "dilation", "Conv2d")
        self.groups = _positive(groups, "groups", "Conv2d")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must both be divisible by groups ({groups})")
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self.weight = Parameter(np.empty(shape, dtype=dtype))
        self.register_parameter(
            "bias", Parameter(np.empty(self.out_channels, dtype=dtype)) if bias else None)
        self.reset_parameters(rng)

    def reset_parameters(self, rng: np.random.Generator | int | None = None) -> None:
        _default_init(self.weight, self.bias, init.as_generator(rng))

    def output_size(self, size: Pair) -> Pair:
        """(OH, OW) for an input of spatial ``size`` (H, W)."""
        return _window_output(size, self.kernel_size, self.stride, self.padding, self.dilation)

    def forward(self, x: Tensor) -> Tensor:
        x = _tensor(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise self.shape_error(f"(N, {self.in_channels}, H, W)", x)
        if min(self.output_size(x.shape[2:])) < 1:
            raise self.shape_error(
                f"(N, {self.in_channels}, H, W) with H, W large enough for the kernel", x)
        return ops.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                          dilation=self.dilation, groups=self.groups)

    def flops(self, inputs: tuple, output: Any) -> int:
        per_output = 2 * (self.in_channels // self.groups) * math.prod(self.kernel_size) - 1
        return _elements(output) * (per_output + (self.bias is not None))

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text


# --------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------
class _Pool2d(Module):
    def __init__(self, kernel_size: int | Pair, stride: int | Pair | None = None,
                 padding: int | Pair = 0) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _pair(kernel_size, "kernel_size", name)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", name)
        self.padding = _pair(padding, "padding", name, minimum=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding {self.padding} must be at most half the kernel "
                             f"size {self.kernel_size}")

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or min(_window_output(x.shape[2:], self.kernel_size, self.stride,
                                             self.padding)) < 1:
            raise self.shape_error("(N, C, H, W) with H, W large enough for the kernel", x)

    def flops(self, inputs: tuple, output: Any) -> int:
        return _elements(output) * math.prod(self.kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Maximum over each window (padding never wins: it is -inf)."""

    def forward(self, x: Tensor) -> Tensor:
        x = _tensor(x)
        self._check(x)
        return ops.max_pool2d(x, self.kernel_size, stride=self.stride, padding=self.padding)


class AvgPool2d(_Pool2d):
    """Mean over each window; ``count_include_pad`` divides by the full window size."""

    def __init__(self, kernel_size: int | Pair, stride: int | Pair | None = None,
                 padding: int | Pair = 0, count_include_pad: bool = True) -> None:
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x: Tensor) -> Tensor:
        x = _tensor(x)
        self._check(x)
        return ops.avg_pool2d(x, self.kernel_size, stride=self.stride, padding=self.padding,
                              count_include_pad=self.count_include_pad)


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed ``output_size`` (OH, OW) whatever the input's H, W."""

    def __init__(self, output_size: int | Pair) -> None:
        super().__init__()
        self.output_size = _pair(output_size, "output_size", "AdaptiveAvgPool2d")

    def forward(self, x: Tensor) -> Tensor:
        x = _tensor(x)
        if x.ndim != 4:
            raise self.shape_error("(N, C, H, W)", x)
        if self.output_size == (1, 1):
            return ops.reshape(ops.global_avg_pool2d(x), shape=(*x.shape[:2], 1, 1))
        return ops.adaptive_avg_pool2d(x, self.output_size)

    def flops(self, inputs: tuple, output: Any) -> int:
        return _elements(inputs[0])  # every input element is added into one bin (about)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


# --------------------------------------------------------------------------------------------
# Normalisation and dropout
# --------------------------------------------------------------------------------------------
class _BatchNorm(Module):
    r"""Batch normalisation (Ioffe & Szegedy 2015) over every axis but the channel axis 1.

    Training: :math:`y = \gamma\,(x - \mu_B)/\sqrt{\sigma_B^2 + \epsilon} + \beta` with the
    batch's mean and biased variance, and the running statistics move by ``momentum``:
    :math:`\hat\mu \leftarrow (1 - m)\hat\mu + m\,\mu_B`, :math:`\hat\sigma^2 \leftarrow
    (1 - m)\hat\sigma^2 + m\,\sigma_B^2\,n/(n-1)` (unbiased, as PyTorch). Evaluation uses the
    running statistics. Buffers ``running_mean`` and ``running_var`` are in the state dict.

    ``activation="relu"`` returns :math:`\max(y, 0)`: the ReLU that usually follows, fused into
    the batch-norm kernels (two memory passes fewer per step than a ``ReLU`` layer after it).
    """

    ndims: tuple[int, ...] = ()  # the input ranks a subclass accepts

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *,
                 activation: str | None = None, dtype: Any = np.float32) -> None:
        super().__init__()
        name = type(self).__name__
        self.num_features = _positive(num_features, "num_features", name)
        if not eps > 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{name}: momentum must lie in [0, 1], got {momentum!r}")
        if activation not in ops.BATCH_NORM_ACTIVATIONS:
            raise ValueError(f"{name}: activation must be one of "
                             f"{ops.BATCH_NORM_ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        self.eps, self.momentum = float(eps), float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        c = self.num_features
        self.register_parameter("weight", Parameter(np.ones(c, dtype=dtype)) if affine else None)
        self.register_parameter("bias", Parameter(np.zeros(c, dtype=dtype)) if affine else None)
        self.register_buffer("running_mean",
                             np.zeros(c, dtype=dtype) if track_running_stats else None)
        self.register_buffer("running_var",
                             np.ones(c, dtype=dtype) if track_running_stats else None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1

    def expected(self) -> str:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        x = _tensor(x)
        if x.ndim not in self.ndims or x.shape[1] != self.num_features:
            raise self.shape_error(self.expected(), x)
        if x.ndim == 3:  # (N, C, L) is (N, C, L, 1) for the op
            return ops.reshape(self._normalise(ops.reshape(x, shape=(*x.shape, 1))), shape=x.shape)
        return self._normalise(x)

    def add_relu(self, x: Tensor, shortcut: Tensor) -> Tensor:
        r""":math:`\max(\mathrm{BN}(x) + s, 0)`, the end of a residual block, as
        ``ops.add_relu(self(x), shortcut)``. With batch statistics, no activation of the module's
        own and no hook on it, one fused op (:func:`refnas.ops.norm.batch_norm_add_relu_primitive`:
        the sum and the ReLU in the batch norm's passes); a hook still sees this module's own
        output."""
        x, shortcut = _tensor(x), _tensor(shortcut)
        fusable = (x.ndim == 4 and (self.training or not self.track_running_stats)
                   and self.activation is None and not self._hooked())
        if not fusable:
            return ops.add_relu(self(x), shortcut)
        if x.shape[1] != self.num_features:
            raise self.shape_error(self.expected(), x)
        return self._normalise(x, shortcut)

    def _normalise(self, x: Tensor, shortcut: Tensor | None = None) -> Tensor:
        """The op call; with ``shortcut``, relu(BN(x) + shortcut) (:meth:`add_relu`)."""
        use_batch = self.training or not self.track_running_stats
        if use_batch and x.size // x.shape[1] < 2:
            raise self.shape_error(f"{self.expected()} with more than one value per channel in "
                                   f"training mode", x)
        # affine=False leaves weight and bias None: the op then scales by 1 and shifts by 0
        return ops.batch_norm(x, self.weight, self.bias, running_mean=self.running_mean,
                              running_var=self.running_var, training=use_batch,
                              momentum=self.momentum, eps=self.eps,
                              activation=self.activation if shortcut is None else "relu",
                              shortcut=shortcut)

    def flops(self, inputs: tuple, output: Any) -> int:
        # a scale and a shift per element once the stats are fixed (and the ReLU's comparison)
        return (2 + (self.activation is not None)) * _elements(output)

    def extra_repr(self) -> str:
        activation = "" if self.activation is None else f", activation={self.activation!r}"
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}"
                f"{activation}")


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) features, or (N, C, L) sequences."""

    ndims = (2, 3)

    def expected(self) -> str:
        return f"(N, {self.num_features}) or (N, {self.num_features}, L)"


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) feature maps, statistics per channel."""

    ndims = (4,)

    def expected(self) -> str:
        return f"(N, {self.num_features}, H, W)"


class Dropout(Module):
    r"""Inverted dropout (Srivastava et al. 2014): in training each element is zeroed with
    probability :math:`p` and the survivors scaled by :math:`1/(1-p)`; identity in eval mode.

    The masks come from the layer's own Generator (``rng``), so a run is reproducible.
    """

    def __init__(self, p: float = 0.5, *, rng: np.random.Generator | int | None = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must lie in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = init.as_generator(rng)

    def forward(self, x: Tensor) -> Tensor:
        x = _tensor(x)
        if not self.training or self.p == 0.0:
            return x
        return ops.dropout(x, p=self.p, training=True, rng=self.rng)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# --------------------------------------------------------------------------------------------
# Shape and activation layers
# --------------------------------------------------------------------------------------------
class Flatten(Module):
    """Merge axes ``start_dim`` .. ``end_dim`` into one (default: all but the batch axis)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = _tensor(x)
        start, end = self.start_dim % max(x.ndim, 1), self.end_dim % max(x.ndim, 1)
        if x.ndim <= max(self.start_dim, 0) or start > end:
            raise self.shape_error(f"at least {max(self.start_dim, 0) + 1} dimensions", x)
        shape = x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:]
        return ops.reshape(x, shape=shape)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    """Returns its input unchanged (a placeholder, e.g. a shortcut that does not downsample)."""

    def forward(self, x: Any) -> Any:
        return x


class _Activation(Module):
    """An elementwise nonlinearity ``refnas.ops.<op>``: one FLOP per element."""

    op = ""

    def forward(self, x: Tensor) -> Tensor:
        return getattr(ops, self.op)(_tensor(x))

    def flops(self, inputs: tuple, output: Any) -> int:
        return _elements(output)


class ReLU(_Activation):
    r""":math:`\max(x, 0)`."""

    op = "relu"


class LeakyReLU(_Activation):
    r""":math:`x` for :math:`x > 0`, else :math:`a x`."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x: Tensor) -> Tensor:
        return ops.leaky_relu(_tensor(x), negative_slope=self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class GELU(_Activation):
    r""":math:`x\,\Phi(x)` (exact, erf form)."""

    op = "gelu"


class Tanh(_Activation):
    r""":math:`\tanh x`."""

    op = "tanh"


class Sigmoid(_Activation):
    r""":math:`1/(1 + e^{-x})`."""

    op = "sigmoid"


ACTIVATIONS: dict[str, type[Module]] = {"relu": ReLU, "leaky_relu": LeakyReLU, "gelu": GELU,
                                        "tanh": Tanh, "sigmoid": Sigmoid, "identity": Identity}


def activation(name: str) -> Module:
    """A fresh activation layer from its name (``relu``, ``leaky_relu``, ``gelu``, ...)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of "
                         f"{', '.join(ACTIVATIONS)}") from None
