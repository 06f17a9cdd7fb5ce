"""refnas.metrics against scikit-learn on Hypothesis-drawn label vectors.

Values, raised errors and the presence of UndefinedMetricWarning must all agree, including
labels absent from the predictions, single-class inputs and string labels.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from sklearn import metrics as skm

from refnas import metrics as rm
from refnas.tensor import Tensor

# Metrics are cheap: give them more examples than the profile's default.
MORE = settings(max_examples=max(60, settings.default.max_examples))

LABEL_POOLS = [[0, 1], [0, 1, 2], [0, 1, 2, 3, 4], [-1, 3, 7], ["cat", "dog", "pig"]]


@st.composite
def label_pairs(draw, max_size: int = 30):
    """(y_true, y_pred): predictions often drawn from a smaller pool, so labels go missing."""
    pool = draw(st.sampled_from(LABEL_POOLS))
    n = draw(st.integers(1, max_size))
    true_pool = draw(st.lists(st.sampled_from(pool), min_size=1, unique=True))
    pred_pool = draw(st.lists(st.sampled_from(pool), min_size=1, unique=True))
    y_true = draw(st.lists(st.sampled_from(true_pool), min_size=n, max_size=n))
    y_pred = draw(st.lists(st.sampled_from(pred_pool), min_size=n, max_size=n))
    return np.array(y_true), np.array(y_pred)


def outcome(fn, *args, **kwargs):
    """('ok', value, warned) or ('error', ValueError), where warned says whether an
    undefined-metric warning was issued."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = fn(*args, **kwargs)
        except ValueError:
            return ("error",)
    warned = any(issubclass(w.category, (rm.UndefinedMetricWarning,
                                         skm._classification.UndefinedMetricWarning))
                 for w in caught)
    return ("ok", value, warned)


def assert_same_outcome(ours, theirs):
    assert ours[0] == theirs[0], (ours, theirs)
    if ours[0] == "ok":
        np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-12, atol=1e-12)
        assert ours[2] == theirs[2], f"warning mismatch: ours {ours[2]}, sklearn {theirs[2]}"


PAIRS = [(rm.precision, skm.precision_score), (rm.recall, skm.recall_score),
         (rm.f1, skm.f1_score)]


@MORE
@given(label_pairs(), st.sampled_from(["binary", "micro", "macro", "weighted", None]),
       st.sampled_from(["warn", 0, 1, np.nan]))
@example((np.array([2, 2, 2]), np.array([2, 2, 2])), "binary", "warn")     # one class, no 1
@example((np.array([0, 0, 1]), np.array([0, 0, 0])), "binary", "warn")     # 1 never predicted
@example((np.array([0, 1, 2]), np.array([0, 0, 0])), "macro", "warn")      # labels absent
@example((np.array([0, 1, 2]), np.array([0, 0, 0])), "weighted", np.nan)
def test_precision_recall_f1_equal_sklearn(pair, average, zero_division):
    y_true, y_pred = pair
    for ours, theirs in PAIRS:
        assert_same_outcome(
            outcome(ours, y_true, y_pred, average=average, zero_division=zero_division),
            outcome(theirs, y_true, y_pred, average=average, zero_division=zero_division))


@MORE
@given(label_pairs(), st.data())
def test_explicit_labels_equal_sklearn(pair, data):
    """A ``labels`` subset (possibly with a label seen nowhere) restricts the averages."""
    y_true, y_pred = pair
    pool = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    extra = "zebra" if isinstance(pool[0], str) else 99
    labels = data.draw(st.lists(st.sampled_from(pool + [extra]), min_size=1, unique=True))
    for average in ("micro", "macro", "weighted", None):
        for ours, theirs in PAIRS:
            assert_same_outcome(outcome(ours, y_true, y_pred, average=average, labels=labels),
                                outcome(theirs, y_true, y_pred, average=average, labels=labels))


@MORE
@given(label_pairs())
def test_accuracy_and_confusion_matrix_equal_sklearn(pair):
    y_true, y_pred = pair
    assert rm.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for normalize in (None, "true", "pred", "all"):
        ours = rm.confusion_matrix(y_true, y_pred, normalize=normalize)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns on a 1x1 matrix
            theirs = skm.confusion_matrix(y_true, y_pred, normalize=normalize)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12)
        assert ours.dtype == theirs.dtype


@MORE
@given(label_pairs(), st.data())
def test_confusion_matrix_with_labels_equal_sklearn(pair, data):
    y_true, y_pred = pair
    pool = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    labels = data.draw(st.permutations(pool).flatmap(
        lambda p: st.integers(1, len(p)).map(lambda k: p[:k])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = outcome(skm.confusion_matrix, y_true, y_pred, labels=labels)
    ours = outcome(rm.confusion_matrix, y_true, y_pred, labels=labels)
    assert ours[0] == theirs[0]
    if ours[0] == "ok":
        np.testing.assert_array_equal(ours[1], theirs[1])


@MORE
@given(label_pairs(), st.data())
def test_metrics_table_equals_classification_report(pair, data):
    y_true, y_pred = pair
    pool = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    labels = data.draw(st.none() | st.lists(st.sampled_from(pool), min_size=1, unique=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = rm.metrics_table(y_true, y_pred, labels=labels)
        theirs = skm.classification_report(y_true, y_pred, labels=labels, output_dict=True)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-12), key


@MORE
@given(label_pairs())
def test_support_equals_sklearn(pair):
    y_true, y_pred = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = rm.precision_recall_f1(y_true, y_pred, average=None)
        theirs = skm.precision_recall_fscore_support(y_true, y_pred, average=None)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@MORE
@given(n=st.integers(1, 25), n_classes=st.integers(3, 6), k=st.integers(1, 7),
       seed=st.integers(0, 2**31 - 1), ties=st.booleans())
def test_top_k_accuracy_equals_sklearn(n, n_classes, k, seed, ties):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, n)
    scores = rng.standard_normal((n, n_classes))
    if ties:  # coarse scores: many exact ties, broken toward the higher column as sklearn
        scores = np.round(scores)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when k >= n_classes
        theirs = skm.top_k_accuracy_score(y_true, scores, k=k, labels=np.arange(n_classes))
    assert rm.top_k_accuracy(y_true, scores, k=k) == pytest.approx(theirs, rel=1e-12)


@MORE
@given(n=st.integers(1, 25), n_classes=st.integers(2, 5), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([np.float32, np.float64]), hard=st.booleans())
def test_log_loss_equals_sklearn(n, n_classes, seed, dtype, hard):
    rng = np.random.default_rng(seed)
    labels = np.arange(n_classes) * 2 + 1
    y_true = rng.choice(labels, n)
    probs = rng.dirichlet(np.ones(n_classes), n)
    if hard:  # exact 0s and 1s exercise the clipping
        probs = np.eye(n_classes)[rng.integers(0, n_classes, n)]
    probs = probs.astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = skm.log_loss(y_true, probs, labels=labels)
        ours = rm.log_loss(y_true, probs, labels=labels)
    assert ours == pytest.approx(theirs, rel=1e-5 if dtype == np.float32 else 1e-12)


def test_log_loss_binary_vector_and_inferred_labels():
    y_true = np.array([0, 1, 1, 0])
    p = np.array([0.1, 0.8, 0.6, 0.3])
    assert rm.log_loss(y_true, p) == pytest.approx(skm.log_loss(y_true, p), rel=1e-12)
    probs = np.stack([1 - p, p], axis=1)
    assert rm.log_loss(y_true, probs) == pytest.approx(skm.log_loss(y_true, probs), rel=1e-12)


def test_metrics_accept_tensors():
    y_true, y_pred = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 2])
    assert rm.accuracy(Tensor(y_true), Tensor(y_pred)) == pytest.approx(0.75)
    assert rm.f1(Tensor(y_true), y_pred, average="macro") == pytest.approx(
        skm.f1_score(y_true, y_pred, average="macro"))


@pytest.mark.parametrize("fn", [rm.accuracy, rm.precision, rm.recall, rm.f1,
                                rm.confusion_matrix, rm.metrics_table])
def test_mismatched_lengths_raise(fn):
    with pytest.raises(ValueError, match="different lengths"):
        fn(np.array([0, 1, 1]), np.array([0, 1]))


@pytest.mark.parametrize("fn", [rm.precision, rm.recall, rm.f1])
def test_unknown_average_raises(fn):
    with pytest.raises(ValueError, match="unknown average 'mean'"):
        fn([0, 1], [0, 1], average="mean")


def test_argument_errors():
    with pytest.raises(ValueError, match="normalize"):
        rm.confusion_matrix([0, 1], [0, 1], normalize="rows")
    with pytest.raises(ValueError, match="zero_division"):
        rm.precision([0, 1], [0, 1], zero_division=2)
    with pytest.raises(ValueError, match="y_score"):
        rm.top_k_accuracy([0, 1], np.zeros((3, 3)), k=1)
    with pytest.raises(ValueError, match="not score columns"):
        rm.top_k_accuracy([0, 5], np.zeros((2, 3)), k=1)
    with pytest.raises(ValueError, match="k must be"):
        rm.top_k_accuracy([0, 1], np.zeros((2, 3)), k=0)
    with pytest.raises(ValueError, match="columns"):
        rm.log_loss([0, 1, 1], np.full((3, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rm.log_loss([0, 1], np.array([[1.5, -0.5], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="empty"):
        rm.accuracy([], [])
