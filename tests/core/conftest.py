"""The core tests check the reference math, so they run on the NumPy backend.

Accelerated kernels are tested equal to their NumPy references in tests/kernels; that makes the
gradients checked here valid for them too, and keeps Numba's first-call compile time (and any
kernel being rebuilt) out of this suite.
"""
from __future__ import annotations

import pytest

from refnas.backend import use_backend


@pytest.fixture(autouse=True)
def numpy_backend():
    with use_backend("numpy"):
        yield
