"""Early stopping: ``on_epoch_end`` estimators report to the trial; pruners stop trials."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy.stats import loguniform
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import SGDClassifier

from refnas.search import (EpochReporter, GridSearchCV, HyperbandSearch, MedianPruner, Trial,
                           TrialRecord, optimize)


class EpochSGD(ClassifierMixin, BaseEstimator):
    """A tiny network-like estimator: one ``partial_fit`` per epoch, the last fifth of the
    training data held out, ``on_epoch_end(epoch, {"val_accuracy": ...})`` after each epoch;
    a True answer stops training."""

    def __init__(self, alpha=1e-4, epochs=5, random_state=None, on_epoch_end=None):
        self.alpha, self.epochs = alpha, epochs
        self.random_state, self.on_epoch_end = random_state, on_epoch_end

    def fit(self, X, y):
        cut = len(X) * 4 // 5
        self.classes_ = np.unique(y)
        self.model_ = SGDClassifier(alpha=self.alpha, random_state=self.random_state)
        self.epochs_run_ = 0
        for epoch in range(self.epochs):
            self.model_.partial_fit(X[:cut], y[:cut], classes=self.classes_)
            self.epochs_run_ += 1
            scores = {"val_loss": 0.0, "val_accuracy": self.model_.score(X[cut:], y[cut:])}
            if self.on_epoch_end is not None and self.on_epoch_end(epoch, scores):
                break
        return self

    def predict(self, X):
        return self.model_.predict(X)


class StopAt:
    """A pruner that stops every trial at a given step."""

    def __init__(self, step):
        self.step = step

    def reference(self, records):
        return None

    def should_stop(self, reference, fold, step, value):
        return step >= self.step


def _shuffled(X, y):
    order = np.random.default_rng(0).permutation(len(y))
    return X[order], y[order]


def test_epoch_scores_are_reported_for_every_fold(digits_small):
    X, y = _shuffled(*digits_small)
    estimator = EpochSGD(epochs=4)
    search = GridSearchCV(estimator, {"alpha": [1e-4, 1e-2]}, cv=3).fit(X, y)
    for t in search.trials_:
        assert t.state == "complete"
        assert [(f, s) for f, s, _ in t.intermediate] == [(f, s) for f in range(3)
                                                          for s in range(4)]
        assert all(0.0 <= v <= 1.0 for _, _, v in t.intermediate)
    assert estimator.on_epoch_end is None  # the search works on clones
    assert search.best_estimator_.on_epoch_end is None  # and refits without a reporter
    assert search.best_estimator_.epochs_run_ == 4


def test_the_pruner_stops_training_through_on_epoch_end(digits_small):
    X, y = _shuffled(*digits_small)
    search = GridSearchCV(EpochSGD(epochs=6), {"alpha": [1e-4]}, cv=3, pruner=StopAt(2),
                          refit=False).fit(X, y)
    trial, = search.trials_
    assert trial.state == "pruned"
    assert [(f, s) for f, s, _ in trial.intermediate] == [(0, 0), (0, 1), (0, 2)]
    assert trial.value == trial.intermediate[-1][2]
    assert np.isnan(search.cv_results_["mean_test_score"][0])


def test_reporter_is_picklable_and_chains_a_callback():
    seen = []
    trial = Trial(0, {}, pruner=StopAt(5))
    reporter = EpochReporter(trial, chained=lambda epoch, scores: seen.append(epoch) or epoch >= 1)
    assert reporter(0, {"loss": 0.5}) is False
    assert reporter(1, {"val_accuracy": 0.7, "loss": 0.1}) is True  # the chained one stops
    assert trial.intermediate == [(0, 0, 0.5), (0, 1, 0.7)] and seen == [0, 1]
    assert trial.stopped is False  # stopping by the user's callback is not pruning
    copy = pickle.loads(pickle.dumps(EpochReporter(Trial(3, {"a": 1}))))
    assert copy.trial.number == 3


def test_median_pruner_rule():
    pruner = MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    done = [TrialRecord(i, {}, state="complete", intermediate=[(0, 0, v), (0, 1, v)])
            for i, v in enumerate([0.2, 0.4, 0.9])]
    done.append(TrialRecord(3, {}, state="pruned", intermediate=[(0, 1, 0.0)]))
    reference = pruner.reference(done)
    assert reference == {(0, 0): 0.4, (0, 1): 0.4}  # completed trials only
    assert pruner.should_stop(reference, 0, 1, 0.3) is True
    assert pruner.should_stop(reference, 0, 1, 0.5) is False
    assert pruner.should_stop(reference, 0, 0, 0.1) is False  # warm-up step
    assert pruner.should_stop(reference, 0, 7, 0.0) is False  # nobody reported step 7
    assert MedianPruner(direction="minimize").should_stop({(0, 1): 0.4}, 0, 1, 0.5) is True


def _curve(params, budget, trial):
    for step in range(10):
        trial.report(params["q"] * (step + 1), step)
        if trial.should_stop():
            break
    return params["q"] * 10


def test_median_pruning_of_a_function_objective():
    result = optimize(_curve, {"q": [5, 4, 3, 2, 1, 6]}, "grid",
                      pruner=MedianPruner(n_startup_trials=3))
    states = [t.state for t in result.trials]
    # the first three complete (startup); 2 and 1 fall below the median of 5, 4, 3 at step 0;
    # 6 is above it
    assert states == ["complete"] * 3 + ["pruned", "pruned", "complete"]
    assert [len(t.intermediate) for t in result.trials] == [10, 10, 10, 1, 1, 10]


def test_hyperband_with_an_epoch_resource(digits_small):
    X, y = _shuffled(*digits_small)
    search = HyperbandSearch(EpochSGD(), {"alpha": loguniform(1e-5, 1e-2)}, resource="epochs",
                             min_resources=1, max_resources=9, cv=2, random_state=0).fit(X, y)
    epochs = sorted({p["epochs"] for p in search.cv_results_["params"]})
    assert epochs == [1, 3, 9]
    assert search.best_params_["epochs"] == 9
    assert search.best_estimator_.epochs_run_ == 9
    with pytest.raises(ValueError, match="resource='epoch' is not a parameter of EpochSGD"):
        HyperbandSearch(EpochSGD(), {"alpha": [1e-4]}, resource="epoch",
                        max_resources=9).fit(X, y)


def test_refnas_network_estimator_reports_its_epochs(digits_small):
    estimators = pytest.importorskip("refnas.estimators")
    X, y = _shuffled(*digits_small)
    net = estimators.NeuralNetClassifier(hidden_sizes=(16,), validation_fraction=0.25)
    search = HyperbandSearch(net, {"lr": loguniform(1e-3, 1e-1)}, resource="epochs",
                             min_resources=1, max_resources=3, cv=2, random_state=0).fit(X, y)
    for t in search.trials_:
        steps = sorted({s for _, s, _ in t.intermediate})
        assert steps == list(range(1, int(t.budget) + 1))  # its epochs are numbered from 1
    assert search.best_params_["epochs"] == 3 and search.best_estimator_.n_iter_ == 3
