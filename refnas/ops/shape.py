r"""Shape primitives: reshape, transpose, broadcast, (un)squeeze, indexing, concatenation, padding.

These move elements without arithmetic, so each VJP moves the cotangent back: the adjoint of a
permutation is the inverse permutation, of a slice is scattering into zeros, of concatenation is
slicing.
"""
from __future__ import annotations

import numpy as np

from refnas.ops import sampling as S
from refnas.ops.registry import OpError, primitive
from refnas.tensor import Tensor


@primitive(sample=lambda d: _sample_reshape(d))
def reshape(x, *, shape):
    r""":math:`z = x` laid out with a new ``shape``; :math:`\bar x = \operatorname{reshape}(\bar z)`."""
    try:
        return x.reshape(shape)
    except ValueError:
        raise OpError(f"reshape: cannot reshape an input of shape {tuple(x.shape)} ({x.dtype}, "
                      f"{x.size} elements) into shape {tuple(shape)}") from None


@reshape.defvjp
def reshape_vjp(g, out, x, *, shape):
    return reshape(g, shape=x.shape)


def _sample_reshape(draw):
    s = S.shape(draw, 1, 3)
    x = S.array(draw, s)
    return (x,), {"shape": (-1,) if draw.boolean() else tuple(reversed(s))}


def _sample_transpose(draw):
    s = S.shape(draw, 0, 4)
    rng = np.random.default_rng(draw.seed())
    axes = None if draw.boolean() else tuple(int(a) for a in rng.permutation(len(s)))
    return (S.array(draw, s),), {"axes": axes}


@primitive(sample=_sample_transpose)
def transpose(x, *, axes=None):
    r"""Permute axes: :math:`z_{i_{\pi(1)}\dots} = x_{i_1\dots}`; :math:`\bar x` is :math:`\bar z`
    permuted by :math:`\pi^{-1}`. ``axes=None`` reverses them."""
    if axes is not None and sorted(int(a) % max(x.ndim, 1) for a in axes) != list(range(x.ndim)):
        raise OpError(f"transpose: axes {tuple(axes)} are not a permutation of the "
                      f"{x.ndim} axes of an input of shape {tuple(x.shape)}")
    return np.transpose(x, axes)


@transpose.defvjp
def transpose_vjp(g, out, x, *, axes=None):
    if axes is None:
        return transpose(g)
    return transpose(g, axes=tuple(int(i) for i in np.argsort([a % x.ndim for a in axes])))


def permute(x, *axes):
    """PyTorch spelling of :func:`transpose` with explicit axes."""
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    return transpose(x, axes=axes)


def _sample_broadcast(draw):
    small, big = S.broadcast_pair(draw)
    shape = np.broadcast_shapes(small, big)
    return (S.array(draw, small),), {"shape": shape}


@primitive(sample=_sample_broadcast)
def broadcast_to(x, *, shape):
    r""":math:`z` = ``x`` repeated along stretched axes; :math:`\bar x = \bar z` summed back over
    them — done by the engine, which reduces every gradient to its input's shape."""
    try:
        return np.broadcast_to(x, shape)
    except ValueError:
        raise OpError(f"broadcast_to: an input of shape {tuple(x.shape)} ({x.dtype}) cannot be "
                      f"broadcast to shape {tuple(shape)}") from None


@broadcast_to.defvjp
def broadcast_to_vjp(g, out, x, *, shape):
    return g


def _sample_squeeze(draw):
    s = list(S.shape(draw, 1, 3))
    where = draw.integers(0, len(s))
    s.insert(where, 1)
    return (S.array(draw, tuple(s)),), {"axis": where if draw.boolean() else None}


@primitive(sample=_sample_squeeze)
def squeeze(x, *, axis=None):
    r"""Drop size-1 axes; :math:`\bar x = \operatorname{reshape}(\bar z)`."""
    if axis is not None:
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        for a in axes:
            if not -x.ndim <= a < x.ndim or x.shape[a] != 1:
                raise OpError(f"squeeze: axis {a} of an input of shape {tuple(x.shape)} is not "
                              f"of size 1")
    return np.squeeze(x, axis=axis)


@squeeze.defvjp
def squeeze_vjp(g, out, x, *, axis=None):
    return reshape(g, shape=x.shape)


def _sample_unsqueeze(draw):
    s = S.shape(draw, 0, 3)
    return (S.array(draw, s),), {"axis": draw.integers(-len(s) - 1, len(s))}


@primitive(sample=_sample_unsqueeze)
def unsqueeze(x, *, axis):
    r"""Insert a size-1 axis at ``axis``; :math:`\bar x = \operatorname{reshape}(\bar z)`."""
    if not -x.ndim - 1 <= axis <= x.ndim:
        raise OpError(f"unsqueeze: axis {axis} is out of range for an input of shape "
                      f"{tuple(x.shape)}")
    return np.expand_dims(x, axis)


@unsqueeze.defvjp
def unsqueeze_vjp(g, out, x, *, axis):
    return reshape(g, shape=x.shape)


# --------------------------------------------------------------------------------------------
# Indexing
# --------------------------------------------------------------------------------------------
def normalize_index(index):
    """Tensors inside an index become arrays; lists become integer/boolean arrays."""
    if isinstance(index, tuple):
        return tuple(normalize_index(i) for i in index)
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, list):
        return np.asarray(index)
    return index


def is_basic_index(index) -> bool:
    """True for ints, slices, None and Ellipsis only: then no element is selected twice."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, (int, np.integer, slice)) or p is None or p is Ellipsis
               for p in parts)


def _sample_getitem(draw):
    s = S.shape(draw, 1, 3, min_side=2)
    x = S.array(draw, s)
    rng = np.random.default_rng(draw.seed())
    kind = draw.choice(["slice", "int", "array", "mask"])
    if kind == "slice":
        index = (slice(draw.integers(0, 1), None, draw.choice([1, 2])),) + (Ellipsis,)
    elif kind == "int":
        index = (draw.integers(-s[0], s[0] - 1),)
    elif kind == "array":  # repeated indices exercise the add.at accumulation
        index = (rng.integers(0, s[0], size=draw.integers(1, 5)),)
    else:
        index = rng.random(s) < 0.5
    return (x,), {"index": index}


@primitive(sample=_sample_getitem)
def getitem(x, *, index):
    r"""Indexing, ``x[index]`` (slices, integers, integer arrays, boolean masks).

    :math:`\bar x = ` :func:`getitem_adjoint` of :math:`\bar z`: the cotangent scattered back into
    zeros, summing where an element was selected more than once.
    """
    try:
        return x[index]
    except IndexError as error:
        raise OpError(f"getitem: index {index!r} is invalid for an input of shape "
                      f"{tuple(x.shape)} ({x.dtype}): {error}") from None


@getitem.defvjp
def getitem_vjp(g, out, x, *, index):
    return getitem_adjoint(g, shape=x.shape, index=index)


@primitive(sample=lambda d: _sample_getitem_adjoint(d))
def getitem_adjoint(g, *, shape, index):
    r"""Scatter-add into zeros: :math:`z = 0_{\text{shape}};\ z[\text{index}] \mathrel{+}= g`.

    Basic indices (slices, integers) never repeat an element, so a plain assignment suffices;
    integer arrays may repeat, so ``np.add.at`` accumulates. Its adjoint is ``getitem`` again.
    """
    out = np.zeros(shape, dtype=g.dtype)
    if is_basic_index(index):
        out[index] = g
    else:
        np.add.at(out, index, g)
    return out


@getitem_adjoint.defvjp
def getitem_adjoint_vjp(gg, out, g, *, shape, index):
    return getitem(gg, index=index)


def _sample_getitem_adjoint(draw):
    (x,), kwargs = _sample_getitem(draw)
    selected = x[kwargs["index"]]
    return (S.array(draw, selected.shape),), {"shape": x.shape, "index": kwargs["index"]}


# --------------------------------------------------------------------------------------------
# Joining and padding
# --------------------------------------------------------------------------------------------
def _sample_join(stack: bool):
    def sample(draw):
        s = S.shape(draw, 1, 3)
        axis = draw.integers(0, len(s)) if stack else draw.integers(0, len(s) - 1)
        parts = []
        for _ in range(draw.integers(1, 3)):
            own = list(s)
            if not stack:
                own[axis] = draw.integers(1, 3)
            parts.append(S.array(draw, tuple(own)))
        return tuple(parts), {"axis": axis}

    return sample


@primitive(sample=_sample_join(stack=False))
def concatenate(*xs, axis=0):
    r"""Join along an existing axis; :math:`\bar x_k` is the k-th slab of :math:`\bar z`."""
    if not xs:
        raise OpError("concatenate: needs at least one input")
    return np.concatenate(xs, axis=axis)


@concatenate.defvjp
def concatenate_vjp(g, out, *xs, axis=0):
    bounds = np.cumsum([0] + [x.shape[axis] for x in xs])
    lead = (slice(None),) * (axis % out.ndim)
    return tuple(getitem(g, index=lead + (slice(int(a), int(b)),))
                 for a, b in zip(bounds[:-1], bounds[1:]))


@primitive(sample=_sample_join(stack=True))
def stack(*xs, axis=0):
    r"""Join along a new axis; :math:`\bar x_k = \bar z[\dots, k, \dots]`."""
    if not xs:
        raise OpError("stack: needs at least one input")
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise OpError(f"stack: all inputs must have the same shape, got "
                      f"{', '.join(str(s) for s in sorted(shapes))}")
    return np.stack(xs, axis=axis)


@stack.defvjp
def stack_vjp(g, out, *xs, axis=0):
    lead = (slice(None),) * (axis % out.ndim)
    return tuple(getitem(g, index=lead + (k,)) for k in range(len(xs)))


def _sample_pad(draw):
    s = S.shape(draw, 1, 3)
    widths = tuple((draw.integers(0, 2), draw.integers(0, 2)) for _ in s)
    return (S.array(draw, s),), {"pad_width": widths, "value": draw.choice([0.0, 1.5])}


@primitive(sample=_sample_pad)
def pad(x, *, pad_width, value=0.0):
    r"""Constant padding: :math:`z` is ``x`` framed by ``value``; :math:`\bar x` is the interior
    of :math:`\bar z` (the padding cells receive no input, so their cotangent is dropped)."""
    widths = _pad_widths(pad_width, x)
    return np.pad(x, widths, mode="constant", constant_values=value)


@pad.defvjp
def pad_vjp(g, out, x, *, pad_width, value=0.0):
    widths = _pad_widths(pad_width, x.data)
    interior = tuple(slice(before, before + n) for (before, _), n in zip(widths, x.shape))
    return getitem(g, index=interior)


def _pad_widths(pad_width, x):
    widths = np.broadcast_to(np.asarray(pad_width, dtype=int), (x.ndim, 2)) if np.ndim(pad_width) < 2 \
        else np.asarray(pad_width, dtype=int)
    if widths.shape != (x.ndim, 2) or (widths < 0).any():
        raise OpError(f"pad: pad_width {pad_width!r} must give (before, after) >= 0 for each of the "
                      f"{x.ndim} axes of an input of shape {tuple(x.shape)}")
    return tuple((int(a), int(b)) for a, b in widths)
