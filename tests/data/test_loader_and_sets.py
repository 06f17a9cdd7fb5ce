"""DataLoader batching and the bundled / synthetic data sets."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refnas.data import (DataLoader, load_digits, load_digits_flat, make_blobs, make_spirals,
                         make_xor)
from refnas.tensor import Tensor


@given(n=st.integers(1, 40), batch_size=st.integers(1, 12), shuffle=st.booleans(),
       drop_last=st.booleans(), trailing=st.sampled_from([(), (3,), (2, 2, 1)]))
def test_loader_batches_cover_the_data(n, batch_size, shuffle, drop_last, trailing):
    X = np.arange(n, dtype=np.float64).reshape((n,) + (1,) * len(trailing)) \
        * np.ones((1,) + trailing)
    y = np.arange(n) * 10
    loader = DataLoader(X, y, batch_size, shuffle=shuffle, drop_last=drop_last, seed=7)
    batches = list(loader)
    assert len(batches) == len(loader)
    sizes = [len(yb) for _, yb in batches]
    assert all(s == batch_size for s in sizes[:-1])
    assert 0 < sizes[-1] <= batch_size if batches else n < batch_size
    if drop_last:
        assert sum(sizes) == n - n % batch_size
    else:
        assert sum(sizes) == n
    seen = np.concatenate([yb for _, yb in batches]) if batches else np.array([], int)
    assert len(set(seen.tolist())) == len(seen)  # no repeats within an epoch
    for xb, yb in batches:
        assert xb.shape[1:] == trailing
        np.testing.assert_array_equal(xb.reshape(len(xb), -1)[:, 0] * 10, yb)
    if not shuffle:
        np.testing.assert_array_equal(seen, y[:len(seen)])


def test_loader_epochs_are_seeded_and_resumable():
    X, y = np.zeros((50, 2)), np.arange(50)

    def epoch_orders(loader, epochs):
        return [np.concatenate([yb for _, yb in loader]) for _ in range(epochs)]

    first = epoch_orders(DataLoader(X, y, 8, shuffle=True, seed=1), 3)
    again = epoch_orders(DataLoader(X, y, 8, shuffle=True, seed=1), 3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])          # reshuffled each epoch
    other_seed = epoch_orders(DataLoader(X, y, 8, shuffle=True, seed=2), 1)[0]
    assert not np.array_equal(first[0], other_seed)
    resumed = DataLoader(X, y, 8, shuffle=True, seed=1)
    resumed.set_epoch(2)
    np.testing.assert_array_equal(epoch_orders(resumed, 1)[0], first[2])


def test_loader_accepts_tensors_and_rejects_bad_input():
    xb, yb = next(iter(DataLoader(Tensor(np.ones((4, 2))), Tensor(np.arange(4)), 3)))
    assert isinstance(xb, np.ndarray) and xb.shape == (3, 2) and yb.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"same leading size.*\(5, 2\).*\(4,\)"):
        DataLoader(np.zeros((5, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="seed"):
        DataLoader(np.zeros((5, 2)), np.zeros(5), seed=-1)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            DataLoader(np.zeros((5, 2)), np.zeros(5), batch_size=bad)


def test_load_digits_scales_sklearn_images():
    from sklearn.datasets import load_digits as sklearn_digits

    reference = sklearn_digits()
    X, y = load_digits()
    assert X.shape == (1797, 1, 8, 8) and X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(X[:, 0] * 16, reference.images, atol=1e-5)
    np.testing.assert_array_equal(y, reference.target)
    assert 0 <= X.min() and X.max() <= 1
    flat, _ = load_digits_flat(dtype=np.float64)
    assert flat.shape == (1797, 64) and flat.dtype == np.float64
    np.testing.assert_allclose(flat * 16, reference.data)


@given(n=st.integers(1, 60), k=st.integers(2, 5), seed=st.integers(0, 2**32 - 1))
def test_spirals_follow_their_formula(n, k, seed):
    X, y = make_spirals(n, n_classes=k, noise=0.0, seed=seed)
    assert X.shape == (n, 2) and X.dtype == np.float32 and y.dtype == np.int64
    counts = np.bincount(y, minlength=k)
    assert counts.max() - counts.min() <= 1 and counts.sum() == n
    radius = np.hypot(X[:, 0], X[:, 1])
    angle = np.arctan2(X[:, 0], X[:, 1])              # x = r (sin phi, cos phi)
    arm_offset = angle - 4 * radius - 2 * np.pi * y / k
    wrapped = np.angle(np.exp(1j * arm_offset))        # into (-pi, pi]
    far = radius > 1e-3
    np.testing.assert_allclose(wrapped[far], 0, atol=1e-3)
    assert radius.max() <= 1 + 1e-6


def test_synthetic_sets_are_seeded():
    for make in (make_spirals, make_blobs, make_xor):
        a, b, c = make(seed=5), make(seed=5), make(seed=6)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert not np.array_equal(a[0], c[0])
        assert a[0].dtype == np.float32 and a[1].dtype == np.int64


def test_blobs_gather_around_their_centers():
    centers = np.array([[0.0, 0.0, 0.0], [10.0, -5.0, 2.0]])
    X, y = make_blobs(2001, n_features=3, centers=centers, cluster_std=[0.5, 2.0], seed=0)
    assert X.shape == (2001, 3) and np.bincount(y).tolist() == [1001, 1000]
    for k, std in enumerate([0.5, 2.0]):
        np.testing.assert_allclose(X[y == k].mean(axis=0), centers[k], atol=0.25)
        np.testing.assert_allclose(X[y == k].std(axis=0), std, rtol=0.15)
    with pytest.raises(ValueError, match="centers"):
        make_blobs(10, n_features=2, centers=centers)


def test_xor_labels_are_the_sign_parity():
    X, y = make_xor(500, noise=0.0, seed=1)
    np.testing.assert_array_equal(y, (X[:, 0] > 0) ^ (X[:, 1] > 0))
    assert np.abs(X).max() <= 1
    noisy, y_noisy = make_xor(500, noise=0.3, seed=1)
    np.testing.assert_array_equal(y_noisy, y)        # same clean points, same labels
    assert np.abs(noisy - X).max() > 0.1


def test_synthetic_argument_errors():
    with pytest.raises(ValueError, match="n_samples"):
        make_spirals(0)
    with pytest.raises(ValueError, match="n_classes"):
        make_spirals(10, n_classes=1)
    with pytest.raises(ValueError, match="noise"):
        make_xor(10, noise=-1)
    with pytest.raises(ValueError, match="cluster_std"):
        make_blobs(10, cluster_std=-1.0)
