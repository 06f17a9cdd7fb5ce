"""The kernel-backed activations: NumPy reference kernels against closed forms (SciPy's normal
distribution for GELU), dispatch through the kernel registry, and their derivatives."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy.stats import norm

import refnas as rn
from refnas import ops
from refnas.backend import kernel, kernels, register_kernel, use_backend
from refnas.ops import REGISTRY
from refnas.ops.elementwise import gelu_forward_reference

KERNELS = ["relu_forward", "relu_backward", "gelu_forward", "gelu_backward"]


@st.composite
def _points(draw):
    n = draw(st.integers(0, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3)).astype(dtype) * 3, rng.standard_normal((n, 3)).astype(dtype)


def test_reference_kernels_are_registered():
    assert set(KERNELS) <= set(kernels("numpy"))


@given(_points())
def test_reference_kernels_match_closed_forms(points):
    x, g = points
    tol = {"rtol": 1e-5, "atol": 1e-6} if x.dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-300}
    expected = {
        "relu_forward": (np.where(x > 0, x, 0.0), (x,)),
        "relu_backward": (np.where(x > 0, g, 0.0), (g, x)),
        "gelu_forward": (x * norm.cdf(x), (x,)),
        "gelu_backward": (g * (norm.cdf(x) + x * norm.pdf(x)), (g, x)),
    }
    for name, (value, args) in expected.items():
        out = kernel(name, "numpy")(*args)
        assert out.dtype == x.dtype and out.shape == x.shape, name
        np.testing.assert_allclose(out, value, err_msg=name, **tol)


def test_primitives_dispatch_through_the_kernel_registry():
    calls = []
    reference = gelu_forward_reference

    def spy(x):
        calls.append(x.shape)
        return reference(x)

    register_kernel("gelu_forward", "numpy")(spy)
    try:
        with use_backend("numpy"):
            ops.gelu(rn.tensor(np.ones((2, 2))))
    finally:
        register_kernel("gelu_forward", "numpy")(reference)
    assert calls == [(2, 2)]


def test_relu_and_gelu_vjps_are_the_backward_primitives():
    x = rn.tensor(np.array([-1.0, 0.5, 2.0]), requires_grad=True)
    for activation, backward_name in ((ops.relu, "relu_backward"), (ops.gelu, "gelu_backward")):
        (g,) = rn.grad(activation(x).sum(), x, create_graph=True)
        assert g.op_name == backward_name


def test_gelu_second_derivative_closed_form():
    data = np.array([-2.0, -0.3, 0.0, 0.8, 3.0])
    x = rn.tensor(data, requires_grad=True)
    (g1,) = rn.grad(ops.gelu(x).sum(), x, create_graph=True)
    (g2,) = rn.grad(g1.sum(), x)
    np.testing.assert_allclose(g1.data, norm.cdf(data) + data * norm.pdf(data), rtol=1e-12)
    np.testing.assert_allclose(g2.data, norm.pdf(data) * (2 - data ** 2), rtol=1e-12)


def test_relu_second_derivative_is_zero_and_first_is_the_mask():
    data = np.array([-2.0, -0.3, 0.8, 3.0])
    x = rn.tensor(data, requires_grad=True)
    (g1,) = rn.grad(ops.relu(x).sum(), x, create_graph=True)
    np.testing.assert_array_equal(g1.data, data > 0)
    (g2,) = rn.grad((g1 * x).sum(), x)   # d/dx sum(mask * x) = mask: the mask itself is constant
    np.testing.assert_array_equal(g2.data, data > 0)


@pytest.mark.parametrize("name", ["relu_backward", "gelu_backward"])
def test_backward_primitives_gradcheck_in_both_arguments(name):
    op = REGISTRY[name]
    rng = np.random.default_rng(0)
    g, x = rng.standard_normal(4), np.array([-1.5, -0.4, 0.6, 1.7])
    rn.gradcheck(op, [g, x], name=name)
    rn.gradgradcheck(op, [g, x], name=name)


def test_gelu_grad_composite_is_the_derivative():
    data = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_allclose(ops.gelu_grad(rn.tensor(data)).data,
                               norm.cdf(data) + data * norm.pdf(data), rtol=1e-12)
