"""Initialisers: fan computation, gains, variance for large fans, Generator determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest

from refnas import nn
from refnas.nn import init

SHAPE = (256, 128, 3, 3)           # fan_in = 1152, fan_out = 2304; 294,912 samples
FAN_IN, FAN_OUT = 128 * 9, 256 * 9


def test_fans():
    assert init.fan_in_and_fan_out(SHAPE) == (FAN_IN, FAN_OUT)
    assert init.fan_in_and_fan_out((7, 5)) == (5, 7)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.fan_in_and_fan_out((4,))


def test_gains():
    assert init.calculate_gain("linear") == 1.0
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    with pytest.raises(ValueError, match="unsupported nonlinearity"):
        init.calculate_gain("swish")


def test_gains_and_fans_match_pytorch():
    torch = pytest.importorskip("torch")
    for name, param in (("linear", None), ("relu", None), ("tanh", None), ("leaky_relu", 0.3),
                        ("sigmoid", None), ("conv2d", None)):
        assert init.calculate_gain(name, param) == pytest.approx(
            torch.nn.init.calculate_gain(name, param))
    fans = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(SHAPE))
    assert init.fan_in_and_fan_out(SHAPE) == tuple(fans)


@pytest.mark.parametrize("fill, expected_std", [
    (lambda w, rng: init.kaiming_uniform_(w, nonlinearity="relu", rng=rng), math.sqrt(2 / FAN_IN)),
    (lambda w, rng: init.kaiming_normal_(w, nonlinearity="relu", rng=rng), math.sqrt(2 / FAN_IN)),
    (lambda w, rng: init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", rng=rng),
     math.sqrt(2 / FAN_OUT)),
    (lambda w, rng: init.kaiming_uniform_(w, a=0.1, rng=rng), math.sqrt(2 / 1.01 / FAN_IN)),
    (lambda w, rng: init.xavier_uniform_(w, rng=rng), math.sqrt(2 / (FAN_IN + FAN_OUT))),
    (lambda w, rng: init.xavier_normal_(w, gain=5 / 3, rng=rng),
     5 / 3 * math.sqrt(2 / (FAN_IN + FAN_OUT))),
])
def test_variance_for_large_fans(fill, expected_std):
    weight = nn.Parameter(np.empty(SHAPE, dtype=np.float32))
    fill(weight, np.random.default_rng(0))
    # the standard error of a sample std over 294,912 draws is < 0.2 %; allow 1 %
    assert weight.data.std() == pytest.approx(expected_std, rel=0.01)
    assert abs(weight.data.mean()) < 0.01 * expected_std * 10


def test_uniform_bounds():
    weight = np.empty(SHAPE)
    init.kaiming_uniform_(weight, nonlinearity="relu", rng=0)
    bound = math.sqrt(3) * math.sqrt(2 / FAN_IN)
    assert np.abs(weight).max() <= bound
    assert np.abs(weight).max() > 0.999 * bound


def test_generator_determinism_and_dtype():
    a, b = np.empty((30, 20), np.float32), np.empty((30, 20), np.float64)
    init.xavier_uniform_(a, rng=np.random.default_rng(5))
    init.xavier_uniform_(b, rng=5)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert a.dtype == np.float32
    c = np.empty((30, 20))
    init.xavier_uniform_(c, rng=6)
    assert not np.allclose(b, c)


def test_constant_fills():
    w = nn.Parameter(np.full((3, 3), 5.0, dtype=np.float32))
    init.zeros_(w)
    assert np.all(w.data == 0)
    init.ones_(w)
    assert np.all(w.data == 1)
    with pytest.raises(TypeError, match="Generator or an int seed"):
        init.normal_(w, rng="seed")
