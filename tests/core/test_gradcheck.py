"""gradcheck / gradgradcheck must catch wrong derivatives and say exactly where they are wrong."""
from __future__ import annotations

import re

import numpy as np
import pytest

from refnas import GradcheckError, gradcheck, gradgradcheck, ops
from refnas.gradcheck import FULL_JACOBIAN_LIMIT
from refnas.ops.elementwise import _const
from refnas.ops.registry import Primitive


def _square(vjp) -> Primitive:
    """An unregistered op z = x^2 with the given VJP (right or deliberately wrong)."""
    def square(x):
        r""":math:`z = x^2`."""
        return x * x

    op = Primitive(square)
    op.defvjp(vjp)
    return op


RIGHT = _square(lambda g, out, x: ops.mul(ops.mul(g, x), 2.0))
WRONG_FIRST = _square(lambda g, out, x: ops.mul(g, x))                       # misses the 2
WRONG_SECOND = _square(lambda g, out, x: ops.mul(g, _const(2.0 * x.data)))   # x frozen: no d2


def test_correct_op_passes_both_orders():
    x = np.array([0.3, -1.2, 2.0])
    assert gradcheck(RIGHT, [x]).ok
    assert gradgradcheck(RIGHT, [x]).ok


def test_wrong_vjp_is_reported_with_op_argument_index_and_values():
    x = np.array([[0.5, -1.5], [2.0, 3.0]])
    with pytest.raises(GradcheckError) as info:
        gradcheck(WRONG_FIRST, [x])
    message = str(info.value)
    assert message.startswith("square: order-1 derivative w.r.t. argument 0")
    found = re.search(r"input index \((\d+), (\d+)\).*analytic (\S+), numeric (\S+)", message)
    i, j, analytic, numeric = int(found[1]), int(found[2]), float(found[3]), float(found[4])
    # the worst element is the largest |x|: analytic x, numeric 2x
    assert (i, j) == (1, 1)
    assert analytic == pytest.approx(x[i, j]) and numeric == pytest.approx(2 * x[i, j])


def test_wrong_second_derivative_passes_first_order_fails_second():
    x = np.array([0.3, -1.2, 2.0])
    assert gradcheck(WRONG_SECOND, [x]).ok
    result = gradgradcheck(WRONG_SECOND, [x], raise_exception=False)
    assert not result.ok and result.order == 2
    assert "square: order-2 derivative" in result.failures[0]


def test_large_inputs_use_random_projections_and_still_catch_errors():
    x = np.random.default_rng(0).standard_normal(FULL_JACOBIAN_LIMIT + 1)
    assert gradcheck(RIGHT, [x]).method == "projection"
    with pytest.raises(GradcheckError, match=r"random projection \d \(u\^T J v\)"):
        gradcheck(WRONG_FIRST, [x])


def test_several_arguments_and_pass_through_of_non_float_inputs():
    labels = np.array([2, 0])
    a, b = np.array([[1.0, 2.0, 0.5], [0.1, 0.2, 0.3]]), np.array([0.5, -1.0, 2.0])
    result = gradcheck(lambda x, y, t: ops.cross_entropy(x * y, t), [a, b, labels])
    assert result.ok and result.method == "full"
    broken = _square(lambda g, out, x: None)   # claims no gradient at all

    with pytest.raises(GradcheckError, match="argument 1"):
        gradcheck(lambda x, y: x + broken(y), [a, b])


def test_non_contiguous_inputs_reach_the_function_non_contiguous():
    seen = []

    def f(x):
        seen.append(x.data.flags.c_contiguous)
        return ops.exp(x)

    transposed = np.arange(6.0).reshape(2, 3).T / 6
    strided = (np.arange(8.0) / 8)[::2]
    gradcheck(f, [transposed])
    gradcheck(f, [strided])
    assert seen and not any(seen)


def test_result_record_and_float32_inputs_are_checked_in_float64():
    x32 = np.array([0.25, 0.5], dtype=np.float32)
    result = gradcheck(lambda x: x * x * x, [x32], name="cube")
    record = result.as_record()
    assert record["op"] == "cube" and record["order"] == 1 and record["ok"]
    assert record["max_abs_err"] < 1e-7


def test_tolerances_are_used():
    x = np.array([1.0, 2.0])
    loose = gradcheck(WRONG_FIRST, [x], atol=10.0, raise_exception=False)
    assert loose.ok and loose.max_abs_err == pytest.approx(2.0, rel=1e-6)
