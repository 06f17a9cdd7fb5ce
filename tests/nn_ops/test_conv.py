"""conv2d and its two gradient primitives: against a direct loop, PyTorch, finite differences."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refnas as rn
from refnas import ops
from refnas.backend import kernel
from refnas.ops.conv import add_windows, pad_hw, windows
from tests.nn_ops.support import assert_matches_torch, conv_problems


def direct_conv2d(x, w, stride, padding, dilation, groups):
    """The defining sum, one output element at a time (tiny sizes only)."""
    n, c, h, width = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, o, oh, ow))
    per_group = o // groups
    for b in range(n):
        for out_c in range(o):
            first = (out_c // per_group) * cg
            for i in range(oh):
                for j in range(ow):
                    total = 0.0
                    for ci in range(cg):
                        for p in range(kh):
                            for q in range(kw):
                                r, s = i * sh + p * dh - ph, j * sw + q * dw - pw
                                if 0 <= r < h and 0 <= s < width:
                                    total += w[out_c, ci, p, q] * x[b, first + ci, r, s]
                    y[b, out_c, i, j] = total
    return y


@given(conv_problems())
def test_conv2d_matches_the_direct_sum(problem):
    x, w, geometry = problem
    y = ops.conv2d(rn.Tensor(x), rn.Tensor(w), **geometry)
    np.testing.assert_allclose(y.data, direct_conv2d(x, w, **geometry), atol=1e-12)


@given(conv_problems(), st.booleans())
def test_conv2d_matches_torch(problem, with_bias):
    torch = pytest.importorskip("torch")
    x, w, geometry = problem
    arrays = [x, w] + ([np.random.default_rng(0).standard_normal(w.shape[0])] if with_bias else [])
    assert_matches_torch(lambda *t: ops.conv2d(*t, **geometry),
                         lambda *t: torch.nn.functional.conv2d(*t, **geometry), arrays)


def test_conv2d_float32_stays_float32():
    rng = np.random.default_rng(1)
    x = rn.Tensor(rng.standard_normal((2, 4, 5, 5)).astype(np.float32), requires_grad=True)
    w = rn.Tensor(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), requires_grad=True)
    y = ops.conv2d(x, w, padding=1, groups=2)
    y.sum().backward()
    assert y.dtype == x.grad.dtype == w.grad.dtype == np.float32
    expected = direct_conv2d(x.data.astype(np.float64), w.data.astype(np.float64), (1, 1),
                             (1, 1), (1, 1), 2)
    np.testing.assert_allclose(y.data, expected, rtol=1e-5, atol=1e-5)


@given(conv_problems(max_side=4))
def test_gradient_primitives_are_adjoints_of_the_forward(problem):
    r""":math:`\langle \operatorname{conv}(x,w), \bar y\rangle = \langle x, T(\bar y,w)\rangle
    = \langle w, W(x,\bar y)\rangle`: the defining property of the two gradient kernels."""
    x, w, geometry = problem
    g = geometry
    args = (g["stride"], g["padding"], g["dilation"], g["groups"])
    y = kernel("conv2d_forward", "numpy")(x, w, *args)
    gy = np.random.default_rng(2).standard_normal(y.shape)
    gx = kernel("conv2d_input_grad", "numpy")(gy, w, x.shape, *args)
    gw = kernel("conv2d_weight_grad", "numpy")(x, gy, w.shape, *args)
    inner = float((y * gy).sum())
    assert np.isclose(inner, float((x * gx).sum()), rtol=1e-10, atol=1e-10)
    assert np.isclose(inner, float((w * gw).sum()), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("geometry", [
    {"stride": 1, "padding": 0, "dilation": 1, "groups": 1},
    {"stride": 2, "padding": 1, "dilation": 1, "groups": 2},
    {"stride": (1, 2), "padding": (1, 0), "dilation": (2, 1), "groups": 4},   # depthwise
])
def test_conv2d_first_and_second_derivatives(geometry):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 5, 4))
    w = rng.standard_normal((4, 4 // geometry["groups"], 2, 3))
    b = rng.standard_normal(4)

    def f(x, w, b):
        return ops.conv2d(x, w, b, **geometry)

    rn.gradcheck(f, [x, w, b])
    rn.gradgradcheck(f, [x, w, b])


def test_conv2d_third_derivative():
    """gradgradcheck of the first derivative checks the derivative of order three."""
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((2, 1, 2, 2))
    geometry = {"stride": 2, "padding": 1, "dilation": 1, "groups": 2}

    def first_derivative(x, w, gy):
        record = rn.is_grad_enabled()     # off while finite differences evaluate this function
        with rn.enable_grad():
            y = ops.conv2d(x, w, **geometry)
            gx, gw = rn.grad(y, [x, w], grad_outputs=gy, create_graph=record)
        return ops.concatenate(ops.reshape(gx, shape=(-1,)), ops.reshape(gw, shape=(-1,)))

    gy = rng.standard_normal((1, 2, 3, 3))
    rn.gradgradcheck(first_derivative, [x, w, gy])


# --------------------------------------------------------------------------------------------
# The sliding-window helpers
# --------------------------------------------------------------------------------------------
@given(conv_problems())
def test_windows_are_a_view_of_the_padded_input(problem):
    x, w, g = problem
    padded = pad_hw(x, g["padding"])
    view = windows(padded, w.shape[2:], g["stride"], g["dilation"])
    assert np.shares_memory(view, padded)
    assert not view.flags.writeable
    (sh, sw), (dh, dw) = g["stride"], g["dilation"]
    n, c, oh, ow, kh, kw = view.shape
    i, j, p, q = oh - 1, ow - 1, kh - 1, kw - 1
    np.testing.assert_array_equal(view[..., i, j, p, q], padded[..., i * sh + p * dh, j * sw + q * dw])
    np.testing.assert_array_equal(view[..., 0, 0, 0, 0], padded[..., 0, 0])


def test_zero_padding_makes_no_copy():
    x = np.arange(24.0).reshape(1, 2, 3, 4)
    assert pad_hw(x, (0, 0)) is x
    assert pad_hw(x, (1, 0)).shape == (1, 2, 5, 4)


@given(conv_problems(max_side=5))
def test_add_windows_is_the_adjoint_of_windows(problem):
    x, w, g = problem
    padded = pad_hw(x, g["padding"])
    view = windows(padded, w.shape[2:], g["stride"], g["dilation"])
    v = np.random.default_rng(5).standard_normal(view.shape)
    back = add_windows(v, padded.shape[2:], g["stride"], g["dilation"])
    assert np.isclose((view * v).sum(), (padded * back).sum(), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def _conv_error(x_shape, w_shape, **geometry):
    with pytest.raises(rn.OpError) as info:
        ops.conv2d(rn.Tensor(np.zeros(x_shape)), rn.Tensor(np.zeros(w_shape)), **geometry)
    return str(info.value)


def test_conv2d_errors_name_the_problem():
    message = _conv_error((1, 3, 5, 5), (4, 2, 3, 3))
    assert "conv2d" in message and "C=3" in message and "(4, 2, 3, 3)" in message
    assert "float64" in message
    assert "divide" in _conv_error((1, 4, 5, 5), (3, 2, 3, 3), groups=2)
    assert "divide" in _conv_error((1, 3, 5, 5), (4, 1, 3, 3), groups=2)
    assert "4-D" in _conv_error((3, 5, 5), (4, 3, 3, 3))
    assert "4-D" in _conv_error((1, 3, 5, 5), (4, 3, 3))
    message = _conv_error((1, 1, 2, 2), (1, 1, 3, 3))
    assert "larger than the padded input" in message and "(2, 2)" in message
    assert "larger than the padded input" in _conv_error((1, 1, 4, 4), (1, 1, 3, 3), dilation=2)
    assert "stride" in _conv_error((1, 1, 4, 4), (1, 1, 3, 3), stride=0)
    assert "padding" in _conv_error((1, 1, 4, 4), (1, 1, 3, 3), padding=-1)
    assert "padding" in _conv_error((1, 1, 4, 4), (1, 1, 3, 3), padding=(1, 1, 1))
    assert "groups" in _conv_error((1, 1, 4, 4), (1, 1, 3, 3), groups=0)


def test_conv2d_dtype_and_bias_errors():
    x = rn.Tensor(np.zeros((1, 2, 4, 4), dtype=np.float32))
    with pytest.raises(rn.OpError, match="float32.*float64"):
        ops.conv2d(x, rn.Tensor(np.zeros((2, 2, 3, 3))))
    w = rn.Tensor(np.zeros((2, 2, 3, 3), dtype=np.float32))
    with pytest.raises(rn.OpError, match=r"bias must have shape \(2,\)"):
        ops.conv2d(x, w, rn.Tensor(np.zeros(3, dtype=np.float32)))


def test_gradient_primitives_check_the_output_gradient_shape():
    w = rn.Tensor(np.zeros((2, 1, 3, 3)))
    with pytest.raises(rn.OpError, match=r"conv2d_input_grad: gy has shape \(1, 2, 3, 3\)"):
        ops.conv2d_input_grad(rn.Tensor(np.zeros((1, 2, 3, 3))), w, input_shape=(1, 1, 4, 4))
    with pytest.raises(rn.OpError, match="conv2d_weight_grad"):
        ops.conv2d_weight_grad(rn.Tensor(np.zeros((1, 1, 4, 4))), rn.Tensor(np.zeros((1, 2, 1, 1))),
                               weight_shape=(2, 1, 3, 3))


def test_conv2d_with_bias_is_one_node_equal_to_the_unbiased_conv_plus_bias():
    """The bias is an operand of the conv2d primitive (added by the kernel as it writes the
    output); value and all three gradients equal conv2d without bias followed by an add."""
    rng = np.random.default_rng(11)
    x = rn.Tensor(rng.standard_normal((2, 3, 6, 5)), requires_grad=True)
    w = rn.Tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True)
    b = rn.Tensor(rng.standard_normal(4), requires_grad=True)
    y = ops.conv2d(x, w, b, stride=(2, 1), padding=1)
    assert y._op is not None and y._op.name == "conv2d" and len(y._inputs) == 3
    g = rng.standard_normal(y.shape)
    fused = rn.grad((y * rn.Tensor(g)).sum(), [x, w, b])
    plain = ops.conv2d(x, w, stride=(2, 1), padding=1) + ops.reshape(b, shape=(1, 4, 1, 1))
    np.testing.assert_allclose(y.data, plain.data, rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(fused, rn.grad((plain * rn.Tensor(g)).sum(), [x, w, b])):
        np.testing.assert_allclose(ours.data, theirs.data, rtol=1e-12, atol=1e-12)
