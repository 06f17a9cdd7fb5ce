"""scikit-learn-style searches: ``GridSearchCV``, ``RandomizedSearchCV``,
``HalvingRandomSearchCV``, ``HyperbandSearch``, ``EvolutionSearch`` and the general
``SearchCV(strategy=...)``.

They take scikit-learn's constructor parameters and give its results (``cv_results_``,
``best_params_``, ``best_score_``, ``best_index_``, ``best_estimator_`` refit on all data,
``predict`` / ``score`` / ... through it), for any estimator following the scikit-learn
protocol. Beyond scikit-learn: ``storage`` / ``study_name`` (a SQLite study that survives a
kill and resumes), ``executor`` (e.g. a Dask client's executor), ``pruner`` (early stopping
through the estimator's ``on_epoch_end``), ``progress_bar``, ``trials_`` (every record) and
``to_csv`` / ``to_json`` / ``save_plots``. Estimators whose ``random_state`` is None are
seeded per trial from ``random_state``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from refnas.search.cv import check_refit, check_scoring, is_classifier, make_splits
from refnas.search.engine import check_error_score, make_strategy, run_study
from refnas.search.halving import resolve_resources
from refnas.search.objective import CVObjective
from refnas.search.results import build_cv_results, fit_lines
from refnas.search.space import check_param_names, describe_space, validate_space
from refnas.search.trial import TrialRecord

__all__ = ["SearchCV", "GridSearchCV", "RandomizedSearchCV", "HalvingRandomSearchCV",
           "HyperbandSearch", "EvolutionSearch"]

BUDGETED = ("halving", "hyperband", "asha")


def _check_estimator(estimator: Any) -> None:
    missing = [m for m in ("get_params", "set_params", "fit") if not hasattr(estimator, m)]
    if missing:
        raise TypeError(f"estimator must follow the scikit-learn protocol (get_params, "
                        f"set_params, fit); {type(estimator).__name__} lacks "
                        f"{', '.join(missing)}")


class SearchCV(BaseEstimator):
    """Cross-validated search with any strategy: ``"grid"``, ``"random"``, ``"greedy"``,
    ``"halving"``, ``"hyperband"``, ``"asha"``, ``"evolution"``; ``strategy_params`` are the
    strategy's settings (e.g. ``{"n_iter": 50}``, ``{"population_size": 10}``). Budgeted
    strategies use ``resource`` (``"n_samples"`` or an estimator parameter such as
    ``"epochs"``) between ``min_resources`` and ``max_resources``."""

    _space_name = "param_distributions"

    def __init__(self, estimator: Any, param_distributions: Any, *, strategy: str = "random",
                 strategy_params: dict[str, Any] | None = None, resource: str = "n_samples",
                 max_resources: Any = "auto", min_resources: Any = "smallest",
                 scoring: Any = None, n_jobs: int | None = None, refit: Any = True,
                 cv: Any = None, verbose: int = 0, error_score: Any = np.nan,
                 return_train_score: bool = False, random_state: Any = None,
                 storage: Any = None, study_name: str | None = None, executor: Any = None,
                 pruner: Any = None, progress_bar: bool | None = None,
                 load_if_exists: bool = True) -> None:
        self.estimator = estimator
        self.param_distributions = param_distributions
        self.strategy, self.strategy_params = strategy, strategy_params
        self.resource, self.max_resources, self.min_resources = \
            resource, max_resources, min_resources
        self._set_common(scoring, n_jobs, refit, cv, verbose, error_score, return_train_score,
                         random_state, storage, study_name, executor, pruner, progress_bar,
                         load_if_exists)

    def _set_common(self, scoring, n_jobs, refit, cv, verbose, error_score, return_train_score,
                    random_state, storage, study_name, executor, pruner, progress_bar,
                    load_if_exists) -> None:
        self.scoring, self.n_jobs, self.refit, self.cv = scoring, n_jobs, refit, cv
        self.verbose, self.error_score = verbose, error_score
        self.return_train_score, self.random_state = return_train_score, random_state
        self.storage, self.study_name, self.executor = storage, study_name, executor
        self.pruner, self.progress_bar, self.load_if_exists = pruner, progress_bar, load_if_exists

    # -- what subclasses choose ----------------------------------------------------------------
    def _space(self) -> Any:
        return self.param_distributions

    def _strategy_name(self) -> str:
        return self.strategy

    def _strategy_settings(self) -> dict[str, Any]:
        return dict(self.strategy_params or {})

    def _resource(self) -> str | None:
        return self.resource if self._strategy_name() in BUDGETED else None

    def _make_strategy(self, spaces: list[dict[str, Any]], context: dict[str, Any]) -> Any:
        name, settings = self._strategy_name(), self._strategy_settings()
        if name in BUDGETED:
            n = settings.get("n_candidates", settings.get("n_configs"))
            if n == "exhaust" and self.min_resources == "exhaust":
                raise ValueError("n_candidates and min_resources cannot both be 'exhaust'")
            low, high = resolve_resources(self.resource, self.max_resources, self.min_resources,
                                          n_candidates=n, factor=settings.get("factor", 3),
                                          **context)
            settings.update(min_resource=low, max_resource=high)
            if name == "halving" and settings.get("n_candidates", "exhaust") == "exhaust":
                settings["n_candidates"] = max(1, int(high // low))  # fill the last rung
        return make_strategy(name, spaces, **settings)

    # -- fit -----------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, *, groups: Any = None, **fit_params: Any) -> SearchCV:
        """Search, then (with ``refit``) fit the best candidate on all of ``X, y``."""
        objective, strategy, scorers, multimetric, refit_metric = \
            self._prepare(X, y, groups, fit_params)
        n_splits = len(objective.splits)
        if self.verbose >= 1:
            self._announce(strategy, n_splits)
        printer = None
        if self.verbose >= 2:
            def printer(record: TrialRecord) -> None:
                from tqdm.auto import tqdm

                for line in fit_lines(record, n_splits, multimetric, self.return_train_score):
                    tqdm.write(line, file=sys.stdout)
        signature = {"space": describe_space(strategy.spaces), "strategy": strategy.signature(),
                     "objective": objective.signature()}
        progress = self.verbose >= 1 if self.progress_bar is None else self.progress_bar
        trials, self.study_name_, self.seed_ = run_study(
            strategy, objective, signature=signature, storage=self.storage,
            study_name=self.study_name, random_state=self.random_state, n_jobs=self.n_jobs,
            executor=self.executor, error_score=self.error_score, pruner=self.pruner,
            load_if_exists=self.load_if_exists, progress_bar=progress, on_trial=printer)
        self._set_results(trials, objective, scorers, multimetric, refit_metric)
        if self.refit is not False:
            self._refit(objective, X, y, fit_params)
        return self

    def _prepare(self, X: Any, y: Any, groups: Any, fit_params: dict[str, Any]):
        """Check every argument (before anything is written) and build the pieces."""
        _check_estimator(self.estimator)
        name = self._strategy_name()
        spaces = validate_space(self._space(), name=self._space_name,
                                allow_distributions=name != "grid")
        check_param_names(spaces, self.estimator, self._space_name)
        resource = self._resource()
        if resource not in (None, "n_samples"):
            if resource not in self.estimator.get_params(deep=False):
                raise ValueError(f"resource={resource!r} is not a parameter of "
                                 f"{type(self.estimator).__name__}; use 'n_samples' or one of "
                                 f"its parameters")
            if any(resource in branch for branch in spaces):
                raise ValueError(f"resource={resource!r} is also in {self._space_name}; the "
                                 f"strategy sets it, remove it from the space")
        scorers, multimetric = check_scoring(self.scoring)
        refit_metric = check_refit(self.refit, scorers, multimetric)
        check_error_score(self.error_score)
        classifier = is_classifier(self.estimator)
        splits = make_splits(self.cv, X, y, groups, classifier)
        discrete = classifier and y is not None
        context = {"n_samples": len(X), "n_splits": len(splits),
                   "n_classes": len(np.unique(np.asarray(y))) if discrete else None}
        strategy = self._make_strategy(spaces, context)
        objective = CVObjective(self.estimator, X, y, splits, scorers, refit_metric=refit_metric,
                                fit_params=fit_params,
                                return_train_score=self.return_train_score,
                                error_score=self.error_score, resource=resource,
                                n_samples=len(X), stratified_subsample=discrete)
        return objective, strategy, scorers, multimetric, refit_metric

    def _announce(self, strategy: Any, n_splits: int) -> None:
        total = strategy.total
        if strategy.name in ("grid", "random"):
            print(f"Fitting {n_splits} folds for each of {total} candidates, totalling "
                  f"{n_splits * total} fits")
        else:
            count = f"{total} trials" if total is not None else "trials"
            print(f"{strategy.name}: {count} of {n_splits}-fold cross-validation")

    def _set_results(self, trials: list[TrialRecord], objective: CVObjective,
                     scorers: dict[str, Any], multimetric: bool, refit_metric: str) -> None:
        resource = self._resource()
        if resource not in (None, "n_samples"):  # the budget is one of the parameters
            shown = [TrialRecord(**{**vars(t), "params": {**t.params,
                                                          resource: max(1, round(t.budget))}})
                     for t in trials]
        else:
            shown = trials
        self.trials_ = trials
        self.multimetric_ = multimetric
        self.n_splits_ = len(objective.splits)
        self.scorer_ = scorers if multimetric else scorers["score"]
        self.cv_results_ = build_cv_results(shown, list(scorers), self.n_splits_,
                                            self.return_train_score,
                                            budgeted=resource is not None)
        self._refit_metric = refit_metric
        if self.refit is False:
            return
        if callable(self.refit):
            index = self.refit(self.cv_results_)
            if not isinstance(index, (int, np.integer)) or not 0 <= index < len(trials):
                raise IndexError(f"refit callable returned {index!r}, not an index in "
                                 f"[0, {len(trials)})")
            self.best_index_ = int(index)
        else:
            self.best_index_ = int(np.argmin(self.cv_results_[f"rank_test_{refit_metric}"]))
            self.best_score_ = float(self.cv_results_[f"mean_test_{refit_metric}"][
                self.best_index_])
        self.best_params_ = self.cv_results_["params"][self.best_index_]

    def _refit(self, objective: CVObjective, X: Any, y: Any, fit_params: dict[str, Any]) -> None:
        import time

        best = self.trials_[self.best_index_]
        estimator = objective.make_estimator(self.best_params_, seed=best.seed)
        start = time.perf_counter()
        estimator.fit(X, y, **fit_params) if y is not None else estimator.fit(X, **fit_params)
        self.refit_time_ = time.perf_counter() - start
        self.best_estimator_ = estimator

    # -- using the best estimator ----------------------------------------------------------
    def _best(self, method: str) -> Any:
        if not hasattr(self, "best_estimator_"):
            raise AttributeError(f"{method} is available only after fit with refit=True")
        return self.best_estimator_

    def predict(self, X: Any) -> Any:
        return self._best("predict").predict(X)

    def predict_proba(self, X: Any) -> Any:
        return self._best("predict_proba").predict_proba(X)

    def predict_log_proba(self, X: Any) -> Any:
        return self._best("predict_log_proba").predict_log_proba(X)

    def decision_function(self, X: Any) -> Any:
        return self._best("decision_function").decision_function(X)

    def transform(self, X: Any) -> Any:
        return self._best("transform").transform(X)

    def score(self, X: Any, y: Any = None) -> float:
        """The refit metric of the best estimator on ``X, y``."""
        estimator = self._best("score")
        scorer = self.scorer_[self._refit_metric] if self.multimetric_ else self.scorer_
        return float(scorer(estimator, X, y))

    @property
    def classes_(self) -> Any:
        return self._best("classes_").classes_

    @property
    def n_features_in_(self) -> int:
        return self._best("n_features_in_").n_features_in_

    # -- records -----------------------------------------------------------------------------
    def to_csv(self, path: str | Path) -> Path:
        """Every trial record as CSV (see :mod:`refnas.search.export`)."""
        from refnas.search.export import write_csv

        return write_csv(self.trials_, path)

    def to_json(self, path: str | Path) -> Path:
        from refnas.search.export import write_json

        return write_json(self.trials_, path, study_name=self.study_name_)

    def save_plots(self, directory: str | Path) -> list[Path]:
        """history.png, params.png (and rungs.png for budgeted searches) in ``directory``."""
        from refnas.search.plots import save_plots

        return save_plots(self.trials_, directory)


class GridSearchCV(SearchCV):
    """Every point of ``param_grid`` (``sklearn.model_selection.GridSearchCV``)."""

    _space_name = "param_grid"

    def __init__(self, estimator: Any, param_grid: Any, *, scoring: Any = None,
                 n_jobs: int | None = None, refit: Any = True, cv: Any = None, verbose: int = 0,
                 pre_dispatch: Any = "2*n_jobs", error_score: Any = np.nan,
                 return_train_score: bool = False, random_state: Any = None,
                 storage: Any = None, study_name: str | None = None, executor: Any = None,
                 pruner: Any = None, progress_bar: bool | None = None,
                 load_if_exists: bool = True) -> None:
        self.estimator, self.param_grid, self.pre_dispatch = estimator, param_grid, pre_dispatch
        self._set_common(scoring, n_jobs, refit, cv, verbose, error_score, return_train_score,
                         random_state, storage, study_name, executor, pruner, progress_bar,
                         load_if_exists)

    def _space(self) -> Any:
        return self.param_grid

    def _strategy_name(self) -> str:
        return "grid"

    def _strategy_settings(self) -> dict[str, Any]:
        return {}


class RandomizedSearchCV(SearchCV):
    """``n_iter`` random candidates (``sklearn.model_selection.RandomizedSearchCV``); without
    replacement when every parameter is a list."""

    def __init__(self, estimator: Any, param_distributions: Any, *, n_iter: int = 10,
                 scoring: Any = None, n_jobs: int | None = None, refit: Any = True,
                 cv: Any = None, verbose: int = 0, pre_dispatch: Any = "2*n_jobs",
                 random_state: Any = None, error_score: Any = np.nan,
                 return_train_score: bool = False, storage: Any = None,
                 study_name: str | None = None, executor: Any = None, pruner: Any = None,
                 progress_bar: bool | None = None, load_if_exists: bool = True) -> None:
        self.estimator, self.param_distributions = estimator, param_distributions
        self.n_iter, self.pre_dispatch = n_iter, pre_dispatch
        self._set_common(scoring, n_jobs, refit, cv, verbose, error_score, return_train_score,
                         random_state, storage, study_name, executor, pruner, progress_bar,
                         load_if_exists)

    def _strategy_name(self) -> str:
        return "random"

    def _strategy_settings(self) -> dict[str, Any]:
        return {"n_iter": self.n_iter}


class HalvingRandomSearchCV(SearchCV):
    """Successive halving over random candidates
    (``sklearn.model_selection.HalvingRandomSearchCV``; rungs keep
    :math:`\\lfloor n/\\eta \\rfloor` as in the paper). ``aggressive_elimination`` is not
    supported."""

    def __init__(self, estimator: Any, param_distributions: Any, *,
                 n_candidates: Any = "exhaust", factor: int = 3, resource: str = "n_samples",
                 max_resources: Any = "auto", min_resources: Any = "smallest",
                 aggressive_elimination: bool = False, cv: Any = 5, scoring: Any = None,
                 refit: Any = True, error_score: Any = np.nan, return_train_score: bool = True,
                 random_state: Any = None, n_jobs: int | None = None, verbose: int = 0,
                 storage: Any = None, study_name: str | None = None, executor: Any = None,
                 pruner: Any = None, progress_bar: bool | None = None,
                 load_if_exists: bool = True) -> None:
        self.estimator, self.param_distributions = estimator, param_distributions
        self.n_candidates, self.factor = n_candidates, factor
        self.resource, self.max_resources, self.min_resources = \
            resource, max_resources, min_resources
        self.aggressive_elimination = aggressive_elimination
        self._set_common(scoring, n_jobs, refit, cv, verbose, error_score, return_train_score,
                         random_state, storage, study_name, executor, pruner, progress_bar,
                         load_if_exists)

    def _strategy_name(self) -> str:
        return "halving"

    def _strategy_settings(self) -> dict[str, Any]:
        if self.aggressive_elimination:
            raise ValueError("aggressive_elimination=True is not supported; leave it False")
        return {"n_candidates": self.n_candidates, "factor": self.factor}


class HyperbandSearch(SearchCV):
    """Hyperband (Li et al. 2018) over random candidates, between ``min_resources`` and
    ``max_resources`` of ``resource`` (``"n_samples"`` or a parameter such as ``"epochs"``)."""

    def __init__(self, estimator: Any, param_distributions: Any, *, factor: int = 3,
                 resource: str = "n_samples", max_resources: Any = "auto",
                 min_resources: Any = "smallest", cv: Any = 5, scoring: Any = None,
                 refit: Any = True, error_score: Any = np.nan, return_train_score: bool = False,
                 random_state: Any = None, n_jobs: int | None = None, verbose: int = 0,
                 storage: Any = None, study_name: str | None = None, executor: Any = None,
                 pruner: Any = None, progress_bar: bool | None = None,
                 load_if_exists: bool = True) -> None:
        self.estimator, self.param_distributions, self.factor = \
            estimator, param_distributions, factor
        self.resource, self.max_resources, self.min_resources = \
            resource, max_resources, min_resources
        self._set_common(scoring, n_jobs, refit, cv, verbose, error_score, return_train_score,
                         random_state, storage, study_name, executor, pruner, progress_bar,
                         load_if_exists)

    def _strategy_name(self) -> str:
        return "hyperband"

    def _strategy_settings(self) -> dict[str, Any]:
        return {"factor": self.factor}


class EvolutionSearch(SearchCV):
    """Regularized (aging) evolution (Real et al. 2019): ``n_iter`` trials in all."""

    def __init__(self, estimator: Any, param_distributions: Any, *, n_iter: int = 100,
                 population_size: int = 20, sample_size: int = 5, batch_size: int = 1,
                 scoring: Any = None, n_jobs: int | None = None, refit: Any = True,
                 cv: Any = None, verbose: int = 0, random_state: Any = None,
                 error_score: Any = np.nan, return_train_score: bool = False,
                 storage: Any = None, study_name: str | None = None, executor: Any = None,
                 pruner: Any = None, progress_bar: bool | None = None,
                 load_if_exists: bool = True) -> None:
        self.estimator, self.param_distributions = estimator, param_distributions
        self.n_iter, self.population_size = n_iter, population_size
        self.sample_size, self.batch_size = sample_size, batch_size
        self._set_common(scoring, n_jobs, refit, cv, verbose, error_score, return_train_score,
                         random_state, storage, study_name, executor, pruner, progress_bar,
                         load_if_exists)

    def _strategy_name(self) -> str:
        return "evolution"

    def _strategy_settings(self) -> dict[str, Any]:
        return {"n_iter": self.n_iter, "population_size": self.population_size,
                "sample_size": self.sample_size, "batch_size": self.batch_size}
