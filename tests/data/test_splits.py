"""KFold / StratifiedKFold against scikit-learn, and the properties of the random splits."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from sklearn import model_selection as skms

from refnas.data import KFold, StratifiedKFold, train_test_split, train_val_test_split

MORE = settings(max_examples=max(60, settings.default.max_examples))

labels = st.lists(st.sampled_from([0, 1, 2, 5, -3]), min_size=1, max_size=40).map(np.array)


def folds_of(splitter, X, y):
    """[(train, test), ...] as lists, ('error',) on ValueError, plus whether it warned."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            folds = [(train.tolist(), test.tolist()) for train, test in splitter.split(X, y)]
        except ValueError:
            folds = ("error",)
    return folds, any(issubclass(w.category, UserWarning) for w in caught)


@MORE
@given(y=labels, n_splits=st.integers(2, 12))
@example(y=np.array([0, 0, 0, 1]), n_splits=3)        # a class smaller than n_splits: warns
@example(y=np.array([0, 1, 2]), n_splits=2)           # every class too small: raises
def test_unshuffled_folds_equal_sklearn(y, n_splits):
    X = np.zeros((len(y), 3))
    assert folds_of(KFold(n_splits), X, y) == folds_of(skms.KFold(n_splits), X, y)
    assert folds_of(StratifiedKFold(n_splits), X, y) == \
        folds_of(skms.StratifiedKFold(n_splits), X, y)


@MORE
@given(y=labels, n_splits=st.integers(2, 6), seed=st.integers(0, 2**32 - 1),
       stratified=st.booleans())
def test_shuffled_folds_partition_and_stratify(y, n_splits, seed, stratified):
    splitter = (StratifiedKFold if stratified else KFold)(n_splits, shuffle=True,
                                                          random_state=seed)
    n = len(y)
    if n < n_splits or (stratified and np.bincount(np.unique(y, return_inverse=True)[1]).max()
                        < n_splits):
        with pytest.raises(ValueError):
            list(splitter.split(np.zeros(n), y))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folds = list(splitter.split(np.zeros(n), y))
        again = list(splitter.split(np.zeros(n), y))
    assert [t.tolist() for _, t in folds] == [t.tolist() for _, t in again]  # seeded
    tests = np.concatenate([test for _, test in folds])
    assert sorted(tests.tolist()) == list(range(n))                         # a partition
    for train, test in folds:
        assert sorted(np.concatenate([train, test]).tolist()) == list(range(n))
    if stratified:
        for _, test in folds:
            for label in np.unique(y):
                ideal = np.sum(y == label) / n_splits
                assert abs(np.sum(y[test] == label) - ideal) < 1


def test_splitter_errors():
    with pytest.raises(ValueError, match="n_splits"):
        KFold(1)
    with pytest.raises(ValueError, match="greater than the number of samples"):
        list(KFold(5).split(np.zeros(3)))
    with pytest.raises(ValueError, match="random_state"):
        KFold(3, shuffle=False, random_state=0)
    with pytest.raises(ValueError, match="y"):
        list(StratifiedKFold(2).split(np.zeros(4), None))
    with pytest.raises(ValueError, match="same leading size"):
        list(StratifiedKFold(2).split(np.zeros(4), np.array([0, 1, 0])))
    with pytest.warns(UserWarning, match="least populated"):
        list(StratifiedKFold(3).split(np.zeros(5), np.array([0, 0, 0, 1, 1])))
    assert KFold(4).get_n_splits() == StratifiedKFold(7).get_n_splits() - 3


@MORE
@given(y=st.lists(st.sampled_from([0, 1, 2]), min_size=8, max_size=60).map(np.array),
       test_size=st.one_of(st.floats(0.1, 0.6), st.integers(3, 5)),
       seed=st.integers(0, 2**32 - 1), stratify=st.booleans())
def test_train_test_split_partitions_and_stratifies(y, test_size, seed, stratify):
    n = len(y)
    X = np.arange(n)[:, None] * np.ones((1, 2))   # row i holds i: checks X/y stay aligned
    sizes = np.bincount(y, minlength=3)
    n_test = int(np.ceil(test_size * n)) if isinstance(test_size, float) else test_size
    feasible = not stratify or (sizes[sizes > 0].min() >= 2
                                and min(n_test, n - n_test) >= np.count_nonzero(sizes))
    if not feasible:
        with pytest.raises(ValueError):
            train_test_split(X, y, test_size, stratify=y, seed=seed)
        return
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size, stratify=y if stratify else None,
                                              seed=seed)
    assert len(y_te) == n_test and len(y_tr) == n - n_test
    rows = np.concatenate([X_tr[:, 0], X_te[:, 0]]).astype(int)
    assert sorted(rows.tolist()) == list(range(n))
    np.testing.assert_array_equal(y[X_tr[:, 0].astype(int)], y_tr)
    np.testing.assert_array_equal(y[X_te[:, 0].astype(int)], y_te)
    if stratify:
        for label in range(3):
            assert abs(np.sum(y_te == label) - n_test * sizes[label] / n) < 1
    again = train_test_split(X, y, test_size, stratify=y if stratify else None, seed=seed)
    np.testing.assert_array_equal(again[1], X_te)


def test_train_val_test_split_sizes_and_disjointness():
    y = np.repeat([0, 1, 2], [40, 30, 30])
    X = np.arange(100)
    X_tr, X_va, X_te, y_tr, y_va, y_te = train_val_test_split(X, y, val_size=0.15,
                                                              test_size=0.2, stratify=y, seed=3)
    assert (len(X_tr), len(X_va), len(X_te)) == (65, 15, 20)
    assert sorted(np.concatenate([X_tr, X_va, X_te]).tolist()) == list(range(100))
    np.testing.assert_array_equal(y[X_va], y_va)
    for label, size in enumerate([40, 30, 30]):
        assert abs(np.sum(y_te == label) - 20 * size / 100) < 1
    with pytest.raises(ValueError, match="no training samples"):
        train_val_test_split(X, y, val_size=50, test_size=50)


def test_split_errors():
    X, y = np.zeros((10, 2)), np.zeros(10)
    with pytest.raises(ValueError, match="same leading size"):
        train_test_split(X, y[:9])
    with pytest.raises(ValueError, match="test_size"):
        train_test_split(X, y, test_size=1.5)
    with pytest.raises(ValueError, match="test_size"):
        train_test_split(X, y, test_size=10)
    with pytest.raises(ValueError, match="only 1 member"):
        train_test_split(X, y, stratify=np.r_[np.zeros(9), 1])
