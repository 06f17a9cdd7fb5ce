"""Trials that raise or score NaN: recorded as failed with their traceback; the search goes on."""
from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from refnas.search import GridSearchCV, SearchError, optimize


class Flaky(ClassifierMixin, BaseEstimator):
    """Logistic regression that raises when ``fail`` and scores NaN when ``nan``."""

    def __init__(self, C=1.0, fail=False, nan=False):
        self.C, self.fail, self.nan = C, fail, nan

    def fit(self, X, y):
        if self.fail:
            raise RuntimeError(f"boom: fail=True with C={self.C}")
        self.model_ = LogisticRegression(C=self.C, max_iter=300).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict(self, X):
        return self.model_.predict(X)

    def score(self, X, y):
        return math.nan if self.nan else float(np.mean(self.predict(X) == y))


def test_failed_trials_are_recorded_and_the_search_continues(iris):
    X, y = iris
    search = GridSearchCV(Flaky(), {"C": [0.1, 1.0], "fail": [False, True]}, cv=3).fit(X, y)
    states = [t.state for t in search.trials_]
    assert states == ["complete", "failed", "complete", "failed"]
    for t in search.trials_:
        if t.state == "failed":
            assert "RuntimeError: boom: fail=True" in t.traceback
    means = search.cv_results_["mean_test_score"]
    assert np.isnan(means[1]) and np.isnan(means[3])
    assert search.cv_results_["rank_test_score"].tolist()[1] == 3
    assert search.cv_results_["rank_test_score"].tolist()[3] == 3
    assert search.best_params_["fail"] is False


def test_error_score_fills_the_failed_folds(iris):
    X, y = iris
    search = GridSearchCV(Flaky(), {"fail": [False, True]}, cv=3, error_score=0.0).fit(X, y)
    assert [search.cv_results_[f"split{k}_test_score"][1] for k in range(3)] == [0.0] * 3
    assert search.cv_results_["mean_test_score"][1] == 0.0
    assert search.trials_[1].state == "failed"


def test_error_score_raise_stops_at_once_and_records_the_failure(iris, tmp_path):
    X, y = iris
    search = GridSearchCV(Flaky(), {"C": [0.1, 1.0], "fail": [False, True]}, cv=3,
                          error_score="raise", storage=f"sqlite:///{tmp_path / 'r.db'}")
    with pytest.raises(RuntimeError, match="boom: fail=True with C=0.1"):
        search.fit(X, y)
    with sqlite3.connect(tmp_path / "r.db") as db:
        rows = db.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
    assert rows == [(0, "complete"), (1, "failed")]


def test_all_failing_raises_with_the_first_traceback(iris):
    X, y = iris
    with pytest.raises(SearchError) as info:
        GridSearchCV(Flaky(), {"C": [0.5, 2.0], "fail": [True]}, cv=3).fit(X, y)
    text = str(info.value)
    assert "All 2 trials failed" in text
    assert "trial 0" in text and "boom: fail=True with C=0.5" in text


def test_a_nan_score_fails_the_trial(iris):
    X, y = iris
    search = GridSearchCV(Flaky(), {"nan": [False, True]}, cv=3).fit(X, y)
    bad = search.trials_[1]
    assert bad.state == "failed" and "is NaN" in bad.traceback
    assert search.best_params_ == {"nan": False}
    with pytest.raises(ValueError, match="is NaN"):
        GridSearchCV(Flaky(), {"nan": [True]}, cv=3, error_score="raise").fit(X, y)


def _objective(params, budget, trial):
    if params["x"] == 2:
        raise KeyError("two is unlucky")
    return math.nan if params["x"] == 3 else float(params["x"])


def test_function_objectives_fail_the_same_way():
    result = optimize(_objective, {"x": [1, 2, 3]}, "grid")
    one, two, three = result.trials
    assert one.state == "complete" and one.value == 1.0
    assert two.state == "failed" and "KeyError: 'two is unlucky'" in two.traceback
    assert three.state == "failed" and "scored NaN" in three.traceback
    assert np.isnan(two.value) and np.isnan(three.value)
    assert optimize(_objective, {"x": [1, 2]}, "grid", error_score=-1.0).trials[1].value == -1.0
    with pytest.raises(SearchError, match="two is unlucky"):
        optimize(_objective, {"x": [2, 3]}, "grid")
    with pytest.raises(ValueError, match="scored NaN"):
        optimize(_objective, {"x": [3]}, "grid", error_score="raise")
