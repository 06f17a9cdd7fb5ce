r"""Cross-validation splits and scorers.

**Splits.** :math:`k`-fold cross-validation estimates a candidate's score as the mean over
folds, each fold held out once while the model is fitted on the others:

.. math::
    \widehat{\text{score}}(\theta) = \frac1k \sum_{j=1}^{k}
    s\big(\hat f_{\theta}^{(-j)},\; D_j\big).

``KFold`` and ``StratifiedKFold`` are refnas's own (:mod:`refnas.data`; unshuffled they equal
scikit-learn's folds); :class:`Holdout` is a single seeded split. ``cv=k`` means stratified
folds for a classifier with discrete labels and plain folds otherwise, as in scikit-learn;
any object with ``split(X, y, groups)`` or an iterable of ``(train, test)`` pairs works too.

**Scorers** are callables ``scorer(estimator, X, y) -> float``, higher is better:
``accuracy``; ``precision``, ``recall``, ``f1`` (binary) and their ``_macro``, ``_micro``,
``_weighted`` averages; ``neg_log_loss`` (:math:`-\frac1N\sum_i \log p_{i,y_i}`). Other names
are looked up among scikit-learn's scorers.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from refnas import metrics
from refnas.data import KFold, StratifiedKFold, train_test_split

__all__ = ["KFold", "StratifiedKFold", "Holdout", "is_classifier", "make_splits", "Scorer",
           "get_scorer", "check_scoring", "check_refit", "SCORERS"]


class Holdout:
    """One train/test split of ``test_size`` (fraction or count), seeded, optionally
    stratified by ``y``."""

    def __init__(self, test_size: float | int = 0.2, stratify: bool = False,
                 random_state: int | None = None) -> None:
        self.test_size, self.stratify, self.random_state = test_size, stratify, random_state

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        return 1

    def split(self, X: Any, y: Any = None, groups: Any = None):
        index = np.arange(len(X))
        labels = index if y is None else np.asarray(y)
        train, test, _, _ = train_test_split(index, labels, test_size=self.test_size,
                                             stratify=labels if self.stratify else None,
                                             seed=self.random_state)
        yield np.sort(train), np.sort(test)


def is_classifier(estimator: Any) -> bool:
    """scikit-learn's notion (tags or ``_estimator_type == "classifier"``)."""
    if getattr(estimator, "_estimator_type", None) == "classifier":
        return True
    try:
        from sklearn.base import is_classifier as sk_is_classifier

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(sk_is_classifier(estimator))
    except Exception:  # noqa: BLE001 - not a scikit-learn estimator
        return False


def _discrete(y: Any) -> bool:
    if y is None:
        return False
    from sklearn.utils.multiclass import type_of_target

    return type_of_target(y) in ("binary", "multiclass")


def make_splits(cv: Any, X: Any, y: Any = None, groups: Any = None,
                classifier: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``(train, test)`` index pairs for ``cv`` (None, an int, a splitter or an iterable)."""
    if cv is None:
        cv = 5
    if isinstance(cv, (int, np.integer)) and not isinstance(cv, bool):
        if cv < 2:
            raise ValueError(f"cv must be at least 2 folds, got cv={cv}")
        cv = StratifiedKFold(int(cv)) if classifier and _discrete(y) else KFold(int(cv))
    if callable(getattr(cv, "split", None)):
        splits = cv.split(X, y, groups)
    elif isinstance(cv, Iterable) and not isinstance(cv, (str, bytes)):
        splits = cv
    else:
        raise TypeError(f"cv must be None, an int, a splitter with .split(X, y, groups) or an "
                        f"iterable of (train, test) index pairs, got {cv!r}")
    out = [(np.asarray(train), np.asarray(test)) for train, test in splits]
    if not out:
        raise ValueError(f"cv={cv!r} produced no splits")
    return out


class Scorer:
    """``sign * metric(y, predictions, **kwargs)``, predictions from ``predict`` or
    ``predict_proba``."""

    def __init__(self, name: str, metric: Callable[..., float], *, proba: bool = False,
                 sign: float = 1.0, **kwargs: Any) -> None:
        self.name, self.metric, self.proba, self.sign, self.kwargs = \
            name, metric, proba, sign, kwargs

    def __call__(self, estimator: Any, X: Any, y: Any) -> float:
        if self.proba:
            labels = getattr(estimator, "classes_", None)
            return self.sign * float(self.metric(y, estimator.predict_proba(X), labels=labels))
        return self.sign * float(self.metric(y, estimator.predict(X), **self.kwargs))

    def __repr__(self) -> str:
        return f"Scorer({self.name!r})"


def _table() -> dict[str, Scorer]:
    table = {"accuracy": Scorer("accuracy", metrics.accuracy),
             "neg_log_loss": Scorer("neg_log_loss", metrics.log_loss, proba=True, sign=-1.0)}
    for name, fn in (("precision", metrics.precision), ("recall", metrics.recall),
                     ("f1", metrics.f1)):
        table[name] = Scorer(name, fn, average="binary")
        for average in ("macro", "micro", "weighted"):
            table[f"{name}_{average}"] = Scorer(f"{name}_{average}", fn, average=average)
    return table


SCORERS: dict[str, Scorer] = _table()


def _passthrough(estimator: Any, X: Any, y: Any) -> float:
    """The estimator's own ``score`` method (scikit-learn's default scoring)."""
    return float(estimator.score(X, y))


def get_scorer(name: str) -> Callable[[Any, Any, Any], float]:
    """A scorer by name: refnas's own, else one of scikit-learn's."""
    if name in SCORERS:
        return SCORERS[name]
    try:
        from sklearn.metrics import get_scorer as sk_get_scorer

        return sk_get_scorer(name)
    except (ImportError, ValueError):
        raise ValueError(f"scoring: unknown scorer {name!r}; use one of "
                         f"{', '.join(sorted(SCORERS))}, a scikit-learn scorer name, or a "
                         f"callable (estimator, X, y) -> float") from None


def check_scoring(scoring: Any) -> tuple[dict[str, Callable[..., float]], bool]:
    """``(scorers by name, multimetric?)``: a single scorer is named ``"score"``."""
    if scoring is None:
        return {"score": _passthrough}, False
    if isinstance(scoring, str):
        return {"score": get_scorer(scoring)}, False
    if callable(scoring):
        return {"score": scoring}, False
    if isinstance(scoring, Mapping):
        if not scoring:
            raise ValueError("scoring: an empty dict; give at least one scorer")
        return {str(k): get_scorer(v) if isinstance(v, str) else v
                for k, v in scoring.items()}, True
    if isinstance(scoring, (list, tuple, set, frozenset)):
        names = list(scoring)
        if not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"scoring: a list of scorers must hold scorer names, got {scoring!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"scoring: duplicate names in {scoring!r}")
        return {n: get_scorer(n) for n in names}, True
    raise TypeError(f"scoring must be None, a name, a callable, a list of names or a dict, got "
                    f"{type(scoring).__name__}")


def check_refit(refit: Any, scorers: dict[str, Any], multimetric: bool) -> str:
    """The metric that picks the best candidate (and that strategies optimise)."""
    if not multimetric:
        if not (isinstance(refit, bool) or callable(refit)):
            raise ValueError(f"refit must be True, False or a callable with single-metric "
                             f"scoring, got {refit!r}")
        return "score"
    if isinstance(refit, str) and refit in scorers:
        return refit
    if refit is False or callable(refit):
        return next(iter(scorers))
    raise ValueError(f"For multi-metric scoring, the parameter refit must be set to a scorer "
                     f"key ({', '.join(scorers)}) or a callable to refit an estimator with the "
                     f"best parameter setting on the whole data and make the best_* attributes "
                     f"available for that metric. If this is not needed, refit should be set "
                     f"to False explicitly. {refit!r} was passed.")
