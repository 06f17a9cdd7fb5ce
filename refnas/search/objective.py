"""Objectives: what a trial evaluates, as a picklable callable ``objective(trial) -> TrialResult``.

* :class:`FunctionObjective` wraps ``fn(params, budget, trial) -> score``.
* :class:`CVObjective` cross-validates a scikit-learn-protocol estimator (``get_params`` /
  ``set_params`` / ``fit`` / ``score``): for each fold it clones the estimator, sets the
  trial's parameters, fits on the training part and scores the held-out part with every
  scorer. A budget is either a number of training samples (``resource="n_samples"``) or the
  value of an estimator parameter (``resource="epochs"``, ``"n_estimators"``, ...).

Estimators whose ``random_state`` is None get the trial's seed, so a search is reproducible.
An estimator with an ``on_epoch_end`` parameter gets an :class:`EpochReporter`, which reports
each epoch's validation score to the trial and stops the fit when the pruner says so.
"""
from __future__ import annotations

import hashlib
import math
import time
import traceback
from typing import Any, Callable

import numpy as np

from refnas.search.trial import COMPLETE, FAILED, PRUNED, Trial, TrialResult, encode_value

__all__ = ["FunctionObjective", "CVObjective", "EpochReporter", "take", "fingerprint"]


class FunctionObjective:
    """``fn(params, budget, trial) -> float``; return a score, or raise to fail."""

    def __init__(self, fn: Callable[[dict[str, Any], Any, Trial], float]) -> None:
        if not callable(fn):
            raise TypeError(f"objective must be callable, got {type(fn).__name__}")
        self.fn = fn

    def __call__(self, trial: Trial) -> TrialResult:
        return TrialResult(value=float(self.fn(trial.params, trial.budget, trial)))

    def signature(self) -> dict[str, Any]:
        name = getattr(self.fn, "__qualname__", type(self.fn).__qualname__)
        return {"function": f"{getattr(self.fn, '__module__', '?')}.{name}"}


_NOT_SCORES = ("epoch", "lr", "time")


class EpochReporter:
    """The ``on_epoch_end(epoch, scores) -> bool`` callback given to network estimators.

    Reports ``scores["val_accuracy"]`` (else ``train_accuracy``, else the first entry that is
    not ``epoch``, ``lr`` or ``time``) to the trial at step ``epoch`` and
    returns ``trial.should_stop()``; a callback the estimator already had is still called, and
    may also ask to stop.
    """

    def __init__(self, trial: Trial, chained: Callable[[int, dict], bool] | None = None) -> None:
        self.trial, self.chained = trial, chained

    def __call__(self, epoch: int, scores: dict[str, float]) -> bool:
        keys = [k for k in ("val_accuracy", "train_accuracy") if k in scores] or \
            [k for k in scores if k not in _NOT_SCORES]
        value = scores[keys[0]] if keys else None
        if value is not None:
            self.trial.report(float(value), int(epoch))
        stop = self.trial.should_stop()
        if self.chained is not None:
            stop = bool(self.chained(epoch, scores)) or stop
        return stop


def take(data: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of an array, a DataFrame / Series (``.iloc``), a sparse matrix or a list."""
    if data is None:
        return None
    if hasattr(data, "iloc"):
        return data.iloc[index]
    if hasattr(data, "shape"):
        return data[index]
    return [data[i] for i in index]


def fingerprint(*arrays: Any) -> str:
    """A short hash of the data, so a study is not resumed on different data."""
    digest = hashlib.sha1()
    for a in arrays:
        if a is None:
            digest.update(b"none")
            continue
        a = getattr(a, "values", a)
        try:
            a = np.ascontiguousarray(a)
            digest.update(str((a.shape, a.dtype.str)).encode())
            digest.update(a.tobytes() if a.dtype != object else repr(a.tolist()).encode())
        except Exception:  # noqa: BLE001 - e.g. sparse: shape and type only
            digest.update(f"{type(a).__name__}{getattr(a, 'shape', '')}".encode())
    return digest.hexdigest()[:16]


def _subsample_order(train: np.ndarray, y: Any, seed: int, fold: int,
                     stratified: bool) -> np.ndarray:
    """A seeded ordering of the training indices whose every prefix is a random subsample
    (and, for classification, keeps the class proportions: members of each class are spread
    evenly along the order)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(fold,)))
    order = rng.permutation(len(train))
    if not stratified:
        return train[order]
    labels = np.asarray(take(y, train))[order]
    position = np.empty(len(order))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        position[members] = (np.arange(len(members)) + 0.5) / len(members)
    return train[order[np.argsort(position, kind="stable")]]


class CVObjective:
    """Cross-validated score of ``estimator`` with a trial's parameters."""

    def __init__(self, estimator: Any, X: Any, y: Any, splits: list[tuple[np.ndarray, np.ndarray]],
                 scorers: dict[str, Callable[..., float]], *, refit_metric: str,
                 fit_params: dict[str, Any] | None = None, return_train_score: bool = False,
                 error_score: Any = math.nan, resource: str | None = None,
                 n_samples: int | None = None, stratified_subsample: bool = False) -> None:
        self.estimator, self.X, self.y, self.splits = estimator, X, y, splits
        self.scorers, self.refit_metric = scorers, refit_metric
        self.fit_params = fit_params or {}
        self.return_train_score, self.error_score = return_train_score, error_score
        self.resource, self.n_samples = resource, n_samples
        self.stratified_subsample = stratified_subsample
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def signature(self) -> dict[str, Any]:
        return {"estimator": f"{type(self.estimator).__module__}.{type(self.estimator).__name__}",
                "params": encode_value(self.estimator.get_params(deep=False)),
                "scoring": sorted(self.scorers), "resource": self.resource,
                "data": fingerprint(self.X, self.y),
                "splits": fingerprint(*[np.concatenate(s) for s in self.splits])}

    # -- building the estimator --------------------------------------------------------------
    def make_estimator(self, params: dict[str, Any], budget: float | None = None,
                       seed: int | None = None, trial: Trial | None = None) -> Any:
        """A clone of the estimator with ``params``, the budget (if it is a parameter), the
        trial's seed (if ``random_state`` is None) and the epoch reporter (if there is a trial)."""
        from sklearn.base import clone

        estimator = clone(self.estimator)
        current = estimator.get_params(deep=False)
        extra: dict[str, Any] = {}
        if self.resource not in (None, "n_samples") and budget is not None:
            extra[self.resource] = max(1, int(round(budget)))
        if (seed is not None and "random_state" in current
                and current["random_state"] is None and "random_state" not in params):
            extra["random_state"] = seed
        if trial is not None and "on_epoch_end" in current:
            extra["on_epoch_end"] = EpochReporter(trial, current["on_epoch_end"])
        return estimator.set_params(**{**params, **extra})

    def _train_rows(self, train: np.ndarray, fold: int, trial: Trial) -> np.ndarray:
        """The training rows for the trial's budget: all of them, or a subsample (the same for
        every trial of the study, nested: a larger budget keeps the smaller one's rows)."""
        budget = trial.budget
        if self.resource != "n_samples" or budget is None:
            return train
        key = (trial.study_seed or 0, fold)
        if key not in self._orders:
            self._orders[key] = _subsample_order(train, self.y, key[0], fold,
                                                 self.stratified_subsample)
        size = min(len(train), max(1, int(round(len(train) * budget / self.n_samples))))
        return np.sort(self._orders[key][:size])

    def _fit_params(self, rows: np.ndarray) -> dict[str, Any]:
        n = len(self.X) if hasattr(self.X, "__len__") else None
        return {k: take(v, rows) if hasattr(v, "__len__") and not isinstance(v, str)
                and len(v) == n else v for k, v in self.fit_params.items()}

    def _scores(self, estimator: Any, rows: np.ndarray) -> dict[str, float]:
        X, y = take(self.X, rows), take(self.y, rows)
        return {name: float(scorer(estimator, X, y)) for name, scorer in self.scorers.items()}

    # -- one trial ---------------------------------------------------------------------------
    def __call__(self, trial: Trial) -> TrialResult:
        names = list(self.scorers)
        result = TrialResult(test_scores={m: [] for m in names},
                             train_scores={m: [] for m in names} if self.return_train_score
                             else {})
        for fold, (train, test) in enumerate(self.splits):
            trial.fold = fold
            if trial.stopped:
                self._pad(result, math.nan)
                continue
            self._run_fold(trial, fold, train, test, result)
        test = result.test_scores[self.refit_metric]
        result.value = float(np.mean(test)) if test else math.nan
        if trial.stopped and result.state == COMPLETE:
            result.state = PRUNED
            result.value = trial.intermediate[-1][2] if trial.intermediate else math.nan
        return result

    def _pad(self, result: TrialResult, value: float) -> None:
        for scores in (result.test_scores, result.train_scores):
            for m in scores:
                scores[m].append(value)
        result.fit_times.append(0.0)
        result.score_times.append(0.0)

    def _run_fold(self, trial: Trial, fold: int, train: np.ndarray, test: np.ndarray,
                  result: TrialResult) -> None:
        raising = isinstance(self.error_score, str) and self.error_score == "raise"
        start = time.perf_counter()
        try:
            rows = self._train_rows(train, fold, trial)
            estimator = self.make_estimator(trial.params, trial.budget, trial.seed, trial)
            estimator.fit(take(self.X, rows), take(self.y, rows), **self._fit_params(rows))
            fit_time = time.perf_counter() - start
            if trial.stopped:  # pruned during this fold's fit: no score for it
                self._pad(result, math.nan)
                return
            test_scores = self._scores(estimator, test)
            train_scores = self._scores(estimator, rows) if self.return_train_score else {}
            bad = [m for m, s in test_scores.items() if math.isnan(s)]
            if bad:
                raise ValueError(f"fold {fold}: score {bad[0]!r} is NaN")
        except Exception:
            if raising:
                raise
            self._pad(result, float(self.error_score))
            result.fit_times[-1] = time.perf_counter() - start
            if result.state != FAILED:
                result.state = FAILED
                result.traceback = traceback.format_exc()
            return
        result.fit_times.append(fit_time)
        result.score_times.append(time.perf_counter() - start - fit_time)
        for m, s in test_scores.items():
            result.test_scores[m].append(s)
        for m, s in train_scores.items():
            result.train_scores[m].append(s)
