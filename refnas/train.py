"""The training loop: ``fit``, ``evaluate``, ``predict``, a ``History`` and callbacks.

::

    from refnas import nn, ops, optim
    from refnas.train import EarlyStopping, fit

    model = nn.MLP([64, 128, 10], seed=0)
    history = fit(model, optim.Adam(model.parameters(), lr=1e-3), ops.cross_entropy,
                  (X_train, y_train), val=(X_val, y_val), epochs=20,
                  callbacks=[EarlyStopping(patience=3)])
    history["val_accuracy"]            # one value per epoch

Each epoch records ``epoch`` (1-based), ``train_loss`` (mean over the epoch's batches),
``train_accuracy`` (from the same forward passes, when "accuracy" is a metric), ``val_loss`` and
``val_<metric>`` for each metric (when there is validation data), ``lr`` (of the first param
group, during the epoch) and ``time`` (seconds).

Divergence: a non-finite training loss, validation loss or parameter stops training by raising
:class:`TrainingDiverged`, after restoring the parameters and buffers of the last step whose loss
was finite (the "last good weights"); the exception carries the ``history`` so far and
``history.stop_reason`` says what happened. Early stopping sets ``history.stop_reason`` too.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from refnas import metrics as metric_functions
from refnas import ops
from refnas.data import DataLoader, to_numpy
from refnas.nn.module import Module
from refnas.optim import LRScheduler, Optimizer
from refnas.tensor import Tensor, no_grad

__all__ = ["fit", "evaluate", "predict", "predict_proba", "predict_logits", "History",
           "Callback", "EarlyStopping", "BestCheckpoint", "TrainingRun", "TrainingDiverged",
           "METRICS"]


class TrainingDiverged(FloatingPointError):
    """The loss (or a parameter) became NaN/Inf; the last good weights have been restored."""

    def __init__(self, message: str, history: "History") -> None:
        super().__init__(message)
        self.history = history


# --------------------------------------------------------------------------------------------
# Metrics by name
# --------------------------------------------------------------------------------------------
def _macro(fn: Callable) -> Callable[[np.ndarray, np.ndarray], float]:
    def metric(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float(fn(y_true, y_pred, average="macro", zero_division=0))

    return metric


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": metric_functions.accuracy,
    "precision_macro": _macro(metric_functions.precision),
    "recall_macro": _macro(metric_functions.recall),
    "f1_macro": _macro(metric_functions.f1),
}


def _metric_functions(metrics: Sequence[str | Callable]) -> dict[str, Callable]:
    """Names (keys of :data:`METRICS`) or callables ``fn(y_true, y_pred) -> float``."""
    chosen = {}
    for metric in metrics:
        if callable(metric):
            chosen[getattr(metric, "__name__", "metric")] = metric
        elif metric in METRICS:
            chosen[metric] = METRICS[metric]
        else:
            raise ValueError(f"unknown metric {metric!r}; expected a callable or one of "
                             f"{', '.join(METRICS)}")
    return chosen


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------
@dataclass
class History:
    """Per-epoch records of a :func:`fit` run; ``history["val_loss"]`` lists one key over epochs."""

    records: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None

    def __getitem__(self, key: str) -> list[Any]:
        if self.records and key not in self.keys():
            raise KeyError(f"History: no {key!r}; recorded keys: {', '.join(self.keys())}")
        return [record.get(key) for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for record in self.records:
            seen.update(dict.fromkeys(record))
        return list(seen)

    @property
    def last(self) -> dict[str, Any]:
        return self.records[-1] if self.records else {}

    def best(self, monitor: str = "val_loss", mode: str = "auto") -> tuple[int, float]:
        """(epoch, value) of the best ``monitor`` value (min for losses, max otherwise)."""
        values = [(r["epoch"], r[monitor]) for r in self.records if monitor in r]
        if not values:
            raise KeyError(f"History.best: no {monitor!r} recorded; keys: {self.keys()}")
        pick = min if _resolve_mode(monitor, mode) == "min" else max
        return pick(values, key=lambda item: item[1])

    def to_dict(self) -> dict[str, Any]:
        return {"records": [dict(r) for r in self.records], "stop_reason": self.stop_reason}


def _resolve_mode(monitor: str, mode: str) -> str:
    if mode == "auto":
        return "min" if "loss" in monitor else "max"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    return mode


# --------------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------------
@dataclass
class TrainingRun:
    """What a callback can see and steer: the model, optimizer, scheduler and history."""

    model: Module
    optimizer: Optimizer
    scheduler: LRScheduler | None
    history: History
    epoch: int = 0
    stop_requested: str | None = None

    def request_stop(self, reason: str) -> None:
        """Stop after the current epoch; ``reason`` becomes ``history.stop_reason``."""
        self.stop_requested = reason


class Callback:
    """Base class: override any of the hooks; ``self.run`` is the :class:`TrainingRun`.

    ``epoch`` is 0-based in the hooks; ``logs`` of ``on_epoch_end`` is that epoch's history
    record, of ``on_batch_end`` ``{"epoch", "batch", "loss"}``.
    """

    run: TrainingRun

    def set_run(self, run: TrainingRun) -> None:
        self.run = run

    def on_train_begin(self) -> None:
        pass

    def on_epoch_begin(self, epoch: int) -> None:
        pass

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        pass

    def on_train_end(self) -> None:
        pass


class _Monitor:
    """Tracks the best value of one history key; ``improved(v)`` by more than ``min_delta``."""

    def __init__(self, owner: str, monitor: str, mode: str, min_delta: float) -> None:
        if min_delta < 0:
            raise ValueError(f"{owner}: min_delta must be >= 0, got {min_delta!r}")
        self.owner, self.monitor, self.min_delta = owner, monitor, float(min_delta)
        self.mode = _resolve_mode(monitor, mode)
        self.best: float | None = None
        self.best_epoch: int | None = None

    def value(self, logs: dict[str, Any]) -> float:
        if self.monitor not in logs:
            raise KeyError(f"{self.owner}: monitor {self.monitor!r} is not recorded; available: "
                           f"{', '.join(logs)} (val_* keys need validation data)")
        return float(logs[self.monitor])

    def improved(self, value: float, epoch: int) -> bool:
        if self.best is None:
            better = math.isfinite(value)
        elif self.mode == "min":
            better = value < self.best - self.min_delta
        else:
            better = value > self.best + self.min_delta
        if better:
            self.best, self.best_epoch = value, epoch
        return better


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    ``mode`` "auto" minimises keys containing "loss" and maximises the others. With
    ``restore_best`` the model's parameters and buffers from the best epoch are put back when
    training ends.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best: bool = True) -> None:
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an int >= 0, got {patience!r}")
        self.tracker = _Monitor("EarlyStopping", monitor, mode, min_delta)
        self.patience, self.restore_best = patience, bool(restore_best)
        self.wait = 0
        self.best_state: dict[str, np.ndarray] | None = None
        self.stopped_epoch: int | None = None

    def on_train_begin(self) -> None:
        self.wait, self.best_state, self.stopped_epoch = 0, None, None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        value = self.tracker.value(logs)
        if self.tracker.improved(value, logs["epoch"]):
            self.wait = 0
            if self.restore_best:
                self.best_state = self.run.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = logs["epoch"]
            t = self.tracker
            self.run.request_stop(
                f"early stopping at epoch {logs['epoch']}: {t.monitor} did not improve by more "
                f"than {t.min_delta} for {self.wait} epochs (best {t.best:.6g} at epoch "
                f"{t.best_epoch})")

    def on_train_end(self) -> None:
        if self.restore_best and self.best_state is not None:
            self.run.model.load_state_dict(self.best_state)


class BestCheckpoint(Callback):
    """Save a checkpoint (via :func:`refnas.io.save_checkpoint`) whenever ``monitor`` improves."""

    def __init__(self, path: str, monitor: str = "val_loss", mode: str = "auto",
                 min_delta: float = 0.0, save_optimizer: bool = True) -> None:
        self.path = path
        self.tracker = _Monitor("BestCheckpoint", monitor, mode, min_delta)
        self.save_optimizer = bool(save_optimizer)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        from refnas.io import save_checkpoint

        value = self.tracker.value(logs)
        if self.tracker.improved(value, logs["epoch"]):
            run = self.run
            save_checkpoint(self.path, run.model,
                            run.optimizer if self.save_optimizer else None,
                            run.scheduler if self.save_optimizer else None,
                            metadata={"epoch": logs["epoch"], "monitor": self.tracker.monitor,
                                      "value": value, "history": run.history.to_dict()})


# --------------------------------------------------------------------------------------------
# Data and snapshots
# --------------------------------------------------------------------------------------------
def _loader(data: Any, batch_size: int, shuffle: bool, seed: int, where: str) -> Iterable:
    """A DataLoader (or any iterable of (xb, yb)) as is; an (X, y) tuple wrapped in a DataLoader."""
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(f"{where}: expected (X, y) or a DataLoader, got a tuple of "
                             f"{len(data)} items")
        return DataLoader(data[0], data[1], batch_size=batch_size, shuffle=shuffle, seed=seed)
    if not hasattr(data, "__iter__"):
        raise TypeError(f"{where}: expected (X, y) or a DataLoader, got {type(data).__name__}")
    return data


def _inputs(xb: Any, model: Module) -> Tensor:
    """A batch as a Tensor of the model's float dtype, on the model's device."""
    if not isinstance(xb, Tensor):
        xb = np.asarray(xb)
        xb = Tensor(xb.astype(model.dtype, copy=False) if xb.dtype.kind == "f" else xb)
    return xb.to(_device(model))


def _device(model: Module) -> str:
    for param in model.parameters():
        return param.device
    return "cpu"


class _Snapshot:
    """Preallocated copies of the parameters and buffers (on their device), for rolling back a
    diverged step."""

    def __init__(self, model: Module) -> None:
        self.slots = list(model._state_slots().values())
        self.saved = [_slot_array(m, local, kind).copy() for m, local, kind in self.slots]

    def save(self) -> None:
        for copy, (m, local, kind) in zip(self.saved, self.slots):
            copy[...] = _slot_array(m, local, kind)

    def restore(self) -> None:
        for copy, (m, local, kind) in zip(self.saved, self.slots):
            _slot_array(m, local, kind)[...] = copy


def _slot_array(module: Module, local: str, kind: str) -> Any:
    return module._parameters[local].data if kind == "param" else module._buffers[local]


def _all_finite(model: Module) -> bool:
    return all(bool(p.xp.all(p.xp.isfinite(p.data))) for p in model.parameters())


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------
def fit(model: Module, optimizer: Optimizer, loss_fn: Callable[[Tensor, Any], Tensor] | None,
        train: Any, val: Any = None, epochs: int = 10, callbacks: Sequence[Callback] = (),
        scheduler: LRScheduler | None = None, metrics: Sequence[str | Callable] = ("accuracy",),
        progress: bool = True, batch_size: int = 64, seed: int = 0,
        scheduler_interval: str = "epoch") -> History:
    """Train ``model`` for ``epochs`` epochs; returns the :class:`History`.

    Args:
        loss_fn: ``loss_fn(logits, y) -> scalar Tensor``; None means
            :func:`refnas.ops.cross_entropy`.
        train, val: DataLoaders (or iterables of ``(xb, yb)``) or ``(X, y)`` tuples, which are
            batched by ``batch_size`` (train shuffled with ``seed``).
        metrics: names in :data:`METRICS` or callables ``fn(y_true, y_pred)``, computed on the
            validation data from the arg-max predictions.
        scheduler: stepped after every epoch (``scheduler_interval="epoch"``) or batch ("batch").
        progress: a tqdm bar over all batches with the running loss and the last validation
            metrics in its postfix.

    Raises:
        TrainingDiverged: see the module docstring.
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit: epochs must be an int >= 0, got {epochs!r}")
    if scheduler_interval not in ("epoch", "batch"):
        raise ValueError(f"fit: scheduler_interval must be 'epoch' or 'batch', got "
                         f"{scheduler_interval!r}")
    loss_fn = ops.cross_entropy if loss_fn is None else loss_fn
    chosen = _metric_functions(metrics)
    train_loader = _loader(train, batch_size, True, seed, "fit: train")
    val_loader = None if val is None else _loader(val, max(batch_size, 256), False, seed,
                                                  "fit: val")
    history = History()
    run = TrainingRun(model, optimizer, scheduler, history)
    for callback in callbacks:
        callback.set_run(run)
        callback.on_train_begin()
    bar = _progress_bar(progress, epochs, train_loader)
    snapshot = _Snapshot(model)
    try:
        for epoch in range(epochs):
            run.epoch = epoch
            for callback in callbacks:
                callback.on_epoch_begin(epoch)
            record = _train_epoch(run, loss_fn, train_loader, snapshot, callbacks, bar,
                                  "accuracy" in chosen, scheduler_interval)
            if val_loader is not None:
                scores = evaluate(model, val_loader, loss_fn, metrics)
                record.update({f"val_{k}": v for k, v in scores.items()})
            _check_epoch(run, record, snapshot)
            history.records.append(record)
            if bar is not None:
                bar.set_postfix({"epoch": record["epoch"], "loss": f"{record['train_loss']:.4f}",
                                 **_postfix(record)}, refresh=False)
            if scheduler is not None and scheduler_interval == "epoch":
                scheduler.step()
            for callback in callbacks:
                callback.on_epoch_end(epoch, record)
            if run.stop_requested:
                history.stop_reason = run.stop_requested
                break
    finally:
        if bar is not None:
            bar.close()
        for callback in callbacks:
            callback.on_train_end()
    return history


def _train_epoch(run: TrainingRun, loss_fn: Callable, loader: Iterable, snapshot: _Snapshot,
                 callbacks: Sequence[Callback], bar: Any, with_accuracy: bool,
                 scheduler_interval: str) -> dict[str, Any]:
    model, optimizer = run.model, run.optimizer
    model.train()
    lr = optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    total_loss, correct, seen = 0.0, 0, 0
    for batch, (xb, yb) in enumerate(loader):
        optimizer.zero_grad()
        logits = model(_inputs(xb, model))
        loss = loss_fn(logits, to_numpy(yb))
        value = float(loss.item())
        if not math.isfinite(value):
            _diverged(run, snapshot, f"the training loss became {value} at epoch "
                                     f"{run.epoch + 1}, batch {batch + 1}")
        snapshot.save()  # these weights gave a finite loss: the last good ones
        loss.backward()
        optimizer.step()
        if run.scheduler is not None and scheduler_interval == "batch":
            run.scheduler.step()
        n = len(yb)
        total_loss += value * n
        seen += n
        if with_accuracy:
            correct += int((to_numpy(logits).argmax(axis=1) == to_numpy(yb)).sum())
        for callback in callbacks:
            callback.on_batch_end(batch, {"epoch": run.epoch, "batch": batch, "loss": value})
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"epoch": run.epoch + 1, "loss": f"{total_loss / seen:.4f}",
                             **_postfix(run.history.last)}, refresh=False)
    record: dict[str, Any] = {"epoch": run.epoch + 1,
                              "train_loss": total_loss / seen if seen else float("nan")}
    if with_accuracy and seen:
        record["train_accuracy"] = correct / seen
    record["lr"] = lr
    record["time"] = time.perf_counter() - start
    return record


def _check_epoch(run: TrainingRun, record: dict[str, Any], snapshot: _Snapshot) -> None:
    """A step can leave NaN/Inf weights without a bad training loss yet (the last step)."""
    if not _all_finite(run.model):
        _diverged(run, snapshot, f"a parameter became NaN/Inf in epoch {record['epoch']}")
    if "val_loss" in record and not math.isfinite(record["val_loss"]):
        _diverged(run, snapshot, f"the validation loss became {record['val_loss']} after epoch "
                                 f"{record['epoch']}")


def _diverged(run: TrainingRun, snapshot: _Snapshot, what: str) -> None:
    snapshot.restore()
    lr = run.optimizer.param_groups[0]["lr"]
    run.history.stop_reason = f"diverged: {what}"
    raise TrainingDiverged(
        f"fit: {what}; training stopped and the parameters from before the bad step were "
        f"restored (lr={lr:g}; a smaller learning rate or gradient clipping may help)",
        run.history)


def _postfix(record: dict[str, Any]) -> dict[str, str]:
    return {k: f"{v:.4f}" for k, v in record.items() if k.startswith("val_")}


def _progress_bar(progress: bool, epochs: int, loader: Iterable) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    total = epochs * len(loader) if hasattr(loader, "__len__") else None
    return tqdm(total=total, desc="train", unit="batch", dynamic_ncols=True, leave=True)


# --------------------------------------------------------------------------------------------
# evaluate and predict
# --------------------------------------------------------------------------------------------
def predict_logits(model: Module, X: Any, batch_size: int = 256) -> np.ndarray:
    """The model's outputs for ``X`` in eval mode, recording no graph (the mode is restored)."""
    was_training = model.training
    model.eval()
    X = X if isinstance(X, Tensor) else np.asarray(X)
    outputs = []
    try:
        with no_grad():
            for start in range(0, len(X), batch_size):
                xb = X[start:start + batch_size]
                outputs.append(to_numpy(model(_inputs(xb, model))))
    finally:
        model.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros((0,))


def predict_proba(model: Module, X: Any, batch_size: int = 256) -> np.ndarray:
    r"""Class probabilities :math:`\operatorname{softmax}(z)` of the model's logits."""
    logits = predict_logits(model, X, batch_size)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def predict(model: Module, X: Any, batch_size: int = 256) -> np.ndarray:
    """The arg-max class index of each example."""
    return predict_logits(model, X, batch_size).argmax(axis=1)


def evaluate(model: Module, data: Any, loss_fn: Callable | None = None,
             metrics: Sequence[str | Callable] = ("accuracy",),
             batch_size: int = 256) -> dict[str, float]:
    """``{"loss": mean loss, <metric>: value, ...}`` over ``data`` (DataLoader or (X, y)), in eval
    mode without recording a graph. The loss is the batch-size-weighted mean of ``loss_fn``
    (exact for mean-reduced losses)."""
    loss_fn = ops.cross_entropy if loss_fn is None else loss_fn
    chosen = _metric_functions(metrics)
    loader = _loader(data, batch_size, False, 0, "evaluate")
    was_training = model.training
    model.eval()
    total, count, predictions, targets = 0.0, 0, [], []
    try:
        with no_grad():
            for xb, yb in loader:
                yb = to_numpy(yb)
                logits = model(_inputs(xb, model))
                total += float(loss_fn(logits, yb).item()) * len(yb)
                count += len(yb)
                predictions.append(to_numpy(logits).argmax(axis=1))
                targets.append(yb)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: the data is empty")
    y_true, y_pred = np.concatenate(targets), np.concatenate(predictions)
    scores = {"loss": total / count}
    scores.update({name: float(fn(y_true, y_pred)) for name, fn in chosen.items()})
    return scores
