r"""Finite-difference checks of first and second derivatives (float64).

The analytic Jacobian comes from reverse mode, one VJP per output element; the numeric one from
central differences,

.. math:: J_{kj} \approx \frac{f_k(x + \varepsilon e_j) - f_k(x - \varepsilon e_j)}{2\varepsilon},

whose truncation error is :math:`O(\varepsilon^2)`. For large inputs or outputs the full Jacobian
is replaced by random projections: for random :math:`u, v` the scalar :math:`u^\top J v` is
computed both ways (one VJP, two evaluations of :math:`f`). ``gradgradcheck`` applies the same
test to the function :math:`(x, \bar y) \mapsto \bar y^\top \partial f/\partial x` built with
``create_graph=True``, as HIPS autograd's ``check_grads(order=2)`` does.

An element passes when :math:`|a - n| \le \text{atol} + \text{rtol}\,|n|`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from refnas.tensor import Tensor, enable_grad, grad as autograd, is_grad_enabled, no_grad

__all__ = ["gradcheck", "gradgradcheck", "GradcheckError", "GradcheckResult"]

FULL_JACOBIAN_LIMIT = 256   # inputs × outputs elements above which projections are used


class GradcheckError(AssertionError):
    """Analytic and numeric derivatives disagree; the message names op, argument and index."""


@dataclass
class GradcheckResult:
    op: str
    order: int
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    ok: bool = True
    method: str = "full"
    failures: list[str] = field(default_factory=list)

    def as_record(self) -> dict[str, Any]:
        return {"op": self.op, "order": self.order, "max_abs_err": self.max_abs_err,
                "max_rel_err": self.max_rel_err, "ok": self.ok, "method": self.method}


def _float64_copy(a: Any) -> np.ndarray:
    """A float64 copy that keeps ``a``'s memory layout, so ops still see non-contiguous input."""
    a = np.asarray(a)
    if a.flags.c_contiguous or a.ndim == 0:
        return np.array(a, dtype=np.float64, order="C")
    if a.flags.f_contiguous:
        return np.array(a, dtype=np.float64, order="F")
    base = np.zeros(a.shape[:-1] + (2 * a.shape[-1],))
    view = base[..., ::2]
    view[...] = a
    return view


def _prepare(inputs: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """float64 leaf copies of the floating inputs; other inputs (labels, masks) pass through."""
    prepared, differentiable = [], []
    for i, value in enumerate(inputs):
        data = value.data if isinstance(value, Tensor) else value
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            data = np.asarray(data, dtype=np.float64)
        if hasattr(data, "dtype") and np.dtype(data.dtype).kind == "f":
            prepared.append(Tensor(_float64_copy(data), requires_grad=True))
            differentiable.append(i)
        else:
            prepared.append(value)
    return prepared, differentiable


def _evaluate(f: Callable, args: list[Any]) -> np.ndarray:
    with no_grad():
        out = f(*args)
    return np.array(out.data if isinstance(out, Tensor) else out, dtype=np.float64)


def _analytic_vjp(f: Callable, args: list[Any], index: list[int], cotangent: np.ndarray):
    """u^T J for each differentiable input (zeros where an input is unused)."""
    out = f(*args)
    if not isinstance(out, Tensor) or not out.requires_grad:
        return [np.zeros(args[i].shape) for i in index]
    grads = autograd(out, [args[i] for i in index], grad_outputs=Tensor(cotangent.reshape(out.shape)),
                     allow_unused=True)
    return [np.zeros(args[i].shape) if g is None else np.asarray(g.data, dtype=np.float64)
            for g, i in zip(grads, index)]


def _compare(result: GradcheckResult, analytic: np.ndarray, numeric: np.ndarray, atol: float,
             rtol: float, argument: int, where: Callable[[int], str]) -> None:
    abs_err = np.abs(analytic - numeric)
    rel_err = abs_err / np.maximum(np.abs(numeric), 1e-12)
    result.max_abs_err = max(result.max_abs_err, float(abs_err.max(initial=0.0)))
    result.max_rel_err = max(result.max_rel_err, float(np.where(abs_err > atol, rel_err, 0).max(initial=0.0)))
    bad = abs_err > atol + rtol * np.abs(numeric)
    if bad.any():
        k = int(np.argmax(np.where(bad, abs_err, -1).ravel()))
        result.ok = False
        result.failures.append(
            f"{result.op}: order-{result.order} derivative w.r.t. argument {argument} at "
            f"{where(k)}: analytic {analytic.ravel()[k]:.8g}, numeric {numeric.ravel()[k]:.8g} "
            f"(abs err {abs_err.ravel()[k]:.3g}, atol {atol:g}, rtol {rtol:g})")


def _check_full(f, args, index, y0, eps, atol, rtol, result):
    out_size = y0.size
    analytic = {i: np.zeros((out_size, args[i].size)) for i in index}
    for k in range(out_size):
        u = np.zeros(out_size)
        u[k] = 1.0
        for i, row in zip(index, _analytic_vjp(f, args, index, u)):
            analytic[i][k] = row.ravel()
    for i in index:
        x = args[i].data
        numeric = np.zeros((out_size, x.size))
        for j in range(x.size):
            at = np.unravel_index(j, x.shape)   # works for any memory layout of x
            saved = x[at]
            x[at] = saved + eps
            plus = _evaluate(f, args)
            x[at] = saved - eps
            minus = _evaluate(f, args)
            x[at] = saved
            numeric[:, j] = ((plus - minus) / (2 * eps)).ravel()
        shape_in, shape_out = x.shape, y0.shape

        def where(flat_index, shape_in=shape_in, shape_out=shape_out):
            k, j = divmod(flat_index, int(np.prod(shape_in)) or 1)
            return f"input index {_index(j, shape_in)}, output index {_index(k, shape_out)}"

        _compare(result, analytic[i], numeric, atol, rtol, i, where)


def _index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The multi-index of a flat position, as plain ints: ``(1, 0)``."""
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


def _check_projections(f, args, index, y0, eps, atol, rtol, result, rng, n_projections):
    for p in range(n_projections):
        u = rng.standard_normal(y0.size)
        rows = _analytic_vjp(f, args, index, u)
        for i, row in zip(index, rows):
            x = args[i].data
            v = rng.standard_normal(x.shape)
            original = x.copy()
            x += eps * v
            plus = _evaluate(f, args)
            x[...] = original - eps * v
            minus = _evaluate(f, args)
            x[...] = original
            numeric = np.asarray(u @ ((plus - minus) / (2 * eps)).ravel())
            analytic = np.asarray(float((row * v).sum()))
            _compare(result, analytic, numeric, atol, rtol, i,
                     lambda _k, p=p: f"random projection {p} (u^T J v)")


def gradcheck(f: Callable[..., Tensor], inputs: Sequence[Any], eps: float = 1e-6,
              atol: float = 1e-5, rtol: float = 1e-3, *, name: str | None = None,
              n_projections: int = 4, seed: int = 0, full_limit: int = FULL_JACOBIAN_LIMIT,
              raise_exception: bool = True, _order: int = 1) -> GradcheckResult:
    """Check reverse-mode derivatives of ``f(*inputs)`` against central differences in float64.

    Floating inputs are copied to float64 leaves that require grad; others (integer labels,
    boolean masks) are passed unchanged. Returns a :class:`GradcheckResult`; raises
    :class:`GradcheckError` naming the op, argument, index, analytic and numeric values when
    ``raise_exception`` (the default) and the check fails.
    """
    args, index = _prepare(inputs)
    result = GradcheckResult(op=name or getattr(f, "__name__", "function"), order=_order)
    if not index:
        raise ValueError(f"gradcheck({result.op}): no floating-point input to differentiate")
    y0 = _evaluate(f, args)
    in_size = sum(args[i].size for i in index)
    if in_size * max(y0.size, 1) <= full_limit:
        _check_full(f, args, index, y0, eps, atol, rtol, result)
    else:
        result.method = "projection"
        _check_projections(f, args, index, y0, eps, atol, rtol, result,
                           np.random.default_rng(seed), n_projections)
    if not result.ok and raise_exception:
        raise GradcheckError("\n".join(result.failures))
    return result


def gradgradcheck(f: Callable[..., Tensor], inputs: Sequence[Any], grad_outputs: Any = None,
                  eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3, *,
                  name: str | None = None, seed: int = 0, **options: Any) -> GradcheckResult:
    r"""Check second derivatives: gradcheck of :math:`(x, \bar y) \mapsto \bar y^\top J_f(x)`.

    The first derivative is built with ``create_graph=True``, so this exercises every VJP's own
    VJP. ``grad_outputs`` (the cotangent :math:`\bar y`) is random when not given and is itself
    checked as an input.
    """
    from refnas import ops

    args, index = _prepare(inputs)
    op_name = name or getattr(f, "__name__", "function")
    y0 = _evaluate(f, args)
    if grad_outputs is None:
        grad_outputs = np.random.default_rng(seed).standard_normal(y0.shape)
    n = len(args)

    def first_derivative(*xs_and_cotangent):
        xs, cotangent = list(xs_and_cotangent[:n]), xs_and_cotangent[n]
        wrt = [xs[i] for i in index]
        outer = is_grad_enabled()  # False during the numeric pass: no need to record the VJPs
        with enable_grad():  # the numeric pass evaluates under no_grad; the inner grad needs a graph
            y = f(*xs)
            if not isinstance(y, Tensor) or not y.requires_grad:
                return Tensor(np.zeros(sum(x.size for x in wrt)))
            grads = autograd(y, wrt, grad_outputs=cotangent, create_graph=outer,
                             allow_unused=True)
        pieces = [ops.reshape(g if g is not None else Tensor(np.zeros(x.shape)), shape=(-1,))
                  for g, x in zip(grads, wrt)]
        return ops.concatenate(*pieces, axis=0)

    return gradcheck(first_derivative, args + [np.asarray(grad_outputs, dtype=np.float64)],
                     eps=eps, atol=atol, rtol=rtol, name=op_name, seed=seed, _order=2, **options)
