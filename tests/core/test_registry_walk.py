"""The registry walk: every registered primitive, including ones added later (refnas/ops/nn.py
and beyond), is gradchecked to first and second order on Hypothesis-drawn examples from its own
sampler: shapes, broadcasting pairs, non-contiguous layouts and static arguments drawn per op,
values from the op's domain. No op needs a test of its own to be covered.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refnas import Tensor, gradcheck, gradgradcheck, grad
from refnas.ops import REGISTRY
from tests.conftest import HypothesisDraw

OPS = sorted(REGISTRY)
DIFFERENTIABLE = [name for name in OPS if REGISTRY[name].differentiable]
SECOND_ORDER = [name for name in DIFFERENTIABLE if REGISTRY[name].second_order]
# Second order costs a Jacobian of the Jacobian: fewer examples, in every profile.
SECOND_ORDER_EXAMPLES = max(2, settings.default.max_examples // 3)


def _check_drawn_example(name, data, check):
    """Draw an example from the op's own sampler and run ``check`` (gradcheck or gradgradcheck)."""
    op = REGISTRY[name]
    args, kwargs = op.sample(HypothesisDraw(data))

    def apply(*tensors):
        return op(*tensors, **kwargs)

    check(apply, list(args), name=name, **op.tolerance)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
@given(data=st.data())
def test_first_derivative_matches_finite_differences(name, data):
    _check_drawn_example(name, data, gradcheck)


@pytest.mark.parametrize("name", SECOND_ORDER)
@settings(max_examples=SECOND_ORDER_EXAMPLES)
@given(data=st.data())
def test_second_derivative_matches_finite_differences(name, data):
    _check_drawn_example(name, data, gradgradcheck)


@pytest.mark.parametrize("name", OPS)
def test_every_primitive_has_sampler_vjp_and_formula(name):
    op = REGISTRY[name]
    assert callable(op.sample), f"{name} has no sampler: the registry walk cannot cover it"
    if op.differentiable:
        assert op.vjp_fn is not None, f"{name} is differentiable but registered no VJP"
    doc = op.__doc__ or ""
    assert re.search(r":math:`[^`]+`", doc), f"{name}'s docstring states no formula (:math:)"


@pytest.mark.parametrize("name", [n for n in DIFFERENTIABLE if n != "astype"])
@settings(max_examples=3)
@given(data=st.data())
def test_float32_in_float32_out(name, data):
    """Ops keep their input dtype, forward and backward (DESIGN: float32 for training)."""
    op = REGISTRY[name]
    args, kwargs = op.sample(HypothesisDraw(data))
    tensors = [Tensor(a.astype(np.float32), requires_grad=True)
               if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args]
    out = op(*tensors, **kwargs)
    assert out.dtype == np.float32, f"{name}: float32 inputs gave {out.dtype}"
    leaves = [t for t in tensors if isinstance(t, Tensor)]
    grads = grad(out, leaves, grad_outputs=Tensor(np.ones(out.shape, np.float32)),
                 allow_unused=True)
    for leaf, g in zip(leaves, grads):
        if g is not None:
            assert g.dtype == np.float32 and g.shape == leaf.shape, name


@pytest.mark.parametrize("name", DIFFERENTIABLE)
@settings(max_examples=3)
@given(data=st.data())
def test_inputs_are_not_modified(name, data):
    """Forward and VJP read their inputs and never write to them."""
    op = REGISTRY[name]
    args, kwargs = op.sample(HypothesisDraw(data))
    tensors = [Tensor(a.copy(), requires_grad=True)
               if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args]
    before = [t.data.copy() for t in tensors if isinstance(t, Tensor)]
    out = op(*tensors, **kwargs)
    grad(out, [t for t in tensors if isinstance(t, Tensor)],
         grad_outputs=Tensor(np.ones(out.shape)), allow_unused=True)
    after = [t.data for t in tensors if isinstance(t, Tensor)]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b, err_msg=f"{name} modified its input")
