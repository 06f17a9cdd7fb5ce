r"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules (StepLR, CosineAnnealingLR,
LinearWarmup).

Each optimizer updates every parameter's array in place through a registered kernel
(``sgd_update``, ``adam_update``), so the Numba backend can replace the NumPy reference below
without changing the optimizer. The update rules are the published ones, as PyTorch implements
them:

SGD with momentum :math:`\mu`, dampening :math:`\tau`, weight decay :math:`\lambda`
(Sutskever et al. 2013 for Nesterov)

.. math::
    g_t = \nabla_\theta L + \lambda\theta_{t-1},\quad
    b_t = \begin{cases} g_t & t = 1\\ \mu b_{t-1} + (1-\tau) g_t & t > 1\end{cases},\quad
    \theta_t = \theta_{t-1} - \eta\,\big(g_t + \mu b_t \text{ (Nesterov) or } b_t\big).

Adam (Kingma & Ba 2015); AdamW decouples the weight decay (Loshchilov & Hutter 2019)

.. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad
    \theta_t = \theta_{t-1} - \eta\,\frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon},

with :math:`g_t = \nabla L + \lambda\theta` (Adam's L2 penalty) or, for AdamW,
:math:`\theta \leftarrow (1 - \eta\lambda)\theta` before the step.

State dicts hold NumPy arrays and JSON-able scalars only, so :mod:`refnas.io` stores them in the
checkpoint's ``.npz`` without pickle.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from refnas.backend import kernel, register_kernel
from refnas.tensor import Tensor

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "CosineAnnealingLR",
           "LinearWarmup", "ConstantLR", "sgd_update_reference", "adam_update_reference"]


# --------------------------------------------------------------------------------------------
# NumPy reference kernels
# --------------------------------------------------------------------------------------------
@register_kernel("sgd_update")
def sgd_update_reference(param, grad, buf, lr: float, momentum: float, dampening: float,
                         nesterov: bool, weight_decay: float, first_step: bool) -> None:
    r"""One SGD step on ``param`` in place (and on the momentum buffer ``buf``; None without
    momentum).

    :math:`g = \nabla + \lambda\theta`; with momentum :math:`b \leftarrow g` on the first step,
    else :math:`\mu b + (1-\tau) g`; the step direction is :math:`g + \mu b` (Nesterov) or
    :math:`b`; :math:`\theta \leftarrow \theta - \eta\, d`.
    """
    g = grad + weight_decay * param if weight_decay != 0 else grad
    if momentum != 0:
        if first_step:
            buf[...] = g
        else:
            buf *= momentum
            buf += (1.0 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    param -= lr * g


@register_kernel("adam_update")
def adam_update_reference(param, grad, exp_avg, exp_avg_sq, step: int, lr: float, beta1: float,
                          beta2: float, eps: float, weight_decay: float, decoupled: bool) -> None:
    r"""One Adam (or, ``decoupled``, AdamW) step on ``param``, ``exp_avg``, ``exp_avg_sq`` in place.

    AdamW: :math:`\theta \leftarrow (1-\eta\lambda)\theta`; Adam: :math:`g \leftarrow g +
    \lambda\theta`. Then :math:`m \leftarrow \beta_1 m + (1-\beta_1) g`,
    :math:`v \leftarrow \beta_2 v + (1-\beta_2) g^2`, and
    :math:`\theta \leftarrow \theta - \eta\,\hat m/(\sqrt{\hat v} + \epsilon)` with
    :math:`\hat m = m/(1-\beta_1^t)`, :math:`\hat v = v/(1-\beta_2^t)`, :math:`t` = ``step`` ≥ 1.
    """
    g = grad
    if weight_decay != 0:
        if decoupled:
            param *= 1.0 - lr * weight_decay
        else:
            g = grad + weight_decay * param
    exp_avg *= beta1
    exp_avg += (1.0 - beta1) * g
    exp_avg_sq *= beta2
    exp_avg_sq += (1.0 - beta2) * (g * g)
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    denominator = np.sqrt(exp_avg_sq) / math.sqrt(bias_correction2) + eps
    param -= (lr / bias_correction1) * (exp_avg / denominator)


# --------------------------------------------------------------------------------------------
# Optimizer base
# --------------------------------------------------------------------------------------------
class Optimizer:
    """Holds parameter groups (dicts with ``"params"`` and hyperparameters) and per-parameter state.

    ``params`` is an iterable of Tensors with ``requires_grad=True`` or of dicts
    ``{"params": [...], "lr": ...}`` (param groups: the hyperparameters a group does not set
    come from the optimizer's arguments).
    """

    defaults: dict[str, Any]

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self._validate(defaults)
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[int, dict[str, Any]] = {}  # id(param) -> state
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)

    def _validate(self, hyper: dict[str, Any]) -> None:
        name = type(self).__name__
        for key in ("lr", "weight_decay", "momentum", "dampening", "eps"):
            if key in hyper and not (hyper[key] >= 0 and math.isfinite(hyper[key])):
                raise ValueError(f"{name}: {key} must be a finite number >= 0, got {hyper[key]!r}")

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group of parameters, each Tensor requiring grad and in no other group."""
        name = type(self).__name__
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{name}: a param group is a dict with a 'params' entry, got "
                            f"{type(group).__name__}")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            if not isinstance(p, Tensor) or not p.requires_grad or not p.is_leaf:
                raise TypeError(f"{name}: parameter {i} must be a leaf Tensor with "
                                f"requires_grad=True, got {type(p).__name__}")
            if id(p) in seen:
                raise ValueError(f"{name}: parameter {i} (shape {p.shape}) appears twice in the "
                                 f"parameter groups")
            seen.add(id(p))
        full = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        self._validate(full)
        full["params"] = params
        full.setdefault("initial_lr", full["lr"])
        self.param_groups.append(full)

    def parameters(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient, group by group."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grad = p.grad.data
                    if grad.shape != p.data.shape:
                        raise ValueError(f"{type(self).__name__}: gradient of shape {grad.shape} "
                                         f"for a parameter of shape {p.data.shape}")
                    self._update(p, grad, self.state.setdefault(id(p), {}), group)

    def _update(self, p: Tensor, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"param_groups": [...hyperparameters, "params": [indices]], "state": {index: {...}}}``.

        Parameters are named by their position across the groups; arrays are copied to NumPy.
        """
        index = {id(p): i for i, p in enumerate(self.parameters())}
        groups = [{**{k: _scalar(v) for k, v in g.items() if k != "params"},
                   "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        state = {str(index[key]): {k: _copy_state(v) for k, v in entry.items()}
                 for key, entry in self.state.items() if key in index}
        return {"param_groups": groups, "state": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and per-parameter state (checked first: nothing changes on
        error)."""
        name = type(self).__name__
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or len(groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the state has "
                             f"{len(groups) if isinstance(groups, list) else 'no'} param groups, "
                             f"the optimizer {len(self.param_groups)}")
        for saved, group in zip(groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{name}.load_state_dict: a param group has "
                                 f"{len(saved['params'])} parameters in the state but "
                                 f"{len(group['params'])} in the optimizer")
        params = self.parameters()
        new_state: dict[int, dict[str, Any]] = {}
        for key, entry in state_dict.get("state", {}).items():
            p = params[int(key)]
            converted = {}
            for k, v in entry.items():
                if hasattr(v, "shape") and np.ndim(v) > 0:
                    if tuple(np.shape(v)) != p.shape:
                        raise ValueError(f"{name}.load_state_dict: state {k!r} of parameter "
                                         f"{key} has shape {tuple(np.shape(v))}, the parameter "
                                         f"{p.shape}")
                    v = p.xp.asarray(v, dtype=p.dtype).copy()
                elif hasattr(v, "item"):
                    v = v.item()
                converted[k] = v
            new_state[id(p)] = converted
        for saved, group in zip(groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = new_state

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able), for checkpoints and summaries."""
        return {k: _scalar(v) for k, v in self.defaults.items()}

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i} ({len(group['params'])} tensors)")
            lines += [f"    {k}: {v}" for k, v in group.items() if k != "params"]
        return "\n".join(lines + [")"])


def _scalar(value: Any) -> Any:
    """JSON-able form of a hyperparameter (tuples become lists, NumPy scalars Python ones)."""
    if isinstance(value, tuple):
        return [_scalar(v) for v in value]
    if hasattr(value, "item") and np.ndim(value) == 0:
        return value.item()
    return value


def _copy_state(value: Any) -> Any:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return np.array(value.get() if hasattr(value, "get") else value, copy=True)
    return _scalar(value)


# --------------------------------------------------------------------------------------------
# SGD, Adam, AdamW
# --------------------------------------------------------------------------------------------
class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, dampening and L2 decay."""

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.0,
                 dampening: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "nesterov": bool(nesterov), "weight_decay": weight_decay})

    def _validate(self, hyper: dict[str, Any]) -> None:
        super()._validate(hyper)
        if hyper.get("nesterov") and (hyper.get("momentum", 0) <= 0
                                      or hyper.get("dampening", 0) != 0):
            raise ValueError(f"SGD: Nesterov momentum requires momentum > 0 and dampening = 0, "
                             f"got momentum={hyper.get('momentum')}, "
                             f"dampening={hyper.get('dampening')}")

    def _update(self, p: Tensor, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        first_step = "momentum_buffer" not in state
        buf = None
        if group["momentum"] != 0:
            if first_step:
                state["momentum_buffer"] = p.xp.zeros_like(p.data)
            buf = state["momentum_buffer"]
        kernel("sgd_update")(p.data, grad, buf, group["lr"], group["momentum"],
                             group["dampening"], group["nesterov"], group["weight_decay"],
                             first_step)


class Adam(Optimizer):
    """Adam with L2 weight decay added to the gradient (Kingma & Ba 2015)."""

    decoupled = False

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps,
                                  "weight_decay": weight_decay})

    def _validate(self, hyper: dict[str, Any]) -> None:
        super()._validate(hyper)
        betas = hyper.get("betas", (0.9, 0.999))
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{type(self).__name__}: betas must be two numbers in [0, 1), "
                             f"got {betas!r}")

    def _update(self, p: Tensor, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = p.xp.zeros_like(p.data)
            state["exp_avg_sq"] = p.xp.zeros_like(p.data)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        kernel("adam_update")(p.data, grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                              group["lr"], beta1, beta2, group["eps"], group["weight_decay"],
                              self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019)."""

    decoupled = True

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


# --------------------------------------------------------------------------------------------
# Learning-rate schedules
# --------------------------------------------------------------------------------------------
class LRScheduler:
    r"""Sets each group's ``lr`` to a closed-form function of the step count :math:`t`:
    ``lr = lr_at(t, base_lr)``, where ``base_lr`` is the group's initial learning rate.

    ``step()`` advances :math:`t` by one (call it once per epoch, or per batch for warm-up).
    Closed forms compose: :class:`LinearWarmup` hands :math:`t - T_w` to the schedule ``after``.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected an Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def lr_at(self, t: int, base_lr: float) -> float:
        raise NotImplementedError

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(self.last_step, base)

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "last_step": self.last_step,
                "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("type", type(self).__name__) != type(self).__name__:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state is of a "
                             f"{state['type']}")
        if len(state["base_lrs"]) != len(self.base_lrs):
            raise ValueError(f"{type(self).__name__}.load_state_dict: {len(state['base_lrs'])} "
                             f"base learning rates for {len(self.base_lrs)} param groups")
        self.last_step = int(state["last_step"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self._apply()

    def hyperparameters(self) -> dict[str, Any]:
        return {}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class ConstantLR(LRScheduler):
    """The initial learning rate at every step (a neutral ``after`` for :class:`LinearWarmup`)."""

    def lr_at(self, t: int, base_lr: float) -> float:
        return base_lr


class StepLR(LRScheduler):
    r""":math:`\eta_t = \eta_0\,\gamma^{\lfloor t / s\rfloor}`."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        _check(isinstance(step_size, int) and step_size >= 1,
               f"StepLR: step_size must be an int >= 1, got {step_size!r}")
        _check(gamma > 0, f"StepLR: gamma must be > 0, got {gamma!r}")
        self.step_size, self.gamma = step_size, float(gamma)
        super().__init__(optimizer)

    def lr_at(self, t: int, base_lr: float) -> float:
        return base_lr * self.gamma ** (t // self.step_size)

    def hyperparameters(self) -> dict[str, Any]:
        return {"step_size": self.step_size, "gamma": self.gamma}


class CosineAnnealingLR(LRScheduler):
    r""":math:`\eta_t = \eta_{min} + \tfrac12(\eta_0 - \eta_{min})(1 + \cos(\pi t / T_{max}))`
    (Loshchilov & Hutter 2017, without restarts)."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        _check(isinstance(T_max, int) and T_max >= 1,
               f"CosineAnnealingLR: T_max must be an int >= 1, got {T_max!r}")
        _check(eta_min >= 0, f"CosineAnnealingLR: eta_min must be >= 0, got {eta_min!r}")
        self.T_max, self.eta_min = T_max, float(eta_min)
        super().__init__(optimizer)

    def lr_at(self, t: int, base_lr: float) -> float:
        cosine = math.cos(math.pi * t / self.T_max)
        return self.eta_min + 0.5 * (base_lr - self.eta_min) * (1 + cosine)

    def hyperparameters(self) -> dict[str, Any]:
        return {"T_max": self.T_max, "eta_min": self.eta_min}


class LinearWarmup(LRScheduler):
    r"""Linear warm-up over :math:`T_w` steps, then the schedule ``after`` (constant if None).

    :math:`\eta_t = \eta_0\,(f + (1 - f)\,t/T_w)` for :math:`t < T_w` (``start_factor`` :math:`f`,
    as PyTorch's ``LinearLR``), then ``after.lr_at(t - T_w)``.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, after: LRScheduler | None = None,
                 start_factor: float = 0.1) -> None:
        _check(isinstance(warmup_steps, int) and warmup_steps >= 1,
               f"LinearWarmup: warmup_steps must be an int >= 1, got {warmup_steps!r}")
        _check(0 < start_factor <= 1,
               f"LinearWarmup: start_factor must lie in (0, 1], got {start_factor!r}")
        _check(after is None or after.optimizer is optimizer,
               "LinearWarmup: 'after' must schedule the same optimizer")
        self.warmup_steps, self.start_factor, self.after = warmup_steps, float(start_factor), after
        super().__init__(optimizer)

    def lr_at(self, t: int, base_lr: float) -> float:
        if t < self.warmup_steps:
            return base_lr * (self.start_factor + (1 - self.start_factor) * t / self.warmup_steps)
        if self.after is None:
            return base_lr
        return self.after.lr_at(t - self.warmup_steps, base_lr)

    def hyperparameters(self) -> dict[str, Any]:
        return {"warmup_steps": self.warmup_steps, "start_factor": self.start_factor,
                "after": None if self.after is None else
                {"type": type(self.after).__name__, **self.after.hyperparameters()}}
