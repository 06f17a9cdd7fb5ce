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
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from refnas.tensor import (AnomalyError, Tensor, _creation_site, _mode, describe)

__all__ = ["Primitive", "primitive", "REGISTRY", "OpError"]

REGISTRY: dict[str, "Primitive"] = {}


class OpError(ValueError):
    """Bad input to an op: the message names the op, the shapes and the dtypes."""


class Primitive:
    """A differentiable operation: forward on arrays, VJP on Tensors."""

    def __init__(self, forward: Callable, *, name: str | None = None, saves: bool = False,
                 sample: Callable | None = None, differentiable: bool = True,
                 second_order: bool = True, tolerance: dict | None = None) -> None:
        self.forward = forward
        self.name = name or forward.__name__
        self.saves = saves
        self.sample = sample
        self.differentiable = differentiable
        self.second_order = second_order
        self.tolerance = tolerance or {}
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
        tensors = _as_tensors(args)
        arrays = [t.data for t in tensors]
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
        needs_graph = _mode.grad_enabled and self.differentiable and any(
            t.requires_grad for t in tensors)
        if not needs_graph:
            out = Tensor._wrap(result)
        else:
            if saved:
                kwargs = {**kwargs, **saved}
            out = Tensor._from_op(result, self, tuple(tensors), kwargs)
        if _mode.anomaly:
            _check_forward(self, out, tensors)
        return out


def _kwargs_text(kwargs: dict) -> str:
    if not kwargs:
        return ""
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if not hasattr(v, "shape"))
    return f" with {shown}" if shown else ""


def _as_tensors(args: tuple) -> list[Tensor]:
    """Convert the positional arguments of an op to Tensors.

    Python scalars take the dtype of the first tensor argument, so ``x * 2`` stays float32.
    """
    like = None
    for a in args:
        if isinstance(a, Tensor):
            like = a
            break
    out = []
    for a in args:
        if isinstance(a, Tensor):
            out.append(a)
        elif like is not None and isinstance(a, (int, float)) and not isinstance(a, bool):
            out.append(Tensor._wrap(like.xp.asarray(a, dtype=like.dtype)))
        else:
            data = a if (like is not None and like.device == "cuda") else np.asarray(a)
            if like is not None and like.device == "cuda":
                data = like.xp.asarray(a)
            out.append(Tensor._wrap(data))
    return out


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
