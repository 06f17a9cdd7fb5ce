"""Shared test set-up: Hypothesis profiles and the Hypothesis-backed ``Draw`` for op samplers.

Profiles: ``ci`` (default; fast, derandomized so CI is reproducible) and ``thorough``
(opt-in: ``REFNAS_HYPOTHESIS_PROFILE=thorough pytest``).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings, strategies as st

settings.register_profile(
    "ci", max_examples=12, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "thorough", max_examples=200, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("REFNAS_HYPOTHESIS_PROFILE", "ci"))


class HypothesisDraw:
    """The :class:`refnas.ops.sampling.Draw` interface backed by ``st.data()``.

    Structure (shapes, axes, layouts, static arguments) is drawn by Hypothesis and shrinks;
    array values come from a drawn seed.
    """

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integers(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def boolean(self) -> bool:
        return self.data.draw(st.booleans())

    def choice(self, options):
        return self.data.draw(st.sampled_from(list(options)))

    def seed(self) -> int:
        return self.data.draw(st.integers(0, 2**31 - 1))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def torch_or_skip():
    """Import torch, or skip the calling test when it is not installed."""
    return pytest.importorskip("torch")
