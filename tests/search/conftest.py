"""Shared fixtures for the model-search tests: small data, a one-thread BLAS, comparisons."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits, load_iris
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Small fits are fastest (and steadiest on a busy machine) with one BLAS thread."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="session")
def iris():
    return load_iris(return_X_y=True)


@pytest.fixture(scope="session")
def digits_small():
    X, y = load_digits(return_X_y=True)
    return X[:400] / 16.0, y[:400]


@pytest.fixture(scope="session")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    return X[:300], y[:300]


def same_cv_results(a: dict, b: dict) -> None:
    """Every non-timing column equal (exactly), in the same order of candidates."""
    keys = {k for k in a if "time" not in k}
    assert keys == {k for k in b if "time" not in k}
    for key in sorted(keys):
        left, right = a[key], b[key]
        if key == "params" or key.startswith("param_"):
            assert list(left) == list(right), key
        else:
            np.testing.assert_array_equal(np.asarray(left), np.asarray(right), err_msg=key)
