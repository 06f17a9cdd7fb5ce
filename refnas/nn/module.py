"""``Module`` and ``Parameter``: the containers that hold a network's weights and sub-networks.

A :class:`Module` registers what is assigned to it: ``self.weight = Parameter(...)`` becomes a
parameter, ``self.block = Linear(...)`` a child, ``self.register_buffer("running_mean", array)``
a buffer (state that is saved but not trained, such as batch-norm statistics). From those three
tables come every traversal (``named_parameters``, ``named_modules``, ...), the ``state_dict``
and the readable nested ``repr`` — the layout PyTorch made familiar.

Calling a module runs its forward-pre hooks, ``forward`` and its forward hooks; pruning reads
activations through forward hooks and registers tensor hooks on them to read their gradients.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import numpy as np

from refnas.tensor import Tensor, describe

__all__ = ["Parameter", "Module", "ModuleList", "Sequential", "RemovableHandle",
           "StateDictError", "IncompatibleKeys"]


class Parameter(Tensor):
    """A Tensor that a :class:`Module` treats as a trainable weight (``requires_grad=True``)."""

    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        data = data.data if isinstance(data, Tensor) else data
        if not hasattr(data, "dtype"):
            data = np.asarray(data, dtype=np.float32)
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class StateDictError(KeyError):
    """A state dict does not fit a module; the message lists the missing, unexpected and
    mis-shaped keys."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0])


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


class RemovableHandle:
    """Returned by the hook registrations; ``handle.remove()`` unregisters the hook."""

    _ids = itertools.count()

    def __init__(self, table: dict[int, Callable]) -> None:
        self._table = table
        self.id = next(self._ids)

    def remove(self) -> None:
        self._table.pop(self.id, None)

    def __enter__(self) -> "RemovableHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


class Module:
    """Base class of every layer and model.

    Subclasses call ``super().__init__()`` first, assign parameters and sub-modules as
    attributes, and define ``forward``. ``training`` is True after construction; ``eval()`` sets
    it to False on the whole tree (dropout off, batch norm on running statistics).
    """

    def __init__(self) -> None:
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())

    # -- registration ------------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: assign attributes only after "
                                 f"super().__init__() has run (assigning {name!r})")
        tables = (self._parameters, self._buffers, self._modules)
        if isinstance(value, Parameter):
            self._forget(name)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._forget(name)
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = self._check_buffer(name, value)
        elif name in self._parameters and value is None:
            self._parameters[name] = None
        elif name in self._modules and value is None:
            self._modules[name] = None
        elif any(name in table for table in tables):
            kind = "parameter" if name in self._parameters else "sub-module"
            raise TypeError(f"{type(self).__name__}: cannot assign a {type(value).__name__} to "
                            f"{kind} {name!r}; assign a "
                            f"{'Parameter' if kind == 'parameter' else 'Module'} or None")
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name: str) -> None:
        self.__dict__.pop(name, None)
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: look in the three registries.
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` under ``name`` (``None`` keeps the slot, e.g. a missing bias)."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be a Parameter or None, got "
                            f"{type(param).__name__}")
        self._forget(name)
        self._parameters[name] = param

    def register_buffer(self, name: str, value: Any) -> None:
        """Register non-trainable state (an array, saved in the state dict), e.g. running stats."""
        self._forget(name)
        self._buffers[name] = self._check_buffer(name, value)

    def add_module(self, name: str, module: "Module | None") -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module or None, got "
                            f"{type(module).__name__}")
        if not name or "." in name:
            raise ValueError(f"add_module: invalid module name {name!r} (empty or contains '.')")
        self._forget(name)
        self._modules[name] = module

    def _check_buffer(self, name: str, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, Tensor):
            value = value.data
        if not hasattr(value, "shape"):
            value = np.asarray(value)
        return value

    # -- traversal ---------------------------------------------------------------------------------
    def named_modules(self, prefix: str = "", memo: set[int] | None = None
                      ) -> Iterator[tuple[str, "Module"]]:
        """(qualified name, module) for this module (name ``prefix``) and every descendant, once."""
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self) -> Iterator["Module"]:
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        seen: set[int] = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self) -> Iterator["Module"]:
        for _, child in self.named_children():
            yield child

    def _named_members(self, table: str, prefix: str, recurse: bool
                       ) -> Iterator[tuple[str, Any]]:
        seen: set[int] = set()
        owners = self.named_modules(prefix) if recurse else [(prefix, self)]
        for owner_name, owner in owners:
            for name, value in getattr(owner, table).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{owner_name}.{name}" if owner_name else name), value

    def named_parameters(self, prefix: str = "", recurse: bool = True
                         ) -> Iterator[tuple[str, Parameter]]:
        """(qualified name, parameter) in registration order; a shared parameter appears once."""
        return self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Any]]:
        return self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Any]:
        for _, buffer in self.named_buffers(recurse=recurse):
            yield buffer

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalar weights (computed from the parameter shapes)."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    def apply(self, fn: Callable[["Module"], Any]) -> "Module":
        """Call ``fn`` on every descendant (children first) and then on this module."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # -- modes and gradients -----------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Set training mode on this module and every descendant."""
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget the accumulated gradients of every parameter."""
        for param in self.parameters():
            param.grad = None

    def requires_grad_(self, flag: bool = True) -> "Module":
        for param in self.parameters():
            param.requires_grad_(flag)
        return self

    # -- devices and dtypes ------------------------------------------------------------------------
    def to(self, device: str | None = None, dtype: Any = None) -> "Module":
        """Move every parameter and buffer to ``"cpu"`` / ``"cuda"`` and/or cast floats to
        ``dtype``.

        In place (the Parameter objects stay the same, so an optimizer built before still holds
        them); returns ``self``. ``model.to(np.float64)`` casts without moving.
        """
        if device is not None and not isinstance(device, str):
            device, dtype = None, device
        if device not in (None, "cpu", "cuda"):
            raise ValueError(f"to: unknown device {device!r}; expected 'cpu' or 'cuda'")
        convert = _converter(device, None if dtype is None else np.dtype(dtype))
        for module in self.modules():
            for param in module._parameters.values():
                if param is not None:
                    param.data = convert(param.data)
                    param.grad = None
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = convert(buffer)
        return self

    def float(self) -> "Module":
        return self.to(np.float32)

    def double(self) -> "Module":
        return self.to(np.float64)

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the first parameter (float32 when there is none)."""
        for param in self.parameters():
            return param.dtype
        return np.dtype(np.float32)

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer as NumPy arrays, keyed by qualified name.

        Order: each module's parameters, then its buffers, then its children (depth first) — the
        order of ``named_modules``. Copies, so later training does not change a saved state.
        """
        state: OrderedDict[str, np.ndarray] = OrderedDict()
        for name, module in self.named_modules():
            prefix = f"{name}." if name else ""
            for key, param in module._parameters.items():
                if param is not None:
                    state[prefix + key] = _to_numpy(param.data).copy()
            for key, buffer in module._buffers.items():
                if buffer is not None:
                    state[prefix + key] = _to_numpy(buffer).copy()
        return state

    def _state_slots(self) -> "OrderedDict[str, tuple[Module, str, str]]":
        """Qualified name -> (owner, local name, 'param' | 'buffer'), in state-dict order."""
        slots: OrderedDict[str, tuple[Module, str, str]] = OrderedDict()
        for name, module in self.named_modules():
            prefix = f"{name}." if name else ""
            for key, param in module._parameters.items():
                if param is not None:
                    slots[prefix + key] = (module, key, "param")
            for key, buffer in module._buffers.items():
                if buffer is not None:
                    slots[prefix + key] = (module, key, "buffer")
        return slots

    def check_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Raise :class:`StateDictError` if ``state`` does not fit (see :meth:`load_state_dict`)."""
        slots = self._state_slots()
        missing = [key for key in slots if key not in state]
        unexpected = [key for key in state if key not in slots]
        mis_shaped = []
        for key, (module, local, kind) in slots.items():
            if key in state:
                current = _slot_value(module, local, kind)
                given = np.shape(state[key])
                if tuple(given) != tuple(current.shape):
                    mis_shaped.append(f"{key}: given {tuple(given)}, model {tuple(current.shape)}")
        if mis_shaped or (strict and (missing or unexpected)):
            raise StateDictError(_mismatch_message(type(self).__name__, missing, unexpected,
                                                   mis_shaped, strict))

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy ``state`` (name -> array) into the parameters and buffers, in place.

        Every key and shape is checked before anything is written, so a failing call changes
        nothing. With ``strict`` (default) missing or unexpected keys are errors; mis-shaped
        entries always are. The error lists every offending key. Returns the missing and
        unexpected keys (both empty when strict).
        """
        self.check_state_dict(state, strict)
        slots = self._state_slots()
        for key, (module, local, kind) in slots.items():
            if key in state:
                _assign_slot(module, local, kind, state[key])
        return IncompatibleKeys([k for k in slots if k not in state],
                                [k for k in state if k not in slots])

    # -- hooks and calling -------------------------------------------------------------------------
    def register_forward_pre_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(module, inputs)`` runs before ``forward``; it may return replacement inputs."""
        handle = RemovableHandle(self._forward_pre_hooks)
        self._forward_pre_hooks[handle.id] = hook
        return handle

    def register_forward_hook(self, hook: Callable) -> RemovableHandle:
        """``hook(module, inputs, output)`` runs after ``forward``; it may return a new output."""
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        return handle

    def _hooked(self) -> bool:
        """Whether a forward hook or pre-hook watches this module (fused paths step aside, so
        that hooks see the module's own output)."""
        return bool(self._forward_hooks or self._forward_pre_hooks)

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        for hook in list(self._forward_pre_hooks.values()):
            replaced = hook(self, inputs)
            if replaced is not None:
                inputs = replaced if isinstance(replaced, tuple) else (replaced,)
        output = self.forward(*inputs, **kwargs)
        for hook in list(self._forward_hooks.values()):
            replaced = hook(self, inputs, output)
            if replaced is not None:
                output = replaced
        return output

    def forward(self, *inputs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def flops(self, inputs: tuple, output: Any) -> int:
        """Floating-point operations of this module's own work (children excluded) for one call.

        A multiply-add counts as two. Used by :func:`refnas.nn.count_flops` through a forward hook;
        layers override it, containers do no work of their own.
        """
        return 0

    # -- input checks ------------------------------------------------------------------------------
    def shape_error(self, expected: str, x: Any) -> ValueError:
        """``Linear(in_features=64, ...): expected input (..., 64), got (32, 63) float32``."""
        return ValueError(f"{self._describe()}: expected input {expected}, got {describe([x])}")

    def _describe(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    # -- repr --------------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The text inside this module's parentheses in ``repr`` (its hyperparameters)."""
        return ""

    def __repr__(self) -> str:
        children = [f"({name}): {_indent(repr(child))}" for name, child in self._modules.items()]
        extra = self.extra_repr()
        if not children:
            return f"{type(self).__name__}({extra})"
        lines = ([extra] if extra else []) + children
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")


def _to_numpy(array: Any) -> np.ndarray:
    return array if isinstance(array, np.ndarray) else array.get()


def _converter(device: str | None, dtype: np.dtype | None) -> Callable[[Any], Any]:
    def convert(array: Any) -> Any:
        if device == "cuda":
            import cupy

            array = cupy.asarray(array)
        elif device == "cpu":
            array = _to_numpy(array)
        if dtype is not None and array.dtype.kind == "f" and array.dtype != dtype:
            array = array.astype(dtype)
        return array

    return convert


def _slot_value(module: Module, local: str, kind: str) -> Any:
    return module._parameters[local].data if kind == "param" else module._buffers[local]


def _assign_slot(module: Module, local: str, kind: str, value: Any) -> None:
    """Write ``value`` into an existing parameter or buffer in place, keeping its dtype/device."""
    value = value.data if isinstance(value, Tensor) else value
    target = _slot_value(module, local, kind)
    if isinstance(target, np.ndarray):
        np.copyto(target, np.asarray(value), casting="unsafe")
    else:  # device array
        target[...] = type(target)(value) if not hasattr(value, "get") else value
    if kind == "param":
        module._parameters[local].grad = None


def _mismatch_message(owner: str, missing: list[str], unexpected: list[str],
                      mis_shaped: list[str], strict: bool) -> str:
    parts = [f"load_state_dict: the state does not fit {owner}; nothing was loaded."]
    if strict and missing:
        parts.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
    if strict and unexpected:
        parts.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if mis_shaped:
        parts.append(f"  mis-shaped keys ({len(mis_shaped)}): {'; '.join(mis_shaped)}")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------
# Containers
# ------------------------------------------------------------------------------------------------
class ModuleList(Module):
    """A list of modules, registered as children ``"0"``, ``"1"``, ...; no forward of its own."""

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        super().__init__()
        self.extend(modules)

    def _offset(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{type(self).__name__}: index {index} is out of range for "
                             f"{n} modules")
        return index % n

    def __getitem__(self, index: int | slice) -> Any:
        items = list(self._modules.values())
        if isinstance(index, slice):
            return type(self)(items[index])
        return items[self._offset(index)]

    def __setitem__(self, index: int, module: Module) -> None:
        self.add_module(str(self._offset(index)), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))

    def append(self, module: Module) -> "ModuleList":
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> "ModuleList":
        for module in modules:
            self.append(module)
        return self

    def insert(self, index: int, module: Module) -> None:
        items = list(self._modules.values())
        items.insert(index, module)
        self._modules.clear()
        for i, item in enumerate(items):
            self.add_module(str(i), item)


class Sequential(ModuleList):
    """Modules applied one after another: ``Sequential(Linear(4, 8), ReLU(), Linear(8, 2))``.

    Indexable (``seq[0]``, ``seq[-1]``, ``seq[1:]`` gives a Sequential) and iterable. Passing an
    ``OrderedDict`` names the children.
    """

    def __init__(self, *modules: Module | "OrderedDict[str, Module]") -> None:
        if len(modules) == 1 and isinstance(modules[0], dict):
            Module.__init__(self)
            for name, module in modules[0].items():
                self.add_module(name, module)
        else:
            super().__init__(modules)

    def __getitem__(self, index: int | slice) -> Any:
        items = list(self._modules.items())
        if isinstance(index, slice):
            return Sequential(OrderedDict(items[index]))
        return items[self._offset(index)][1]

    def __setitem__(self, index: int, module: Module) -> None:
        name = list(self._modules)[self._offset(index)]
        self._modules[name] = module

    def forward(self, x: Any) -> Any:
        for module in self._modules.values():
            x = module(x)
        return x
