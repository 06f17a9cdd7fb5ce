r"""Reductions over any axes, with ``keepdims``.

Every VJP first restores the reduced axes as size-1 axes (:func:`_keep`), after which plain
broadcasting spreads the cotangent over the reduced elements.
"""
from __future__ import annotations

import numpy as np

from refnas.ops import sampling as S
from refnas.ops.elementwise import _const, mul, sub
from refnas.ops.registry import OpError, primitive
from refnas.ops.shape import broadcast_to, reshape


def normalize_axes(axis, ndim: int, op: str) -> tuple[int, ...]:
    """``axis`` (None, int or tuple; negatives allowed) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    raw = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in raw:
        if not -ndim <= a < ndim:
            raise OpError(f"{op}: axis {a} is out of range for an input with {ndim} dimensions")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise OpError(f"{op}: repeated axis in {axis}")
    return tuple(sorted(out))


def _kept_shape(x_shape, axes) -> tuple[int, ...]:
    """The shape of a reduction over ``axes`` with keepdims: reduced axes become 1."""
    return tuple(1 if i in axes else n for i, n in enumerate(x_shape))


def _keep(g, x_shape, axis, keepdims):
    """Reshape a reduced cotangent so it broadcasts against the input (reduced axes as 1)."""
    if keepdims or g.ndim == 0:  # a 0-d cotangent (a full reduction) broadcasts as it is
        return g
    return reshape(g, shape=_kept_shape(x_shape, normalize_axes(axis, len(x_shape), "reduce")))


def _count(x_shape, axis) -> int:
    axes = normalize_axes(axis, len(x_shape), "reduce")
    return int(np.prod([x_shape[a] for a in axes])) if axes else 1


@primitive(sample=S.reduction())
def sum(x, *, axis=None, keepdims=False):
    r""":math:`z = \sum_{i \in A} x_i`; :math:`\bar x_i = \bar z` (broadcast back over A)."""
    # The method rather than ``np.sum``: the same reduction (NumPy and CuPy), without the
    # function's dispatch layers, which cost more than summing a layer's bias gradient.
    return x.sum(axis=_tuple(axis, x.ndim, "sum"), keepdims=keepdims)


@sum.defvjp
def sum_vjp(g, out, x, *, axis=None, keepdims=False):
    return broadcast_to(_keep(g, x.shape, axis, keepdims), shape=x.shape)


@primitive(sample=S.reduction())
def mean(x, *, axis=None, keepdims=False):
    r""":math:`z = \frac1{|A|}\sum_{i \in A} x_i`; :math:`\bar x_i = \bar z / |A|`."""
    return x.mean(axis=_tuple(axis, x.ndim, "mean"), keepdims=keepdims)


@mean.defvjp
def mean_vjp(g, out, x, *, axis=None, keepdims=False):
    scaled = mul(g, 1.0 / _count(x.shape, axis))
    return broadcast_to(_keep(scaled, x.shape, axis, keepdims), shape=x.shape)


def _extremum_vjp(g, out, x, axis, keepdims):
    """Gradient of max/min: shared equally among the elements that attain the extremum."""
    axes = normalize_axes(axis, x.ndim, "max")
    kept_out = out.data.reshape(_kept_shape(x.shape, axes))
    hits = (x.data == kept_out).astype(g.dtype)
    share = hits / hits.sum(axis=axes, keepdims=True)
    return mul(_keep(g, x.shape, axis, keepdims), _const(share))


@primitive(sample=S.reduction(distinct=True))
def max(x, *, axis=None, keepdims=False):
    r""":math:`z = \max_{i \in A} x_i`; :math:`\bar x_i = \bar z\,[x_i = z] / \#\{j: x_j = z\}`."""
    _check_nonempty(x, axis, "max")
    return np.max(x, axis=_tuple(axis, x.ndim, "max"), keepdims=keepdims)


@max.defvjp
def max_vjp(g, out, x, *, axis=None, keepdims=False):
    return _extremum_vjp(g, out, x, axis, keepdims)


@primitive(sample=S.reduction(distinct=True))
def min(x, *, axis=None, keepdims=False):
    r""":math:`z = \min_{i \in A} x_i`; :math:`\bar x_i = \bar z\,[x_i = z] / \#\{j: x_j = z\}`."""
    _check_nonempty(x, axis, "min")
    return np.min(x, axis=_tuple(axis, x.ndim, "min"), keepdims=keepdims)


@min.defvjp
def min_vjp(g, out, x, *, axis=None, keepdims=False):
    return _extremum_vjp(g, out, x, axis, keepdims)


def _sample_var(draw):
    (x,), kwargs = S.reduction()(draw)
    ddof = draw.choice([0, 1]) if _count(x.shape, kwargs["axis"]) > 1 else 0
    return (x,), {**kwargs, "ddof": ddof}


@primitive(sample=_sample_var)
def var(x, *, axis=None, keepdims=False, ddof=0):
    r"""Variance. :math:`z = \frac{1}{n - d}\sum_{i\in A} (x_i - \mu)^2`, :math:`n = |A|`;
    :math:`\bar x_i = \bar z\,\frac{2 (x_i - \mu)}{n - d}` (the :math:`\partial\mu` terms cancel)."""
    n = _count(x.shape, axis)
    if n - ddof <= 0:
        raise OpError(f"var: ddof={ddof} leaves no degrees of freedom over {n} elements "
                      f"(input {tuple(x.shape)} {x.dtype}, axis={axis})")
    return np.var(x, axis=_tuple(axis, x.ndim, "var"), keepdims=keepdims, ddof=ddof)


@var.defvjp
def var_vjp(g, out, x, *, axis=None, keepdims=False, ddof=0):
    centered = sub(x, mean(x, axis=axis, keepdims=True))
    scale = 2.0 / (_count(x.shape, axis) - ddof)
    return mul(mul(_keep(g, x.shape, axis, keepdims), centered), scale)


def _tuple(axis, ndim, op):
    """``axis`` validated for NumPy: None and ints pass through, sequences become sorted tuples."""
    if type(axis) is int and -ndim <= axis < ndim:  # the common case, checked without a call
        return axis
    if axis is None or isinstance(axis, (int, np.integer)):
        if axis is not None:
            normalize_axes(axis, ndim, op)
        return axis
    return normalize_axes(axis, ndim, op)


def _check_nonempty(x, axis, op):
    if x.size == 0:
        raise OpError(f"{op}: zero-size input {tuple(x.shape)} {x.dtype} has no {op}")


__all__ = ["sum", "mean", "max", "min", "var", "normalize_axes"]
