"""Splits equal scikit-learn's; scorers equal scikit-learn's scorers; argument errors."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import get_scorer as sk_get_scorer
from sklearn.model_selection import KFold as SkKFold, StratifiedKFold as SkStratifiedKFold

from refnas.search import SCORERS, Holdout, RandomizedSearchCV, check_scoring
from refnas.search.cv import make_splits


def _same_splits(ours, theirs):
    theirs = list(theirs)
    assert len(ours) == len(theirs)
    for (a_train, a_test), (b_train, b_test) in zip(ours, theirs):
        np.testing.assert_array_equal(a_train, b_train)
        np.testing.assert_array_equal(a_test, b_test)


@pytest.mark.parametrize("n, k", [(10, 3), (23, 5), (150, 5), (7, 7)])
def test_int_cv_of_a_regressor_equals_kfold(n, k):
    X = np.zeros((n, 2))
    y = np.linspace(0.0, 1.0, n)
    _same_splits(make_splits(k, X, y, classifier=False), SkKFold(k).split(X, y))


@pytest.mark.parametrize("seed", range(4))
def test_int_cv_of_a_classifier_equals_stratified_kfold(seed):
    rng = np.random.default_rng(seed)
    y = rng.choice(["b", "a", "c"], size=int(rng.integers(30, 80)), p=[0.5, 0.3, 0.2])
    X = np.zeros((len(y), 1))
    _same_splits(make_splits(5, X, y, classifier=True), SkStratifiedKFold(5).split(X, y))


def test_cv_accepts_splitters_and_iterables(iris):
    X, y = iris
    folds = list(SkKFold(4, shuffle=True, random_state=3).split(X))
    _same_splits(make_splits(SkKFold(4, shuffle=True, random_state=3), X, y), folds)
    _same_splits(make_splits(iter(folds), X, y), folds)
    with pytest.raises(ValueError, match="at least 2 folds"):
        make_splits(1, X, y)
    with pytest.raises(TypeError, match="cv must be None, an int, a splitter"):
        make_splits(2.5, X, y)


def test_holdout_is_seeded_and_stratifiable(iris):
    X, y = iris
    (train, test), = Holdout(0.2, stratify=True, random_state=0).split(X, y)
    (train2, test2), = Holdout(0.2, stratify=True, random_state=0).split(X, y)
    np.testing.assert_array_equal(test, test2)
    assert len(test) == 30 and len(np.intersect1d(train, test)) == 0
    assert len(train) + len(test) == 150
    assert np.bincount(y[test]).tolist() == [10, 10, 10]


def test_scorers_equal_scikit_learns(iris, cancer):
    for X, y, names in ((*iris, [n for n in SCORERS if "_" in n and n != "neg_log_loss"]),
                        (*cancer, ["precision", "recall", "f1", "accuracy", "neg_log_loss"])):
        model = LogisticRegression(max_iter=500).fit(X[::2], y[::2])
        for name in names:
            ours = SCORERS[name](model, X[1::2], y[1::2])
            theirs = sk_get_scorer(name)(model, X[1::2], y[1::2])
            assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15), name


def test_scoring_forms():
    assert check_scoring(None)[1] is False
    scorers, multi = check_scoring(["accuracy", "f1_macro"])
    assert multi and list(scorers) == ["accuracy", "f1_macro"]
    scorers, multi = check_scoring("r2")  # falls back to scikit-learn's scorers
    assert not multi and list(scorers) == ["score"]
    model = LinearRegression().fit([[0.0], [1.0], [2.0]], [0.0, 1.0, 2.0])
    assert scorers["score"](model, [[3.0], [4.0]], [3.0, 4.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown scorer 'acuracy'"):
        check_scoring("acuracy")
    with pytest.raises(ValueError, match="duplicate names"):
        check_scoring(["accuracy", "accuracy"])


def test_multimetric_refit_must_name_a_metric(iris):
    X, y = iris
    search = RandomizedSearchCV(LogisticRegression(), {"C": [1.0]}, n_iter=1, cv=3,
                                scoring=["accuracy", "f1_macro"], refit=True)
    with pytest.raises(ValueError, match="the parameter refit must be set to a scorer key"):
        search.fit(X, y)
