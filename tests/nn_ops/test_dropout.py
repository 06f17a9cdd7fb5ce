"""Inverted dropout: statistics, determinism, gradients, edge cases."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refnas as rn
from refnas import ops


@given(st.floats(0.05, 0.95), st.integers(0, 2**32 - 1))
def test_dropout_drops_a_fraction_p_and_preserves_the_mean(p, seed):
    x = rn.Tensor(np.ones(40_000))
    y = ops.dropout(x, p, rng=np.random.default_rng(seed)).data
    kept = y != 0
    # 5 standard deviations of a binomial proportion over 40,000 draws
    assert abs((~kept).mean() - p) < 5 * np.sqrt(p * (1 - p) / y.size)
    np.testing.assert_allclose(y[kept], 1 / (1 - p))
    assert abs(y.mean() - 1) < 5 * np.sqrt(p / (1 - p) / y.size)


def test_dropout_is_deterministic_for_a_seed_and_advances_a_generator():
    x = rn.Tensor(np.arange(1.0, 101.0))
    a = ops.dropout(x, 0.3, rng=123).data
    np.testing.assert_array_equal(a, ops.dropout(x, 0.3, rng=123).data)
    np.testing.assert_array_equal(a, ops.dropout(x, 0.3, rng=np.random.default_rng(123)).data)
    generator = np.random.default_rng(123)
    first, second = (ops.dropout(x, 0.3, rng=generator).data for _ in range(2))
    assert not np.array_equal(first, second)


def test_dropout_gradient_is_the_same_mask():
    x = rn.Tensor(np.random.default_rng(0).standard_normal((3, 50)), requires_grad=True)
    y = ops.dropout(x, 0.4, rng=7)
    y.sum().backward()
    mask = ops.dropout(rn.Tensor(np.ones(x.shape)), 0.4, rng=7).data
    assert set(np.unique(mask)) == {0.0, 1 / 0.6}
    np.testing.assert_array_equal(x.grad.data, mask)
    np.testing.assert_array_equal(y.data, x.data * mask)
    rn.gradcheck(lambda t: ops.dropout(t, 0.4, rng=7), [x.data[:1, :8]])


def test_dropout_identity_and_zero_cases():
    x = rn.Tensor(np.random.default_rng(1).standard_normal(10).astype(np.float32))
    assert ops.dropout(x, 0.5, training=False) is x
    assert ops.dropout(x, 0.0) is x
    y = ops.dropout(x, 1.0, rng=0)
    assert y.dtype == np.float32 and not y.data.any()
    assert ops.dropout(x, 0.5, rng=0).dtype == np.float32


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.5"])
def test_dropout_rejects_bad_probabilities(p):
    with pytest.raises(rn.OpError, match="dropout: p must be a probability"):
        ops.dropout(rn.Tensor(np.ones(3)), p, rng=0)


def test_dropout_needs_an_explicit_rng():
    with pytest.raises(rn.OpError, match="rng="):
        ops.dropout(rn.Tensor(np.ones(3)), 0.5)
