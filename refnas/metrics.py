r"""Classification metrics: accuracy, top-k accuracy, precision, recall, F1, confusion matrix,
a classification report, and log loss.

Every function takes NumPy arrays, refnas Tensors or CuPy arrays (copied to the host) and
gives the same numbers as scikit-learn's namesake, including its zero-division convention:
an undefined ratio (0/0) becomes ``zero_division`` — by default 0, with an
:class:`UndefinedMetricWarning`.

For a label :math:`c`, counting over the samples :math:`i`:

.. math::
    TP_c = \#\{y_i = c,\ \hat y_i = c\},\quad FP_c = \#\{y_i \ne c,\ \hat y_i = c\},\quad
    FN_c = \#\{y_i = c,\ \hat y_i \ne c\}

.. math::
    P_c = \frac{TP_c}{TP_c + FP_c},\qquad R_c = \frac{TP_c}{TP_c + FN_c},\qquad
    F_{1,c} = \frac{2\,P_c R_c}{P_c + R_c} = \frac{2\,TP_c}{2\,TP_c + FP_c + FN_c}

Averages over labels (``average=``): ``"binary"`` reports only ``pos_label``; ``"macro"`` the
plain mean over labels; ``"weighted"`` the mean weighted by support :math:`TP_c + FN_c`;
``"micro"`` pools the counts first (:math:`\sum TP / \sum (TP + FP)`; for single-label data
micro precision = micro recall = micro F1 = accuracy); ``None`` returns one value per label.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from refnas.data import to_numpy

__all__ = [
    "UndefinedMetricWarning", "accuracy", "top_k_accuracy", "precision", "recall", "f1",
    "precision_recall_f1", "confusion_matrix", "metrics_table", "log_loss",
]

_AVERAGES = ("binary", "micro", "macro", "weighted", None)


class UndefinedMetricWarning(UserWarning):
    """A ratio was 0/0 and was replaced by ``zero_division`` (0 by default)."""


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def _labels_pair(y_true: Any, y_pred: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Two 1-D label vectors of the same, non-zero length."""
    y_true, y_pred = to_numpy(y_true), to_numpy(y_pred)
    if y_true.ndim != 1 or y_pred.ndim != 1:
        raise ValueError(f"{where}: y_true and y_pred must be 1-D label vectors, got shapes "
                         f"{y_true.shape} and {y_pred.shape}")
    if len(y_true) != len(y_pred):
        raise ValueError(f"{where}: y_true and y_pred have different lengths, "
                         f"{len(y_true)} and {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError(f"{where}: empty input")
    return y_true, y_pred


def _positions(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The index of each value in ``labels`` (any order), or -1 where it is absent."""
    order = np.argsort(labels, kind="stable")
    slot = np.minimum(np.searchsorted(labels[order], values), len(labels) - 1)
    return np.where(labels[order][slot] == values, order[slot], -1)


def _zero_division_value(zero_division: Any, where: str) -> float:
    if isinstance(zero_division, str) and zero_division == "warn":
        return 0.0
    if isinstance(zero_division, (int, float)) and (zero_division in (0, 1)
                                                    or np.isnan(zero_division)):
        return float(zero_division)
    raise ValueError(f"{where}: zero_division must be 'warn', 0, 1 or nan, got {zero_division!r}")


def _divide(numerator: np.ndarray, denominator: np.ndarray, zero_division: Any, warn: bool,
            what: str, empty: str, stacklevel: int) -> np.ndarray:
    """numerator / denominator, with ``zero_division`` where the denominator is 0."""
    undefined = denominator == 0
    ratio = numerator / np.where(undefined, 1, denominator)
    ratio[undefined] = _zero_division_value(zero_division, what)
    if warn and zero_division == "warn" and undefined.any():
        warnings.warn(f"{what} is ill-defined and set to 0.0 for {int(undefined.sum())} "
                      f"label(s) with no {empty} samples; use zero_division to control this",
                      UndefinedMetricWarning, stacklevel=stacklevel + 1)
    return ratio


# --------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------
def accuracy(y_true: Any, y_pred: Any) -> float:
    r"""Fraction of exact matches: :math:`\frac1N \sum_i [y_i = \hat y_i]`."""
    y_true, y_pred = _labels_pair(y_true, y_pred, "accuracy")
    return float(np.mean(y_true == y_pred))


def top_k_accuracy(y_true: Any, y_score: Any, k: int = 5, labels: Any = None) -> float:
    r"""Fraction of samples whose true class is among the ``k`` highest scores.

    ``y_score`` has shape (N, C): scores, logits or probabilities, column j for class
    ``labels[j]`` (default ``labels = 0, ..., C-1``). Sample i is a hit when fewer than k classes
    rank above its true class t, where class j ranks above t if :math:`s_{ij} > s_{it}`, or
    :math:`s_{ij} = s_{it}` and :math:`j > t` — ties go to the higher column, as in
    scikit-learn's ``top_k_accuracy_score``.
    """
    y_true = to_numpy(y_true)
    scores = to_numpy(y_score)
    if scores.ndim != 2 or y_true.ndim != 1 or len(scores) != len(y_true) or len(y_true) == 0:
        raise ValueError(f"top_k_accuracy: need y_true (N,) and y_score (N, C) with N > 0, "
                         f"got shapes {y_true.shape} and {scores.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"top_k_accuracy: k must be an integer >= 1, got {k!r}")
    classes = np.arange(scores.shape[1]) if labels is None else to_numpy(labels)
    if len(classes) != scores.shape[1] or len(np.unique(classes)) != len(classes):
        raise ValueError(f"top_k_accuracy: labels must be {scores.shape[1]} distinct values, one "
                         f"per score column, got {classes!r}")
    t = _positions(y_true, classes)
    if (t < 0).any():
        raise ValueError(f"top_k_accuracy: y_true has labels {np.unique(y_true[t < 0]).tolist()}"
                         f" that are not score columns {classes.tolist()}")
    true_score = scores[np.arange(len(t)), t][:, None]
    j = np.arange(scores.shape[1])
    ranked_above = (scores > true_score) | ((scores == true_score) & (j > t[:, None]))
    return float(np.mean(ranked_above.sum(axis=1) < k))


# --------------------------------------------------------------------------------------------
# Precision, recall, F1
# --------------------------------------------------------------------------------------------
def _chosen_labels(y_true: np.ndarray, y_pred: np.ndarray, average: Any, labels: Any,
                   pos_label: Any, where: str) -> np.ndarray:
    """The labels to score: ``[pos_label]`` for binary, else ``labels`` or the sorted union."""
    if not (average is None or (isinstance(average, str) and average in _AVERAGES)):
        raise ValueError(f"{where}: unknown average {average!r}; expected one of {_AVERAGES}")
    present = np.union1d(y_true, y_pred)
    if average == "binary":
        if len(present) > 2:
            raise ValueError(f"{where}: average='binary' but the labels are multiclass "
                             f"({present.tolist()}); choose average='macro', 'micro', "
                             f"'weighted' or None")
        if pos_label not in present.tolist() and len(present) == 2:
            raise ValueError(f"{where}: pos_label={pos_label!r} is not a valid label; it should "
                             f"be one of {present.tolist()}")
        return np.asarray([pos_label])
    return present if labels is None else to_numpy(labels)


def _counts(y_true: np.ndarray, y_pred: np.ndarray,
            labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label c: :math:`TP_c`, predicted count :math:`TP_c + FP_c`, true count
    :math:`TP_c + FN_c`."""
    true_at, pred_at = _positions(y_true, labels), _positions(y_pred, labels)
    hits = true_at[(true_at == pred_at) & (true_at >= 0)]

    def per_label(index: np.ndarray) -> np.ndarray:
        return np.bincount(index[index >= 0], minlength=len(labels))

    return per_label(hits), per_label(pred_at), per_label(true_at)


def _nan_average(values: np.ndarray, weights: np.ndarray | None) -> float:
    """Mean of the non-NaN values (weighted if given; all-zero weights fall back to plain)."""
    keep = ~np.isnan(values)
    if not keep.any():
        return float("nan")
    if weights is None or weights[keep].sum() == 0:
        return float(np.mean(values[keep]))
    return float(np.average(values[keep], weights=weights[keep]))


def precision_recall_f1(y_true: Any, y_pred: Any, *, average: str | None = "binary",
                        labels: Any = None, pos_label: Any = 1, zero_division: Any = "warn",
                        ) -> tuple[Any, Any, Any, np.ndarray | None]:
    r"""Precision, recall, F1 and support (:math:`TP_c + FN_c`) in one pass.

    With ``average=None`` each is an array over ``labels`` (default: the sorted union of the
    labels in ``y_true`` and ``y_pred``), with the support array; otherwise three floats and
    ``None``. ``F1 = 2TP / (2TP + FP + FN)``, 0/0 → ``zero_division``.
    """
    return _prf(y_true, y_pred, average, labels, pos_label, zero_division,
                warn_for=("precision", "recall", "f1"), stacklevel=3)


def _prf(y_true: Any, y_pred: Any, average: str | None, labels: Any, pos_label: Any,
         zero_division: Any, warn_for: Sequence[str],
         stacklevel: int) -> tuple[Any, Any, Any, np.ndarray | None]:
    """:func:`precision_recall_f1`; ``warn_for`` names the metrics whose 0/0 cases warn, and
    ``stacklevel`` is how far up the user's call is (this function being 1)."""
    where = "precision_recall_f1"
    y_true, y_pred = _labels_pair(y_true, y_pred, where)
    _zero_division_value(zero_division, where)
    chosen = _chosen_labels(y_true, y_pred, average, labels, pos_label, where)
    tp, predicted, actual = _counts(y_true, y_pred, chosen)
    if average == "micro":
        tp, predicted, actual = tp.sum(keepdims=True), predicted.sum(keepdims=True), \
            actual.sum(keepdims=True)
    level = stacklevel
    precision_ = _divide(tp, predicted, zero_division, "precision" in warn_for,
                         "Precision", "predicted", level)
    recall_ = _divide(tp, actual, zero_division, "recall" in warn_for, "Recall", "true", level)
    f1_ = _divide(2 * tp, predicted + actual, zero_division, "f1" in warn_for,
                  "F-score", "true nor predicted", level)
    if average is None:
        return precision_, recall_, f1_, actual
    weights = actual if average == "weighted" else None
    return (_nan_average(precision_, weights), _nan_average(recall_, weights),
            _nan_average(f1_, weights), None)


def _one_metric(metric: str, y_true: Any, y_pred: Any, average: str | None, labels: Any,
                pos_label: Any, zero_division: Any) -> Any:
    """One of :func:`precision_recall_f1`'s results, warning only about that metric."""
    index = ("precision", "recall", "f1").index(metric)
    return _prf(y_true, y_pred, average, labels, pos_label, zero_division,
                warn_for=(metric,), stacklevel=4)[index]


def precision(y_true: Any, y_pred: Any, *, average: str | None = "binary", labels: Any = None,
              pos_label: Any = 1, zero_division: Any = "warn") -> Any:
    r"""Precision :math:`TP/(TP+FP)`: of the samples predicted c, the fraction that are c."""
    return _one_metric("precision", y_true, y_pred, average, labels, pos_label, zero_division)


def recall(y_true: Any, y_pred: Any, *, average: str | None = "binary", labels: Any = None,
           pos_label: Any = 1, zero_division: Any = "warn") -> Any:
    r"""Recall :math:`TP/(TP+FN)`: of the samples that are c, the fraction predicted c."""
    return _one_metric("recall", y_true, y_pred, average, labels, pos_label, zero_division)


def f1(y_true: Any, y_pred: Any, *, average: str | None = "binary", labels: Any = None,
       pos_label: Any = 1, zero_division: Any = "warn") -> Any:
    r"""F1, the harmonic mean of precision and recall: :math:`2TP/(2TP+FP+FN)`."""
    return _one_metric("f1", y_true, y_pred, average, labels, pos_label, zero_division)


# --------------------------------------------------------------------------------------------
# Confusion matrix and report
# --------------------------------------------------------------------------------------------
def confusion_matrix(y_true: Any, y_pred: Any, labels: Any = None,
                     normalize: str | None = None) -> np.ndarray:
    r""":math:`C_{ij}` = the number of samples with true label ``labels[i]`` predicted as
    ``labels[j]`` (rows: truth, columns: prediction); samples with a label outside ``labels``
    are left out. ``labels`` defaults to the sorted union of both vectors.

    ``normalize``: ``"true"`` divides each row by its sum (row i is then the distribution of
    predictions for class i, its diagonal the recall), ``"pred"`` each column (diagonal:
    precision), ``"all"`` by the total; empty rows/columns give 0.
    """
    y_true, y_pred = _labels_pair(y_true, y_pred, "confusion_matrix")
    if normalize not in (None, "true", "pred", "all"):
        raise ValueError(f"confusion_matrix: normalize must be None, 'true', 'pred' or 'all', "
                         f"got {normalize!r}")
    if labels is None:
        labels = np.union1d(y_true, y_pred)
    else:
        labels = to_numpy(labels)
        if labels.size == 0 or not np.isin(y_true, labels).any():
            raise ValueError(f"confusion_matrix: labels {labels.tolist()} must contain at least "
                             f"one label present in y_true")
    n = len(labels)
    row, column = _positions(y_true, labels), _positions(y_pred, labels)
    kept = (row >= 0) & (column >= 0)
    matrix = np.bincount(row[kept] * n + column[kept], minlength=n * n).reshape(n, n)
    if normalize is None:
        return matrix
    total = {"true": matrix.sum(axis=1, keepdims=True), "pred": matrix.sum(axis=0, keepdims=True),
             "all": matrix.sum()}[normalize]
    return matrix / np.where(total == 0, 1, total)


def metrics_table(y_true: Any, y_pred: Any, labels: Any = None,
                  zero_division: Any = "warn") -> dict[str, Any]:
    """Per-label precision, recall, F1 and support plus their averages, as a dict.

    The layout of ``sklearn.metrics.classification_report(..., output_dict=True)``: one entry
    per label (keyed by ``str(label)``), ``"accuracy"`` (or ``"micro avg"`` when ``labels``
    leaves some present label out), ``"macro avg"`` and ``"weighted avg"``.
    """
    y_true, y_pred = _labels_pair(y_true, y_pred, "metrics_table")
    present = np.union1d(y_true, y_pred)
    chosen = present if labels is None else to_numpy(labels)
    keys = ("precision", "recall", "f1-score")

    def row(average: str | None) -> Any:
        return precision_recall_f1(y_true, y_pred, average=average, labels=chosen,
                                   zero_division=zero_division)

    per_label = row(None)
    table: dict[str, Any] = {
        str(label): {**{key: float(per_label[m][i]) for m, key in enumerate(keys)},
                     "support": int(per_label[3][i])}
        for i, label in enumerate(chosen.tolist())}
    total_support = int(per_label[3].sum())
    micro_is_accuracy = set(chosen.tolist()) >= set(present.tolist())
    for average in ("micro", "macro", "weighted"):
        if average == "micro" and micro_is_accuracy:
            table["accuracy"] = accuracy(y_true, y_pred)
            continue
        table[f"{average} avg"] = {**dict(zip(keys, row(average)[:3])), "support": total_support}
    return table


# --------------------------------------------------------------------------------------------
# Log loss
# --------------------------------------------------------------------------------------------
def log_loss(y_true: Any, y_prob: Any, labels: Any = None) -> float:
    r"""Mean cross-entropy of predicted probabilities:
    :math:`-\frac1N \sum_i \log p_{i, y_i}`, with :math:`p` clipped to
    :math:`[\epsilon, 1-\epsilon]` (:math:`\epsilon` the float type's machine epsilon) so a
    confident mistake costs a large finite amount (Bishop 2006, §4.3.4).

    ``y_prob`` has shape (N, C), column j for class ``labels[j]`` (default: the C sorted
    distinct labels of ``y_true``, which must number C), or shape (N,) for the probability of
    the larger of two labels. Rows should sum to 1 (a ``UserWarning`` otherwise; no rescaling,
    as scikit-learn ≥ 1.5).
    """
    y_true = to_numpy(y_true)
    probs = to_numpy(y_prob)
    probs = probs.astype(np.float64) if probs.dtype.kind != "f" else probs
    if probs.ndim == 1:
        probs = np.stack([1 - probs, probs], axis=1)
    if probs.ndim != 2 or y_true.ndim != 1 or len(probs) != len(y_true) or len(y_true) == 0:
        raise ValueError(f"log_loss: need y_true (N,) and y_prob (N, C) or (N,) with N > 0, got "
                         f"shapes {y_true.shape} and {to_numpy(y_prob).shape}")
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError(f"log_loss: probabilities must lie in [0, 1], got values in "
                         f"[{probs.min()}, {probs.max()}]")
    classes = np.unique(y_true) if labels is None else np.unique(to_numpy(labels))
    if len(classes) < 2:
        raise ValueError(f"log_loss: needs at least two classes, got {classes.tolist()}; pass "
                         f"labels= with every class")
    if len(classes) != probs.shape[1]:
        raise ValueError(f"log_loss: {len(classes)} classes {classes.tolist()} but y_prob has "
                         f"{probs.shape[1]} columns; pass labels= with one label per column")
    if not np.isin(y_true, classes).all():
        raise ValueError(f"log_loss: y_true has labels outside {classes.tolist()}")
    eps = np.finfo(probs.dtype).eps
    if not np.allclose(probs.sum(axis=1), 1, rtol=np.sqrt(eps), atol=0):
        warnings.warn("log_loss: y_prob rows do not sum to one; pass probabilities",
                      UserWarning, stacklevel=2)
    p_true = np.clip(probs, eps, 1 - eps)[np.arange(len(y_true)),
                                          np.searchsorted(classes, y_true)]
    return float(-np.mean(np.log(p_true)))
