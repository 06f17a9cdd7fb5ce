"""From trial records to results: scikit-learn's ``cv_results_`` table, ranks, the best trial.

``cv_results_`` follows ``sklearn.model_selection.GridSearchCV``: for every metric ``m`` and
fold ``k`` the columns ``split<k>_test_<m>``, ``mean_test_<m>``, ``std_test_<m>``,
``rank_test_<m>`` (and the ``train`` ones with ``return_train_score``), ``mean_/std_fit_time``,
``mean_/std_score_time``, ``param_<name>`` (masked where a candidate lacks the parameter) and
``params``. Searches with a budget add ``n_resources`` and ``iter`` (the rung), and rank the
candidates that reached the largest budget first, as the best one must be chosen among them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.ma import MaskedArray

from refnas.search.trial import COMPLETE, PRUNED, TrialRecord

__all__ = ["rank_scores", "build_cv_results", "fit_lines", "SearchResult"]


def rank_scores(means: np.ndarray, budgets: np.ndarray | None = None) -> np.ndarray:
    """Ranks 1, 2, ... (ties share the smaller rank), best first; NaN ranks last (as
    scikit-learn). With ``budgets``, a scored candidate with a larger budget ranks before any
    with a smaller one."""
    means = np.asarray(means, dtype=float)
    if np.isnan(means).all():
        filled = np.zeros_like(means)
    else:
        filled = np.where(np.isnan(means), np.nanmin(means) - 1, means)
    budgets = np.zeros_like(filled) if budgets is None else np.asarray(budgets, dtype=float)
    budgets = np.where(np.isnan(means), -np.inf, budgets)  # no score: last, whatever the budget
    order = np.lexsort((-filled, -budgets))
    ranks = np.empty(len(means), dtype=np.int32)
    previous, rank = None, 0
    for position, i in enumerate(order):
        key = (budgets[i], filled[i])
        if key != previous:
            previous, rank = key, position + 1
        ranks[i] = rank
    return ranks


def _mean_std(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row mean and (population) standard deviation, written as scikit-learn does."""
    means = np.average(array, axis=1)
    stds = np.sqrt(np.average((array - means[:, np.newaxis]) ** 2, axis=1))
    return means, stds


def _param_columns(params: list[dict[str, Any]]) -> dict[str, MaskedArray]:
    names = sorted({k for p in params for k in p})
    columns = {}
    for name in names:
        column = MaskedArray(np.empty(len(params), dtype=object), mask=True)
        for i, p in enumerate(params):
            if name in p:
                column[i] = p[name]
        columns[f"param_{name}"] = column
    return columns


def _matrix(rows: list[list[float]], n_splits: int) -> np.ndarray:
    """(trials, folds) array; missing folds are NaN."""
    padded = [list(r)[:n_splits] + [math.nan] * (n_splits - len(r)) for r in rows]
    return np.array(padded, dtype=float).reshape(len(rows), n_splits)


def build_cv_results(trials: list[TrialRecord], metrics: list[str], n_splits: int,
                     return_train_score: bool = False,
                     budgeted: bool = False) -> dict[str, Any]:
    """The ``cv_results_`` dict of a cross-validated search, rows in trial-number order."""
    results: dict[str, Any] = {}
    budgets = np.array([t.budget if t.budget is not None else 0.0 for t in trials], dtype=float)
    for name, attribute in (("fit_time", "fit_times"), ("score_time", "score_times")):
        times = _matrix([getattr(t, attribute) for t in trials], n_splits)
        results[f"mean_{name}"], results[f"std_{name}"] = _mean_std(times)
    params = [t.params for t in trials]
    results.update(_param_columns(params))
    results["params"] = params
    for metric in metrics:
        sets = ["test", "train"] if return_train_score else ["test"]
        for which in sets:
            scores = _matrix([getattr(t, f"{which}_scores").get(metric, []) for t in trials],
                             n_splits)
            for k in range(n_splits):
                results[f"split{k}_{which}_{metric}"] = scores[:, k]
            means, stds = _mean_std(scores)
            results[f"mean_{which}_{metric}"], results[f"std_{which}_{metric}"] = means, stds
            if which == "test":
                results[f"rank_test_{metric}"] = rank_scores(means, budgets if budgeted else None)
    if budgeted:
        results["n_resources"] = budgets
        results["iter"] = np.array([t.meta.get("rung", 0) for t in trials], dtype=int)
    return results


def _short_time(seconds: float) -> str:
    """scikit-learn's ``short_format_time``."""
    return f"{seconds / 60:4.1f}min" if seconds > 60 else f" {seconds:5.1f}s"


def fit_lines(record: TrialRecord, n_splits: int, multimetric: bool,
              return_train_score: bool) -> list[str]:
    """scikit-learn's per-fit lines: ``[CV 1/5] END C=1.0;, score=0.912 total time=   0.1s``."""
    params = ", ".join(f"{k}={v}" for k, v in sorted(record.params.items()))
    lines = []
    for k in range(min(n_splits, len(record.fit_times))):
        test = {m: s[k] for m, s in record.test_scores.items()}
        train = {m: s[k] for m, s in record.train_scores.items()}
        if multimetric:
            scores = "".join(f" {m}: (" + (f"train={train[m]:.3f}, " if return_train_score
                                           else "") + f"test={test[m]:.3f})"
                             for m in sorted(test))
        elif return_train_score:
            scores = f", score=(train={train['score']:.3f}, test={test['score']:.3f})"
        else:
            scores = f", score={test['score']:.3f}"
        total = record.fit_times[k] + record.score_times[k]
        lines.append(f"[CV {k + 1}/{n_splits}] END {params}{';' if params else ''}{scores} "
                     f"total time={_short_time(total)}")
    return lines


@dataclass
class SearchResult:
    """The outcome of :func:`refnas.search.optimize`: every trial and the best one."""

    trials: list[TrialRecord]
    direction: str = "maximize"
    study_name: str = "default"
    seed: int | None = None

    @property
    def best_trial(self) -> TrialRecord:
        """The best complete (or pruned) trial; among budgeted trials, at the largest budget."""
        usable = [t for t in self.trials if t.state in (COMPLETE, PRUNED)
                  and not math.isnan(t.value)]
        if not usable:
            raise ValueError("no trial finished with a score")
        sign = 1.0 if self.direction == "maximize" else -1.0
        return max(usable, key=lambda t: (t.budget or 0.0, sign * t.value, -t.number))

    @property
    def best_params(self) -> dict[str, Any]:
        return self.best_trial.params

    @property
    def best_value(self) -> float:
        return self.best_trial.value

    def to_csv(self, path: str | Path) -> Path:
        from refnas.search.export import write_csv

        return write_csv(self.trials, path)

    def to_json(self, path: str | Path) -> Path:
        from refnas.search.export import write_json

        return write_json(self.trials, path, study_name=self.study_name)

    def save_plots(self, directory: str | Path) -> list[Path]:
        from refnas.search.plots import save_plots

        return save_plots(self.trials, directory, direction=self.direction)
