"""Optimizers (hand-computed steps, PyTorch over several steps, kernels) and LR schedules."""
from __future__ import annotations

import math

import numpy as np
import pytest

from refnas import optim
from refnas.backend import available, kernel
from refnas.nn import Parameter
from refnas.tensor import Tensor


def _param(values):
    return Parameter(np.array(values, dtype=np.float64))


def _step(optimizer, param, grad):
    param.grad = Tensor(np.array(grad, dtype=np.float64))
    optimizer.step()


# --------------------------------------------------------------------------------------------
# Single steps by hand
# --------------------------------------------------------------------------------------------
def test_sgd_plain_and_weight_decay_step():
    p = _param([1.0, -2.0])
    _step(optim.SGD([p], lr=0.1, weight_decay=0.5), p, [0.2, 0.4])
    # g = grad + 0.5 p = [0.7, -0.6]; p - 0.1 g
    np.testing.assert_allclose(p.data, [0.93, -1.94])


def test_sgd_momentum_dampening_and_nesterov_two_steps():
    p = _param([1.0])
    sgd = optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.5)
    _step(sgd, p, [1.0])         # first step: buf = g = 1 → p = 0.9
    _step(sgd, p, [2.0])         # buf = 0.9 + 0.5 * 2 = 1.9 → p = 0.9 - 0.19
    np.testing.assert_allclose(p.data, [0.71])
    q = _param([1.0])
    nesterov = optim.SGD([q], lr=0.1, momentum=0.9, nesterov=True)
    _step(nesterov, q, [1.0])    # buf = 1; d = 1 + 0.9 → q = 1 - 0.19
    np.testing.assert_allclose(q.data, [0.81])


def test_adam_first_step_moves_each_weight_by_lr_times_sign():
    # m̂ = g and v̂ = g², so the first step is lr · g / (|g| + eps)
    p = _param([1.0, 1.0, 1.0])
    _step(optim.Adam([p], lr=0.01), p, [3.0, -0.5, 1e-3])
    np.testing.assert_allclose(p.data, [0.99, 1.01, 0.99], rtol=1e-6)


def test_adamw_decays_before_the_step_and_adam_adds_l2():
    p = _param([2.0])
    _step(optim.AdamW([p], lr=0.1, weight_decay=0.5), p, [1.0])
    np.testing.assert_allclose(p.data, [2.0 * (1 - 0.05) - 0.1], rtol=1e-6)
    q = _param([2.0])
    _step(optim.Adam([q], lr=0.1, weight_decay=0.5), q, [-0.5])  # g = -0.5 + 1 > 0
    np.testing.assert_allclose(q.data, [1.9], rtol=1e-6)


def test_parameters_without_gradient_are_left_alone():
    p, q = _param([1.0]), _param([1.0])
    sgd = optim.SGD([p, q], lr=1.0)
    _step(sgd, p, [1.0])
    assert q.data[0] == 1.0 and p.data[0] == 0.0


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda p: optim.SGD(p, lr=-1.0), "lr must be a finite number >= 0"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), "Nesterov momentum requires"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-0.1), "momentum"),
    (lambda p: optim.Adam(p, betas=(0.9, 1.0)), "betas"),
    (lambda p: optim.Adam(p, eps=-1e-8), "eps"),
    (lambda p: optim.AdamW(p, weight_decay=float("nan")), "weight_decay"),
    (lambda p: optim.SGD([], lr=0.1), "empty parameter list"),
    (lambda p: optim.SGD(p + p, lr=0.1), "appears twice"),
])
def test_invalid_arguments_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make([_param([1.0])])


def test_a_tensor_without_grad_is_rejected():
    with pytest.raises(TypeError, match="requires_grad=True"):
        optim.SGD([Tensor(np.ones(2))], lr=0.1)


def test_param_groups_have_their_own_hyperparameters():
    p, q = _param([1.0]), _param([1.0])
    sgd = optim.SGD([{"params": [p]}, {"params": [q], "lr": 0.5}], lr=0.1)
    p.grad, q.grad = Tensor(np.ones(1)), Tensor(np.ones(1))
    sgd.step()
    np.testing.assert_allclose([p.data[0], q.data[0]], [0.9, 0.5])


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((6, 4))
    a, b = _param(np.ones(4)), _param(np.ones(4))
    first = optim.Adam([a], lr=0.1)
    for g in grads[:3]:
        _step(first, a, g)
    b.data[...] = a.data
    second = optim.Adam([b], lr=99.0)
    second.load_state_dict(first.state_dict())
    assert second.param_groups[0]["lr"] == 0.1
    for g in grads[3:]:
        _step(first, a, g)
        _step(second, b, g)
    np.testing.assert_array_equal(a.data, b.data)


def test_load_state_dict_checks_before_changing():
    sgd = optim.SGD([_param([1.0, 2.0])], lr=0.1, momentum=0.9)
    bad = {"param_groups": [{"lr": 5.0, "params": [0]}],
           "state": {"0": {"momentum_buffer": np.zeros(3)}}}
    with pytest.raises(ValueError, match="shape"):
        sgd.load_state_dict(bad)
    assert sgd.param_groups[0]["lr"] == 0.1


# --------------------------------------------------------------------------------------------
# Against PyTorch over several steps
# --------------------------------------------------------------------------------------------
CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.03, betas=(0.5, 0.9), weight_decay=0.2)),
]


def _quadratic_gradient(w: np.ndarray) -> np.ndarray:
    """∇ of sum(a w² / 2 + b w) with fixed a, b: depends on the weights, so errors compound."""
    a = np.linspace(0.5, 3.0, w.size).reshape(w.shape)
    return a * w + np.cos(np.arange(w.size)).reshape(w.shape)


@pytest.mark.parametrize("name, kwargs", CONFIGS)
def test_matches_torch_over_several_steps(name, kwargs):
    torch = pytest.importorskip("torch")
    start = np.random.default_rng(1).standard_normal((3, 4))
    ours = _param(start.copy())
    theirs = torch.nn.Parameter(torch.from_numpy(start.copy()))
    our_optimizer = getattr(optim, name)([ours], **kwargs)
    their_optimizer = getattr(torch.optim, name)([theirs], **kwargs)
    for _ in range(6):
        ours.grad = Tensor(_quadratic_gradient(ours.data))
        theirs.grad = torch.from_numpy(_quadratic_gradient(theirs.detach().numpy()))
        our_optimizer.step()
        their_optimizer.step()
    np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", [b for b in ("numba",) if b in available()])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_accelerated_kernels_match_the_reference(backend, dtype):
    rng = np.random.default_rng(2)
    shape = (5, 7)
    arrays = [rng.standard_normal(shape).astype(dtype) for _ in range(4)]
    for first_step in (True, False):
        outs = []
        for chosen in ("numpy", backend):
            p, g, buf = (a.copy() for a in arrays[:3])
            kernel("sgd_update", chosen)(p, g, buf, 0.1, 0.9, 0.1, False, 0.01, first_step)
            outs.append((p, buf))
        for x, y in zip(*outs):
            np.testing.assert_allclose(x, y, rtol=1e-6 if dtype == np.float32 else 1e-12)
    outs = []
    for chosen in ("numpy", backend):
        p, g, m = (a.copy() for a in arrays[:3])
        v = np.abs(arrays[3]).copy()
        kernel("adam_update", chosen)(p, g, m, v, 3, 1e-2, 0.9, 0.999, 1e-8, 0.1, True)
        outs.append((p, m, v))
    for x, y in zip(*outs):
        np.testing.assert_allclose(x, y, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("backend", [b for b in ("numba",) if b in available()])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_accelerated_adam_divides_by_zero_as_numpy_does(backend, dtype):
    """eps = 0 and a zero second moment: 0/0 is NaN and x/0 is ±inf, as in the reference (the
    Numba kernel must not raise ZeroDivisionError, nor check for it inside its loop)."""
    outs = []
    for chosen in ("numpy", backend):
        p = np.array([1.0, 2.0, 3.0], dtype)
        g = np.array([0.0, 0.0, 0.0], dtype)
        m = np.array([0.0, 1.0, -1.0], dtype) / 0.1   # after the step: m = 0, 0.9·10, -0.9·10
        v = np.zeros(3, dtype)
        with np.errstate(all="ignore"):
            kernel("adam_update", chosen)(p, g, m, v, 1, 1e-2, 0.9, 0.999, 0.0, 0.0, False)
        outs.append(p)
    np.testing.assert_array_equal(outs[1], outs[0])
    assert np.isnan(outs[1][0]) and outs[1][1] == -np.inf and outs[1][2] == np.inf


@pytest.mark.parametrize("backend", [b for b in ("numba",) if b in available()])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_accelerated_sgd_reads_a_non_contiguous_gradient(backend, dtype, momentum):
    rng = np.random.default_rng(3)
    start = rng.standard_normal((5, 7)).astype(dtype)
    grad = np.asfortranarray(rng.standard_normal((5, 7)).astype(dtype))[:, ::2]
    outs = []
    for chosen in ("numpy", backend):
        p, buf = start[:, ::2].copy(), (np.ones((5, 4), dtype) if momentum else None)
        for first_step in (True, False):
            kernel("sgd_update", chosen)(p, grad, buf, 0.1, momentum, 0.0, False, 0.01, first_step)
        outs.append(p)
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6 if dtype == np.float32 else 1e-12)


def test_sgd_momentum_buffer_is_made_on_the_first_step_only_with_momentum():
    p, q = _param([1.0]), _param([1.0])
    plain, heavy = optim.SGD([p], lr=0.1), optim.SGD([q], lr=0.1, momentum=0.9)
    for _ in range(2):
        _step(plain, p, [1.0])
        _step(heavy, q, [1.0])
    assert "momentum_buffer" not in plain.state[id(p)]
    np.testing.assert_allclose(heavy.state[id(q)]["momentum_buffer"], [1.9])
    np.testing.assert_allclose(q.data, [1.0 - 0.1 - 0.19])


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------
def _lrs(scheduler, optimizer, steps=12):
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    return values


def test_step_and_cosine_by_formula():
    sgd = optim.SGD([_param([1.0])], lr=1.0)
    assert _lrs(optim.StepLR(sgd, 3, gamma=0.5), sgd, 7) == [1, 1, 1, .5, .5, .5, .25]
    sgd = optim.SGD([_param([1.0])], lr=1.0)
    lrs = _lrs(optim.CosineAnnealingLR(sgd, T_max=4, eta_min=0.2), sgd, 5)
    np.testing.assert_allclose(lrs, [0.2 + 0.4 * (1 + math.cos(math.pi * t / 4)) for t in range(5)])


def test_warmup_then_schedule_by_formula():
    sgd = optim.SGD([_param([1.0])], lr=2.0)
    schedule = optim.LinearWarmup(sgd, 4, after=optim.StepLR(sgd, 2, gamma=0.1), start_factor=0.5)
    np.testing.assert_allclose(_lrs(schedule, sgd, 8),
                               [1.0, 1.25, 1.5, 1.75, 2.0, 2.0, 0.2, 0.2])


def _torch_lrs(make, steps=12):
    torch = pytest.importorskip("torch")
    parameter = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([parameter], lr=0.5)
    scheduler = make(torch.optim.lr_scheduler, optimizer)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


@pytest.mark.parametrize("ours, theirs", [
    (lambda o: optim.StepLR(o, 3, 0.3), lambda s, o: s.StepLR(o, 3, 0.3)),
    (lambda o: optim.CosineAnnealingLR(o, 5, eta_min=0.01),
     lambda s, o: s.CosineAnnealingLR(o, 5, eta_min=0.01)),
    (lambda o: optim.LinearWarmup(o, 4, start_factor=0.25),
     lambda s, o: s.LinearLR(o, start_factor=0.25, total_iters=4)),
    (lambda o: optim.LinearWarmup(o, 3, after=optim.CosineAnnealingLR(o, 6)),
     lambda s, o: s.SequentialLR(o, [s.LinearLR(o, start_factor=0.1, total_iters=3),
                                     s.CosineAnnealingLR(o, 6)], milestones=[3])),
])
def test_schedules_match_torch(ours, theirs):
    expected = _torch_lrs(theirs)
    sgd = optim.SGD([_param([1.0])], lr=0.5)
    np.testing.assert_allclose(_lrs(ours(sgd), sgd), expected, rtol=1e-10, atol=1e-12)


def test_scheduler_state_dict_resumes():
    sgd = optim.SGD([_param([1.0])], lr=1.0)
    schedule = optim.CosineAnnealingLR(sgd, 10)
    for _ in range(4):
        schedule.step()
    other_sgd = optim.SGD([_param([1.0])], lr=1.0)
    other = optim.CosineAnnealingLR(other_sgd, 10)
    other.load_state_dict(schedule.state_dict())
    assert other_sgd.param_groups[0]["lr"] == sgd.param_groups[0]["lr"]
    with pytest.raises(ValueError, match="StepLR"):
        optim.StepLR(other_sgd, 2).load_state_dict(schedule.state_dict())


@pytest.mark.parametrize("make", [lambda o: optim.StepLR(o, 0), lambda o: optim.StepLR(o, 2, 0),
                                  lambda o: optim.CosineAnnealingLR(o, 0),
                                  lambda o: optim.LinearWarmup(o, 0),
                                  lambda o: optim.LinearWarmup(o, 2, start_factor=0)])
def test_schedule_validation(make):
    with pytest.raises(ValueError):
        make(optim.SGD([_param([1.0])], lr=1.0))
