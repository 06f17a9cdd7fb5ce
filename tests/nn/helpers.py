"""Assertions shared by the tests of this folder."""
from __future__ import annotations

from typing import Mapping

import numpy as np


def assert_same_state(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> None:
    """Two state dicts hold the same keys, in the same order, with identical arrays."""
    assert list(actual) == list(expected)
    for key, value in actual.items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)
