r"""Weight initialisation, in place, from an explicit ``numpy.random.Generator``.

For a weight of shape :math:`(\text{out}, \text{in}, k_1, \dots)` the receptive field is
:math:`r = \prod k_i`, :math:`\text{fan\_in} = \text{in}\cdot r` and
:math:`\text{fan\_out} = \text{out}\cdot r`.

* Kaiming / He (He et al. 2015, "Delving Deep into Rectifiers"): keeps the variance of the
  activations (``fan_in``) or of the gradients (``fan_out``) constant across layers,
  :math:`\operatorname{std} = \text{gain}/\sqrt{\text{fan}}`; uniform with bound
  :math:`\sqrt3\,\operatorname{std}`.
* Xavier / Glorot (Glorot & Bengio 2010): :math:`\operatorname{std} =
  \text{gain}\sqrt{2/(\text{fan\_in} + \text{fan\_out})}`; uniform with bound
  :math:`\sqrt3\,\operatorname{std}`.

Gains (:func:`calculate_gain`): linear, conv and sigmoid 1; tanh 5/3; relu :math:`\sqrt2`;
leaky_relu with slope :math:`a`: :math:`\sqrt{2/(1+a^2)}`.

Samples are drawn in float64 and cast to the tensor's dtype, so float32 and float64 weights
built from the same seed agree to float32 precision.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from refnas.tensor import Tensor

__all__ = ["calculate_gain", "fan_in_and_fan_out", "kaiming_uniform_", "kaiming_normal_",
           "xavier_uniform_", "xavier_normal_", "uniform_", "normal_", "constant_", "zeros_",
           "ones_", "as_generator"]

def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """``rng`` itself, a Generator seeded by the int ``rng``, or (``None``) one seeded by 0."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"expected a numpy.random.Generator or an int seed, got {type(rng).__name__}")


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for ``nonlinearity`` (``param``: the leaky_relu negative slope)."""
    if nonlinearity in ("linear", "identity", "sigmoid") or nonlinearity.startswith("conv"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1.0 + slope ** 2))
    if nonlinearity == "selu":
        return 0.75
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}; expected "
                     f"linear, conv*, sigmoid, tanh, relu, leaky_relu or selu")


def fan_in_and_fan_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of ``shape`` = (out, in, *kernel)."""
    if len(shape) < 2:
        raise ValueError(f"fan_in_and_fan_out: needs a weight with at least 2 dimensions, got "
                         f"shape {tuple(shape)}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _fan(shape: tuple[int, ...], mode: str) -> int:
    fan_in, fan_out = fan_in_and_fan_out(shape)
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
    raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")


def _fill(tensor: Tensor | np.ndarray, values: np.ndarray) -> Tensor | np.ndarray:
    """Write ``values`` into ``tensor`` in place (device and dtype kept); returns ``tensor``."""
    target = tensor.data if isinstance(tensor, Tensor) else tensor
    if isinstance(target, np.ndarray):
        np.copyto(target, values, casting="unsafe")
    else:
        target[...] = type(target)(values.astype(target.dtype))
    return tensor


def _shape(tensor: Tensor | np.ndarray) -> tuple[int, ...]:
    return tuple(tensor.shape)


def uniform_(tensor: Any, low: float = 0.0, high: float = 1.0, *,
             rng: np.random.Generator | int) -> Any:
    """Fill with samples of :math:`U(\\text{low}, \\text{high})`."""
    return _fill(tensor, as_generator(rng).uniform(low, high, _shape(tensor)))


def normal_(tensor: Any, mean: float = 0.0, std: float = 1.0, *,
            rng: np.random.Generator | int) -> Any:
    """Fill with samples of :math:`N(\\text{mean}, \\text{std}^2)`."""
    return _fill(tensor, as_generator(rng).normal(mean, std, _shape(tensor)))


def constant_(tensor: Any, value: float) -> Any:
    return _fill(tensor, np.full(_shape(tensor), value))


def zeros_(tensor: Any) -> Any:
    return constant_(tensor, 0.0)


def ones_(tensor: Any) -> Any:
    return constant_(tensor, 1.0)


def kaiming_std(shape: tuple[int, ...], a: float = 0.0, mode: str = "fan_in",
                nonlinearity: str = "leaky_relu") -> float:
    r""":math:`\text{gain}/\sqrt{\text{fan}}` (He et al. 2015)."""
    return calculate_gain(nonlinearity, a) / math.sqrt(_fan(shape, mode))


def kaiming_uniform_(tensor: Any, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", *, rng: np.random.Generator | int) -> Any:
    r"""He uniform: :math:`U(-b, b)`, :math:`b = \sqrt3\,\text{gain}/\sqrt{\text{fan}}`.

    ``a`` is the leaky_relu slope used in the gain (PyTorch's layers pass :math:`a = \sqrt5`,
    which gives :math:`b = 1/\sqrt{\text{fan\_in}}`).
    """
    bound = math.sqrt(3.0) * kaiming_std(_shape(tensor), a, mode, nonlinearity)
    return uniform_(tensor, -bound, bound, rng=rng)


def kaiming_normal_(tensor: Any, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", *, rng: np.random.Generator | int) -> Any:
    r"""He normal: :math:`N(0, \text{gain}^2/\text{fan})`."""
    return normal_(tensor, 0.0, kaiming_std(_shape(tensor), a, mode, nonlinearity), rng=rng)


def xavier_std(shape: tuple[int, ...], gain: float = 1.0) -> float:
    r""":math:`\text{gain}\sqrt{2/(\text{fan\_in} + \text{fan\_out})}` (Glorot & Bengio 2010)."""
    fan_in, fan_out = fan_in_and_fan_out(shape)
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


def xavier_uniform_(tensor: Any, gain: float = 1.0, *, rng: np.random.Generator | int) -> Any:
    r"""Glorot uniform: :math:`U(-b, b)`,
    :math:`b = \text{gain}\sqrt{6/(\text{fan\_in}+\text{fan\_out})}`."""
    bound = math.sqrt(3.0) * xavier_std(_shape(tensor), gain)
    return uniform_(tensor, -bound, bound, rng=rng)


def xavier_normal_(tensor: Any, gain: float = 1.0, *, rng: np.random.Generator | int) -> Any:
    r"""Glorot normal: :math:`N(0, 2\,\text{gain}^2/(\text{fan\_in}+\text{fan\_out}))`."""
    return normal_(tensor, 0.0, xavier_std(_shape(tensor), gain), rng=rng)
