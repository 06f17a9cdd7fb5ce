"""Tensor, grad mode and the reverse-mode engine.

A :class:`Tensor` wraps an ndarray (NumPy, or CuPy on a GPU). When an op is applied to tensors
that require gradients while grad mode is on, the result remembers the op, its input tensors and
its keyword arguments; that record *is* the graph (micrograd's layout: every tensor is a node).

``backward`` walks the graph from the output in reverse topological order and asks each op for
its vector-Jacobian product (VJP). The order needs no recursion: every op output carries a
sequence number drawn when it was created, and an op's inputs always exist before its output, so
sorting the reachable nodes by decreasing number puts every consumer before its inputs (the
``sequence_nr`` of PyTorch's engine). A chain of 100,000 ops is just a longer list.

The VJPs are written in refnas ops themselves, so with ``create_graph=True`` the backward pass
is recorded too and can be differentiated again (Hessian-vector products); with it off, the same
code runs under ``no_grad`` and costs only thin wrappers.

Broadcasting is undone in exactly one place, :func:`_sum_to_shape`, called by the engine on every
gradient before it reaches an input.
"""
from __future__ import annotations

import itertools
import operator
import os
import threading
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

__all__ = [
    "Tensor", "tensor", "as_tensor", "zeros", "ones", "zeros_like", "ones_like", "full",
    "arange", "randn", "rand", "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled",
    "grad", "backward", "detect_anomaly", "is_anomaly_enabled", "AnomalyError", "GraphFreedError",
]


# --------------------------------------------------------------------------------------------
# Grad mode and anomaly mode (thread-local, so a search worker thread can run no_grad freely)
# --------------------------------------------------------------------------------------------
class _Mode(threading.local):
    def __init__(self) -> None:
        self.grad_enabled = True
        self.anomaly = False


_mode = _Mode()


def is_grad_enabled() -> bool:
    return _mode.grad_enabled


@contextmanager
def set_grad_enabled(enabled: bool) -> Iterator[None]:
    """Context manager that sets grad mode for this thread and restores it on exit."""
    previous = _mode.grad_enabled
    _mode.grad_enabled = bool(enabled)
    try:
        yield
    finally:
        _mode.grad_enabled = previous


def no_grad():
    """Ops inside this context record nothing: cheaper, and no gradient flows through them."""
    return set_grad_enabled(False)


def enable_grad():
    """Re-enable recording inside a ``no_grad`` block (e.g. for a second-order pass)."""
    return set_grad_enabled(True)


class AnomalyError(FloatingPointError):
    """Raised in anomaly mode when an op's forward or VJP produces NaN or Inf."""


class GraphFreedError(RuntimeError):
    """Raised when backward runs a second time through a graph freed by the first."""


def is_anomaly_enabled() -> bool:
    return _mode.anomaly


@contextmanager
def detect_anomaly(enabled: bool = True) -> Iterator[None]:
    """Opt-in anomaly mode.

    Every op records the stack frame where it was created and checks its output for NaN/Inf; the
    backward pass checks every VJP. The first offender raises :class:`AnomalyError` naming the
    op, the shapes and dtypes of its inputs, and where in user code it was created.
    """
    previous = _mode.anomaly
    _mode.anomaly = bool(enabled)
    try:
        with np.errstate(all="ignore"):  # we report the op ourselves, more precisely than NumPy
            yield
    finally:
        _mode.anomaly = previous


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _creation_site() -> str:
    """The innermost stack frame outside the refnas package: where the user created the op."""
    for frame in reversed(traceback.extract_stack()[:-1]):
        filename = os.path.abspath(frame.filename)
        if not filename.startswith(_PACKAGE_DIR) and "contextlib" not in filename:
            return f"{frame.filename}:{frame.lineno} in {frame.name}: {frame.line}"
    return "<unknown>"


def describe(arrays: Sequence[Any]) -> str:
    """``(3, 4) float32, (4,) float32`` — used by every error message that names operands."""
    parts = []
    for a in arrays:
        data = a.data if isinstance(a, Tensor) else a
        if hasattr(data, "shape") and hasattr(data, "dtype"):
            parts.append(f"{tuple(data.shape)} {data.dtype}")
        else:
            parts.append(type(data).__name__)
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Tensor
# --------------------------------------------------------------------------------------------
def _array_module(data: Any):
    """NumPy, or CuPy for device arrays: the namespace ``xp`` that reference code uses."""
    if type(data).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def _as_array(data: Any) -> Any:
    """``data`` as an ndarray: NumPy scalars (``np.float32(1)``) become 0-d arrays."""
    if type(data) is np.ndarray or type(data).__module__.startswith("cupy"):
        return data
    return np.asarray(data)


_sequence = itertools.count(1)  # creation numbers of op outputs; leaves keep 0


class Tensor:
    """An n-dimensional array that can record the ops applied to it.

    Attributes:
        data: the underlying ``numpy.ndarray`` (or ``cupy.ndarray``).
        requires_grad: whether gradients flow to this tensor.
        grad: accumulated gradient (a Tensor) on leaves and ``retain_grad()`` tensors.
    """

    __slots__ = ("data", "requires_grad", "grad", "_op", "_inputs", "_kwargs", "_seq",
                 "_retain", "_hooks", "_site", "_freed", "name", "__weakref__")
    __array_priority__ = 1000  # so ndarray <op> Tensor defers to Tensor's reflected operators

    def __init__(self, data: Any, requires_grad: bool = False, *, dtype: Any = None,
                 name: str | None = None) -> None:
        if isinstance(data, Tensor):
            data = data.data
        data = _as_array(data)
        if dtype is not None and data.dtype != dtype:
            data = data.astype(dtype)
        self._init(data, None, None, None, False)
        self.name = name
        if requires_grad:
            self.requires_grad_(True)

    def _init(self, data: Any, op: Any, inputs: tuple | None, kwargs: dict | None,
              requires_grad: bool) -> None:
        self.data = data
        self.requires_grad = requires_grad
        self.grad: Tensor | None = None
        self._op = op
        self._inputs = inputs
        self._kwargs = kwargs
        self._seq = next(_sequence) if op is not None else 0
        self._retain = False
        self._hooks: list[Callable] | None = None
        self._site: str | None = None
        self._freed = False
        self.name: str | None = None

    # -- construction from an op (used by refnas.ops.registry; skips the checks above) --------
    @classmethod
    def _from_op(cls, data: Any, op: Any, inputs: tuple, kwargs: dict) -> "Tensor":
        """A graph node: the output ``data`` of ``op`` applied to ``inputs`` with ``kwargs``."""
        out = cls.__new__(cls)
        out._init(data, op, inputs, kwargs, True)
        return out

    @classmethod
    def _wrap(cls, data: Any) -> "Tensor":
        """A constant tensor around the ndarray ``data`` (no graph)."""
        out = cls.__new__(cls)
        out._init(data, None, None, None, False)
        return out

    # -- basic properties ----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def device(self) -> str:
        return "cpu" if isinstance(self.data, np.ndarray) else "cuda"

    @property
    def xp(self):
        """The array namespace of this tensor's data (``numpy`` or ``cupy``)."""
        return _array_module(self.data)

    @property
    def is_leaf(self) -> bool:
        return self._op is None

    @property
    def op_name(self) -> str | None:
        return None if self._op is None else self._op.name

    @property
    def T(self) -> "Tensor":
        return _ops.transpose(self)

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator["Tensor"]:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        body = np.array2string(self.numpy(), precision=4, separator=", ", threshold=20)
        extra = ""
        if self._op is not None:
            extra = f", op={self._op.name}"
        elif self.requires_grad:
            extra = ", requires_grad=True"
        return f"Tensor({body}, dtype={self.dtype}{extra})"

    def __bool__(self) -> bool:
        return bool(self.data)

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __array__(self, dtype=None, copy=None):
        data = self.numpy()
        return data if dtype is None else data.astype(dtype)

    __hash__ = object.__hash__  # tensors are graph nodes: identity, not value, is their key

    # -- conversions -----------------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied from the device for CuPy tensors)."""
        if isinstance(self.data, np.ndarray):
            return self.data
        return self.data.get()

    def item(self) -> float | int | bool:
        if self.size != 1:
            raise ValueError(f"item: only a tensor of one element can be converted, got shape "
                             f"{self.shape} ({self.dtype})")
        return self.data.reshape(()).item()

    def tolist(self) -> Any:
        return self.numpy().tolist()

    def detach(self) -> "Tensor":
        """A new leaf sharing this tensor's data, cut from the graph."""
        return Tensor._wrap(self.data)

    def to(self, device: Any = None, dtype: Any = None) -> "Tensor":
        """Move to ``"cpu"`` / ``"cuda"`` and/or cast to ``dtype`` (``t.to(np.float64)`` works too).

        A cast is differentiable (:func:`refnas.ops.astype`); a move between devices gives a new
        leaf with the same ``requires_grad``.
        """
        if device is not None and not isinstance(device, str):
            device, dtype = None, device
        out = self
        if device is not None and device != self.device:
            if device == "cuda":
                import cupy

                data = cupy.asarray(self.data)
            elif device == "cpu":
                data = self.numpy()
            else:
                raise ValueError(f"to: unknown device {device!r}; expected 'cpu' or 'cuda'")
            out = Tensor(data, requires_grad=self.requires_grad)
        if dtype is not None and np.dtype(dtype) != out.dtype:
            out = out.astype(dtype)
        return out

    def astype(self, dtype: Any) -> "Tensor":
        return _ops.astype(self, dtype=np.dtype(dtype))

    def float(self) -> "Tensor":
        return self.astype(np.float32)

    def double(self) -> "Tensor":
        return self.astype(np.float64)

    # -- gradient bookkeeping ---------------------------------------------------------------------
    def requires_grad_(self, flag: bool = True) -> "Tensor":
        if flag and self.data.dtype.kind not in "fc":
            raise TypeError(f"requires_grad: only floating-point tensors can require gradients, "
                            f"got dtype {self.data.dtype} with shape {self.shape}")
        if not flag and self._op is not None:
            raise RuntimeError(f"requires_grad_: cannot switch off gradients of the output of "
                               f"{self._op.name} (a non-leaf tensor); use .detach()")
        self.requires_grad = bool(flag)
        return self

    def retain_grad(self) -> "Tensor":
        """Keep ``.grad`` on this non-leaf tensor after backward (leaves always keep it)."""
        if not self.requires_grad:
            raise RuntimeError(f"retain_grad: tensor of shape {self.shape} ({self.dtype}) does "
                               f"not require grad")
        self._retain = True
        return self

    def register_hook(self, hook: Callable[["Tensor"], "Tensor | None"]) -> Callable[[], None]:
        """Call ``hook(grad)`` when this tensor's gradient is computed.

        The hook may return a replacement gradient. Returns a function that removes the hook.
        Pruning uses this to read ∂L/∂activation without keeping the graph around.
        """
        if not self.requires_grad:
            raise RuntimeError(f"register_hook: cannot register a hook on a tensor of shape "
                               f"{self.shape} ({self.dtype}) that does not require grad")
        if self._hooks is None:
            self._hooks = []
        self._hooks.append(hook)

        def remove() -> None:
            if self._hooks and hook in self._hooks:
                self._hooks.remove(hook)

        return remove

    def zero_grad(self) -> None:
        self.grad = None

    def backward(self, grad: "Tensor | Any | None" = None, retain_graph: bool = False,
                 create_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) · grad into ``.grad`` of every leaf that requires grad.

        ``grad`` defaults to 1 for a scalar output; a non-scalar output needs it explicitly.
        """
        backward([self], None if grad is None else [grad], retain_graph=retain_graph,
                 create_graph=create_graph)

    # -- operators (thin: all the work is in refnas.ops) ----------------------------------------
    def __add__(self, other):
        return _ops.add(self, other)

    def __radd__(self, other):
        return _ops.add(other, self)

    def __sub__(self, other):
        return _ops.sub(self, other)

    def __rsub__(self, other):
        return _ops.sub(other, self)

    def __mul__(self, other):
        return _ops.mul(self, other)

    def __rmul__(self, other):
        return _ops.mul(other, self)

    def __truediv__(self, other):
        return _ops.div(self, other)

    def __rtruediv__(self, other):
        return _ops.div(other, self)

    def __pow__(self, other):
        return _ops.pow(self, other)

    def __rpow__(self, other):
        return _ops.pow(other, self)

    def __matmul__(self, other):
        return _ops.matmul(self, other)

    def __rmatmul__(self, other):
        return _ops.matmul(other, self)

    def __neg__(self):
        return _ops.neg(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _ops.abs(self)

    def __getitem__(self, index):
        return _ops.getitem(self, index=_normalize_index(index))

    # Comparisons give non-differentiable boolean tensors.
    def _compare(self, other, compare: Callable) -> "Tensor":
        other_data = other.data if isinstance(other, Tensor) else other
        return Tensor._wrap(_as_array(compare(self.data, other_data)))

    def __lt__(self, other):
        return self._compare(other, np.less)

    def __le__(self, other):
        return self._compare(other, np.less_equal)

    def __gt__(self, other):
        return self._compare(other, np.greater)

    def __ge__(self, other):
        return self._compare(other, np.greater_equal)

    def __eq__(self, other):  # type: ignore[override]
        return self._compare(other, np.equal)

    def __ne__(self, other):  # type: ignore[override]
        return self._compare(other, np.not_equal)

    # -- method forms of common ops -------------------------------------------------------------
    def sum(self, axis=None, keepdims=False):
        return _ops.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _ops.mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return _ops.max(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        return _ops.min(self, axis=axis, keepdims=keepdims)

    def var(self, axis=None, keepdims=False, ddof=0):
        return _ops.var(self, axis=axis, keepdims=keepdims, ddof=ddof)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops.reshape(self, shape=shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _ops.transpose(self, axes=axes or None)

    def permute(self, *axes):
        return self.transpose(*axes)

    def flatten(self, start_axis: int = 0):
        shape = self.shape[:start_axis] + (-1,)
        return self.reshape(shape)

    def exp(self):
        return _ops.exp(self)

    def log(self):
        return _ops.log(self)

    def sqrt(self):
        return _ops.sqrt(self)

    def tanh(self):
        return _ops.tanh(self)

    def sigmoid(self):
        return _ops.sigmoid(self)

    def relu(self):
        return _ops.relu(self)

    def abs(self):
        return _ops.abs(self)

    def clip(self, low=None, high=None):
        return _ops.clip(self, low=low, high=high)

    def matmul(self, other):
        return _ops.matmul(self, other)

    def argmax(self, axis=None):
        return Tensor._wrap(_as_array(self.data.argmax(axis=axis)))

    def argmin(self, axis=None):
        return Tensor._wrap(_as_array(self.data.argmin(axis=axis)))

    def squeeze(self, axis=None):
        return _ops.squeeze(self, axis=axis)

    def unsqueeze(self, axis: int):
        return _ops.unsqueeze(self, axis=axis)


# --------------------------------------------------------------------------------------------
# Constructors
# --------------------------------------------------------------------------------------------
def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """Make a tensor from array-like data. Python floats become float32 unless dtype is given."""
    if isinstance(data, Tensor):
        data = data.data
    if dtype is None and not hasattr(data, "dtype"):
        array = np.asarray(data)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        data = array
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def as_tensor(value: Any, like: Tensor | None = None) -> Tensor:
    """Wrap a scalar or array as a constant; Python scalars take the dtype of ``like``."""
    if isinstance(value, Tensor):
        return value
    if like is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        return Tensor._wrap(like.xp.asarray(value, dtype=np.result_type(like.dtype, value)))
    if like is not None and like.device == "cuda":
        return Tensor._wrap(like.xp.asarray(value))
    return Tensor._wrap(np.asarray(value))


def _generator(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _shape_args(shape: tuple) -> tuple[int, ...]:
    """``f(2, 3)`` and ``f((2, 3))`` both mean shape (2, 3)."""
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape


def zeros(*shape, dtype=np.float32, requires_grad: bool = False) -> Tensor:
    return Tensor(np.zeros(_shape_args(shape), dtype=dtype), requires_grad=requires_grad)


def ones(*shape, dtype=np.float32, requires_grad: bool = False) -> Tensor:
    return Tensor(np.ones(_shape_args(shape), dtype=dtype), requires_grad=requires_grad)


def full(shape, value, dtype=np.float32, requires_grad: bool = False) -> Tensor:
    return Tensor(np.full(shape, value, dtype=dtype), requires_grad=requires_grad)


def zeros_like(t: Tensor, requires_grad: bool = False) -> Tensor:
    return Tensor(t.xp.zeros_like(t.data), requires_grad=requires_grad)


def ones_like(t: Tensor, requires_grad: bool = False) -> Tensor:
    return Tensor(t.xp.ones_like(t.data), requires_grad=requires_grad)


def arange(*args, dtype=np.float32) -> Tensor:
    return Tensor(np.arange(*args, dtype=dtype))


def randn(*shape, seed: int | np.random.Generator | None = None, dtype=np.float32,
          requires_grad: bool = False) -> Tensor:
    """Standard normal samples from an explicit Generator (or seed)."""
    data = _generator(seed).standard_normal(_shape_args(shape)).astype(dtype)
    return Tensor(data, requires_grad=requires_grad)


def rand(*shape, seed: int | np.random.Generator | None = None, dtype=np.float32,
         requires_grad: bool = False) -> Tensor:
    """Uniform [0, 1) samples from an explicit Generator (or seed)."""
    data = _generator(seed).random(_shape_args(shape)).astype(dtype)
    return Tensor(data, requires_grad=requires_grad)


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------
def _topological_order(roots: Sequence[Tensor]) -> list[Tensor]:
    """Tensors reachable from ``roots`` that require grad, every consumer before its inputs.

    A plain graph search collects the nodes (an explicit stack, so depth is unbounded); sorting
    by decreasing creation number then orders them, since an op's output is created after its
    inputs. Leaves (number 0) come last.
    """
    found: dict[int, Tensor] = {}
    stack = [r for r in roots if r.requires_grad]
    for node in stack:
        found[id(node)] = node
    while stack:
        inputs = stack.pop()._inputs
        if inputs:
            for child in inputs:
                if child.requires_grad and id(child) not in found:
                    found[id(child)] = child
                    stack.append(child)
    return sorted(found.values(), key=_creation_number, reverse=True)


_creation_number = operator.attrgetter("_seq")


def _sum_to_shape(g: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Undo broadcasting: sum ``g`` over the axes along which an input of ``shape`` was stretched.

    This is the only place in refnas where broadcast gradients are reduced.
    """
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    if axes:
        g = _ops.sum(g, axis=axes, keepdims=True)
    if lead or g.shape != shape:
        g = _ops.reshape(g, shape=shape)
    return g


def _check_finite(op_name: str, what: str, value: Tensor, node: Tensor) -> None:
    xp = value.xp
    if not bool(xp.all(xp.isfinite(value.data))):
        raise AnomalyError(
            f"{op_name}: {what} produced NaN/Inf (inputs {describe(node._inputs or ())}); "
            f"op created at {node._site or '<unknown>'}")


def _as_root_grad(root: Tensor, g: Any) -> Tensor:
    if g is None:
        if root.size != 1:
            raise RuntimeError(
                f"backward: grad can be implicitly created only for scalar outputs, but the "
                f"output of {root.op_name or 'leaf'} has shape {root.shape} ({root.dtype}); "
                f"pass grad=... of that shape")
        return Tensor._wrap(root.xp.ones_like(root.data))
    g = g if isinstance(g, Tensor) else Tensor._wrap(_as_array(root.xp.asarray(g)))
    if g.shape != root.shape:
        raise ValueError(f"backward: grad has shape {g.shape} ({g.dtype}) but the output of "
                         f"{root.op_name or 'leaf'} has shape {root.shape} ({root.dtype})")
    return g if g.dtype == root.dtype else g.astype(root.dtype)


def _check_roots(roots: Sequence[Tensor]) -> None:
    for root in roots:
        if not isinstance(root, Tensor):
            raise TypeError(f"backward: outputs must be Tensors, got {type(root).__name__}")
        if not root.requires_grad:
            raise RuntimeError(
                f"backward: the output ({root.op_name or 'leaf'}, shape {root.shape}, "
                f"{root.dtype}) does not require grad; no input on its path has requires_grad=True"
                f" or it was computed under no_grad()")


def _check_not_freed(order: Sequence[Tensor]) -> None:
    for node in order:
        if node._freed:
            raise GraphFreedError(
                f"backward: trying to backward through the graph a second time: the saved inputs "
                f"of {node.op_name} (output shape {node.shape}, {node.dtype}) were freed by the "
                f"first backward; pass retain_graph=True the first time to backward twice")


def _check_reached(targets: Sequence[Tensor], order: Sequence[Tensor]) -> None:
    reached = {id(node) for node in order}
    for i, x in enumerate(targets):
        if id(x) not in reached:
            raise ValueError(f"grad: input {i} (shape {x.shape}, {x.dtype}) is not used in the "
                             f"graph of the outputs; pass allow_unused=True to get None for it")


def _run_backward(roots: Sequence[Tensor], root_grads: Sequence[Any] | None, *,
                  retain_graph: bool, create_graph: bool,
                  targets: Sequence[Tensor] | None = None,
                  allow_unused: bool = True) -> dict[int, Tensor]:
    """Shared engine of ``Tensor.backward`` and ``refnas.grad``.

    Without ``targets``, gradients accumulate into ``.grad`` of leaves (and retain_grad tensors).
    With ``targets``, nothing is accumulated; the gradients of the targets are returned (a target
    the outputs do not reach is an error unless ``allow_unused``).
    Every check runs before any state changes, and ``.grad`` and the graph are only touched once
    the whole pass has succeeded: a failing backward (bad VJP, anomaly) leaves them as they were.
    """
    roots = list(roots)
    _check_roots(roots)
    grads_in = [None] * len(roots) if root_grads is None else list(root_grads)
    if len(grads_in) != len(roots):
        raise ValueError(f"backward: got {len(grads_in)} gradients for {len(roots)} outputs")
    seeds = [_as_root_grad(r, g) for r, g in zip(roots, grads_in)]
    order = _topological_order(roots)
    _check_not_freed(order)
    if targets is not None and not allow_unused:
        _check_reached(targets, order)

    target_ids = None if targets is None else {id(t) for t in targets}
    captured: dict[int, Tensor] = {}
    to_accumulate: list[tuple[Tensor, Tensor]] = []
    pending: dict[int, Tensor] = {}
    anomaly = _mode.anomaly
    with set_grad_enabled(create_graph):
        for root, seed in zip(roots, seeds):
            _accumulate(pending, root, seed)
        for node in order:
            g = pending.pop(id(node), None)
            if g is None:
                continue
            if type(g) is GradientParts and (node._hooks or node._retain or anomaly
                                             or target_ids is not None):
                g = g.total()      # someone looks at the gradient itself
            if node._hooks:
                g = _run_hooks(node, g)
            if target_ids is not None:
                if id(node) in target_ids:
                    captured[id(node)] = g
            elif node._op is None or node._retain:
                to_accumulate.append((node, g))
            if node._op is not None:
                _propagate(node, g, pending, anomaly)
        for node, g in to_accumulate:  # commit: the pass succeeded
            node.grad = g if node.grad is None else node.grad + g
            if not create_graph and node.grad.requires_grad:
                node.grad = node.grad.detach()
    if not retain_graph:
        for node in order:
            if node._op is not None:
                node._inputs = None
                node._kwargs = None
                node._freed = True
    return captured


def _run_hooks(node: Tensor, g: Tensor) -> Tensor:
    for hook in list(node._hooks):
        replaced = hook(g)
        if replaced is not None:
            g = replaced if isinstance(replaced, Tensor) else Tensor._wrap(_as_array(replaced))
    return g


class GradientParts:
    """The two gradients a tensor used twice got, not yet added: handed as they are to the VJP
    of an op declared ``sums_gradient_parts``, which adds them inside a pass of its own (e.g.
    :func:`refnas.ops.norm.batch_norm_add_relu_primitive`'s kernel), saving the pass over memory
    that writes their sum and the one that reads it back. Anything that looks at the gradient
    itself (a hook, ``retain_grad``, ``refnas.grad``'s targets, anomaly mode) gets
    :meth:`total`. Only made in a plain backward (no graph of it recorded)."""

    __slots__ = ("first", "second")

    def __init__(self, first: Tensor, second: Tensor) -> None:
        self.first, self.second = first, second

    def total(self) -> Tensor:
        """The sum, as :func:`_accumulate` would have made it."""
        return _sum_arrays(self.first, self.second)


def _sum_arrays(a: Tensor, b: Tensor) -> Tensor:
    """a + b of two gradients, nothing recorded (out of place: VJPs may hand out shared
    arrays)."""
    a, b = a.data, b.data
    total = _kernel("add")(a, b) if a.shape == b.shape and a.dtype == b.dtype else a + b
    return Tensor._wrap(_as_array(total))


def _accumulate(pending: dict[int, Any], x: Tensor, gx: Tensor) -> None:
    """Add ``gx`` to the gradient collected so far for ``x`` (a tensor used several times)."""
    key = id(x)
    previous = pending.get(key)
    if previous is None:
        pending[key] = gx
    elif _mode.grad_enabled:  # create_graph: the sum is part of the recorded backward pass
        pending[key] = _ops.add(previous, gx)
    elif type(previous) is GradientParts:      # a third use: add up what there is
        pending[key] = _sum_arrays(previous.total(), gx)
    elif x._op is not None and x._op.sums_gradient_parts:   # (both have x's shape and dtype)
        pending[key] = GradientParts(previous, gx)
    else:
        pending[key] = _sum_arrays(previous, gx)


def _propagate(node: Tensor, g: Tensor, pending: dict[int, Tensor], anomaly: bool) -> None:
    """Ask ``node``'s op for its VJP and pass the pieces on to the inputs (summed to shape)."""
    op = node._op
    inputs = node._inputs
    if anomaly:
        input_grads = _vjp_under_anomaly(node, g)
    elif op.vjp_fn is None:
        input_grads = op.vjp(g, node, *inputs)  # raises: the op is not differentiable
    elif node._kwargs:
        input_grads = op.vjp_fn(g, node, *inputs, **node._kwargs)
    else:
        input_grads = op.vjp_fn(g, node, *inputs)
    if type(input_grads) is not tuple:
        input_grads = (input_grads,)
    for x, gx in zip(inputs, input_grads):
        if gx is None or not x.requires_grad:
            continue
        if not isinstance(gx, Tensor):
            gx = Tensor._wrap(_as_array(gx))
        data, target = gx.data, x.data
        if data.shape != target.shape:
            gx = _sum_to_shape(gx, target.shape)
        if gx.data.dtype != target.dtype:
            gx = gx.astype(target.dtype)
        if anomaly:
            _check_finite(op.name, f"VJP w.r.t. an input of shape {x.shape} ({x.dtype})", gx, node)
        _accumulate(pending, x, gx)


def _vjp_under_anomaly(node: Tensor, g: Tensor):
    """Run the VJP; an anomaly inside it (in one of the ops it uses) is blamed on ``node``'s op."""
    op = node._op
    try:
        return op.vjp(g, node, *node._inputs, **node._kwargs)
    except AnomalyError as inner:
        raise AnomalyError(
            f"{op.name}: VJP produced NaN/Inf (inputs {describe(node._inputs)}); op created at "
            f"{node._site or '<unknown>'}. Inside the VJP: {inner}") from inner


def backward(tensors: Sequence[Tensor], grad_tensors: Sequence[Any] | None = None,
             retain_graph: bool = False, create_graph: bool = False) -> None:
    """Accumulate gradients of ``tensors`` (weighted by ``grad_tensors``) into the leaves."""
    _run_backward(tensors, grad_tensors, retain_graph=retain_graph or create_graph,
                  create_graph=create_graph)


def grad(outputs: Tensor | Sequence[Tensor], inputs: Tensor | Sequence[Tensor],
         grad_outputs: Any = None, create_graph: bool = False, retain_graph: bool | None = None,
         allow_unused: bool = False) -> tuple[Tensor | None, ...]:
    r"""Functional reverse mode: :math:`\bar x_i = \sum_k \bar y_k^\top \partial y_k/\partial x_i`.

    Returns the gradients of ``outputs`` w.r.t. each of ``inputs`` without touching ``.grad``.
    With ``create_graph=True`` the result is itself differentiable (higher-order derivatives).
    An input that the outputs do not depend on raises, or gives ``None`` with ``allow_unused``.
    """
    outs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    ins = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    for i, x in enumerate(ins):
        if not isinstance(x, Tensor):
            raise TypeError(f"grad: input {i} is a {type(x).__name__}, not a Tensor")
        if not x.requires_grad:
            raise ValueError(f"grad: input {i} (shape {x.shape}, {x.dtype}) does not require grad")
    if grad_outputs is not None and not isinstance(grad_outputs, (list, tuple)):
        grad_outputs = [grad_outputs]
    if retain_graph is None:
        retain_graph = create_graph
    captured = _run_backward(outs, grad_outputs, retain_graph=retain_graph,
                             create_graph=create_graph, targets=ins, allow_unused=allow_unused)
    result = []
    for x in ins:
        g = captured.get(id(x))
        if g is None and not allow_unused:  # reached, but every path's VJP was identically zero
            g = Tensor._wrap(x.xp.zeros_like(x.data))
        result.append(g)
    return tuple(result)


def parameters_to_vector(tensors: Iterable[Tensor]) -> np.ndarray:
    """Concatenate the data of several tensors into one flat NumPy vector."""
    return np.concatenate([np.asarray(t.numpy()).ravel() for t in tensors])


# The ops import Tensor from this module, so they are bound last (the operators above use them).
from refnas import ops as _ops  # noqa: E402
from refnas.backend import kernel as _kernel  # noqa: E402
from refnas.ops.shape import normalize_index as _normalize_index  # noqa: E402
