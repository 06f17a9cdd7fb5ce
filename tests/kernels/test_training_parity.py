"""Whole training steps give the same losses on the NumPy and the Numba backends."""
from __future__ import annotations

import numpy as np
import pytest

import refnas
from refnas import nn
from refnas.ops.losses import cross_entropy
from refnas.optim import SGD
from tests.kernels.helpers import needs_numba

pytestmark = needs_numba


def _losses(backend: str, model_fn, x: np.ndarray, y: np.ndarray, steps: int = 4) -> list[float]:
    model = model_fn()
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    losses = []
    with refnas.use_backend(backend):
        for _ in range(steps):
            optimizer.zero_grad()
            loss = cross_entropy(model(refnas.tensor(x)), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.data))
    return losses


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_loss_trajectory_matches_across_backends(name):
    rng = np.random.default_rng(0)
    if name == "mlp":
        x = rng.standard_normal((16, 12)).astype(np.float32)
        model_fn = lambda: nn.MLP([12, 24, 24, 5], seed=3)          # noqa: E731
    else:
        x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
        model_fn = lambda: nn.SmallCNN(width=4, num_classes=5, seed=3)  # noqa: E731
    y = rng.integers(0, 5, len(x))
    reference, fast = _losses("numpy", model_fn, x, y), _losses("numba", model_fn, x, y)
    assert reference[-1] < reference[0]                  # it trains
    np.testing.assert_allclose(fast, reference, rtol=2e-4, atol=1e-5)
