r"""Pruners: decide, from a trial's intermediate values, whether it is worth continuing.

A pruner is split in two so that it works in any worker: ``reference(history)`` runs in the
driver when a trial starts and condenses the finished trials into plain data; ``should_stop(
reference, fold, step, value)`` runs in the worker whenever the trial reports.

:class:`MedianPruner` (the median stopping rule of Golovin et al. 2017, *Google Vizier*, KDD):
stop trial :math:`t` at step :math:`s` when its value is worse than the median of the values
the completed trials reported at the same step,

.. math::
    y_t(s) < \operatorname{median}\{\, y_j(s) : j \text{ complete} \,\}
    \quad (\text{maximising}),

once at least ``n_startup_trials`` completed trials reported that step and
:math:`s \ge` ``n_warmup_steps``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import numpy as np

from refnas.search.trial import COMPLETE, TrialRecord

__all__ = ["MedianPruner"]


class MedianPruner:
    """Median stopping rule; ``direction`` is ``"maximize"`` (scores) or ``"minimize"``."""

    def __init__(self, n_startup_trials: int = 5, n_warmup_steps: int = 0,
                 direction: str = "maximize") -> None:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"MedianPruner: direction must be 'maximize' or 'minimize', got "
                             f"{direction!r}")
        self.n_startup_trials = int(n_startup_trials)
        self.n_warmup_steps = int(n_warmup_steps)
        self.direction = direction

    def reference(self, records: Iterable[TrialRecord]) -> dict[tuple[int, int], float]:
        """Median of the completed trials' reports, per ``(fold, step)`` with enough of them."""
        values: dict[tuple[int, int], list[float]] = defaultdict(list)
        for record in records:
            if record.state == COMPLETE:
                for fold, step, value in record.intermediate:
                    values[(fold, step)].append(value)
        return {key: float(np.median(v)) for key, v in values.items()
                if len(v) >= self.n_startup_trials}

    def should_stop(self, reference: Any, fold: int, step: int, value: float) -> bool:
        median = (reference or {}).get((fold, step))
        if median is None or step < self.n_warmup_steps:
            return False
        return value < median if self.direction == "maximize" else value > median
