"""The fused ``linear`` op (:math:`y = x W^\\top + b`) against NumPy's formulas, and matmul's
two-dimensional fast paths against the general ones.

The registry walk already gradchecks ``linear`` and ``matmul`` (first and second order) on small
float64 examples; these tests add float32, odd sizes, every memory layout, the exact layout of the
weight gradient (the optimizer reads it as one flat array), and the graph a ``Linear`` layer
builds.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refnas as rn
from refnas import nn, ops
from refnas.tensor import Tensor

TOLERANCE = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def _layout(array: np.ndarray, kind: str) -> np.ndarray:
    """``array``'s values, C-contiguous, Fortran-ordered or as a strided view."""
    if kind == "transposed":
        return np.asfortranarray(array)
    if kind == "strided":
        buffer = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), array.dtype)
        buffer[..., ::2] = array
        return buffer[..., ::2]
    return np.ascontiguousarray(array)


@st.composite
def _linear_case(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    lead = tuple(draw(st.lists(st.integers(1, 9), min_size=0, max_size=2)))
    n_in, n_out = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    layouts = st.sampled_from(["contiguous", "transposed", "strided"])
    x = _layout(rng.standard_normal(lead + (n_in,)).astype(dtype), draw(layouts))
    w = _layout(rng.standard_normal((n_out, n_in)).astype(dtype), draw(layouts))
    b = _layout(rng.standard_normal(n_out).astype(dtype), draw(layouts)) if draw(st.booleans()) \
        else None
    g = rng.standard_normal(lead + (n_out,)).astype(dtype)
    return x, w, b, g


@given(_linear_case())
def test_linear_forward_and_gradients_match_numpy(case):
    x, w, b, g = case
    tol = TOLERANCE[x.dtype.type]
    X, W = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    B = None if b is None else Tensor(b, requires_grad=True)
    y = ops.linear(X, W, B)
    expected = x @ w.T + (0 if b is None else b)
    assert y.dtype == x.dtype and y.shape == expected.shape
    np.testing.assert_allclose(y.data, expected, **tol)

    y.backward(g)
    rows_g, rows_x = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
    np.testing.assert_allclose(X.grad.data, g @ w, **tol)
    np.testing.assert_allclose(W.grad.data, rows_g.T @ rows_x, **tol)
    assert W.grad.data.flags.c_contiguous, "the weight gradient is handed to SGD as a flat array"
    if B is not None:
        np.testing.assert_allclose(B.grad.data, rows_g.sum(axis=0), **tol)
    for leaf in (X, W, B):
        if leaf is not None:
            assert leaf.grad.dtype == x.dtype and leaf.grad.shape == leaf.shape


@given(_linear_case())
def test_linear_equals_the_composed_ops_to_second_order(case):
    """The fused op and ``x @ W.T + b`` give the same value, gradient and Hessian-vector
    product (float64; the composition is the oracle)."""
    x, w, b, g = (None if a is None else a.astype(np.float64) for a in case)

    def leaves():
        return [Tensor(a.copy(), requires_grad=True) for a in (x, w, b) if a is not None]

    def fused(t):
        return ops.linear(*t)

    def composed(t):
        y = ops.matmul(t[0], ops.transpose(t[1]))
        return y + t[2] if len(t) == 3 else y

    results = []
    for f in (fused, composed):
        t = leaves()
        y = f(t)
        grads = rn.grad(y, t, grad_outputs=Tensor(g), create_graph=True)
        second = rn.grad(sum((gi * gi).sum() for gi in grads), t, allow_unused=True)
        results.append((y.data, [gi.data for gi in grads],
                        [None if s is None else s.data for s in second]))
    (y1, g1, s1), (y2, g2, s2) = results
    np.testing.assert_allclose(y1, y2, rtol=1e-12, atol=1e-12)
    for a, c in zip(g1 + s1, g2 + s2):
        if a is None or c is None:
            assert a is None or not np.any(a), "a second derivative the composition lacks"
            continue
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)


def test_linear_follows_numpy_promotion():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    w = np.ones((4, 3), np.float32)
    b = np.full(4, 0.5, np.float64)
    y = ops.linear(Tensor(x), Tensor(w), Tensor(b))
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y.data, x @ w.T + b)


def test_linear_of_a_single_example():
    x, w, b = np.array([1.0, 2.0]), np.array([[1.0, 0.0], [3.0, -1.0], [0.5, 0.5]]), np.ones(3)
    X, W, B = (Tensor(a, requires_grad=True) for a in (x, w, b))
    y = ops.linear(X, W, B)
    np.testing.assert_array_equal(y.data, w @ x + b)
    y.backward(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(W.grad.data, np.outer([1.0, 2.0, 3.0], x))
    np.testing.assert_array_equal(B.grad.data, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(X.grad.data, np.array([1.0, 2.0, 3.0]) @ w)


def test_linear_layer_is_one_graph_node():
    layer = nn.Linear(5, 3, rng=0)
    y = layer(rn.tensor(np.ones((2, 5), np.float32)))
    assert y.op_name == "linear"
    assert [t is p for t, p in zip(y._inputs, (None, layer.weight, layer.bias))][1:] == [True, True]
    without_bias = nn.Linear(5, 3, bias=False, rng=0)(rn.tensor(np.ones((2, 5), np.float32)))
    assert without_bias.op_name == "linear" and len(without_bias._inputs) == 2


@pytest.mark.parametrize("shapes", [((2, 5), (4, 3), (4,)), ((2, 3), (4, 2), None),
                                    ((3,), (3,), None), ((2, 3), (4, 3), (3,)),
                                    ((2, 3), (4, 3), (1, 4))])
def test_linear_rejects_shapes_that_do_not_fit(shapes):
    sx, sw, sb = shapes
    args = [Tensor(np.ones(sx, np.float32)), Tensor(np.ones(sw, np.float32))]
    if sb is not None:
        args.append(Tensor(np.ones(sb, np.float32)))
    with pytest.raises(rn.OpError) as info:
        ops.linear(*args)
    message = str(info.value)
    assert message.startswith("linear:") and "float32" in message
    assert str(sw) in message


# --------------------------------------------------------------------------------------------
# matmul: the 2-D fast paths agree with the general batched formulas
# --------------------------------------------------------------------------------------------
@given(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7), st.integers(0, 2**31 - 1),
       st.sampled_from(["contiguous", "transposed", "strided"]),
       st.sampled_from([np.float32, np.float64]))
def test_matmul_2d_matches_the_batched_path(n, k, m, seed, kind, dtype):
    rng = np.random.default_rng(seed)
    x = _layout(rng.standard_normal((n, k)).astype(dtype), kind)
    y = _layout(rng.standard_normal((k, m)).astype(dtype), kind)
    g = rng.standard_normal((n, m)).astype(dtype)
    X, Y = Tensor(x, requires_grad=True), Tensor(y, requires_grad=True)
    ops.matmul(X, Y).backward(g)
    # the same product with a batch axis of one goes through the general VJP
    X1, Y1 = Tensor(x[None], requires_grad=True), Tensor(y[None], requires_grad=True)
    ops.matmul(X1, Y1).backward(g[None])
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(X.grad.data, X1.grad.data[0], **tol)
    np.testing.assert_allclose(Y.grad.data, Y1.grad.data[0], **tol)
    np.testing.assert_allclose(X.grad.data, g @ y.T, **tol)
    np.testing.assert_allclose(Y.grad.data, x.T @ g, **tol)


def test_matmul_still_checks_batch_axes_and_accepts_any_batch_against_a_matrix():
    with pytest.raises(rn.OpError, match=r"matmul: batch axes of shapes \(2, 2, 3\) and "
                                         r"\(3, 3, 4\) do not broadcast"):
        ops.matmul(Tensor(np.ones((2, 2, 3))), Tensor(np.ones((3, 3, 4))))
    out = ops.matmul(Tensor(np.ones((5, 2, 3))), Tensor(np.ones((3, 4))))
    assert out.shape == (5, 2, 4)
