r"""Softmax family and losses: composites of primitives, plus one fused primitive.

The composites (:func:`logsumexp`, :func:`softmax`, :func:`log_softmax`, :func:`nll_loss`, ...)
are built from primitives, so their gradients of every order come from the primitives' VJPs.
:func:`softmax_cross_entropy` is a fused primitive backed by a kernel, for speed and stability;
it is tested equal to the composed form :func:`cross_entropy_composed`.

Stability: every exponential is taken of :math:`x - \max x`, so logits of magnitude :math:`10^4`
give finite losses and gradients.
"""
from __future__ import annotations

import numpy as np

from refnas.backend import kernel, register_kernel
from refnas.ops import sampling as S
from refnas.ops.elementwise import _const, exp, log, mul, neg, softplus, sub
from refnas.ops.reduce import normalize_axes, sum as sum_op
from refnas.ops.registry import OpError, primitive
from refnas.ops.shape import getitem, reshape
from refnas.tensor import Tensor


def _stop(x: Tensor, axis, keepdims=True) -> Tensor:
    """max over ``axis`` as a constant: the shift cancels in the math, so no gradient is needed."""
    xp = x.xp
    m = xp.max(x.data, axis=axis, keepdims=keepdims)
    return _const(xp.where(xp.isfinite(m), m, 0).astype(x.dtype))


def logsumexp(x: Tensor, axis=-1, keepdims: bool = False) -> Tensor:
    r""":math:`\log\sum_i e^{x_i} = m + \log\sum_i e^{x_i - m}`, :math:`m = \max_i x_i`.

    Its gradient is :math:`\operatorname{softmax}(x)`.
    """
    axes = normalize_axes(axis, x.ndim, "logsumexp")
    m = _stop(x, axes)
    out = log(sum_op(exp(sub(x, m)), axis=axes, keepdims=True)) + m
    if not keepdims:
        out = reshape(out, shape=tuple(n for i, n in enumerate(x.shape) if i not in axes))
    return out


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    r""":math:`\operatorname{softmax}(x)_i = e^{x_i - m} / \sum_j e^{x_j - m}`."""
    e = exp(sub(x, _stop(x, axis)))
    return e / sum_op(e, axis=axis, keepdims=True)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    r""":math:`\log\operatorname{softmax}(x)_i = x_i - \operatorname{logsumexp}(x)`."""
    return sub(x, logsumexp(x, axis=axis, keepdims=True))


# --------------------------------------------------------------------------------------------
# Label and weight checks shared by the classification losses
# --------------------------------------------------------------------------------------------
def _labels(op: str, logits_shape, target) -> np.ndarray:
    target = target.data if isinstance(target, Tensor) else target
    if not hasattr(target, "dtype"):
        target = np.asarray(target)
    if len(logits_shape) != 2:
        raise OpError(f"{op}: expected logits of shape (N, C), got {tuple(logits_shape)}")
    n, c = logits_shape
    if target.dtype.kind not in "iu":
        raise OpError(f"{op}: labels must be integers, got dtype {target.dtype} "
                      f"(shape {tuple(target.shape)})")
    if tuple(target.shape) != (n,):
        raise OpError(f"{op}: labels have shape {tuple(target.shape)} but logits have shape "
                      f"{tuple(logits_shape)}; expected labels of shape ({n},)")
    if n and (int(target.min()) < 0 or int(target.max()) >= c):
        bad = int(((target < 0) | (target >= c)).nonzero()[0][0])
        raise OpError(f"{op}: label {int(target[bad])} at position {bad} is out of range for "
                      f"{c} classes (labels must lie in [0, {c}))")
    return target


def _class_weights(op: str, weight, c: int, like):
    if weight is None:
        return None
    w = weight.data if isinstance(weight, Tensor) else weight
    w = like.xp.asarray(w, dtype=like.dtype)
    if tuple(w.shape) != (c,):
        raise OpError(f"{op}: weight has shape {tuple(w.shape)}, expected ({c},) — one per class")
    return w


# --------------------------------------------------------------------------------------------
# Fused softmax-cross-entropy
# --------------------------------------------------------------------------------------------
@register_kernel("softmax_cross_entropy")
def softmax_cross_entropy_reference(logits, target, weight, label_smoothing):
    r"""Per-row loss :math:`\ell_i = -\sum_c w_c\, q_{ic} \log p_{ic}` (NumPy reference kernel)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(logits.shape[0])
    w = np.ones(logits.shape[1], dtype=logits.dtype) if weight is None else weight
    picked = -w[target] * log_p[rows, target]
    if label_smoothing == 0.0:
        return picked.astype(logits.dtype, copy=False)
    eps, c = label_smoothing, logits.shape[1]
    smooth = -(log_p * w).sum(axis=1) / c
    return ((1.0 - eps) * picked + eps * smooth).astype(logits.dtype, copy=False)


@register_kernel("softmax_cross_entropy_backward")
def softmax_cross_entropy_backward_reference(logits, target, weight, label_smoothing, g):
    r""":math:`\partial\ell_i/\partial z_i = g_i\,(s_i\, p_i - w \odot q_i)`,
    :math:`s_i = \sum_c w_c q_{ic}` (NumPy reference kernel)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    p /= p.sum(axis=1, keepdims=True)
    wq = _smoothed_targets(target, logits.shape[1], label_smoothing, weight, logits.dtype)
    s = wq.sum(axis=1, keepdims=True)
    return (g[:, None] * (s * p - wq)).astype(logits.dtype, copy=False)


def _smoothed_targets(target, c, eps, weight, dtype):
    r""":math:`w \odot q_i`, :math:`q_{ic} = (1-\varepsilon)[c = y_i] + \varepsilon / C`."""
    q = np.full((target.shape[0], c), eps / c, dtype=dtype)
    q[np.arange(target.shape[0]), target] += 1.0 - eps
    return q if weight is None else q * weight


def _sample_ce(draw):
    n, c = draw.integers(1, 4), draw.integers(2, 5)
    rng = np.random.default_rng(draw.seed())
    target = rng.integers(0, c, size=n)
    weight = rng.uniform(0.5, 2.0, c) if draw.boolean() else None
    return (S.array(draw, (n, c)),), {"target": target, "weight": weight,
                                      "label_smoothing": draw.choice([0.0, 0.1])}


@primitive(sample=_sample_ce)
def softmax_cross_entropy(logits, *, target, weight=None, label_smoothing=0.0):
    r"""Fused per-row cross-entropy of softmax(logits) against integer labels.

    :math:`\ell_i = -\sum_c w_c\,q_{ic}\,\log\operatorname{softmax}(z_i)_c`,
    :math:`q_{ic} = (1-\varepsilon)[c = y_i] + \varepsilon/C` (label smoothing, Szegedy et al.
    2016); :math:`\bar z_i = \bar\ell_i\,(s_i\,p_i - w\odot q_i)`, :math:`s_i = \sum_c w_c q_{ic}`.
    """
    return kernel("softmax_cross_entropy")(logits, target, weight, label_smoothing)


@softmax_cross_entropy.defvjp
def softmax_cross_entropy_vjp(g, out, logits, *, target, weight=None, label_smoothing=0.0):
    return softmax_cross_entropy_backward(logits, g, target=target, weight=weight,
                                          label_smoothing=label_smoothing)


def _sample_ce_backward(draw):
    (logits,), kwargs = _sample_ce(draw)
    return (logits, S.array(draw, (logits.shape[0],))), kwargs


@primitive(sample=_sample_ce_backward)
def softmax_cross_entropy_backward(logits, g, *, target, weight=None, label_smoothing=0.0):
    r"""The VJP of :func:`softmax_cross_entropy` as an op of its own, so it can be differentiated.

    :math:`B(z, g)_i = g_i (s_i p_i - w\odot q_i)`. Its VJP, for a cotangent :math:`G`:
    :math:`\bar z_i = g_i s_i\, p_i \odot (G_i - \langle G_i, p_i\rangle)` (the softmax Jacobian),
    :math:`\bar g_i = \langle G_i,\, s_i p_i - w\odot q_i\rangle`.
    """
    return kernel("softmax_cross_entropy_backward")(logits, target, weight, label_smoothing, g)


@softmax_cross_entropy_backward.defvjp
def softmax_cross_entropy_backward_vjp(G, out, logits, g, *, target, weight=None,
                                       label_smoothing=0.0):
    wq = _const(_smoothed_targets(target, logits.shape[1], label_smoothing, weight, logits.dtype))
    s = _const(wq.data.sum(axis=1, keepdims=True))
    p = softmax(logits, axis=1)
    g_col = reshape(g, shape=(g.shape[0], 1))
    softmax_jvp = mul(p, sub(G, sum_op(mul(G, p), axis=1, keepdims=True)))
    grad_logits = mul(mul(g_col, s), softmax_jvp)
    grad_g = sum_op(mul(G, sub(mul(s, p), wq)), axis=1)
    return grad_logits, grad_g


def _reduce(op: str, rows: Tensor, reduction: str, denominator=None) -> Tensor:
    if reduction == "none":
        return rows
    if reduction == "sum":
        return sum_op(rows)
    if reduction == "mean":
        total = sum_op(rows)
        return total / (denominator if denominator is not None else max(rows.size, 1))
    raise OpError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def cross_entropy(logits: Tensor, target, weight=None, label_smoothing: float = 0.0,
                  reduction: str = "mean") -> Tensor:
    r"""Cross-entropy of integer labels against logits of shape (N, C) (fused kernel).

    With class weights, ``mean`` divides by :math:`\sum_i w_{y_i}` (PyTorch's convention).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise OpError(f"cross_entropy: label_smoothing must lie in [0, 1), got {label_smoothing}")
    target = _labels("cross_entropy", logits.shape, target)
    w = _class_weights("cross_entropy", weight, logits.shape[1], logits)
    rows = softmax_cross_entropy(logits, target=target, weight=w,
                                 label_smoothing=float(label_smoothing))
    denominator = None if w is None else float(w[target].sum())
    return _reduce("cross_entropy", rows, reduction, denominator)


def cross_entropy_composed(logits: Tensor, target, weight=None, label_smoothing: float = 0.0,
                           reduction: str = "mean") -> Tensor:
    """The same loss as :func:`cross_entropy`, composed from primitives (the fused op's oracle)."""
    target = _labels("cross_entropy", logits.shape, target)
    w = _class_weights("cross_entropy", weight, logits.shape[1], logits)
    wq = _const(_smoothed_targets(target, logits.shape[1], label_smoothing, w, logits.dtype))
    rows = neg(sum_op(mul(wq, log_softmax(logits, axis=1)), axis=1))
    denominator = None if w is None else float(w[target].sum())
    return _reduce("cross_entropy", rows, reduction, denominator)


def nll_loss(log_probs: Tensor, target, weight=None, reduction: str = "mean") -> Tensor:
    r"""Negative log-likelihood: :math:`\ell_i = -w_{y_i} \log p_{i, y_i}` from log-probabilities."""
    target = _labels("nll_loss", log_probs.shape, target)
    w = _class_weights("nll_loss", weight, log_probs.shape[1], log_probs)
    picked = getitem(log_probs, index=(np.arange(log_probs.shape[0]), target))
    rows = neg(picked) if w is None else neg(mul(picked, _const(w[target])))
    denominator = None if w is None else float(w[target].sum())
    return _reduce("nll_loss", rows, reduction, denominator)


def mse_loss(prediction: Tensor, target, reduction: str = "mean") -> Tensor:
    r"""Mean squared error :math:`\frac1n\sum_i (\hat y_i - y_i)^2`."""
    target = target if isinstance(target, Tensor) else _const(
        prediction.xp.asarray(target, dtype=prediction.dtype))
    if target.shape != prediction.shape:
        raise OpError(f"mse_loss: prediction has shape {prediction.shape} ({prediction.dtype}) "
                      f"but target has shape {target.shape} ({target.dtype})")
    diff = sub(prediction, target)
    return _reduce("mse_loss", mul(diff, diff), reduction)


def binary_cross_entropy_with_logits(logits: Tensor, target, weight=None, pos_weight=None,
                                     reduction: str = "mean") -> Tensor:
    r"""Logistic loss on logits :math:`z` with targets :math:`y \in [0, 1]`:

    :math:`\ell = (1 - y)\,z + (1 + (p - 1)\,y)\,\operatorname{softplus}(-z)`, which for
    ``pos_weight`` :math:`p = 1` is :math:`\operatorname{softplus}(z) - y z`; stable for any
    :math:`|z|` because softplus is.
    """
    target = target if isinstance(target, Tensor) else _const(
        logits.xp.asarray(target, dtype=logits.dtype))
    if target.shape != logits.shape:
        raise OpError(f"binary_cross_entropy_with_logits: logits have shape {logits.shape} "
                      f"({logits.dtype}) but target has shape {target.shape} ({target.dtype})")
    if pos_weight is None:
        rows = sub(softplus(logits), mul(target, logits))
    else:
        p = _const(logits.xp.asarray(pos_weight, dtype=logits.dtype))
        rows = mul(sub(1.0, target), logits) + mul(1.0 + mul(p - 1.0, target), softplus(neg(logits)))
    if weight is not None:
        rows = mul(rows, _const(logits.xp.asarray(weight, dtype=logits.dtype)))
    return _reduce("binary_cross_entropy_with_logits", rows, reduction)
