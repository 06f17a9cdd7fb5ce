"""Tensor, grad mode and the reverse-mode engine.

A :class:`Tensor` wraps an ndarray (NumPy, or CuPy on a GPU). When an op is applied to tensors
that require gradients while grad mode is on, the result remembers the op, its input tensors and
its keyword arguments; that record *is* the graph (micrograd's layout: every tensor is a node).

``backward`` walks the graph from the output in reverse topological order (found iteratively,
so a chain of 100,000 ops does not hit Python's recursion limit) and asks each op for its
vector-Jacobian product (VJP). The VJPs are written in refnas ops themselves, so with
``create_graph=True`` the backward pass is recorded too and can be differentiated again
(Hessian-vector products); with it off, the same code runs under ``no_grad`` and costs only
thin wrappers.

Broadcasting is undone in exactly one place, :func:`_sum_to_shape`, called by the engine on every
gradient before it reaches an input.
"""
from __future__ import annotations

import threading
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

__all__ = [
    "Tensor", "tensor", "as_tensor", "zeros", "ones", "zeros_like", "ones_like", "full",
    "arange", "randn", "rand", "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled",
    "grad", "detect_anomaly", "is_anomaly_enabled", "AnomalyError", "GraphFreedError",
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

    Every op records the stack where it was created and checks its output for NaN/Inf; the
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


def _creation_site() -> str:
    """The innermost stack frame outside refnas itself: where the user created the op."""
    frames = traceback.extract_stack()[:-1]
    for frame in reversed(frames):
        if "/refnas/" not in frame.filename.replace("\\", "/") and "contextlib" not in frame.filename:
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
    module = type(data).__module__
    if module.startswith("cupy"):
        import cupy

        return cupy
    return np


class Tensor:
    """An n-dimensional array that can record the ops applied to it.

    Attributes:
        data: the underlying ``numpy.ndarray`` (or ``cupy.ndarray``).
        requires_grad: whether gradients flow to this tensor.
        grad: accumulated gradient (a Tensor) on leaves and ``retain_grad()`` tensors.
    """

    __slots__ = ("data", "requires_grad", "grad", "_op", "_inputs", "_kwargs", "_retain",
                 "_hooks", "_site", "_freed", "name", "__weakref__")
    __array_priority__ = 1000  # so ndarray <op> Tensor defers to Tensor's reflected operators

    def __init__(self, data: Any, requires_grad: bool = False, *, dtype: Any = None,
                 name: str | None = None) -> None:
        if isinstance(data, Tensor):
            data = data.data
        if type(data) is not np.ndarray and not type(data).__module__.startswith("cupy"):
            data = np.asarray(data)
        if dtype is not None and data.dtype != dtype:
            data = data.astype(dtype)
        self.data = data
        self.grad: Tensor | None = None
        self._op = None
        self._inputs: tuple[Tensor, ...] | None = None
        self._kwargs: dict | None = None
        self._retain = False
        self._hooks: list[Callable] | None = None
        self._site: str | None = None
        self._freed = False
        self.name = name
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # -- construction from an op (used by refnas.ops.registry; skips the checks above) --------
    @classmethod
    def _from_op(cls, data: Any, op: Any, inputs: tuple, kwargs: dict) -> "Tensor":
        out = cls.__new__(cls)
        out.data = data
        out.grad = None
        out._op = op
        out._inputs = inputs
        out._kwargs = kwargs
        out._retain = False
        out._hooks = None
        out._site = None
        out._freed = False
        out.name = None
        out.requires_grad = True
        return out

    @classmethod
    def _wrap(cls, data: Any) -> "Tensor":
        """A constant tensor around ``data`` (no graph)."""
        out = cls.__new__(cls)
        out.data = data
        out.grad = None
        out._op = None
        out._inputs = None
        out._kwargs = None
        out._retain = False
        out._hooks = None
        out._site = None
        out._freed = False
        out.name = None
        out.requires_grad = False
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
        from refnas import ops

        return ops.transpose(self)

    def __len__(self) -> int:
        return len(self.data)

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
                             f"{self.shape}")
        return self.data.reshape(()).item()

    def tolist(self) -> Any:
        return self.numpy().tolist()

    def detach(self) -> "Tensor":
        """A new leaf sharing this tensor's data, cut from the graph."""
        return Tensor._wrap(self.data)

    def to(self, device: str) -> "Tensor":
        """Move to ``"cpu"`` or ``"cuda"``; the result is a new leaf with the same requires_grad."""
        if device == self.device:
            return self
        if device == "cuda":
            import cupy

            data = cupy.asarray(self.data)
        elif device == "cpu":
            data = self.numpy()
        else:
            raise ValueError(f"to: unknown device {device!r}; expected 'cpu' or 'cuda'")
        return Tensor(data, requires_grad=self.requires_grad)

    def astype(self, dtype: Any) -> "Tensor":
        from refnas import ops

        return ops.astype(self, dtype=np.dtype(dtype))

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
            raise RuntimeError("requires_grad_: cannot switch off gradients of a non-leaf tensor; "
                               "use .detach()")
        self.requires_grad = bool(flag)
        return self

    def retain_grad(self) -> "Tensor":
        """Keep ``.grad`` on this non-leaf tensor after backward (leaves always keep it)."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad: tensor does not require grad")
        self._retain = True
        return self

    def register_hook(self, hook: Callable[["Tensor"], "Tensor | None"]) -> Callable[[], None]:
        """Call ``hook(grad)`` when this tensor's gradient is computed.

        The hook may return a replacement gradient. Returns a function that removes the hook.
        Pruning uses this to read ∂L/∂activation without keeping the graph around.
        """
        if not self.requires_grad:
            raise RuntimeError("register_hook: cannot register a hook on a tensor that does not "
                               "require grad")
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
        from refnas import ops
        return ops.add(self, other)

    def __radd__(self, other):
        from refnas import ops
        return ops.add(other, self)

    def __sub__(self, other):
        from refnas import ops
        return ops.sub(self, other)

    def __rsub__(self, other):
        from refnas import ops
        return ops.sub(other, self)

    def __mul__(self, other):
        from refnas import ops
        return ops.mul(self, other)

    def __rmul__(self, other):
        from refnas import ops
        return ops.mul(other, self)

    def __truediv__(self, other):
        from refnas import ops
        return ops.div(self, other)

    def __rtruediv__(self, other):
        from refnas import ops
        return ops.div(other, self)

    def __pow__(self, other):
        from refnas import ops
        return ops.pow(self, other)

    def __rpow__(self, other):
        from refnas import ops
        return ops.pow(other, self)

    def __matmul__(self, other):
        from refnas import ops
        return ops.matmul(self, other)

    def __rmatmul__(self, other):
        from refnas import ops
        return ops.matmul(other, self)

    def __neg__(self):
        from refnas import ops
        return ops.neg(self)

    def __pos__(self):
        return self

    def __abs__(self):
        from refnas import ops
        return ops.abs(self)

    def __getitem__(self, index):
        from refnas import ops
        return ops.getitem(self, index)

    # Comparisons give non-differentiable boolean tensors.
    def _compare(self, other, fn):
        other_data = other.data if isinstance(other, Tensor) else other
        return Tensor._wrap(fn(self.data, other_data))

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    def __eq__(self, other):  # type: ignore[override]
        return self._compare(other, lambda a, b: a == b)

    def __ne__(self, other):  # type: ignore[override]
        return self._compare(other, lambda a, b: a != b)

    # -- method forms of common ops -------------------------------------------------------------
    def sum(self, axis=None, keepdims=False):
        from refnas import ops
        return ops.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        from refnas import ops
        return ops.mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        from refnas import ops
        return ops.max(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        from refnas import ops
        return ops.min(self, axis=axis, keepdims=keepdims)

    def var(self, axis=None, keepdims=False, ddof=0):
        from refnas import ops
        return ops.var(self, axis=axis, keepdims=keepdims, ddof=ddof)

    def reshape(self, *shape):
        from refnas import ops
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return ops.reshape(self, shape=shape)

    def transpose(self, *axes):
        from refnas import ops
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return ops.transpose(self, axes=axes or None)

    def permute(self, *axes):
        return self.transpose(*axes)

    def flatten(self, start_axis: int = 0):
        shape = self.shape[:start_axis] + (-1,)
        return self.reshape(shape)

    def exp(self):
        from refnas import ops
        return ops.exp(self)

    def log(self):
        from refnas import ops
        return ops.log(self)

    def sqrt(self):
        from refnas import ops
        return ops.sqrt(self)

    def tanh(self):
        from refnas import ops
        return ops.tanh(self)

    def sigmoid(self):
        from refnas import ops
        return ops.sigmoid(self)

    def relu(self):
        from refnas import ops
        return ops.relu(self)

    def abs(self):
        from refnas import ops
        return ops.abs(self)

    def argmax(self, axis=None):
        return Tensor._wrap(self.data.argmax(axis=axis))

    def squeeze(self, axis=None):
        from refnas import ops
        return ops.squeeze(self, axis=axis)

    def unsqueeze(self, axis: int):
        from refnas import ops
        return ops.unsqueeze(self, axis=axis)


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
    if like is not None and isinstance(value, (int, float, bool)) and not isinstance(value, np.generic):
        return Tensor._wrap(like.xp.asarray(value, dtype=like.dtype))
    if like is not None and like.device == "cuda":
        return Tensor._wrap(like.xp.asarray(value))
    return Tensor._wrap(np.asarray(value))


def _generator(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def zeros(*shape, dtype=np.float32, requires_grad: bool = False) -> Tensor:
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Tensor(np.zeros(shape, dtype=dtype), requires_grad=requires_grad)


def ones(*shape, dtype=np.float32, requires_grad: bool = False) -> Tensor:
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Tensor(np.ones(shape, dtype=dtype), requires_grad=requires_grad)


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
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    data = _generator(seed).standard_normal(shape).astype(dtype)
    return Tensor(data, requires_grad=requires_grad)


def rand(*shape, seed: int | np.random.Generator | None = None, dtype=np.float32,
         requires_grad: bool = False) -> Tensor:
    """Uniform [0, 1) samples from an explicit Generator (or seed)."""
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    data = _generator(seed).random(shape).astype(dtype)
    return Tensor(data, requires_grad=requires_grad)


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------
def _topological_order(roots: Sequence[Tensor]) -> list[Tensor]:
    """Tensors reachable from ``roots`` that require grad, every consumer before its inputs.

    Iterative depth-first search with an explicit stack, so graph depth is unbounded.
    """
    order: list[Tensor] = []
    visited: set[int] = set()
    for root in roots:
        if id(root) in visited or not root.requires_grad:
            continue
        visited.add(id(root))
        stack: list[tuple[Tensor, int]] = [(root, 0)]
        while stack:
            node, next_input = stack[-1]
            inputs = node._inputs or ()
            while next_input < len(inputs):
                child = inputs[next_input]
                next_input += 1
                if child.requires_grad and id(child) not in visited:
                    visited.add(id(child))
                    stack[-1] = (node, next_input)
                    stack.append((child, 0))
                    break
            else:
                stack.pop()
                order.append(node)  # post-order: inputs before consumers
    order.reverse()
    return order


def _sum_to_shape(g: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Undo broadcasting: sum ``g`` over the axes along which an input of ``shape`` was stretched.

    This is the only place in refnas where broadcast gradients are reduced.
    """
    if g.shape == shape:
        return g
    from refnas import ops

    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    if axes:
        g = ops.sum(g, axis=axes, keepdims=True)
    if lead or g.shape != shape:
        g = ops.reshape(g, shape=shape)
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
    g = g if isinstance(g, Tensor) else Tensor._wrap(root.xp.asarray(g, dtype=root.dtype))
    if g.shape != root.shape:
        raise ValueError(f"backward: grad has shape {g.shape} ({g.dtype}) but the output of "
                         f"{root.op_name or 'leaf'} has shape {root.shape} ({root.dtype})")
    return g


def _run_backward(roots: Sequence[Tensor], root_grads: Sequence[Any] | None, *,
                  retain_graph: bool, create_graph: bool,
                  targets: Sequence[Tensor] | None = None) -> dict[int, Tensor]:
    """Shared engine of ``Tensor.backward`` and ``refnas.grad``.

    Without ``targets``, gradients accumulate into ``.grad`` of leaves (and retain_grad tensors).
    With ``targets``, nothing is accumulated; the gradients of the targets are returned.
    """
    roots = list(roots)
    for root in roots:
        if not root.requires_grad:
            raise RuntimeError(
                f"backward: the output ({root.op_name or 'leaf'}, shape {root.shape}, "
                f"{root.dtype}) does not require grad; no input on its path has requires_grad=True"
                f" or it was computed under no_grad()")
    grads_in = [None] * len(roots) if root_grads is None else list(root_grads)
    if len(grads_in) != len(roots):
        raise ValueError(f"backward: got {len(grads_in)} gradients for {len(roots)} outputs")
    # Validate everything before any state changes.
    seeds = [_as_root_grad(r, g) for r, g in zip(roots, grads_in)]
    order = _topological_order(roots)
    for node in order:
        if node._freed:
            raise GraphFreedError(
                f"backward: trying to backward through the graph a second time: the saved inputs "
                f"of {node.op_name} (shape {node.shape}, {node.dtype}) were freed by the first "
                f"backward; pass retain_graph=True the first time if you need to backward twice")

    target_ids = None if targets is None else {id(t) for t in targets}
    captured: dict[int, Tensor] = {}
    pending: dict[int, Tensor] = {}
    for root, seed in zip(roots, seeds):
        pending[id(root)] = pending[id(root)] + seed if id(root) in pending else seed

    with set_grad_enabled(create_graph):
        for node in order:
            g = pending.pop(id(node), None)
            if g is None:
                continue
            if node._hooks:
                for hook in list(node._hooks):
                    replaced = hook(g)
                    if replaced is not None:
                        g = replaced if isinstance(replaced, Tensor) else Tensor._wrap(replaced)
            if target_ids is not None:
                if id(node) in target_ids:
                    captured[id(node)] = g
            elif node._op is None or node._retain:
                node.grad = g if node.grad is None else node.grad + g
                if not create_graph:
                    node.grad = node.grad.detach() if node.grad.requires_grad else node.grad
            if node._op is None:
                continue
            _propagate(node, g, pending, create_graph)
            if not retain_graph:
                node._inputs = None
                node._kwargs = None
                node._freed = True
    return captured


def _propagate(node: Tensor, g: Tensor, pending: dict[int, Tensor], create_graph: bool) -> None:
    """Ask ``node``'s op for its VJP and pass the pieces on to the inputs (summed to shape)."""
    op = node._op
    inputs = node._inputs
    input_grads = op.vjp(g, node, *inputs, **node._kwargs)
    if not isinstance(input_grads, tuple):
        input_grads = (input_grads,)
    for x, gx in zip(inputs, input_grads):
        if gx is None or not x.requires_grad:
            continue
        if not isinstance(gx, Tensor):
            gx = Tensor._wrap(gx)
        gx = _sum_to_shape(gx, x.shape)
        if gx.dtype != x.dtype:
            gx = gx.astype(x.dtype)
        if _mode.anomaly:
            _check_finite(op.name, f"VJP w.r.t. an input of shape {x.shape}", gx, node)
        key = id(x)
        pending[key] = pending[key] + gx if key in pending else gx


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
    """
    outs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    ins = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    for i, x in enumerate(ins):
        if not isinstance(x, Tensor) or not x.requires_grad:
            raise ValueError(f"grad: input {i} does not require grad")
    if grad_outputs is not None and not isinstance(grad_outputs, (list, tuple)):
        grad_outputs = [grad_outputs]
    if retain_graph is None:
        retain_graph = create_graph
    captured = _run_backward(outs, grad_outputs, retain_graph=retain_graph,
                             create_graph=create_graph, targets=ins)
    result = []
    for i, x in enumerate(ins):
        g = captured.get(id(x))
        if g is None and not allow_unused:
            raise ValueError(f"grad: input {i} (shape {x.shape}) is not used in the graph of the "
                             f"outputs; pass allow_unused=True to get None for it")
        result.append(g)
    return tuple(result)


def parameters_to_vector(tensors: Iterable[Tensor]) -> np.ndarray:
    """Concatenate the data of several tensors into one flat NumPy vector."""
    return np.concatenate([np.asarray(t.numpy()).ravel() for t in tensors])
