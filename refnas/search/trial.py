"""Trials: the record the store keeps, the handle an objective sees, and the worker entry point.

A trial goes ``waiting → running → complete | pruned | failed``. The driver process owns the
:class:`TrialRecord` and writes it to the store; a worker only ever sees a :class:`Trial` (the
parameters, the budget, the seed, and ``report`` / ``should_stop`` for early stopping) and
returns a :class:`TrialResult`. Everything here is plain data, so it pickles to process pools
and Dask workers; it is stored as JSON, never pickled.
"""
from __future__ import annotations

import math
import re
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import numpy as np

__all__ = [
    "WAITING", "RUNNING", "COMPLETE", "PRUNED", "FAILED", "FINISHED", "TrialPruned",
    "TrialRecord", "Trial", "TrialResult", "execute_trial", "trial_seed", "encode_value",
    "decode_value", "params_key",
]

WAITING, RUNNING, COMPLETE, PRUNED, FAILED = "waiting", "running", "complete", "pruned", "failed"
FINISHED = frozenset({COMPLETE, PRUNED, FAILED})


class TrialPruned(Exception):
    """Raise from an objective to stop a trial early; it is recorded as ``pruned``."""


def trial_seed(study_seed: int, number: int) -> int:
    """Seed of trial ``number``: ``SeedSequence(study_seed).spawn(number + 1)[number]``, as a
    32-bit int. Keyed by the trial number, so it does not depend on which worker ran it."""
    child = np.random.SeedSequence(study_seed, spawn_key=(number,))
    return int(child.generate_state(1)[0])


# -- JSON encoding of parameter values --------------------------------------------------------
def encode_value(value: Any) -> Any:
    """A JSON-ready form of a parameter value. NumPy scalars become Python numbers, tuples and
    arrays are tagged so they come back as such, other objects are kept as their ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [encode_value(v) for v in value]}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": encode_value(value.tolist())}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode_value(v) for k, v in value.items()}
    return {"__repr__": re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))}  # no addresses


def decode_value(value: Any) -> Any:
    """Inverse of :func:`encode_value` (a ``__repr__`` placeholder stays a dict)."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(decode_value(v) for v in value["__tuple__"])
        if set(value) == {"__ndarray__"}:
            return np.asarray(decode_value(value["__ndarray__"]))
        return {k: decode_value(v) for k, v in value.items()}
    return value


def params_key(params: dict[str, Any]) -> str:
    """A canonical string for a parameter dict (equal params give equal keys)."""
    import json

    return json.dumps(encode_value(dict(sorted(params.items()))), sort_keys=True)


# -- records ---------------------------------------------------------------------------------
def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else x
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    return x


def _none_to_nan(x: Any) -> Any:
    if x is None:
        return math.nan
    if isinstance(x, list):
        return [_none_to_nan(v) for v in x]
    if isinstance(x, dict):
        return {k: _none_to_nan(v) for k, v in x.items()}
    return x


@dataclass
class TrialRecord:
    """Everything known about one trial. ``value`` is the objective (the mean test score of the
    refit metric for estimators); ``test_scores[metric][k]`` the score on fold ``k``;
    ``intermediate`` the ``(fold, step, value)`` reports made during the trial."""

    number: int
    params: dict[str, Any]
    state: str = WAITING
    budget: float | None = None
    seed: int | None = None
    value: float = math.nan
    test_scores: dict[str, list[float]] = field(default_factory=dict)
    train_scores: dict[str, list[float]] = field(default_factory=dict)
    fit_times: list[float] = field(default_factory=list)
    score_times: list[float] = field(default_factory=list)
    intermediate: list[tuple[int, int, float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    datetime_start: float | None = None
    datetime_complete: float | None = None
    traceback: str | None = None
    heartbeat: float | None = None
    pid: int | None = None
    host: str | None = None
    run_id: str | None = None

    @property
    def duration(self) -> float | None:
        if self.datetime_start is None or self.datetime_complete is None:
            return None
        return self.datetime_complete - self.datetime_start

    def update(self, result: TrialResult) -> None:
        """Copy a worker's result into the record."""
        for f in fields(result):
            setattr(self, f.name, getattr(result, f.name))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (params encoded, NaN written as ``None``)."""
        out = asdict(self)
        out["params"] = encode_value(self.params)
        out["meta"] = encode_value(self.meta)
        out["intermediate"] = [list(r) for r in self.intermediate]
        return _nan_to_none(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        data = dict(data)
        data["params"] = decode_value(data["params"])
        data["meta"] = decode_value(data.get("meta") or {})
        data["value"] = _none_to_nan(data.get("value"))
        for key in ("test_scores", "train_scores"):
            data[key] = _none_to_nan(data.get(key) or {})
        data["intermediate"] = [(int(f), int(s), float(_none_to_nan(v)))
                                for f, s, v in data.get("intermediate") or []]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrialResult:
    """What a worker sends back to the driver."""

    state: str = COMPLETE
    value: float = math.nan
    test_scores: dict[str, list[float]] = field(default_factory=dict)
    train_scores: dict[str, list[float]] = field(default_factory=dict)
    fit_times: list[float] = field(default_factory=list)
    score_times: list[float] = field(default_factory=list)
    intermediate: list[tuple[int, int, float]] = field(default_factory=list)
    traceback: str | None = None
    datetime_start: float | None = None
    datetime_complete: float | None = None


# -- the handle an objective sees -----------------------------------------------------------
@dataclass
class Trial:
    """One evaluation, as seen by the objective ``(params, budget, trial) -> score``.

    ``trial.report(value, step)`` records an intermediate value (e.g. validation accuracy after
    each epoch); ``trial.should_stop()`` asks the pruner whether to give up on this trial.
    ``trial.seed`` / ``trial.rng`` are its own randomness; ``study_seed`` is shared by all
    trials of the study (e.g. for identical subsamples). ``fold`` is set by cross-validation.
    """

    number: int
    params: dict[str, Any]
    budget: float | None = None
    seed: int | None = None
    study_seed: int | None = None
    pruner: Any = None
    reference: Any = None
    fold: int = 0
    intermediate: list[tuple[int, int, float]] = field(default_factory=list)
    stopped: bool = False

    @property
    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def report(self, value: float, step: int) -> None:
        """Record ``value`` at ``step`` (of the current fold)."""
        self.intermediate.append((int(self.fold), int(step), float(value)))

    def should_stop(self) -> bool:
        """True once the pruner judges the last reported value not worth continuing."""
        if not self.stopped and self.pruner is not None and self.intermediate:
            fold, step, value = self.intermediate[-1]
            self.stopped = bool(self.pruner.should_stop(self.reference, fold, step, value))
        return self.stopped


def _last_value(trial: Trial) -> float:
    return trial.intermediate[-1][2] if trial.intermediate else math.nan


def execute_trial(objective: Callable[[Trial], TrialResult], trial: Trial,
                  error_score: Any = math.nan) -> TrialResult:
    """Run one trial in a worker. An exception or a NaN value becomes a ``failed`` result with
    its traceback and ``error_score`` as value — unless ``error_score == "raise"``."""
    start = time.time()
    try:
        result = objective(trial)
    except TrialPruned:
        result = TrialResult(state=PRUNED, value=_last_value(trial))
    except Exception:
        if isinstance(error_score, str) and error_score == "raise":
            raise
        result = TrialResult(state=FAILED, value=float(error_score),
                             traceback=traceback.format_exc())
    if result.state == COMPLETE and math.isnan(result.value):
        message = f"ValueError: trial {trial.number} scored NaN with params {trial.params}\n"
        if isinstance(error_score, str) and error_score == "raise":
            raise ValueError(message)
        result.state, result.traceback, result.value = FAILED, message, float(error_score)
    if result.state == COMPLETE and trial.stopped:
        result.state = PRUNED
    result.intermediate = list(trial.intermediate)
    result.datetime_start, result.datetime_complete = start, time.time()
    return result
