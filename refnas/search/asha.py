r"""ASHA: asynchronous successive halving, for many parallel workers.

Li et al. 2020, *A system for massively parallel hyperparameter tuning*, MLSys (Algorithm 2).
Rung :math:`k` runs candidates with resource :math:`r_k = r\,\eta^{s + k}` (:math:`s`, the
minimum early-stopping rate, is usually 0), up to the maximum resource :math:`R`. Whenever a
worker is free, ``get_job`` looks from the highest rung down for a candidate that is in the
top :math:`1/\eta` of its rung and has not been promoted yet,

.. math::
    \text{promotable}_k = \operatorname{top}_{\lfloor |\text{rung}_k| / \eta \rfloor}
    (\text{rung}_k) \setminus \text{promoted}_k,

and runs the first one at rung :math:`k + 1`; if there is none, it starts a new candidate at
rung 0. Nobody waits for a rung to fill, so workers never idle — at the price of promoting on
incomplete rungs. Results therefore depend on the order in which trials finish: a serial run
is reproducible, a parallel one in general is not.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from refnas.search.halving import _check_factor
from refnas.search.space import Space, sample_candidates, validate_space
from refnas.search.strategy import History, Proposal, best_indices
from refnas.search.trial import FINISHED

__all__ = ["ASHA"]


class ASHA:
    """ASHA over ``n_configs`` random candidates (or the given ``candidates``, in order)."""

    name = "asha"

    def __init__(self, space: Space, n_configs: int, min_resource: float, max_resource: float,
                 factor: int = 3, min_early_stopping_rate: int = 0,
                 candidates: list[dict[str, Any]] | None = None) -> None:
        self.spaces = validate_space(space)
        self.factor = _check_factor(factor)
        if not 0 < min_resource <= max_resource:
            raise ValueError(f"need 0 < min_resources <= max_resources, got {min_resource} and "
                             f"{max_resource}")
        self.n_configs = len(candidates) if candidates is not None else int(n_configs)
        self.min_resource, self.max_resource = min_resource, max_resource
        self.s = int(min_early_stopping_rate)
        self.budgets = []
        while min_resource * self.factor ** (self.s + len(self.budgets)) <= max_resource:
            self.budgets.append(min_resource * self.factor ** (self.s + len(self.budgets)))
        if not self.budgets:
            raise ValueError("min_early_stopping_rate leaves no rung below max_resources")
        self._given = None if candidates is None else [(dict(c), 0) for c in candidates]
        self._history: History | None = None

    def signature(self) -> dict[str, Any]:
        return {"name": self.name, "n_configs": self.n_configs, "factor": self.factor,
                "min_resource": self.min_resource, "max_resource": self.max_resource,
                "s": self.s}

    @property
    def total(self) -> int | None:
        return None

    def ask(self, history: History, n: int) -> list[Proposal] | None:
        if self._history is not history:  # a new run: candidates from the study's seed
            self._history = history
            rng = np.random.default_rng(np.random.SeedSequence(history.seed))
            self._candidates = self._given or sample_candidates(self.spaces, self.n_configs, rng,
                                                                name="n_configs")
        out = [Proposal(r.params, r.budget, r.meta, r.number) for r in history.waiting()][:n]
        while len(out) < n:
            job = self._get_job(history, out)
            if job is None:
                break
            out.append(job)
        if out:
            return out
        running = any(r.state not in FINISHED for r in history)
        return [] if running else None

    def _get_job(self, history: History, planned: list[Proposal]) -> Proposal | None:
        """Algorithm 2's ``get_job``: a promotion from the highest possible rung, else a new
        candidate at rung 0, else None."""
        trials = [(r.meta["config"], r.meta["rung"]) for r in history] + \
                 [(p.meta["config"], p.meta["rung"]) for p in planned]
        for k in reversed(range(len(self.budgets) - 1)):
            done = [history.outcome(r.number) for r in history
                    if r.meta.get("rung") == k and r.state in FINISHED]
            promoted = {c for c, rung in trials if rung == k + 1}
            for j in best_indices(done, len(done) // self.factor):
                config = done[j].meta["config"]
                if config not in promoted:
                    return self._proposal(config, k + 1)
        started = len({c for c, _ in trials})
        if started < len(self._candidates):
            return self._proposal(started, 0)
        return None

    def _proposal(self, config: int, rung: int) -> Proposal:
        params, branch = self._candidates[config]
        return Proposal(params, self.budgets[rung], {"config": config, "rung": rung,
                                                     "space": branch})
