"""The tests in this folder check the NumPy reference kernels (the definition of each op);
``test_backends.py`` then checks every other available backend against the reference."""
from __future__ import annotations

import pytest

from refnas.backend import use_backend


@pytest.fixture(autouse=True)
def numpy_reference(request):
    if request.node.get_closest_marker("any_backend"):
        yield
        return
    with use_backend("numpy"):
        yield


def pytest_configure(config):
    config.addinivalue_line("markers", "any_backend: runs under the backend the test chooses")
