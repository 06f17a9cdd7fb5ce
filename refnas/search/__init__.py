"""Model search: spaces, strategies, a SQLite trial store, executors, cross-validation, and a
scikit-learn-style facade.

Quick start::

    from scipy.stats import loguniform
    from sklearn.linear_model import LogisticRegression
    from refnas.search import RandomizedSearchCV

    search = RandomizedSearchCV(LogisticRegression(max_iter=500),
                                {"C": loguniform(1e-3, 1e2)}, n_iter=20, cv=5, random_state=0,
                                storage="sqlite:///search.db", study_name="logreg")
    search.fit(X, y)              # run again: finished trials are read back, not re-run
    search.best_params_, search.best_score_, search.cv_results_

Or any function ``fn(params, budget, trial) -> score``::

    result = optimize(fn, {"lr": loguniform(1e-4, 1e-1)}, "hyperband",
                      min_resource=1, max_resource=81)

Modules: :mod:`~refnas.search.space`, strategies (:mod:`~refnas.search.grid`,
:mod:`~refnas.search.greedy`, :mod:`~refnas.search.halving`, :mod:`~refnas.search.asha`,
:mod:`~refnas.search.evolution`), :mod:`~refnas.search.store`, :mod:`~refnas.search.engine`,
:mod:`~refnas.search.cv`, :mod:`~refnas.search.facade`, :mod:`~refnas.search.export`,
:mod:`~refnas.search.plots`, :mod:`~refnas.search.cli`.
"""
from refnas.search.asha import ASHA
from refnas.search.cv import SCORERS, Holdout, KFold, StratifiedKFold, check_scoring, get_scorer
from refnas.search.engine import (STRATEGIES, SearchError, StudyBusyError, StudyExistsError,
                                  make_strategy, optimize, run_study)
from refnas.search.evolution import RegularizedEvolution
from refnas.search.export import read_csv, read_json, write_csv, write_json
from refnas.search.facade import (EvolutionSearch, GridSearchCV, HalvingRandomSearchCV,
                                  HyperbandSearch, RandomizedSearchCV, SearchCV)
from refnas.search.greedy import GreedySearch
from refnas.search.grid import GridSearch, RandomSearch
from refnas.search.halving import Hyperband, SuccessiveHalving, hyperband_brackets
from refnas.search.objective import CVObjective, EpochReporter, FunctionObjective
from refnas.search.pruners import MedianPruner
from refnas.search.results import SearchResult
from refnas.search.space import SpaceError
from refnas.search.store import StorageError, TrialStore
from refnas.search.strategy import Proposal, StudyMismatchError
from refnas.search.trial import Trial, TrialPruned, TrialRecord

__all__ = [
    "GridSearchCV", "RandomizedSearchCV", "HalvingRandomSearchCV", "HyperbandSearch",
    "EvolutionSearch", "SearchCV", "optimize", "run_study", "SearchResult",
    "GridSearch", "RandomSearch", "GreedySearch", "SuccessiveHalving", "Hyperband", "ASHA",
    "RegularizedEvolution", "STRATEGIES", "make_strategy", "hyperband_brackets", "Proposal",
    "MedianPruner", "Trial", "TrialPruned", "TrialRecord", "TrialStore",
    "CVObjective", "FunctionObjective", "EpochReporter",
    "KFold", "StratifiedKFold", "Holdout", "SCORERS", "get_scorer", "check_scoring",
    "read_csv", "read_json", "write_csv", "write_json",
    "SearchError", "SpaceError", "StorageError", "StudyBusyError", "StudyExistsError",
    "StudyMismatchError",
]
