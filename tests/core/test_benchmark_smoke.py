"""The autograd-overhead benchmark runs and writes its JSON (no timing assertions here)."""
from __future__ import annotations

import json

from benchmarks import autograd_overhead


def test_benchmark_runs_and_writes_json(tmp_path, capsys):
    path = tmp_path / "overhead.json"
    assert autograd_overhead.main(["--ops", "8", "--repeats", "2", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["n_ops"] == 8 and result["repeats"] == 2
    for key in ("forward_backward_us_per_op", "no_grad_forward_us_per_op"):
        assert result["refnas"][key] > 0
    if result["torch"] is not None:
        assert result["ratio_forward_backward"] > 0
    assert "µs per recorded op" in capsys.readouterr().out


def test_chain_gradient_is_right():
    """The timed chain computes what it claims: compare with a float64 finite difference."""
    import numpy as np

    import refnas as rn

    x0 = np.random.default_rng(0).standard_normal((2, 2))
    w = rn.tensor(np.full((2, 2), 0.9))
    x = rn.tensor(x0, requires_grad=True)
    autograd_overhead._chain(x, w, 8, rn.tanh).backward()
    eps = 1e-6
    bumped = x0.copy()
    bumped[0, 0] += eps
    up = autograd_overhead._chain(rn.tensor(bumped), w, 8, rn.tanh).item()
    bumped[0, 0] -= 2 * eps
    down = autograd_overhead._chain(rn.tensor(bumped), w, 8, rn.tanh).item()
    assert abs(x.grad.data[0, 0] - (up - down) / (2 * eps)) < 1e-6
