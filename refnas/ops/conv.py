r"""2-D convolution: the forward, its input gradient (a transposed convolution) and its weight
gradient — three primitives, each with a kernel and a VJP written with the other two, so
convolution is differentiable to any order.

Notation: input :math:`x` of shape (N, C, H, W), weight :math:`w` of shape (O, C/G, KH, KW) with
G groups, stride :math:`s`, zero padding :math:`\pi`, dilation :math:`d`. Output channel
:math:`o` belongs to group :math:`g(o) = \lfloor o\,G/O \rfloor` and sees only that group's
C/G input channels:

.. math::

    y_{n,o,i,j} = \sum_{c,p,q} w_{o,c,p,q}\;
                  x_{n,\; g(o)\,C/G + c,\; i s_h + p d_h - \pi_h,\; j s_w + q d_w - \pi_w},
    \qquad OH = \Big\lfloor \frac{H + 2\pi_h - d_h (KH-1) - 1}{s_h} \Big\rfloor + 1

(x is zero outside its bounds). Depthwise convolution is G = C. The NumPy reference is im2col
(Chellapilla et al. 2006): the *windows* :math:`x_{n,c,\,i s + p d,\, j s + q d}` of the padded
input are a strided view, and the sum over :math:`(c, p, q)` is one matrix product per group.

This module also holds the sliding-window helpers (:func:`windows`, :func:`add_windows`) that
the pooling ops share.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from refnas.backend import kernel, register_kernel
from refnas.ops import sampling as S
from refnas.ops.reduce import sum as sum_op
from refnas.ops.registry import OpError, primitive
from refnas.tensor import Tensor, _array_module, describe, is_grad_enabled

Pair = tuple[int, int]

__all__ = ["conv2d", "conv2d_primitive", "conv2d_input_grad", "conv2d_weight_grad"]


# --------------------------------------------------------------------------------------------
# Arguments and geometry (shared with pooling)
# --------------------------------------------------------------------------------------------
def pair(value: Any, name: str, op: str, minimum: int = 1) -> Pair:
    """``value`` (an int or a pair of ints) as an (height, width) pair, each ``>= minimum``."""
    if type(value) is tuple and len(value) == 2:      # the common case, checked in a few ns
        first, second = value
        if type(first) is int and type(second) is int and min(first, second) >= minimum:
            return value
    values = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if (len(values) != 2 or not all(isinstance(v, (int, np.integer)) for v in values)
            or any(isinstance(v, bool) for v in values) or min(values) < minimum):
        raise OpError(f"{op}: {name} must be an int >= {minimum} or a pair of them, "
                      f"got {value!r}")
    return int(values[0]), int(values[1])


def output_size(size: int, kernel_size: int, stride: int, padding: int, dilation: int = 1) -> int:
    r""":math:`\lfloor (n + 2\pi - d(k-1) - 1)/s \rfloor + 1` (may be < 1: the caller checks)."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def output_hw(op: str, x_shape: tuple, kernel_hw: Pair, stride: Pair, padding: Pair,
              dilation: Pair = (1, 1)) -> Pair:
    """(OH, OW) for a 4-D input, or an error when the (dilated) kernel exceeds the padded input."""
    h, w = x_shape[-2:]
    oh, ow = (output_size(n, k, s, p, d)
              for n, k, s, p, d in zip((h, w), kernel_hw, stride, padding, dilation))
    if oh < 1 or ow < 1:
        extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel_hw, dilation))
        raise OpError(f"{op}: kernel of extent {extent} (size {tuple(kernel_hw)}, dilation "
                      f"{tuple(dilation)}) is larger than the padded input "
                      f"({h + 2 * padding[0]}, {w + 2 * padding[1]}) (input {tuple(x_shape)}, "
                      f"padding {tuple(padding)})")
    return oh, ow


def check_4d(op: str, name: str, a: Any) -> None:
    if a.ndim != 4:
        raise OpError(f"{op}: {name} must be 4-D (N, C, H, W), got shape {tuple(a.shape)} "
                      f"({a.dtype})")
    if a.dtype.kind != "f":
        raise OpError(f"{op}: {name} must be floating point, got {a.dtype} "
                      f"(shape {tuple(a.shape)})")


# --------------------------------------------------------------------------------------------
# Sliding windows: im2col as a view, col2im as KH*KW strided adds
# --------------------------------------------------------------------------------------------
def pad_hw(x: Any, padding: Pair, value: float = 0.0) -> Any:
    """``x`` framed by ``padding`` cells of ``value`` on its last two axes: the one copy the
    reference makes of its input (none at all when the padding is zero)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = _array_module(x)
    widths = [(0, 0)] * (x.ndim - 2) + [(ph, ph), (pw, pw)]
    return xp.pad(x, widths, mode="constant", constant_values=value)


def windows(padded: Any, kernel_hw: Pair, stride: Pair, dilation: Pair = (1, 1)) -> Any:
    r"""The read-only view :math:`V_{\dots,i,j,p,q} = X_{\dots,\; i s_h + p d_h,\; j s_w + q d_w}`
    of the (already padded) array ``padded``, shape (..., OH, OW, KH, KW). No element is copied."""
    xp = _array_module(padded)
    *lead, hp, wp = padded.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel_hw, stride, dilation
    oh, ow = output_size(hp, kh, sh, 0, dh), output_size(wp, kw, sw, 0, dw)
    *lead_strides, row, col = padded.strides
    shape = (*lead, oh, ow, kh, kw)
    strides = (*lead_strides, row * sh, col * sw, row * dh, col * dw)
    if xp is np:  # read-only, so that no one writes through overlapping windows
        return np.lib.stride_tricks.as_strided(padded, shape, strides, writeable=False)
    return xp.lib.stride_tricks.as_strided(padded, shape, strides)   # CuPy: no writeable flag


def add_windows(cols: Any, padded_hw: Pair, stride: Pair, dilation: Pair = (1, 1)) -> Any:
    r"""The adjoint of :func:`windows` (col2im): :math:`X_{\dots,\,i s_h + p d_h,\, j s_w + q d_w}
    \mathrel{+}= V_{\dots,i,j,p,q}` into zeros of shape (..., HP, WP).

    One strided slice-add per kernel offset (p, q), so the loop runs KH*KW times, never over
    pixels; overlapping windows accumulate.
    """
    xp = _array_module(cols)
    *lead, oh, ow, kh, kw = cols.shape
    (sh, sw), (dh, dw) = stride, dilation
    out = xp.zeros((*lead, *padded_hw), dtype=cols.dtype)
    for p in range(kh):
        rows = slice(p * dh, p * dh + sh * (oh - 1) + 1, sh)
        for q in range(kw):
            columns = slice(q * dw, q * dw + sw * (ow - 1) + 1, sw)
            out[..., rows, columns] += cols[..., p, q]
    return out


def crop_hw(padded: Any, padding: Pair, size_hw: Pair) -> Any:
    """The interior (size_hw) of an array padded by ``padding``, as a contiguous array."""
    (ph, pw), (h, w) = padding, size_hw
    return _array_module(padded).ascontiguousarray(padded[..., ph:ph + h, pw:pw + w])


# --------------------------------------------------------------------------------------------
# NumPy reference kernels
# --------------------------------------------------------------------------------------------
def _columns(x, kernel_hw, stride, padding, dilation, groups):
    """im2col by group: (G, N*OH*OW, C/G*KH*KW), the only copy besides the padding."""
    win = windows(pad_hw(x, padding), kernel_hw, stride, dilation)    # (N, C, OH, OW, KH, KW)
    n, c, oh, ow, kh, kw = win.shape
    win = win.reshape(n, groups, c // groups, oh, ow, kh, kw)           # still a view
    # (sizes spelled out, not -1: an empty batch would leave the last one undetermined)
    cols = win.transpose(1, 0, 3, 4, 2, 5, 6).reshape(groups, n * oh * ow,
                                                      c // groups * kh * kw)
    return cols, (oh, ow)


def _by_group(a, groups):
    """(N, G*K, OH, OW) -> (G, N*OH*OW, K): output channels of each group as matrix columns."""
    n, channels, oh, ow = a.shape
    return a.reshape(n, groups, channels // groups, oh, ow).transpose(1, 0, 3, 4, 2).reshape(
        groups, n * oh * ow, channels // groups)


@register_kernel("conv2d_forward")
def conv2d_forward_reference(x, w, stride: Pair, padding: Pair, dilation: Pair, groups: int,
                             bias=None, keep_columns=False):
    r""":math:`Y_g = \operatorname{cols}_g(x)\, W_g^\top` per group g, i.e.
    :math:`y_{n,o,i,j} = b_o + \sum_{c,p,q} w_{o,c,p,q}\, x_{n,g(o)C/G+c,\,i s_h+p d_h-\pi_h,\,
    j s_w+q d_w-\pi_w}` (:math:`b = 0` without a bias) (NumPy reference kernel).

    ``keep_columns`` asks for ``(y, columns)``: an accelerated kernel may hand back its packed
    columns for the weight gradient; the reference keeps none (None)."""
    n, o = x.shape[0], w.shape[0]
    cols, (oh, ow) = _columns(x, w.shape[2:], stride, padding, dilation, groups)
    # (G, C/G*KH*KW, O/G), the sizes spelled out (of an empty w, -1 would be undetermined)
    w_mat = w.reshape(groups, o // groups, math.prod(w.shape[1:])).transpose(0, 2, 1)
    y = cols @ w_mat                                                   # (G, N*OH*OW, O/G)
    y = y.reshape(groups, n, oh, ow, o // groups).transpose(1, 0, 4, 2, 3)
    y = _array_module(x).ascontiguousarray(y.reshape(n, o, oh, ow))
    if bias is not None:
        y += bias.reshape(1, o, 1, 1)
    return (y, None) if keep_columns else y


@register_kernel("conv2d_weight_grad")
def conv2d_weight_grad_reference(x, gy, weight_shape, stride: Pair, padding: Pair,
                                 dilation: Pair, groups: int, columns=None):
    r""":math:`\bar w_{o,c,p,q} = \sum_{n,i,j} \bar y_{n,o,i,j}\, x_{n,g(o)C/G+c,\,i s_h+p d_h
    -\pi_h,\, j s_w+q d_w-\pi_w}`: per group :math:`\bar W_g = \bar Y_g^\top
    \operatorname{cols}_g(x)` (NumPy reference kernel; an accelerated kernel's kept
    ``columns`` are not its layout and are ignored)."""
    cols, _ = _columns(x, tuple(weight_shape[2:]), stride, padding, dilation, groups)
    gw = _by_group(gy, groups).transpose(0, 2, 1) @ cols               # (G, O/G, C/G*KH*KW)
    return gw.reshape(tuple(weight_shape))


@register_kernel("conv2d_input_grad")
def conv2d_input_grad_reference(gy, w, input_shape, stride: Pair, padding: Pair,
                                dilation: Pair, groups: int):
    r"""The transposed convolution :math:`\bar x_{n,g C/G+c,\,i s_h+p d_h-\pi_h,\,j s_w+q d_w
    -\pi_w} \mathrel{+}= \sum_{o \in g} w_{o,c,p,q}\, \bar y_{n,o,i,j}`: per group the column
    gradient :math:`\bar Y_g W_g` is scattered back by col2im (NumPy reference kernel)."""
    n, c, h, width = input_shape
    o, cg, kh, kw = w.shape
    oh, ow = gy.shape[2:]
    w_mat = w.reshape(groups, o // groups, cg * kh * kw)
    dcols = _by_group(gy, groups) @ w_mat                              # (G, N*OH*OW, C/G*KH*KW)
    dcols = dcols.reshape(groups, n, oh, ow, cg, kh, kw).transpose(1, 0, 4, 2, 3, 5, 6)
    padded_hw = (h + 2 * padding[0], width + 2 * padding[1])
    gx = add_windows(dcols, padded_hw, stride, dilation)              # (N, G, C/G, HP, WP)
    return crop_hw(gx.reshape(n, c, *padded_hw), padding, (h, width))


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
@register_kernel("conv2d_backward")
def conv2d_backward_reference(gy, x, w, stride: Pair, padding: Pair, dilation: Pair,
                              groups: int, columns=None):
    r"""Both gradients of conv2d, :math:`(\bar x, \bar w)`: the two reference kernels above, one
    after the other (NumPy reference kernel). An accelerated kernel may share work between them
    (the Numba one pads :math:`\bar y` once for both)."""
    return (conv2d_input_grad_reference(gy, w, x.shape, stride, padding, dilation, groups),
            conv2d_weight_grad_reference(x, gy, w.shape, stride, padding, dilation, groups))


def _geometry(op: str, stride, padding, dilation, groups) -> dict:
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise OpError(f"{op}: groups must be a positive int, got {groups!r}")
    return {"stride": pair(stride, "stride", op), "padding": pair(padding, "padding", op, 0),
            "dilation": pair(dilation, "dilation", op), "groups": int(groups)}


def _check_conv(op: str, x_shape: tuple, w_shape: tuple, geometry: dict, arrays) -> Pair:
    """Channel and group consistency of an input and weight shape; returns (OH, OW)."""
    groups = geometry["groups"]
    if len(w_shape) != 4:
        raise OpError(f"{op}: weight must be 4-D (O, C/groups, KH, KW), got shape "
                      f"{tuple(w_shape)} (operands {describe(arrays)})")
    c, (o, cg) = x_shape[1], w_shape[:2]
    if c % groups or o % groups:
        raise OpError(f"{op}: groups={groups} must divide both the input channels C={c} and "
                      f"the output channels O={o} (operands {describe(arrays)})")
    if cg * groups != c:
        raise OpError(f"{op}: input has C={c} channels but weight {tuple(w_shape)} expects "
                      f"C/groups*groups = {cg}*{groups} = {cg * groups} "
                      f"(operands {describe(arrays)})")
    if any(a.dtype != arrays[0].dtype for a in arrays):
        raise OpError(f"{op}: operands must share one dtype, got {describe(arrays)}")
    return output_hw(op, x_shape, tuple(w_shape[2:]), geometry["stride"], geometry["padding"],
                     geometry["dilation"])


def _pairs(geometry: dict) -> tuple:
    return (geometry["stride"], geometry["padding"], geometry["dilation"], geometry["groups"])


# --------------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------------
def _sample_geometry(draw) -> tuple[tuple, tuple, dict]:
    """A small convolution: (x shape, w shape, geometry) with a kernel that fits."""
    kind = draw.choice(["plain", "grouped", "depthwise"])
    if kind == "depthwise":            # one input channel per group, G = C
        groups, cg = draw.integers(2, 4), 1
    else:
        groups, cg = (1 if kind == "plain" else 2), draw.integers(1, 2)
    og = draw.integers(1, 2)
    kh, kw = draw.integers(1, 3), draw.integers(1, 3)
    geometry = {"stride": (draw.integers(1, 2), draw.integers(1, 2)),
                "padding": (draw.integers(0, 1), draw.integers(0, 1)),
                "dilation": (draw.integers(1, 2), draw.integers(1, 2)), "groups": groups}
    extent = [d * (k - 1) + 1 - 2 * p for k, d, p in
              zip((kh, kw), geometry["dilation"], geometry["padding"])]
    h, w = (draw.integers(max(e, 1), min(max(e, 1) + 3, 6)) for e in extent)
    x_shape = (draw.integers(1, 2), groups * cg, h, w)
    return x_shape, (groups * og, cg, kh, kw), geometry


def _sample_conv(draw):
    x_shape, w_shape, geometry = _sample_geometry(draw)
    operands = (S.array(draw, x_shape), S.array(draw, w_shape))
    if draw.choice([False, True]):                                     # with a bias
        operands += (S.array(draw, (w_shape[0],)),)
    return operands, geometry


@primitive(name="conv2d", saves=True, sample=_sample_conv)
def conv2d_primitive(x, w, b=None, *, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                     groups=1):
    r"""2-D cross-correlation, with the bias b (O,) added when given (see the module docstring
    for the formula). The kernel adds the bias while it writes the output, so a biased
    convolution makes no second pass over it. When the kernel hands back its packed columns of
    x (Numba, small maps) and a graph may be recorded, they are saved for the weight gradient,
    which then does not pack x again.

    VJP: :math:`\bar x = ` :func:`conv2d_input_grad` :math:`(\bar y, w)`,
    :math:`\bar w = ` :func:`conv2d_weight_grad` :math:`(x, \bar y)`,
    :math:`\bar b_o = \sum_{n,i,j} \bar y_{n,o,i,j}`.
    """
    geometry = _geometry("conv2d", stride, padding, dilation, groups)
    check_4d("conv2d", "input", x)
    operands = (x, w) if b is None else (x, w, b)
    _check_conv("conv2d", x.shape, w.shape, geometry, operands)
    if b is not None and tuple(b.shape) != (w.shape[0],):
        raise OpError(f"conv2d: bias must have shape ({w.shape[0]},) for a weight of shape "
                      f"{tuple(w.shape)}, got {describe([b])}")
    if not is_grad_enabled():                   # no graph: nothing would keep the columns
        return kernel("conv2d_forward")(x, w, *_pairs(geometry), bias=b), {}
    y, columns = kernel("conv2d_forward")(x, w, *_pairs(geometry), bias=b, keep_columns=True)
    return y, ({} if columns is None else {"columns": columns})


@conv2d_primitive.defvjp
def conv2d_vjp(g, out, x, w, b=None, *, stride, padding, dilation, groups, columns=None):
    geometry = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    if x.requires_grad and w.requires_grad and not is_grad_enabled():
        # both gradients and no graph of this backward pass to record: one kernel, which may
        # share work between them (the primitives below stay differentiable for create_graph)
        gx, gw = kernel("conv2d_backward")(g.data, x.data, w.data,
                                           *_pairs(_geometry("conv2d", **geometry)),
                                           columns=columns)
        gx, gw = Tensor._wrap(gx), Tensor._wrap(gw)
    else:
        gx = conv2d_input_grad(g, w, input_shape=x.shape, **geometry) if x.requires_grad \
            else None
        kept = {} if columns is None else {"columns": columns}
        gw = conv2d_weight_grad(x, g, weight_shape=w.shape, **kept, **geometry) \
            if w.requires_grad else None
    if b is None:
        return gx, gw
    return gx, gw, (sum_op(g, axis=(0, 2, 3)) if b.requires_grad else None)


def _sample_input_grad(draw):
    x_shape, w_shape, geometry = _sample_geometry(draw)
    oh, ow = output_hw("sample", x_shape, w_shape[2:], geometry["stride"], geometry["padding"],
                       geometry["dilation"])
    gy = S.array(draw, (x_shape[0], w_shape[0], oh, ow))
    return (gy, S.array(draw, w_shape)), {**geometry, "input_shape": x_shape}


@primitive(sample=_sample_input_grad)
def conv2d_input_grad(gy, w, *, input_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                      groups=1):
    r"""Transposed convolution :math:`T(\bar y, w)`: the input gradient of :func:`conv2d`.

    :math:`T` is bilinear and :math:`\langle G, T(\bar y, w)\rangle = \langle \operatorname{conv}
    (G, w), \bar y\rangle = \langle w, W(G, \bar y)\rangle` (W = :func:`conv2d_weight_grad`), so
    its VJP for a cotangent G (shaped like x) is
    :math:`\bar{\bar y} = \operatorname{conv}(G, w)`, :math:`\bar w = W(G, \bar y)`.
    """
    geometry = _geometry("conv2d_input_grad", stride, padding, dilation, groups)
    check_4d("conv2d_input_grad", "gy", gy)
    input_shape = tuple(int(n) for n in input_shape)
    _check_output("conv2d_input_grad", input_shape, w.shape, gy, geometry, (gy, w))
    return kernel("conv2d_input_grad")(gy, w, input_shape, *_pairs(geometry))


@conv2d_input_grad.defvjp
def conv2d_input_grad_vjp(G, out, gy, w, *, input_shape, **geometry):
    g_gy = conv2d_primitive(G, w, **geometry) if gy.requires_grad else None
    g_w = conv2d_weight_grad(G, gy, weight_shape=w.shape, **geometry) if w.requires_grad else None
    return g_gy, g_w


def _sample_weight_grad(draw):
    (gy, w), kwargs = _sample_input_grad(draw)
    x = S.array(draw, kwargs.pop("input_shape"))
    return (x, gy), {**kwargs, "weight_shape": w.shape}


@primitive(sample=_sample_weight_grad)
def conv2d_weight_grad(x, gy, *, weight_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                       groups=1, columns=None):
    r"""The weight gradient :math:`W(x, \bar y)` of :func:`conv2d`.

    :math:`W` is bilinear and :math:`\langle G, W(x, \bar y)\rangle = \langle \operatorname{conv}
    (x, G), \bar y\rangle = \langle x, T(\bar y, G)\rangle`, so its VJP for a cotangent G
    (shaped like w) is :math:`\bar x = T(\bar y, G)`, :math:`\bar{\bar y} = \operatorname{conv}
    (x, G)`. ``columns``: the packed columns of x that the forward's kernel kept (see
    :func:`conv2d_primitive`), passed on to the kernel, which may skip packing x.
    """
    geometry = _geometry("conv2d_weight_grad", stride, padding, dilation, groups)
    check_4d("conv2d_weight_grad", "input", x)
    weight_shape = tuple(int(n) for n in weight_shape)
    _check_output("conv2d_weight_grad", x.shape, weight_shape, gy, geometry, (x, gy))
    if columns is None:
        return kernel("conv2d_weight_grad")(x, gy, weight_shape, *_pairs(geometry))
    return kernel("conv2d_weight_grad")(x, gy, weight_shape, *_pairs(geometry), columns=columns)


@conv2d_weight_grad.defvjp
def conv2d_weight_grad_vjp(G, out, x, gy, *, weight_shape, columns=None, **geometry):
    g_x = conv2d_input_grad(gy, G, input_shape=x.shape, **geometry) if x.requires_grad else None
    g_gy = conv2d_primitive(x, G, **geometry) if gy.requires_grad else None
    return g_x, g_gy


def _check_output(op: str, x_shape, w_shape, gy, geometry, arrays) -> None:
    """The output gradient must have the shape the forward convolution would produce."""
    if len(x_shape) != 4:
        raise OpError(f"{op}: input_shape must have 4 entries (N, C, H, W), got {x_shape}")
    oh, ow = _check_conv(op, x_shape, w_shape, geometry, arrays)
    expected = (x_shape[0], w_shape[0], oh, ow)
    if tuple(gy.shape) != expected:
        raise OpError(f"{op}: gy has shape {tuple(gy.shape)} ({gy.dtype}) but a convolution of "
                      f"an input {tuple(x_shape)} with a weight {tuple(w_shape)} gives {expected}")


# --------------------------------------------------------------------------------------------
# Public op
# --------------------------------------------------------------------------------------------
def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int | Pair = 1,
           padding: int | Pair = 0, dilation: int | Pair = 1, groups: int = 1) -> Tensor:
    r"""2-D convolution (cross-correlation, as in PyTorch) with optional bias.

    :math:`y_{n,o,i,j} = b_o + \sum_{c,p,q} w_{o,c,p,q}\, x_{n,\,g(o)C/G+c,\,i s_h + p d_h
    - \pi_h,\, j s_w + q d_w - \pi_w}`; x (N, C, H, W), weight (O, C/groups, KH, KW),
    bias (O,). ``groups == C`` is a depthwise convolution. Sizes are ints or (h, w) pairs.
    """
    geometry = _geometry("conv2d", stride, padding, dilation, groups)
    if bias is None:
        return conv2d_primitive(x, weight, **geometry)
    return conv2d_primitive(x, weight, bias, **geometry)
