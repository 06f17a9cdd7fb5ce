"""The scikit-learn-style classes: constructor parameters, results, verbose output, refit."""
from __future__ import annotations

import re

import numpy as np
import pytest
from scipy.stats import loguniform
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from refnas.search import (EvolutionSearch, GridSearchCV, HalvingRandomSearchCV,
                           RandomizedSearchCV, SearchCV)

from .conftest import same_cv_results


def test_seed_example_call_shape_with_per_fit_lines(iris, capsys):
    X, y = iris
    param_grid = {"n_estimators": [5, 10], "max_depth": [None, 3]}
    search = RandomizedSearchCV(estimator=RandomForestClassifier(),
                                param_distributions=param_grid, n_iter=4, cv=3, verbose=2,
                                random_state=42)
    search.fit(X, y)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Fitting 3 folds for each of 4 candidates, totalling 12 fits"
    fits = [line for line in out if line.startswith("[CV")]
    assert len(fits) == 12
    pattern = (r"\[CV [1-3]/3\] END max_depth=(None|3), n_estimators=(5|10);, "
               r"score=\d\.\d{3} total time=\s+\d+\.\d+s")
    assert all(re.fullmatch(pattern, line) for line in fits), fits[0]
    assert set(search.best_params_) == {"n_estimators", "max_depth"}
    assert isinstance(search.best_estimator_, RandomForestClassifier)
    # forests are seeded per trial from random_state: a second run is identical
    again = RandomizedSearchCV(RandomForestClassifier(), param_grid, n_iter=4, cv=3,
                               random_state=42).fit(X, y)
    same_cv_results(search.cv_results_, again.cv_results_)
    assert search.best_estimator_.random_state == search.trials_[search.best_index_].seed


def test_multimetric_verbose_lines(iris, capsys):
    X, y = iris
    GridSearchCV(LogisticRegression(max_iter=300), {"C": [1.0]}, cv=2, verbose=2,
                 scoring=["accuracy", "f1_macro"], refit="accuracy",
                 return_train_score=True).fit(X, y)
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("[CV 1/2]")][0]
    assert re.fullmatch(r"\[CV 1/2\] END C=1.0; accuracy: \(train=\d\.\d{3}, test=\d\.\d{3}\) "
                        r"f1_macro: \(train=\d\.\d{3}, test=\d\.\d{3}\) total time=.*", line)


def test_halving_random_search_resources_and_best(iris):
    X, y = iris
    search = HalvingRandomSearchCV(LogisticRegression(max_iter=500),
                                   {"C": loguniform(1e-3, 1e2)}, factor=3, cv=3,
                                   random_state=0).fit(X, y)
    # min_resources "smallest" = 2 * 3 folds * 3 classes = 18; max = 150 samples:
    # rungs at 18, 54 (162 > 150), n_candidates = 150 // 18 = 8 -> 8 then 2
    res, it = search.cv_results_["n_resources"], search.cv_results_["iter"]
    assert sorted(zip(it.tolist(), res.tolist())) == [(0, 18.0)] * 8 + [(1, 54.0)] * 2
    assert search.cv_results_["rank_test_score"][search.best_index_] == 1
    assert res[search.best_index_] == 54.0
    assert "mean_train_score" in search.cv_results_  # scikit-learn's halving default


def test_evolution_and_generic_strategies_run(iris):
    X, y = iris
    space = {"C": loguniform(1e-3, 1e2), "fit_intercept": [True, False]}
    evo = EvolutionSearch(LogisticRegression(max_iter=300), space, n_iter=8, population_size=4,
                          sample_size=2, cv=2, random_state=0).fit(X, y)
    assert len(evo.trials_) == 8 and evo.best_score_ > 0.8
    for strategy, params in (("greedy", {"n_iter": 6, "n_samples": 2}),
                             ("asha", {"n_configs": 6}),
                             ("grid", {})):
        grid_space = {"C": [0.1, 1.0], "fit_intercept": [True, False]}
        search = SearchCV(LogisticRegression(max_iter=300),
                          grid_space if strategy == "grid" else space, strategy=strategy,
                          strategy_params=params, cv=2, random_state=0, min_resources=30)
        search.fit(X, y)
        assert search.best_score_ > 0.8, strategy


def test_refit_options(iris):
    X, y = iris
    space = {"C": [0.01, 1.0]}
    no_refit = GridSearchCV(LogisticRegression(max_iter=300), space, cv=3, refit=False).fit(X, y)
    assert not hasattr(no_refit, "best_estimator_") and not hasattr(no_refit, "best_index_")
    with pytest.raises(AttributeError, match="only after fit with refit=True"):
        no_refit.predict(X)
    pick_first = GridSearchCV(LogisticRegression(max_iter=300), space, cv=3,
                              refit=lambda results: 0).fit(X, y)
    assert pick_first.best_index_ == 0 and pick_first.best_params_ == {"C": 0.01}
    assert not hasattr(pick_first, "best_score_")
    best = GridSearchCV(LogisticRegression(max_iter=300), space, cv=3).fit(X, y)
    assert best.best_params_ == {"C": 1.0}
    assert best.predict_proba(X).shape == (150, 3) and list(best.classes_) == [0, 1, 2]
    assert best.n_features_in_ == 4 and 0.9 < best.score(X, y) <= 1.0


def test_facades_follow_the_estimator_protocol():
    search = RandomizedSearchCV(LogisticRegression(), {"C": [1.0]}, n_iter=3, storage=None)
    params = search.get_params()
    assert params["n_iter"] == 3 and "estimator__C" in params
    copy = clone(search).set_params(n_iter=5)
    assert copy.n_iter == 5 and search.n_iter == 3
    with pytest.raises(TypeError, match="object lacks get_params, set_params, fit"):
        GridSearchCV(object(), {"C": [1]}).fit(np.zeros((4, 1)), [0, 1, 0, 1])


def test_progress_bar_does_not_change_results(iris, capsys):
    X, y = iris
    quiet = GridSearchCV(LogisticRegression(max_iter=300), {"C": [0.1, 1.0]}, cv=2).fit(X, y)
    shown = GridSearchCV(LogisticRegression(max_iter=300), {"C": [0.1, 1.0]}, cv=2,
                         progress_bar=True).fit(X, y)
    assert "2/2" in capsys.readouterr().err
    same_cv_results(quiet.cv_results_, shown.cv_results_)
