r"""Successive halving and Hyperband: spend little on many candidates, much on a few.

**Successive halving** (Jamieson & Talwalkar 2016, *Non-stochastic best arm identification and
hyperparameter optimization*, AISTATS; Karnin et al. 2013). With :math:`n` candidates, a
minimum resource :math:`r` (epochs, samples, trees, ...) and a factor :math:`\eta`, rung
:math:`i = 0, 1, \dots` evaluates

.. math::
    n_i = \lfloor n\,\eta^{-i} \rfloor \text{ candidates with resource } r_i = r\,\eta^{i},

and keeps the best :math:`\lfloor n_i / \eta \rfloor` (at least one) for the next rung, until
the resource would pass the maximum or one candidate is left. Every rung costs about the same,
:math:`n_i r_i \approx n r`.

**Hyperband** (Li et al. 2018, *Hyperband: a novel bandit-based approach to hyperparameter
optimization*, JMLR 18(185), Algorithm 1) hedges over how aggressive to be: with maximum
resource :math:`R` (in units of the minimum), :math:`s_{max} = \lfloor \log_\eta R \rfloor`
and :math:`B = (s_{max} + 1) R`, bracket :math:`s = s_{max}, \dots, 0` runs successive halving
on

.. math::
    n = \left\lceil \frac{B}{R} \frac{\eta^s}{s + 1} \right\rceil \text{ fresh random
    candidates, starting at } r = R\,\eta^{-s}.

For :math:`R = 81, \eta = 3` the brackets start with 81 candidates at 1, 34 at 3, 15 at 9,
8 at 27 and 5 at 81 (the paper's Table 1). The brackets are independent; here they run side
by side so that their trials can share the workers.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from refnas.search.space import Space, sample_candidates, validate_space
from refnas.search.strategy import Batches, BatchStrategy, Proposal, best_indices, interleave

__all__ = ["successive_halving", "halving_rungs", "hyperband_brackets", "SuccessiveHalving",
           "Hyperband", "resolve_resources"]


def _check_factor(factor: Any) -> int:
    if not isinstance(factor, (int, np.integer)) or isinstance(factor, bool) or factor < 2:
        raise ValueError(f"factor (eta) must be an integer >= 2, got {factor!r}")
    return int(factor)


def _floor_log(x: float, base: int) -> int:
    r""":math:`\lfloor \log_{base} x \rfloor` for :math:`x \ge 1`, in exact integer steps."""
    k = 0
    while base ** (k + 1) <= x:
        k += 1
    return k


def halving_rungs(n_candidates: int, min_resource: float, max_resource: float,
                  factor: int = 3) -> list[tuple[int, float]]:
    r"""The rungs :math:`(n_i, r_i)` of successive halving, as many as both the resource
    (:math:`r\eta^i \le R`) and the candidates (:math:`n\eta^{-i} \ge 1`) allow."""
    factor = _check_factor(factor)
    if not 0 < min_resource <= max_resource:
        raise ValueError(f"need 0 < min_resources <= max_resources, got {min_resource} and "
                         f"{max_resource}")
    n_rungs = 1 + min(_floor_log(max_resource / min_resource, factor),
                      _floor_log(max(n_candidates, 1), factor))
    return [(max(1, n_candidates // factor ** i), min_resource * factor ** i)
            for i in range(n_rungs)]


def successive_halving(candidates: list[tuple[dict[str, Any], int]], budgets: list[float],
                       factor: int, meta: dict[str, Any] | None = None) -> Batches:
    """Generator: evaluate the candidates at ``budgets[0]``, keep the best
    :math:`\\lfloor n/\\eta \\rfloor`, evaluate them at ``budgets[1]``, and so on."""
    alive = [(c, params, branch) for c, (params, branch) in enumerate(candidates)]
    for rung, budget in enumerate(budgets):
        outcomes = yield [Proposal(params, budget, {**(meta or {}), "config": c, "rung": rung,
                                                    "space": branch})
                          for c, params, branch in alive]
        alive = [alive[j] for j in best_indices(outcomes, max(1, len(alive) // factor))]


def hyperband_brackets(max_resource: float, factor: int = 3) -> list[list[tuple[int, float]]]:
    r"""Hyperband's brackets :math:`s = s_{max}, \dots, 0`, each a list of rungs
    :math:`(n_i, r_i)` with the resource in units of the minimum resource (``max_resource`` is
    :math:`R`)."""
    factor = _check_factor(factor)
    if max_resource < 1:
        raise ValueError(f"max_resource must be at least the minimum resource (R >= 1), got "
                         f"R={max_resource}")
    s_max = _floor_log(max_resource, factor)
    brackets = []
    for s in range(s_max, -1, -1):
        n = -(-(s_max + 1) * factor ** s // (s + 1))  # ceil(B/R * eta^s / (s+1))
        r = max_resource / factor ** s
        brackets.append([(n // factor ** i, r * factor ** i) for i in range(s + 1)])
    return brackets


class SuccessiveHalving(BatchStrategy):
    """Successive halving over ``n_candidates`` random candidates."""

    name = "halving"

    def __init__(self, space: Space, n_candidates: int, min_resource: float,
                 max_resource: float, factor: int = 3) -> None:
        self.spaces = validate_space(space)
        if n_candidates < 1:
            raise ValueError(f"n_candidates must be >= 1, got {n_candidates!r}")
        self.n_candidates = int(n_candidates)
        self.min_resource, self.max_resource = min_resource, max_resource
        self.factor = _check_factor(factor)
        self.rungs = halving_rungs(self.n_candidates, min_resource, max_resource, self.factor)

    def signature(self) -> dict[str, Any]:
        return {"name": self.name, "n_candidates": self.n_candidates, "factor": self.factor,
                "min_resource": self.min_resource, "max_resource": self.max_resource}

    @property
    def total(self) -> int:
        return sum(n for n, _ in self.rungs)

    def batches(self, rng: np.random.Generator) -> Batches:
        candidates = sample_candidates(self.spaces, self.n_candidates, rng, name="n_candidates")
        budgets = [r for _, r in halving_rungs(len(candidates), self.min_resource,
                                               self.max_resource, self.factor)]
        yield from successive_halving(candidates, budgets, self.factor)


class Hyperband(BatchStrategy):
    """Hyperband between ``min_resource`` and ``max_resource`` (so :math:`R` = their ratio)."""

    name = "hyperband"

    def __init__(self, space: Space, min_resource: float, max_resource: float,
                 factor: int = 3) -> None:
        self.spaces = validate_space(space)
        if not 0 < min_resource <= max_resource:
            raise ValueError(f"need 0 < min_resources <= max_resources, got {min_resource} and "
                             f"{max_resource}")
        self.min_resource, self.max_resource = min_resource, max_resource
        self.factor = _check_factor(factor)
        self.brackets = hyperband_brackets(max_resource / min_resource, self.factor)

    def signature(self) -> dict[str, Any]:
        return {"name": self.name, "factor": self.factor, "min_resource": self.min_resource,
                "max_resource": self.max_resource}

    @property
    def total(self) -> int:
        return sum(n for bracket in self.brackets for n, _ in bracket)

    def batches(self, rng: np.random.Generator) -> Batches:
        s_max = len(self.brackets) - 1
        generators = []
        for s, rungs in zip(range(s_max, -1, -1), self.brackets):
            candidates = sample_candidates(self.spaces, rungs[0][0], rng, name="n_candidates")
            budgets = [self.min_resource * r for _, r in rungs]
            generators.append(successive_halving(candidates, budgets, self.factor,
                                                 meta={"bracket": s}))
        yield from interleave(generators)


def resolve_resources(resource: str, max_resources: Any, min_resources: Any, *,
                      n_samples: int, n_splits: int, n_classes: int | None, factor: int,
                      n_candidates: Any = None) -> tuple[float, float]:
    """``(min, max)`` resource from scikit-learn's halving arguments.

    ``max_resources="auto"`` is the number of samples (only for ``resource="n_samples"``);
    ``min_resources="smallest"`` is ``2 * n_splits`` (times the number of classes for a
    classifier) for samples and 1 otherwise; ``"exhaust"`` picks the minimum so that the last
    rung uses the maximum.
    """
    if max_resources == "auto":
        if resource != "n_samples":
            raise ValueError(f"max_resources='auto' only works with resource='n_samples'; give "
                             f"max_resources (e.g. the most {resource}) for resource={resource!r}")
        max_resources = n_samples
    if isinstance(max_resources, str) or max_resources <= 0:
        raise ValueError(f"max_resources must be 'auto' or a positive number, got "
                         f"{max_resources!r}")
    smallest = 2 * n_splits * (n_classes or 1) if resource == "n_samples" else 1
    if min_resources == "smallest":
        min_resources = smallest
    elif min_resources == "exhaust":
        if not isinstance(n_candidates, (int, np.integer)):
            raise ValueError("min_resources='exhaust' needs an integer n_candidates")
        rungs = 1 + _floor_log(max(int(n_candidates), 1), _check_factor(factor))
        min_resources = max(smallest, max_resources // factor ** (rungs - 1))
    if isinstance(min_resources, str) or not 0 < min_resources <= max_resources:
        raise ValueError(f"min_resources must be 'smallest', 'exhaust' or a number in "
                         f"(0, max_resources={max_resources}], got {min_resources!r}")
    return min_resources, max_resources
