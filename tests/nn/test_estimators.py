"""NeuralNetClassifier follows the scikit-learn estimator protocol."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score

from refnas.data import load_digits, make_blobs
from refnas.estimators import NeuralNetClassifier


@pytest.fixture(scope="module")
def blobs():
    return make_blobs(n_samples=150, n_features=5, centers=3, cluster_std=1.0, seed=0)


def test_init_only_stores_and_clone_copies_parameters():
    clf = NeuralNetClassifier(hidden_sizes=(8, 4), lr=0.01, epochs=3, random_state=2)
    params = clf.get_params()
    assert params["hidden_sizes"] == (8, 4) and params["random_state"] == 2
    assert not hasattr(clf, "model_")
    twin = clone(clf)
    assert twin is not clf and twin.get_params() == params
    twin.set_params(lr=0.5, epochs=1)
    assert twin.lr == 0.5 and clf.lr == 0.01


def test_fit_predict_with_arbitrary_labels(blobs):
    X, y = blobs
    names = np.array(["cat", "dog", "emu"])[y]
    clf = NeuralNetClassifier(hidden_sizes=(16,), lr=0.01, epochs=10, random_state=0).fit(X, names)
    assert list(clf.classes_) == ["cat", "dog", "emu"]
    assert clf.n_features_in_ == 5 and clf.n_iter_ == 10
    assert set(clf.predict(X)) <= set(clf.classes_)
    proba = clf.predict_proba(X)
    assert proba.shape == (150, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert clf.score(X, names) > 0.9
    assert len(clf.history_["train_loss"]) == 10


def test_images_are_flattened_and_fitting_is_deterministic():
    X, y = load_digits()
    X, y = X[:300], y[:300]
    first = NeuralNetClassifier(hidden_sizes=(32,), epochs=2, random_state=1).fit(X, y)
    second = NeuralNetClassifier(hidden_sizes=(32,), epochs=2, random_state=1).fit(X, y)
    assert first.n_features_in_ == 64
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    np.testing.assert_array_equal(first.predict(X.reshape(300, -1)), first.predict(X))
    with pytest.raises(ValueError, match="X has 10 features"):
        first.predict(np.zeros((2, 10)))


def test_cross_val_score_and_grid_search(blobs):
    X, y = blobs
    clf = NeuralNetClassifier(hidden_sizes=(8,), lr=0.02, epochs=4, batch_size=32, random_state=0)
    scores = cross_val_score(clf, X, y, cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.6)
    search = GridSearchCV(clf, {"lr": [1e-4, 0.05]}, cv=3).fit(X, y)
    assert search.best_params_ == {"lr": 0.05}
    assert search.best_estimator_.predict(X).shape == (150,)


def test_on_epoch_end_receives_scores_and_can_stop(blobs):
    X, y = blobs
    calls = []

    def report(epoch, scores):
        calls.append((epoch, scores))
        return epoch >= 3

    clf = NeuralNetClassifier(hidden_sizes=(8,), epochs=20, validation_fraction=0.2,
                              on_epoch_end=report, random_state=0).fit(X, y)
    assert [epoch for epoch, _ in calls] == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(calls[0][1])
    assert clf.n_iter_ == 3 and "on_epoch_end" in clf.history_.stop_reason


def test_bad_options_and_unfitted_use(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="optimizer must be one of"):
        NeuralNetClassifier(optimizer="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="validation_fraction"):
        NeuralNetClassifier(validation_fraction=1.5).fit(X, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        NeuralNetClassifier(epochs=1).fit(X, np.zeros(len(X)))
    with pytest.raises(NotFittedError):
        NeuralNetClassifier().predict(X)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_other_optimizers_and_options(blobs, optimizer):
    X, y = blobs
    clf = NeuralNetClassifier(hidden_sizes=(8,), optimizer=optimizer, lr=0.05, epochs=3,
                              dropout=0.1, batch_norm=True, weight_decay=1e-4, backend="numpy",
                              random_state=0).fit(X, y)
    assert clf.score(X, y) > 0.5


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
def test_passes_scikit_learn_check_estimator():
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(NeuralNetClassifier(), on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results
              if r["status"] == "failed"]
    assert not failed
