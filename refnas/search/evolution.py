r"""Regularized (aging) evolution.

Real, Aggarwal, Huang & Le 2019, *Regularized evolution for image classifier architecture
search*, AAAI (Algorithm 1). A population of :math:`P` candidates starts at random. Each cycle

1. samples :math:`S` members of the population uniformly, with replacement;
2. takes the best of the sample as parent and mutates it (one parameter changed) into a child;
3. evaluates the child, appends it to the population, and removes the **oldest** member —
   not the worst:

.. math::
    \text{population}_{t+1} = \text{population}_t \setminus \{\text{oldest}\} \cup
    \{\text{mutate}(\arg\max_{x \in \text{sample}_t} f(x))\}.

Aging means every candidate, however good, leaves after :math:`P` cycles; a candidate's line
survives only if it keeps producing good children, which favours parameters that are good
robustly rather than by a lucky evaluation.

The paper runs cycles asynchronously on many workers. To stay reproducible, here cycles run in
batches of ``batch_size`` children bred from the same population (``batch_size=1`` is the
sequential algorithm); results do not depend on the number of workers.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from refnas.search.space import Space, mutate, sample_candidates, validate_space
from refnas.search.strategy import Batches, BatchStrategy, Outcome, Proposal

__all__ = ["RegularizedEvolution", "population_window"]


def population_window(child: int, population_size: int, batch_size: int = 1) -> range:
    """Trial numbers of the population a child is bred from (trials ``0..P-1`` are the initial
    population; children are numbered from ``P`` on, bred ``batch_size`` at a time)."""
    first_of_batch = population_size + (child - population_size) // batch_size * batch_size
    return range(first_of_batch - population_size, first_of_batch)


class RegularizedEvolution(BatchStrategy):
    """Aging evolution with population ``population_size`` and tournament ``sample_size``;
    ``n_iter`` trials in all (the initial population included)."""

    name = "evolution"

    def __init__(self, space: Space, n_iter: int = 100, population_size: int = 20,
                 sample_size: int = 5, batch_size: int = 1) -> None:
        self.spaces = validate_space(space)
        for label, value in (("n_iter", n_iter), ("population_size", population_size),
                             ("sample_size", sample_size), ("batch_size", batch_size)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if sample_size > population_size:
            raise ValueError(f"sample_size={sample_size} cannot exceed "
                             f"population_size={population_size}")
        self.population_size, self.sample_size = int(population_size), int(sample_size)
        self.batch_size = int(batch_size)
        self.max_trials = int(n_iter)

    def signature(self) -> dict[str, Any]:
        return {"name": self.name, "population_size": self.population_size,
                "sample_size": self.sample_size, "batch_size": self.batch_size}

    @property
    def total(self) -> int:
        return self.max_trials

    def batches(self, rng: np.random.Generator) -> Batches:
        initial = sample_candidates(self.spaces, self.population_size, rng,
                                    name="population_size")
        population = deque((yield [Proposal(p, meta={"space": b, "parent": None})
                                   for p, b in initial]))
        while True:
            children = [self._breed(population, rng) for _ in range(self.batch_size)]
            for outcome in (yield children):
                population.append(outcome)
                population.popleft()  # the oldest dies

    def _breed(self, population: deque[Outcome], rng: np.random.Generator) -> Proposal:
        sample = [population[int(rng.integers(len(population)))]
                  for _ in range(self.sample_size)]
        parent = max(sample, key=lambda o: (o.score, -o.number))
        child = mutate(self.spaces, parent.params, parent.meta["space"], rng)
        return Proposal(child, meta={"space": parent.meta["space"], "parent": parent.number,
                                     "sample": sorted({o.number for o in sample})})
