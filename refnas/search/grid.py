r"""Grid and random search: a fixed list of candidates, all evaluated.

Grid search evaluates every point of a finite space :math:`\Theta = V_1 \times \dots \times V_K`
(one product per branch of a conditional space), in ``ParameterGrid`` order.

Random search (Bergstra & Bengio 2012, *Random search for hyper-parameter optimization*,
JMLR 13) draws :math:`\theta_1, \dots, \theta_n \sim p(\theta)` independently and keeps the
best. When only :math:`k` of the :math:`K` parameters matter, a grid of :math:`n` points tries
only :math:`n^{k/K}` distinct values of them while random search tries :math:`n`. As in
scikit-learn, when every parameter is a list the candidates are drawn *without replacement*
from the grid (and ``n_iter`` larger than the grid warns and runs the whole grid).
"""
from __future__ import annotations

import warnings

import numpy as np

from refnas.search.space import (Space, grid_size, is_finite, iter_grid, sample_candidates,
                                 validate_space)
from refnas.search.strategy import Batches, BatchStrategy, Proposal

__all__ = ["GridSearch", "RandomSearch"]


class GridSearch(BatchStrategy):
    """Every point of a finite space, in one batch."""

    name = "grid"

    def __init__(self, space: Space) -> None:
        self.spaces = validate_space(space, name="param_grid", allow_distributions=False)

    @property
    def total(self) -> int:
        return grid_size(self.spaces)

    def batches(self, rng: np.random.Generator) -> Batches:
        yield [Proposal(params, meta={"space": b}) for params, b in iter_grid(self.spaces)]


class RandomSearch(BatchStrategy):
    """``n_iter`` random candidates, in one batch. Candidate ``i`` does not depend on
    ``n_iter``, so a study can be resumed with a larger ``n_iter`` to extend it."""

    name = "random"

    def __init__(self, space: Space, n_iter: int = 10) -> None:
        if not isinstance(n_iter, (int, np.integer)) or isinstance(n_iter, bool) or n_iter < 1:
            raise ValueError(f"n_iter must be a positive integer, got {n_iter!r}")
        self.spaces = validate_space(space)
        self.n_iter = int(n_iter)
        if is_finite(self.spaces) and self.n_iter > grid_size(self.spaces):
            size = grid_size(self.spaces)
            warnings.warn(f"The total space of parameters {size} is smaller than "
                          f"n_iter={self.n_iter}. Running {size} iterations. For exhaustive "
                          f"searches, use GridSearchCV.", UserWarning, stacklevel=2)
            self.n_iter = size

    @property
    def total(self) -> int:
        return self.n_iter

    def batches(self, rng: np.random.Generator) -> Batches:
        candidates = sample_candidates(self.spaces, self.n_iter, rng)
        yield [Proposal(params, meta={"space": b}) for params, b in candidates]
