"""Bad input raises a clear error naming the op, the shapes and the dtypes — before any state
changes: in every case the leaves' ``.grad`` is checked unchanged after the failing call."""
from __future__ import annotations

import re

import numpy as np
import pytest

import refnas as rn
from refnas import ops
from refnas.ops.registry import Primitive
from refnas.tensor import AnomalyError, GraphFreedError


def _leaves():
    """Two float32 leaves whose .grad holds a sentinel the failing call must not touch."""
    x = rn.tensor(np.array([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]], np.float32), requires_grad=True)
    y = rn.tensor(np.array([1.0, 2.0, 3.0, 4.0], np.float32), requires_grad=True)
    for t in (x, y):
        t.grad = rn.tensor(np.full(t.shape, 7.0, np.float32))
    return x, y


def _freed_second_backward(x, y):
    out = (ops.exp(x) * 2.0).sum()
    out.backward()
    x.grad = rn.tensor(np.full(x.shape, 7.0, np.float32))  # reset the sentinel, then fail
    out.backward()


def _labels_of_wrong_shape(x, y):
    ops.cross_entropy(x, np.array([0, 1, 2]))


CASES = {
    # name: (failing call on the leaves, error type, pieces the message must contain)
    "non-broadcastable add": (lambda x, y: x + y, rn.OpError,
                              ["add", "(2, 3) float32", "(4,) float32"]),
    "matmul inner axes": (lambda x, y: x @ x, rn.OpError,
                          ["matmul", "(2, 3) (float32)", "inner axis"]),
    "linear weight shape": (lambda x, y: ops.linear(x, y), rn.OpError,
                            ["linear", "(2, 3) (float32)", "weight of shape (4,) (float32)"]),
    "linear bias shape": (lambda x, y: ops.linear(x, x, y), rn.OpError,
                          ["linear", "bias of shape (4,) (float32)", "(2, 3) (float32)",
                           "expected (2,)"]),
    "matmul batch axes": (lambda x, y: ops.matmul(ops.reshape(x, shape=(2, 1, 3)),
                                                  rn.tensor(np.ones((3, 3, 1), np.float32))),
                          rn.OpError, ["matmul", "batch axes", "(2, 1, 3)", "(3, 3, 1)"]),
    "reshape size": (lambda x, y: x.reshape(4, 2), rn.OpError,
                     ["reshape", "(2, 3)", "float32", "(4, 2)"]),
    "concatenate shapes": (lambda x, y: ops.concatenate(x, y, axis=0), rn.OpError,
                           ["concatenate", "(2, 3) float32", "(4,) float32"]),
    "stack shapes": (lambda x, y: ops.stack(x, x[:, :2]), rn.OpError,
                     ["stack", "(2, 3)", "(2, 2)"]),
    "reduction axis": (lambda x, y: x.sum(axis=2), rn.OpError, ["sum", "axis 2", "2 dimensions"]),
    "mse shapes": (lambda x, y: ops.mse_loss(x, y), rn.OpError,
                   ["mse_loss", "(2, 3) (float32)", "(4,) (float32)"]),
    "cross-entropy label shape": (_labels_of_wrong_shape, rn.OpError,
                                  ["cross_entropy", "(3,)", "(2, 3)"]),
    "cross-entropy float labels": (lambda x, y: ops.cross_entropy(x, np.array([0.0, 1.0])),
                                   rn.OpError, ["cross_entropy", "integers", "float64"]),
    "cross-entropy label range": (lambda x, y: ops.cross_entropy(x, np.array([0, 3])),
                                  rn.OpError, ["cross_entropy", "label 3", "3 classes"]),
    "backward grad shape": (lambda x, y: (x * 2.0).backward(np.ones(3)), ValueError,
                            ["backward", "(3,)", "mul", "(2, 3) (float32)"]),
    "non-scalar backward": (lambda x, y: (x * 2.0).backward(), RuntimeError,
                            ["backward", "mul", "(2, 3) (float32)", "scalar"]),
    "integer tensor requires grad": (
        lambda x, y: rn.tensor(np.array([1, 2]), requires_grad=True), TypeError,
        ["requires_grad", "int64", "(2,)"]),
    "grad w.r.t. integer tensor": (
        lambda x, y: rn.grad((x * 2.0).sum(), rn.tensor(np.array([1, 2]))), ValueError,
        ["grad", "(2,)", "int64", "does not require grad"]),
    "backward of constant": (lambda x, y: rn.tensor(np.ones(2)).sum().backward(), RuntimeError,
                             ["backward", "shape ()", "float64", "does not require grad"]),
    "log of negative under anomaly": (lambda x, y: _under_anomaly(lambda: ops.log(x)),
                                      AnomalyError, ["log", "NaN/Inf", "(2, 3) float32"]),
    "second backward through freed graph": (_freed_second_backward, GraphFreedError,
                                            ["second time", "sum", "shape ()", "float32"]),
    "where with non-boolean condition": (lambda x, y: ops.where(x, x, x), rn.OpError,
                                         ["where", "boolean", "float32", "(2, 3)"]),
    "clip bounds": (lambda x, y: ops.clip(x, low=1.0, high=0.0), rn.OpError, ["clip", "low=1.0"]),
    "squeeze non-unit axis": (lambda x, y: ops.squeeze(x, axis=0), rn.OpError,
                              ["squeeze", "axis 0", "(2, 3)"]),
    "transpose axes": (lambda x, y: ops.transpose(x, axes=(0, 0)), rn.OpError,
                       ["transpose", "(0, 0)", "(2, 3)"]),
    "pad widths": (lambda x, y: ops.pad(x, pad_width=((1, 1),) * 3), rn.OpError, ["pad", "(2, 3)"]),
    "relu_backward shapes": (lambda x, y: ops.REGISTRY["relu_backward"](x, y), rn.OpError,
                             ["relu_backward", "(2, 3) (float32)", "(4,) (float32)"]),
}


def _under_anomaly(f):
    with rn.detect_anomaly():
        return f()


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_raises_clear_error_before_state_changes(case):
    failing, error_type, pieces = CASES[case]
    x, y = _leaves()
    with pytest.raises(error_type) as info:
        failing(x, y)
    message = str(info.value)
    for piece in pieces:
        assert piece in message, f"{case}: {piece!r} missing from {message!r}"
    for t in (x, y):
        np.testing.assert_array_equal(t.grad.data, np.full(t.shape, 7.0), err_msg=case)


def _broken_vjp_op() -> Primitive:
    """An unregistered op whose VJP fails: the backward pass breaks half-way."""
    def scale(x):
        r""":math:`z = 3x`."""
        return 3.0 * x

    op = Primitive(scale)

    @op.defvjp
    def scale_vjp(g, out, x):
        raise RuntimeError("scale: VJP failed on purpose")

    return op


def test_failure_half_way_through_backward_changes_nothing_and_keeps_the_graph():
    x, _ = _leaves()
    other = rn.tensor(np.ones(3, np.float32), requires_grad=True)
    out = (_broken_vjp_op()(x) * 2.0).sum() + (other * 5.0).sum()
    with pytest.raises(RuntimeError, match="on purpose"):
        out.backward()
    np.testing.assert_array_equal(x.grad.data, np.full(x.shape, 7.0))
    assert other.grad is None   # its branch was processed before the failure, not committed
    with pytest.raises(RuntimeError, match="on purpose"):   # the graph was not freed
        out.backward()


def test_failing_hook_changes_nothing():
    x, _ = _leaves()
    hidden = x * 2.0

    def hook(g):
        raise KeyError("hook failed")

    hidden.register_hook(hook)
    with pytest.raises(KeyError):
        (hidden * hidden + x).sum().backward()
    np.testing.assert_array_equal(x.grad.data, np.full(x.shape, 7.0))


def test_gradcheck_needs_a_floating_input():
    with pytest.raises(ValueError, match="no floating-point input"):
        rn.gradcheck(lambda i: i, [np.array([1, 2])])


def test_error_message_mentions_keyword_arguments():
    x, _ = _leaves()
    with pytest.raises(rn.OpError, match=re.escape("reshape: cannot reshape")):
        ops.reshape(x, shape=(5,))
