"""Plots of a search, saved as PNG (matplotlib's Agg canvas; no display, no global state).

* :func:`plot_history` — each trial's score in trial order, and the best so far;
* :func:`plot_params` — score against each parameter (log axis for positive values spanning
  more than two decades; categories as ticks);
* :func:`plot_rungs` — score against budget, one line per candidate, for halving, Hyperband
  and ASHA: the promotions are the lines that continue to the right.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from refnas.search.export import atomic_open
from refnas.search.trial import COMPLETE, PRUNED, TrialRecord

__all__ = ["plot_history", "plot_params", "plot_rungs", "save_plots"]


def _figure(width: float = 6.4, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path) -> Path:
    figure.tight_layout()
    with atomic_open(path, "wb") as f:
        figure.savefig(f, format="png")
    return Path(path)


def _scored(trials: list[TrialRecord]) -> list[TrialRecord]:
    return [t for t in trials if t.state in (COMPLETE, PRUNED) and not math.isnan(t.value)]


def plot_history(trials: list[TrialRecord], path: str | Path,
                 direction: str = "maximize") -> Path:
    """Score of every trial by number, and the running best."""
    figure = _figure()
    ax = figure.add_subplot()
    scored = _scored(trials)
    numbers = [t.number for t in scored]
    values = np.array([t.value for t in scored])
    best = np.maximum.accumulate(values) if direction == "maximize" else \
        np.minimum.accumulate(values)
    ax.scatter(numbers, values, s=12, alpha=0.6, label="trial")
    ax.step(numbers, best, where="post", color="C3", label="best so far")
    scored_numbers = set(numbers)
    failed = [t.number for t in trials if t.number not in scored_numbers]
    if failed and len(values):
        ax.scatter(failed, [values.min()] * len(failed), marker="x", color="gray",
                   label="failed / no score")
    ax.set_xlabel("trial")
    ax.set_ylabel("score")
    ax.legend(loc="best")
    return _save(figure, path)


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
               for v in values)


def plot_params(trials: list[TrialRecord], path: str | Path) -> Path:
    """One panel per parameter: score against the parameter's value."""
    scored = _scored(trials)
    names = sorted({k for t in scored for k in t.params}) or ["(none)"]
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = _figure(4.0 * columns, 3.2 * rows)
    for i, name in enumerate(names):
        ax = figure.add_subplot(rows, columns, i + 1)
        pairs = [(t.params[name], t.value) for t in scored if name in t.params]
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        if xs and _numeric(xs):
            ax.scatter(xs, ys, s=12, alpha=0.7)
            positive = [x for x in xs if x > 0]
            if len(positive) == len(xs) and max(xs) / min(xs) > 100:
                ax.set_xscale("log")
        elif xs:
            labels = sorted({repr(x) for x in xs})
            ax.scatter([labels.index(repr(x)) for x in xs], ys, s=12, alpha=0.7)
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        ax.set_xlabel(name)
        ax.set_ylabel("score")
    return _save(figure, path)


def plot_rungs(trials: list[TrialRecord], path: str | Path) -> Path:
    """Score against budget; one line per candidate (same bracket and config)."""
    figure = _figure()
    ax = figure.add_subplot()
    lines: dict[Any, list[tuple[float, float]]] = {}
    for t in _scored(trials):
        if t.budget is not None:
            key = (t.meta.get("bracket"), t.meta.get("config", t.number))
            lines.setdefault(key, []).append((t.budget, t.value))
    for points in lines.values():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("budget (resource)")
    ax.set_ylabel("score")
    ax.set_title("successive-halving rungs")
    return _save(figure, path)


def save_plots(trials: list[TrialRecord], directory: str | Path,
               direction: str = "maximize") -> list[Path]:
    """history.png, params.png, and rungs.png when trials have budgets."""
    directory = Path(directory)
    paths = [plot_history(trials, directory / "history.png", direction),
             plot_params(trials, directory / "params.png")]
    if any(t.budget is not None for t in trials):
        paths.append(plot_rungs(trials, directory / "rungs.png"))
    return paths
