"""Same estimator, candidates and folds as scikit-learn: the same numbers, keys, ranks, params."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV as SkGridSearchCV
from sklearn.model_selection import RandomizedSearchCV as SkRandomizedSearchCV
from sklearn.model_selection import cross_val_score

from refnas.search import GridSearchCV, RandomizedSearchCV

from .conftest import same_cv_results


def _logreg():
    return LogisticRegression(max_iter=2000)


def test_grid_search_equals_scikit_learn_exactly(iris):
    X, y = iris
    grid = {"C": [0.01, 0.1, 1.0, 10.0], "fit_intercept": [True, False]}
    ours = GridSearchCV(_logreg(), grid, cv=5).fit(X, y)
    theirs = SkGridSearchCV(_logreg(), grid, cv=5).fit(X, y)
    same_cv_results(ours.cv_results_, theirs.cv_results_)
    assert set(ours.cv_results_) == set(theirs.cv_results_)
    assert ours.best_index_ == theirs.best_index_
    assert ours.best_params_ == theirs.best_params_
    assert ours.best_score_ == theirs.best_score_
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    assert ours.score(X, y) == theirs.score(X, y)


def test_multimetric_with_refit_and_train_scores_equals_scikit_learn(iris):
    X, y = iris
    grid = [{"C": [0.05, 1.0], "fit_intercept": [True]}, {"C": [0.3], "fit_intercept": [False]}]
    kwargs = dict(cv=4, scoring=["accuracy", "f1_macro", "neg_log_loss"], refit="f1_macro",
                  return_train_score=True)
    ours = GridSearchCV(_logreg(), grid, **kwargs).fit(X, y)
    theirs = SkGridSearchCV(_logreg(), grid, **kwargs).fit(X, y)
    for key in theirs.cv_results_:
        if "time" in key or key.startswith("param"):
            continue
        np.testing.assert_array_equal(ours.cv_results_[key], theirs.cv_results_[key],
                                      err_msg=key)
    assert set(ours.cv_results_) == set(theirs.cv_results_)
    assert list(ours.cv_results_["params"]) == list(theirs.cv_results_["params"])
    assert ours.best_index_ == theirs.best_index_ and ours.best_params_ == theirs.best_params_


def test_single_candidate_equals_cross_val_score(cancer):
    X, y = cancer
    ours = GridSearchCV(_logreg(), {"C": [0.5]}, cv=5, scoring="accuracy").fit(X, y)
    theirs = cross_val_score(_logreg().set_params(C=0.5), X, y, cv=5, scoring="accuracy")
    got = [ours.cv_results_[f"split{k}_test_score"][0] for k in range(5)]
    assert got == theirs.tolist()
    assert ours.best_score_ == np.mean(theirs)


def test_random_search_over_a_whole_list_grid_samples_every_point_once(iris):
    X, y = iris
    space = {"C": [0.01, 0.1, 1.0], "fit_intercept": [True, False]}
    ours = RandomizedSearchCV(_logreg(), space, n_iter=6, cv=3, random_state=0).fit(X, y)
    theirs = SkRandomizedSearchCV(_logreg(), space, n_iter=6, cv=3, random_state=0).fit(X, y)
    key = lambda p: (p["C"], p["fit_intercept"])  # noqa: E731
    assert sorted(map(key, ours.cv_results_["params"])) == \
        sorted(map(key, theirs.cv_results_["params"]))
    # the same candidate scores the same, wherever it was drawn
    theirs_by = {key(p): s for p, s in zip(theirs.cv_results_["params"],
                                          theirs.cv_results_["mean_test_score"])}
    for p, s in zip(ours.cv_results_["params"], ours.cv_results_["mean_test_score"]):
        assert s == theirs_by[key(p)]
    assert ours.best_score_ == theirs.best_score_


def test_random_search_is_seeded_and_without_replacement(iris):
    X, y = iris
    space = {"C": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0], "fit_intercept": [True, False]}
    a = RandomizedSearchCV(_logreg(), space, n_iter=5, cv=3, random_state=7).fit(X, y)
    b = RandomizedSearchCV(_logreg(), space, n_iter=5, cv=3, random_state=7).fit(X, y)
    c = RandomizedSearchCV(_logreg(), space, n_iter=5, cv=3, random_state=8).fit(X, y)
    same_cv_results(a.cv_results_, b.cv_results_)
    params = [tuple(sorted(p.items())) for p in a.cv_results_["params"]]
    assert len(set(params)) == 5
    assert a.cv_results_["params"] != c.cv_results_["params"]


@pytest.mark.parametrize("means, expected", [
    ([0.5, 0.9, 0.9, 0.1], [3, 1, 1, 4]),
    ([np.nan, 0.2, 0.7], [3, 2, 1]),
    ([np.nan, np.nan], [1, 1]),
])
def test_ranks_follow_scikit_learn(means, expected):
    from refnas.search.results import rank_scores

    assert rank_scores(np.array(means)).tolist() == expected


def test_budgeted_ranks_put_the_largest_budget_first():
    from refnas.search.results import rank_scores

    ranks = rank_scores(np.array([0.99, 0.5, 0.7, 0.7, np.nan]),
                        np.array([1.0, 9.0, 9.0, 9.0, 9.0]))
    assert ranks.tolist() == [4, 3, 1, 1, 5]
