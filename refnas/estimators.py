"""``NeuralNetClassifier``: a refnas MLP behind the scikit-learn estimator protocol.

::

    from sklearn.model_selection import cross_val_score
    from refnas.estimators import NeuralNetClassifier

    clf = NeuralNetClassifier(hidden_sizes=(128,), epochs=20, random_state=0)
    cross_val_score(clf, X, y, cv=5)

``__init__`` only stores its arguments (so ``get_params``, ``set_params`` and ``clone`` work);
``fit`` builds and trains the network. Image inputs (N, C, H, W) are flattened; any labels
(strings, ints) are mapped to 0..K-1 through ``classes_``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from refnas.backend import use_backend
from refnas.data import train_test_split
from refnas.nn.models import MLP
from refnas.ops import cross_entropy
from refnas.optim import OPTIMIZERS
from refnas.train import Callback, fit, predict_proba

__all__ = ["NeuralNetClassifier"]


class _EpochReport(Callback):
    """Calls ``on_epoch_end(epoch, scores)``; a True return stops training."""

    def __init__(self, on_epoch_end: Callable[[int, dict], bool]) -> None:
        self.on_epoch_end_fn = on_epoch_end

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.on_epoch_end_fn(logs["epoch"], dict(logs)):
            self.run.request_stop(f"on_epoch_end asked to stop after epoch {logs['epoch']}")


class NeuralNetClassifier(ClassifierMixin, BaseEstimator):
    """A multi-layer perceptron classifier trained with refnas.

    Args:
        hidden_sizes: widths of the hidden layers.
        activation: ``relu``, ``leaky_relu``, ``gelu``, ``tanh`` or ``sigmoid``.
        lr, optimizer, weight_decay: ``optimizer`` is ``"adam"``, ``"adamw"`` or ``"sgd"``.
        epochs, batch_size: the training budget.
        dropout, batch_norm: regularisation of the hidden layers.
        random_state: int seed for the weights, the batch order and the validation split
            (``None`` means 0: refnas draws no hidden randomness).
        validation_fraction: if > 0, this (stratified) share of the training data is held out
            and ``val_loss`` / ``val_accuracy`` are reported each epoch.
        on_epoch_end: ``fn(epoch, scores) -> bool`` called after each epoch (1-based) with the
            epoch's record (``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``,
            ``lr``, ``time``); returning True stops training (for Hyperband / ASHA).
        backend: kernel backend for fit and predict (``"numpy"``, ``"numba"``; None: current).
        progress: show a tqdm progress bar while fitting.

    Attributes (after fit): ``classes_``, ``n_features_in_``, ``model_`` (the refnas MLP),
    ``history_`` (:class:`refnas.train.History`), ``n_iter_`` (epochs run).
    """

    def __init__(self, hidden_sizes: Sequence[int] = (128,), activation: str = "relu",
                 lr: float = 1e-3, optimizer: str = "adam", epochs: int = 20,
                 batch_size: int = 64, weight_decay: float = 0.0, dropout: float = 0.0,
                 batch_norm: bool = False, random_state: int | None = None,
                 validation_fraction: float = 0.0,
                 on_epoch_end: Callable[[int, dict], bool] | None = None,
                 backend: str | None = None, progress: bool = False) -> None:
        self.hidden_sizes = hidden_sizes
        self.activation = activation
        self.lr = lr
        self.optimizer = optimizer
        self.epochs = epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.random_state = random_state
        self.validation_fraction = validation_fraction
        self.on_epoch_end = on_epoch_end
        self.backend = backend
        self.progress = progress

    # -- helpers ---------------------------------------------------------------------------------
    def _seed(self) -> int:
        state = self.random_state
        if state is None:
            return 0
        if isinstance(state, np.random.RandomState):  # scikit-learn style
            return int(state.randint(2 ** 31 - 1))
        if isinstance(state, np.random.Generator):
            return int(state.integers(2 ** 31 - 1))
        return int(state)

    def _backend(self) -> contextlib.AbstractContextManager:
        return use_backend(self.backend) if self.backend else contextlib.nullcontext()

    @staticmethod
    def _flatten(X: Any) -> Any:
        """Images (N, C, H, W) — any input with more than 2 axes — become (N, C·H·W)."""
        ndim = X.ndim if hasattr(X, "ndim") else np.asarray(X).ndim
        return np.asarray(X).reshape(len(X), -1) if ndim > 2 else X

    def _check_options(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"NeuralNetClassifier: optimizer must be one of "
                             f"{', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"NeuralNetClassifier: validation_fraction must lie in [0, 1), got "
                             f"{self.validation_fraction!r}")

    def _split(self, X: np.ndarray, codes: np.ndarray, seed: int) -> tuple:
        if self.validation_fraction <= 0:
            return (X, codes), None
        stratify = codes if np.bincount(codes).min() >= 2 else None
        X_train, X_val, y_train, y_val = train_test_split(
            X, codes, test_size=self.validation_fraction, stratify=stratify, seed=seed)
        return (X_train, y_train), (X_val, y_val)

    # -- protocol --------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> "NeuralNetClassifier":
        """Build the MLP and train it on ``X`` (n_samples, ...) with labels ``y``."""
        self._check_options()
        X, y = validate_data(self, self._flatten(X), y, dtype=np.float32, reset=True)
        check_classification_targets(y)
        classes, codes = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"NeuralNetClassifier: need at least 2 classes, got 1 class "
                             f"({classes.tolist()})")
        self.classes_ = classes
        seed = self._seed()
        codes = codes.astype(np.int64)
        train, val = self._split(X, codes, seed)
        self.model_ = MLP([X.shape[1], *self.hidden_sizes, len(self.classes_)],
                          activation=self.activation, dropout=self.dropout,
                          batch_norm=self.batch_norm, seed=seed)
        optimizer = OPTIMIZERS[self.optimizer](self.model_.parameters(), lr=self.lr,
                                               weight_decay=self.weight_decay)
        callbacks = [_EpochReport(self.on_epoch_end)] if self.on_epoch_end is not None else []
        with self._backend():
            self.history_ = fit(self.model_, optimizer, cross_entropy, train, val=val,
                                epochs=self.epochs, callbacks=callbacks, progress=self.progress,
                                batch_size=self.batch_size, seed=seed)
        self.n_iter_ = len(self.history_)
        return self

    def _features(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        return validate_data(self, self._flatten(X), dtype=np.float32, reset=False)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        X = self._features(X)
        with self._backend():
            return predict_proba(self.model_, X)

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)  # checks that the classifier is fitted
        return self.classes_[proba.argmax(axis=1)]
