r"""Elementwise primitives: arithmetic, exp/log, activations.

Notation: :math:`z` is the output, :math:`\bar z` the incoming cotangent ``g``, and
:math:`\bar x` the gradient passed to input :math:`x`. Broadcasting is undone by the engine.

Constant masks (the derivative of relu, abs, clip, ...) enter the VJP as non-differentiable
tensors: their derivative is zero away from the kink, which is what the second-order check sees.

NumPy ufuncs are used on purpose: CuPy implements ``__array_ufunc__``, so the same forward runs
on GPU arrays.
"""
from __future__ import annotations

import math

import numpy as np

from refnas.backend import kernel, register_kernel
from refnas.ops import sampling as S
from refnas.ops.registry import OpError, primitive
from refnas.tensor import Tensor, _as_array


def _const(array) -> Tensor:
    """A non-differentiable tensor (a mask or a constant factor inside a VJP)."""
    return Tensor._wrap(_as_array(array))


def _mask(condition, like) -> Tensor:
    return _const(condition.astype(like.dtype))


# --------------------------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------------------------
@primitive(sample=S.binary())
def add(x, y):
    r"""Sum. :math:`z = x + y`; :math:`\bar x = \bar z`, :math:`\bar y = \bar z`."""
    return x + y


@add.defvjp
def add_vjp(g, out, x, y):
    return g, g


@primitive(sample=S.binary())
def sub(x, y):
    r"""Difference. :math:`z = x - y`; :math:`\bar x = \bar z`, :math:`\bar y = -\bar z`."""
    return x - y


@sub.defvjp
def sub_vjp(g, out, x, y):
    return g, (neg(g) if y.requires_grad else None)


@primitive(sample=S.binary())
def mul(x, y):
    r"""Product. :math:`z = x y`; :math:`\bar x = \bar z\, y`, :math:`\bar y = \bar z\, x`."""
    return x * y


@mul.defvjp
def mul_vjp(g, out, x, y):
    return (mul(g, y) if x.requires_grad else None,
            mul(g, x) if y.requires_grad else None)


@primitive(sample=S.binary("real", "positive"))
def div(x, y):
    r"""Quotient. :math:`z = x / y`; :math:`\bar x = \bar z / y`,
    :math:`\bar y = -\bar z\, x / y^2`."""
    return x / y


@div.defvjp
def div_vjp(g, out, x, y):
    gx = div(g, y) if x.requires_grad else None
    gy = neg(div(mul(g, x), mul(y, y))) if y.requires_grad else None
    return gx, gy


@primitive(sample=S.unary())
def neg(x):
    r"""Negation. :math:`z = -x`; :math:`\bar x = -\bar z`."""
    return -x


@neg.defvjp
def neg_vjp(g, out, x):
    return neg(g)


@primitive(sample=S.binary("positive", "real"))
def pow(x, y):
    r"""Power. :math:`z = x^y`; :math:`\bar x = \bar z\, y\, x^{y-1}`,
    :math:`\bar y = \bar z\, z \log x` (defined for :math:`x > 0`).

    A Python-number exponent (``x ** 2``) is a constant: only :math:`\bar x` is formed.
    """
    return np.power(x, y)


@pow.defvjp
def pow_vjp(g, out, x, y):
    gx = mul(g, mul(y, pow(x, sub(y, 1.0)))) if x.requires_grad else None
    gy = mul(g, mul(out, log(x))) if y.requires_grad else None
    return gx, gy


# --------------------------------------------------------------------------------------------
# Exponentials, roots, absolute value
# --------------------------------------------------------------------------------------------
@primitive(sample=S.unary())
def exp(x):
    r""":math:`z = e^x`; :math:`\bar x = \bar z\, z`."""
    return np.exp(x)


@exp.defvjp
def exp_vjp(g, out, x):
    return mul(g, out)


@primitive(sample=S.unary("positive"))
def log(x):
    r"""Natural logarithm. :math:`z = \log x`; :math:`\bar x = \bar z / x`."""
    return np.log(x)


@log.defvjp
def log_vjp(g, out, x):
    return div(g, x)


@primitive(sample=S.unary("positive"))
def sqrt(x):
    r""":math:`z = \sqrt x`; :math:`\bar x = \bar z / (2 z)`."""
    return np.sqrt(x)


@sqrt.defvjp
def sqrt_vjp(g, out, x):
    return div(g, mul(out, 2.0))


@primitive(sample=S.unary("nonzero"))
def abs(x):
    r""":math:`z = |x|`; :math:`\bar x = \bar z\, \operatorname{sign}(x)` (0 at the kink)."""
    return np.abs(x)


@abs.defvjp
def abs_vjp(g, out, x):
    return mul(g, _const(np.sign(x.data)))


# --------------------------------------------------------------------------------------------
# Selection: maximum, minimum, where, clip
# --------------------------------------------------------------------------------------------
def _sample_extremum(draw):
    full = S.shape(draw, 0, 3)
    x = S.array(draw, full)
    y = x + S.array(draw, full, "nonzero")
    if full and draw.boolean():  # let y broadcast along axis 0: use a slice shared by all rows
        y = y[:1]
        x = np.where(np.abs(x - y) < 0.2, x + 0.5, x)
    return (x, y), {}


@primitive(sample=_sample_extremum)
def maximum(x, y):
    r""":math:`z = \max(x, y)`; :math:`\bar x = \bar z\,[x \ge y]`, :math:`\bar y = \bar z\,[x < y]`."""
    return np.maximum(x, y)


@maximum.defvjp
def maximum_vjp(g, out, x, y):
    return _route(g, x, y, x.data >= y.data)


@primitive(sample=_sample_extremum)
def minimum(x, y):
    r""":math:`z = \min(x, y)`; :math:`\bar x = \bar z\,[x \le y]`, :math:`\bar y = \bar z\,[x > y]`."""
    return np.minimum(x, y)


@minimum.defvjp
def minimum_vjp(g, out, x, y):
    return _route(g, x, y, x.data <= y.data)


def _route(g, x, y, x_wins):
    """The cotangent goes to whichever operand was selected (``x`` where ``x_wins``)."""
    return (mul(g, _mask(x_wins, g.data)) if x.requires_grad else None,
            mul(g, _mask(~x_wins, g.data)) if y.requires_grad else None)


def _sample_where(draw):
    sx, sy = S.broadcast_pair(draw)
    full = np.broadcast_shapes(sx, sy)
    rng = np.random.default_rng(draw.seed())
    condition = rng.random(full) < 0.5
    return (condition, S.array(draw, sx), S.array(draw, sy)), {}


@primitive(sample=_sample_where)
def where(condition, x, y):
    r""":math:`z = c\,?\,x : y`; :math:`\bar x = [c]\,\bar z`, :math:`\bar y = [\lnot c]\,\bar z`.
    The condition is not differentiable."""
    if condition.dtype != np.bool_:
        raise OpError(f"where: condition must be boolean, got {condition.dtype} "
                      f"with shape {tuple(condition.shape)}")
    return np.where(condition, x, y)


@where.defvjp
def where_vjp(g, out, condition, x, y):
    zero = _const(np.zeros((), dtype=g.dtype))
    return (None,
            where(condition, g, zero) if x.requires_grad else None,
            where(condition, zero, g) if y.requires_grad else None)


def _sample_clip(draw):
    (x,), _ = S.unary()(draw)
    low, high = -0.5, 0.6
    x = np.where(np.abs(x - low) < 0.05, x - 0.1, x)  # keep away from both bounds
    x = np.where(np.abs(x - high) < 0.05, x + 0.1, x)
    return (x,), {"low": low, "high": high}


@primitive(sample=_sample_clip)
def clip(x, *, low=None, high=None):
    r""":math:`z = \min(\max(x, l), h)`; :math:`\bar x = \bar z\,[l \le x \le h]`."""
    if low is not None and high is not None and low > high:
        raise OpError(f"clip: low={low} is greater than high={high}")
    return np.clip(x, low, high)


@clip.defvjp
def clip_vjp(g, out, x, *, low=None, high=None):
    inside = np.ones(x.shape, dtype=bool)
    if low is not None:
        inside &= x.data >= low
    if high is not None:
        inside &= x.data <= high
    return mul(g, _mask(inside, g.data))


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------
@primitive(sample=S.unary())
def tanh(x):
    r""":math:`z = \tanh x`; :math:`\bar x = \bar z\,(1 - z^2)`."""
    return np.tanh(x)


@tanh.defvjp
def tanh_vjp(g, out, x):
    return mul(g, sub(1.0, mul(out, out)))


@primitive(sample=S.unary())
def sigmoid(x):
    r""":math:`z = \sigma(x) = 1/(1+e^{-x})`, computed as :math:`\tfrac12(1 + \tanh(x/2))`
    (no overflow for large :math:`|x|`); :math:`\bar x = \bar z\, z (1 - z)`."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@sigmoid.defvjp
def sigmoid_vjp(g, out, x):
    return mul(g, mul(out, sub(1.0, out)))


# ReLU and GELU are kernel-backed: the forward and the backward (the VJP's array work) are the
# kernels ``relu_forward`` / ``relu_backward`` / ``gelu_forward`` / ``gelu_backward`` (NumPy
# references here; Numba and CuPy versions in kernels/). The backward is a primitive of its own,
# so its VJP, written in ops, gives the second derivative.
@register_kernel("relu_forward")
def relu_forward_reference(x):
    r""":math:`y = \max(x, 0)` (NumPy reference kernel)."""
    return np.maximum(x, x.dtype.type(0))


@register_kernel("relu_backward")
def relu_backward_reference(g, x):
    r""":math:`\bar x = g\,[x > 0]` (NumPy reference kernel)."""
    return g * (x > 0)


@register_kernel("gelu_forward")
def gelu_forward_reference(x):
    r""":math:`y = x\,\Phi(x)`, :math:`\Phi(x) = \tfrac12\operatorname{erfc}(-x/\sqrt2)`
    (NumPy reference kernel). ``erfc`` rather than :math:`1 + \operatorname{erf}`: no
    cancellation in the left tail."""
    return (x * _normal_cdf(x)).astype(x.dtype, copy=False)


@register_kernel("gelu_backward")
def gelu_backward_reference(g, x):
    r""":math:`\bar x = g\,\big(\Phi(x) + x\,\varphi(x)\big)`,
    :math:`\varphi(x) = e^{-x^2/2}/\sqrt{2\pi}` (NumPy reference kernel)."""
    pdf = np.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return (g * (_normal_cdf(x) + x * pdf)).astype(x.dtype, copy=False)


_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _normal_cdf(x):
    r""":math:`\Phi(x) = \tfrac12\operatorname{erfc}(-x/\sqrt2)` on NumPy or CuPy arrays."""
    if type(x).__module__.startswith("cupy"):
        from cupyx.scipy.special import erfc
    else:
        from scipy.special import erfc
    return 0.5 * erfc(-x * _SQRT_HALF)


def _sample_activation_backward(domain: str):
    """``(g, x)`` of one shape: a cotangent and a point ``x`` from ``domain``."""
    def sample(draw):
        s = S.shape(draw, 0, 3)
        return (S.array(draw, s), S.array(draw, s, domain)), {}

    return sample


def _check_same_shape(op: str, g, x) -> None:
    if g.shape != x.shape:
        raise OpError(f"{op}: the cotangent g {tuple(g.shape)} ({g.dtype}) and the input x "
                      f"{tuple(x.shape)} ({x.dtype}) must have the same shape")


@primitive(sample=S.unary("nonzero"))
def relu(x):
    r""":math:`z = \max(x, 0)`; :math:`\bar x = \bar z\,[x > 0]` (:func:`relu_backward`)."""
    return kernel("relu_forward")(x)


@relu.defvjp
def relu_vjp(g, out, x):
    return relu_backward(g, x)


@primitive(sample=_sample_activation_backward("nonzero"))
def relu_backward(g, x):
    r"""The VJP of ReLU as an op: :math:`z = g\,[x > 0]`.

    Its VJP: :math:`\bar g = \bar z\,[x > 0]` (the same op again) and :math:`\bar x = 0`
    (the mask is constant away from the kink at 0).
    """
    _check_same_shape("relu_backward", g, x)
    return kernel("relu_backward")(g, x)


@relu_backward.defvjp
def relu_backward_vjp(gg, out, g, x):
    return relu_backward(gg, x), None


@register_kernel("add")
def add_reference(x, y):
    r""":math:`z = x + y` of two arrays of one shape and dtype (NumPy reference kernel). The
    backward pass sums the gradients of a tensor used several times with it (a residual
    block's input gets one from each branch)."""
    return x + y


@register_kernel("add_relu_forward")
def add_relu_forward_reference(x, y):
    r""":math:`z = \max(x + y, 0)` (NumPy reference kernel)."""
    z = x + y
    return np.maximum(z, z.dtype.type(0))


def _sample_add_relu(draw):
    """Two broadcasting operands whose sum stays 0.05 away from the kink at 0."""
    (x, y), _ = S.binary()(draw)
    total = x + y
    near = np.abs(total) < 0.05
    if near.any():
        x = x + np.where(near, 0.1, 0.0) * np.where(total < 0, -1.0, 1.0)
    return (x, y), {}


@primitive(sample=_sample_add_relu)
def add_relu(x, y):
    r""":math:`z = \max(x + y, 0)` in one pass (a residual block's sum and the ReLU after it);
    :math:`\bar x = \bar y = \bar z\,[z > 0]` (:func:`relu_backward` of z: the sum's own
    pass, a memory pass as long as the ReLU's, is saved)."""
    return kernel("add_relu_forward")(x, y)


@add_relu.defvjp
def add_relu_vjp(g, out, x, y):
    masked = relu_backward(g, out)
    return masked, masked


def _sample_leaky(draw):
    (x,), _ = S.unary("nonzero")(draw)
    return (x,), {"negative_slope": draw.choice([0.01, 0.2])}


@primitive(sample=_sample_leaky)
def leaky_relu(x, *, negative_slope=0.01):
    r""":math:`z = x` for :math:`x > 0`, else :math:`a x`; :math:`\bar x = \bar z\,(x > 0\,?\,1 : a)`."""
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


@leaky_relu.defvjp
def leaky_relu_vjp(g, out, x, *, negative_slope=0.01):
    slope = np.where(x.data > 0, 1.0, negative_slope).astype(g.dtype)
    return mul(g, _const(slope))


@primitive(sample=S.unary())
def gelu(x):
    r"""Gaussian error linear unit (Hendrycks & Gimpel 2016), exact form.

    :math:`z = x\,\Phi(x) = \tfrac{x}{2}\big(1 + \operatorname{erf}(x/\sqrt2)\big)`;
    :math:`\bar x = \bar z\,\big(\Phi(x) + x\,\varphi(x)\big)` (:func:`gelu_backward`).
    """
    return kernel("gelu_forward")(x)


@gelu.defvjp
def gelu_vjp(g, out, x):
    return gelu_backward(g, x)


@primitive(sample=_sample_activation_backward("real"))
def gelu_backward(g, x):
    r"""The VJP of GELU as an op: :math:`z = g\,\mathrm{GELU}'(x)`,
    :math:`\mathrm{GELU}'(x) = \Phi(x) + x\,\varphi(x)`.

    Its VJP: :math:`\bar g = \bar z\,\mathrm{GELU}'(x)` (the same op again) and
    :math:`\bar x = \bar z\, g\,\mathrm{GELU}''(x)`, :math:`\mathrm{GELU}''(x) = \varphi(x)(2 - x^2)`.
    """
    _check_same_shape("gelu_backward", g, x)
    return kernel("gelu_backward")(g, x)


@gelu_backward.defvjp
def gelu_backward_vjp(gg, out, g, x):
    second = mul(_normal_pdf(x), sub(2.0, mul(x, x)))
    return gelu_backward(gg, x), mul(mul(gg, g), second)


def _normal_pdf(x):
    r""":math:`\varphi(x) = e^{-x^2/2}/\sqrt{2\pi}`, in ops (differentiable)."""
    return mul(exp(mul(mul(x, x), -0.5)), _INV_SQRT_2PI)


def gelu_grad(x):
    r"""The derivative :math:`\mathrm{GELU}'(x) = \Phi(x) + x\,\varphi(x)` as a tensor."""
    return gelu_backward(_const(x.xp.ones_like(x.data)), x)


@primitive(sample=S.unary())
def softplus(x):
    r""":math:`z = \log(1 + e^x)`, computed as :math:`\max(x,0) + \log(1 + e^{-|x|})`;
    :math:`\bar x = \bar z\,\sigma(x)`."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


@softplus.defvjp
def softplus_vjp(g, out, x):
    return mul(g, sigmoid(x))


# --------------------------------------------------------------------------------------------
# dtype conversion
# --------------------------------------------------------------------------------------------
def _sample_astype(draw):
    (x,), _ = S.unary()(draw)
    return (x,), {"dtype": np.dtype(np.float64)}


@primitive(sample=_sample_astype)
def astype(x, *, dtype):
    r"""Cast to ``dtype``; :math:`\bar x = \bar z` cast back to the input's dtype."""
    return x.astype(dtype)


@astype.defvjp
def astype_vjp(g, out, x, *, dtype):
    return astype(g, dtype=x.dtype)
