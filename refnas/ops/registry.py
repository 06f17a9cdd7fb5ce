"""The primitive registry: each op's forward and VJP, registered once, side by side.

A primitive is declared with the :func:`primitive` decorator on its forward (arrays in, array
out), followed by ``@op.defvjp`` on its VJP (Tensors in, Tensors out)::

    @primitive(sample=samplers.binary)
    def mul(x, y):
        r'''Elementwise product. :math:`z = x \\odot y`, :math:`\\bar x = \\bar z \\odot y`.'''
        return x * y

    @mul.defvjp
    def mul_vjp(g, out, x, y):
        return g * y, g * x

* Positional arguments are the differentiable inputs (converted to Tensors); keyword arguments
  are static attributes (axes, shapes, strides) passed unchanged to both forward and VJP.
* The VJP receives the output cotangent ``g``, the output tensor ``out`` and the inputs, and
  returns one gradient per input (``None`` where there is none). It must be written in refnas
  ops, so that ``create_graph=True`` differentiates it again. It never undoes broadcasting: the
  engine does that in one place.
* A forward declared ``saves=True`` returns ``(out, saved)``; ``saved`` (a dict) is passed to the
  VJP as extra keyword arguments (e.g. a max-pool's argmax indices).
* ``sample`` draws example inputs for the registry walk (tests and ``refnas verify``), so a new
  op is covered by the gradient property tests without a new test.
* ``sums_gradient_parts=True``: in a plain backward, when the op's output was used twice, its
  VJP may get ``g`` as a :class:`refnas.tensor.GradientParts` (the two gradients, unadded) and
  add them inside its own kernel's pass.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from refnas.tensor import AnomalyError, Tensor, _as_array, _creation_site, _mode, describe

__all__ = ["Primitive", "primitive", "REGISTRY", "OpError"]

REGISTRY: dict[str, "Primitive"] = {}


class OpError(ValueError):
    """Bad input to an op: the message names the op, the shapes and the dtypes."""


class Primitive:
    """A differentiable operation: forward on arrays, VJP on Tensors."""

    def __init__(self, forward: Callable, *, name: str | None = None, saves: bool = False,
                 sample: Callable | None = None, differentiable: bool = True,
                 second_order: bool = True, tolerance: dict | None = None,
                 sums_gradient_parts: bool = False) -> None:
        self.forward = forward
        self.name = name or forward.__name__
        self.saves = saves
        self.sample = sample
        self.differentiable = differentiable
        self.second_order = second_order
        self.tolerance = tolerance or {}
        # the VJP takes a tensor.GradientParts for g (two gradients to add) in a plain backward
        self.sums_gradient_parts = sums_gradient_parts
        self.vjp_fn: Callable | None = None
        self.__doc__ = forward.__doc__
        self.__name__ = self.name
        self.__wrapped__ = forward

    def defvjp(self, vjp: Callable) -> Callable:
        """Register the vector-Jacobian product (decorator)."""
        self.vjp_fn = vjp
        return vjp

    def vjp(self, g: Tensor, out: Tensor, *inputs: Tensor, **kwargs: Any):
        if self.vjp_fn is None:
            raise RuntimeError(f"{self.name}: this op is not differentiable")
        return self.vjp_fn(g, out, *inputs, **kwargs)

    def __repr__(self) -> str:
        return f"<primitive {self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        # The hot path of every op: one pass over the arguments collects the arrays and whether
        # any input requires grad; only a non-Tensor argument (a scalar) takes the slow path.
        arrays = []
        requires_grad = False
        for a in args:
            if not isinstance(a, Tensor):
                args = _as_tensors(args)
                arrays = [t.data for t in args]
                requires_grad = _any_requires_grad(args)
                break
            arrays.append(a.data)
            if a.requires_grad:
                requires_grad = True
        try:
            result = self.forward(*arrays, **kwargs)
        except OpError:
            raise
        except (ValueError, TypeError, IndexError) as error:
            raise OpError(f"{self.name}: cannot apply to operands {describe(arrays)}"
                          f"{_kwargs_text(kwargs)}: {error}") from error
        saved = None
        if self.saves:
            result, saved = result
        if type(result) is not np.ndarray:
            result = _as_array(result)  # NumPy returns scalars for 0-d results
        mode = _mode
        if requires_grad and mode.grad_enabled and self.differentiable:
            if saved:
                kwargs = {**kwargs, **saved}
            out = Tensor._from_op(result, self, args, kwargs)
        else:
            out = Tensor._wrap(result)
        if mode.anomaly:
            _check_forward(self, out, args)
        return out


def _any_requires_grad(tensors: tuple[Tensor, ...]) -> bool:
    for t in tensors:
        if t.requires_grad:
            return True
    return False


def _kwargs_text(kwargs: dict) -> str:
    if not kwargs:
        return ""
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if not hasattr(v, "shape"))
    return f" with {shown}" if shown else ""


# Scalars met as op arguments, as constant tensors around read-only 0-d arrays, keyed by (type,
# value, dtype of the other operand): the same few constants (0.5, 1.0, 2.0, ...) recur in every
# VJP, so they are made once. Cleared when it grows past a bound (a loop over distinct values).
_SCALARS: dict[tuple, Tensor] = {}
_SCALARS_LIMIT = 4096


def _scalar(value: int | float, like: Tensor | None) -> Tensor:
    """``value`` as a 0-d constant of the dtype NumPy gives ``like <op> value``.

    Scalars are weak (NEP 50): ``float32 * 2.0`` stays float32, ``int64 * 0.5`` is float64.
    """
    if like is None:
        return Tensor._wrap(np.asarray(value))
    dtype = like.data.dtype
    if type(like.data) is not np.ndarray:  # a device array: made afresh, on the device
        return Tensor._wrap(like.xp.asarray(value, dtype=np.result_type(dtype, value)))
    key = (type(value), value, dtype)
    constant = _SCALARS.get(key)
    if constant is None:
        if len(_SCALARS) >= _SCALARS_LIMIT:
            _SCALARS.clear()
        array = np.asarray(value, dtype=np.result_type(dtype, value))
        array.flags.writeable = False
        constant = _SCALARS[key] = Tensor._wrap(array)
    return constant


def _constant(value: Any, like: Tensor | None) -> Tensor:
    """A non-tensor argument as a constant tensor; scalars (Python or NumPy) are weak."""
    kind = type(value)
    if kind is float or kind is int:
        return _scalar(value, like)
    if isinstance(value, (np.integer, np.floating)):
        return _scalar(value.item(), like)
    if like is not None and type(like.data) is not np.ndarray:
        return Tensor._wrap(like.xp.asarray(value))
    return Tensor._wrap(_as_array(value))


def _dtype_source(args: tuple) -> Tensor | None:
    """The tensor whose dtype scalars adopt: the first floating one, else the first one."""
    first = None
    for a in args:
        if isinstance(a, Tensor):
            if a.data.dtype.kind in "fc":
                return a
            if first is None:
                first = a
    return first


def _as_tensors(args: tuple) -> tuple[Tensor, ...]:
    """Convert the positional arguments of an op to Tensors.

    Scalars take the dtype of :func:`_dtype_source`, so ``x * 2``, ``x * np.float64(2)`` and
    ``where(mask, x, 0.5)`` stay float32 for a float32 ``x``.
    """
    for a in args:
        if not isinstance(a, Tensor):
            break
    else:
        return args  # the common case: every argument is already a Tensor
    like = _dtype_source(args)
    return tuple([a if isinstance(a, Tensor) else _constant(a, like) for a in args])


def _check_forward(op: Primitive, out: Tensor, inputs: list[Tensor]) -> None:
    out._site = _creation_site()
    data = out.data
    if data.dtype.kind in "fc":
        xp = out.xp
        if not bool(xp.all(xp.isfinite(data))):
            inputs_finite = all(
                t.data.dtype.kind not in "fc" or bool(t.xp.all(t.xp.isfinite(t.data)))
                for t in inputs)
            if inputs_finite:
                raise AnomalyError(
                    f"{op.name}: forward produced NaN/Inf from finite inputs "
                    f"({describe(inputs)}); op created at {out._site}")


def primitive(forward: Callable | None = None, **options: Any):
    """Declare a primitive (decorator, with or without options); see the module docstring."""
    def register(fn: Callable) -> Primitive:
        op = Primitive(fn, **options)
        if op.name in REGISTRY:
            raise ValueError(f"primitive {op.name!r} is registered twice")
        REGISTRY[op.name] = op
        return op

    if forward is not None:
        return register(forward)
    return register
