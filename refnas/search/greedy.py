r"""Greedy coordinate ascent: improve one parameter at a time, the others held fixed.

From a starting point :math:`\theta^{(0)}`, a sweep visits the parameters :math:`k = 1..K` in
turn and sets

.. math::
    \theta_k \leftarrow \arg\max_{v \in V_k}\; f(\theta_1, \dots, \theta_{k-1}, v,
    \theta_{k+1}, \dots, \theta_K),

where :math:`V_k` is the parameter's list (or ``n_samples`` fresh draws from its distribution,
plus the current value). Sweeps repeat until one changes nothing or ``max_sweeps`` is reached
(coordinate ascent, e.g. Wright 2015, *Coordinate descent algorithms*, Math. Prog. 151).
Each coordinate's candidates form one batch, so they run in parallel. A point already
evaluated is not evaluated again. For a conditional space each branch is climbed in turn.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from refnas.search.space import Space, is_distribution, validate_space
from refnas.search.strategy import Batches, BatchStrategy, Proposal
from refnas.search.trial import params_key

__all__ = ["GreedySearch"]


class GreedySearch(BatchStrategy):
    """Coordinate ascent starting from the first value of each list (a draw for a
    distribution); ``n_iter`` caps the number of trials."""

    name = "greedy"

    def __init__(self, space: Space, n_iter: int | None = None, n_samples: int = 5,
                 max_sweeps: int = 10) -> None:
        self.spaces = validate_space(space)
        if n_iter is not None and n_iter < 1:
            raise ValueError(f"n_iter must be a positive integer or None, got {n_iter!r}")
        if n_samples < 1 or max_sweeps < 1:
            raise ValueError(f"n_samples and max_sweeps must be >= 1, got {n_samples}, "
                             f"{max_sweeps}")
        self.max_trials = n_iter
        self.n_samples, self.max_sweeps = int(n_samples), int(max_sweeps)

    def signature(self) -> dict[str, Any]:
        return {"name": self.name, "n_samples": self.n_samples, "max_sweeps": self.max_sweeps}

    @property
    def total(self) -> int | None:
        return self.max_trials

    def batches(self, rng: np.random.Generator) -> Batches:
        for b, branch in enumerate(self.spaces):
            yield from self._climb(branch, b, rng)

    def _climb(self, branch: dict[str, Any], b: int, rng: np.random.Generator) -> Batches:
        scores: dict[str, float] = {}  # params_key -> score
        point = {k: (v.rvs(random_state=rng) if is_distribution(v) else v[0])
                 for k, v in sorted(branch.items())}
        outcomes = yield [Proposal(point, meta={"space": b, "coordinate": None})]
        scores[params_key(point)] = outcomes[0].score
        for sweep in range(self.max_sweeps):
            improved = False
            for key in sorted(branch):
                values = self._values(branch[key], point[key], rng)
                if len(values) < 2:
                    continue
                candidates = [{**point, key: v} for v in values]
                new = {params_key(c): c for c in candidates if params_key(c) not in scores}
                outcomes = yield [Proposal(c, meta={"space": b, "coordinate": key,
                                                    "sweep": sweep}) for c in new.values()]
                scores.update({k: o.score for k, o in zip(new, outcomes)})
                best = max(candidates, key=lambda c: scores[params_key(c)])
                if scores[params_key(best)] > scores[params_key(point)]:
                    point, improved = best, True
            if not improved:
                return

    def _values(self, values: Any, current: Any, rng: np.random.Generator) -> list[Any]:
        if is_distribution(values):
            return [current] + [values.rvs(random_state=rng) for _ in range(self.n_samples)]
        return list(values)
