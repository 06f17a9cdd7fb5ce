"""The Tensor API: constructors, properties, operators, dtype rules, indexing, conversions."""
from __future__ import annotations

import numpy as np
import pytest

import refnas as rn
from refnas import ops
from refnas.tensor import Tensor


def leaf(values, dtype=np.float32):
    return rn.tensor(np.asarray(values, dtype=dtype), requires_grad=True)


# --------------------------------------------------------------------------------------------
# Constructors and properties
# --------------------------------------------------------------------------------------------
def test_tensor_from_python_floats_is_float32_and_keeps_given_dtype():
    assert rn.tensor([1.0, 2.0]).dtype == np.float32
    assert rn.tensor([1, 2]).dtype.kind == "i"
    assert rn.tensor(np.ones(2)).dtype == np.float64          # an array keeps its dtype
    assert rn.tensor([1.0], dtype=np.float64).dtype == np.float64


def test_properties():
    t = rn.zeros(2, 3, 4)
    assert (t.shape, t.ndim, t.size, t.dtype) == ((2, 3, 4), 3, 24, np.float32)
    assert rn.ones((2, 3)).shape == (2, 3) and rn.ones(2, 3).data.sum() == 6
    assert rn.full((2,), 7.0).data.tolist() == [7.0, 7.0]
    assert t.device == "cpu" and t.is_leaf and t.grad is None and not t.requires_grad
    assert len(rn.zeros(5, 2)) == 5


@pytest.mark.parametrize("make", [rn.randn, rn.rand])
def test_random_constructors_take_seed_or_generator(make):
    a = make(3, 2, seed=7)
    b = make((3, 2), seed=np.random.default_rng(7))
    np.testing.assert_array_equal(a.data, b.data)
    assert a.dtype == np.float32 and a.shape == (3, 2)
    assert not np.array_equal(make(3, 2, seed=8).data, a.data)
    assert make(2, seed=0, dtype=np.float64, requires_grad=True).requires_grad


def test_rand_is_in_unit_interval_and_randn_is_standard_normal():
    u, z = rn.rand(10_000, seed=1).data, rn.randn(10_000, seed=1).data
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1.0) < 0.05


def test_zeros_like_ones_like_arange():
    x = rn.randn(2, 3, seed=0)
    assert rn.zeros_like(x).data.sum() == 0 and rn.ones_like(x).data.sum() == 6
    np.testing.assert_array_equal(rn.arange(4).data, [0, 1, 2, 3])


def test_item_numpy_detach_tolist():
    x = leaf([[1.5]])
    assert x.item() == 1.5 and float(x) == 1.5 and int(leaf([2.7])) == 2
    assert isinstance(x.numpy(), np.ndarray)
    d = x.detach()
    assert not d.requires_grad and d.is_leaf and np.shares_memory(d.data, x.data)
    assert x.tolist() == [[1.5]]
    with pytest.raises(ValueError, match=r"item.*\(2,\) \(float32\)"):
        leaf([1.0, 2.0]).item()


def test_to_moves_or_casts():
    x = leaf([1.0, 2.0])
    assert x.to("cpu") is x
    y = x.to(np.float64)
    assert y.dtype == np.float64 and y.op_name == "astype"
    y.sum().backward()
    assert x.grad.dtype == np.float32
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        x.to("tpu")


def test_requires_grad_rejects_integer_tensors():
    with pytest.raises(TypeError, match=r"floating-point.*int64 with shape \(2,\)"):
        rn.tensor(np.array([1, 2], dtype=np.int64), requires_grad=True)


def test_iteration_yields_rows():
    rows = list(rn.tensor(np.arange(6.0).reshape(3, 2)))
    assert [r.tolist() for r in rows] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    with pytest.raises(TypeError):
        list(rn.tensor(1.0))


# --------------------------------------------------------------------------------------------
# Operators and dtypes
# --------------------------------------------------------------------------------------------
OPERATORS = {
    "add": (lambda a, b: a + b), "sub": (lambda a, b: a - b), "mul": (lambda a, b: a * b),
    "div": (lambda a, b: a / b), "pow": (lambda a, b: a ** b),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
@pytest.mark.parametrize("scalar", [2.0, 3, np.float64(2.5), np.int64(2)])
def test_float32_tensor_with_scalar_stays_float32_both_sides(name, scalar):
    f = OPERATORS[name]
    x = rn.tensor(np.array([0.5, 1.5], dtype=np.float32))
    for out, expected in ((f(x, scalar), f(x.data, float(scalar))),
                          (f(scalar, x), f(float(scalar), x.data))):
        assert out.dtype == np.float32, (name, type(scalar))
        np.testing.assert_allclose(out.data, expected, rtol=1e-6)


def test_zero_dim_float32_stays_float32_and_arrays():
    s = leaf(2.0)
    for out in (s * s, s * 2.0, 2.0 ** s, ops.abs(-s), ops.sum(s), ops.exp(s), s > 1.0):
        assert type(out.data) is np.ndarray and out.dtype in (np.float32, np.bool_)
    (s * s * 3.0).backward()
    assert type(s.grad.data) is np.ndarray and s.grad.item() == pytest.approx(12.0)


def test_vector_dot_returns_0d_array():
    v = leaf([1.0, 2.0])
    out = v @ v
    assert out.shape == () and type(out.data) is np.ndarray and out.item() == 5.0
    out.backward()
    np.testing.assert_allclose(v.grad.data, 2 * v.data)


def test_integer_tensor_with_float_scalar_promotes_like_numpy():
    i = rn.tensor(np.array([1, 2], dtype=np.int64))
    out = i + 0.5
    np.testing.assert_array_equal(out.data, [1.5, 2.5])
    assert out.dtype == np.result_type(np.int64, 0.5)
    assert (i * 2).dtype == np.int64


def test_ndarray_on_the_left_defers_to_tensor():
    x = leaf([1.0, 2.0])
    a = np.array([10.0, 20.0], dtype=np.float32)
    for out in (a + x, a - x, a * x, a / x, a ** x, a @ x):
        assert isinstance(out, Tensor) and out.requires_grad
    (a * x).sum().backward()
    np.testing.assert_array_equal(x.grad.data, a)


def test_unary_minus_abs_pos_and_matmul():
    x = leaf([[1.0, -2.0]])
    np.testing.assert_array_equal((-x).data, [[-1.0, 2.0]])
    np.testing.assert_array_equal(abs(x).data, [[1.0, 2.0]])
    assert +x is x
    w = rn.tensor(np.array([[1.0], [3.0]], dtype=np.float32))
    np.testing.assert_array_equal((x @ w).data, [[-5.0]])


def test_comparisons_are_boolean_and_not_differentiable():
    x, y = leaf([1.0, 2.0, 3.0]), leaf([3.0, 2.0, 1.0])
    cases = {"<": (x < y, [True, False, False]), "<=": (x <= y, [True, True, False]),
             ">": (x > y, [False, False, True]), ">=": (x >= 2.0, [False, True, True]),
             "==": (x == y, [False, True, False]), "!=": (x != 2.0, [True, False, True])}
    for op, (result, expected) in cases.items():
        assert result.dtype == np.bool_ and not result.requires_grad, op
        assert result.tolist() == expected, op
    assert (np.array([0.0, 5.0, 0.0]) < x).tolist() == [True, False, True]
    assert {x, y} == {x, y} and len({x, y}) == 2   # hashing by identity


def test_where_with_scalar_branch_keeps_dtype():
    x = leaf([1.0, 2.0])
    out = ops.where(x > 1.5, x, 0.25)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.data, [0.25, 2.0])


# --------------------------------------------------------------------------------------------
# Indexing
# --------------------------------------------------------------------------------------------
def _index_gradient(index, shape=(3, 4)):
    x = rn.tensor(np.arange(np.prod(shape), dtype=np.float64).reshape(shape), requires_grad=True)
    picked = x[index]
    expected_values = x.data[index if not isinstance(index, Tensor) else index.data]
    np.testing.assert_array_equal(picked.data, expected_values)
    picked.sum().backward()
    return x.grad.data


def _counts(shape, index):
    """How often each element is selected, counted independently with a scatter of ones."""
    counts = np.zeros(shape)
    np.add.at(counts, index, 1.0)
    return counts


@pytest.mark.parametrize("index", [
    1, -1, slice(None, None, -1), (slice(1, None), slice(None, None, 2)), (Ellipsis, 2),
    (None, 0), np.array([0, 0, 2]), (np.array([0, 2, 2]), np.array([1, 1, 3])),
    (np.array([0, 0]), slice(1, 3)), [2, 0, 2],
])
def test_getitem_forward_and_gradient(index):
    expected = _counts((3, 4), np.asarray(index) if isinstance(index, list) else index)
    np.testing.assert_array_equal(_index_gradient(index), expected)


def test_getitem_boolean_mask_and_tensor_indices():
    mask = np.array([[True, False, True, False]] * 3)
    np.testing.assert_array_equal(_index_gradient(mask), mask.astype(float))
    np.testing.assert_array_equal(_index_gradient(rn.tensor(mask)), mask.astype(float))
    idx = rn.tensor(np.array([2, 2, 0]))
    np.testing.assert_array_equal(_index_gradient(idx), _counts((3, 4), np.array([2, 2, 0])))
    x = leaf([1.0, 5.0, 3.0])
    np.testing.assert_array_equal(x[x > 2.0].data, [5.0, 3.0])


def test_getitem_out_of_range_names_op_and_shape():
    with pytest.raises(rn.OpError, match=r"getitem.*\(3,\) \(float32\)"):
        leaf([1.0, 2.0, 3.0])[5]


# --------------------------------------------------------------------------------------------
# Method forms
# --------------------------------------------------------------------------------------------
def test_method_forms_match_ops():
    x = rn.randn(2, 3, 4, seed=0)
    assert x.permute(2, 0, 1).shape == (4, 2, 3) and x.permute((2, 0, 1)).shape == (4, 2, 3)
    assert x.transpose().shape == (4, 3, 2) and x.T.shape == (4, 3, 2)
    assert x.reshape(6, 4).shape == (6, 4) and x.reshape((-1,)).shape == (24,)
    assert x.flatten(1).shape == (2, 12)
    assert x.sum(axis=-1, keepdims=True).shape == (2, 3, 1)
    assert x.mean(axis=(0, 2)).shape == (3,)
    assert x.max().shape == () and x.min(axis=1).shape == (2, 4)
    assert x.var(axis=0, ddof=1).shape == (3, 4)
    assert x[:, :1].squeeze(1).shape == (2, 4) and x.unsqueeze(-1).shape == (2, 3, 4, 1)
    np.testing.assert_array_equal(x.argmax(axis=1).data, x.data.argmax(axis=1))
    np.testing.assert_allclose(x.clip(-0.5, 0.5).data, np.clip(x.data, -0.5, 0.5))
    for method in ("exp", "tanh", "sigmoid", "relu", "abs"):
        np.testing.assert_allclose(getattr(x, method)().data, getattr(ops, method)(x).data)


def test_sum_over_empty_axis_tuple_is_identity():
    x = leaf([[1.0, 2.0]])
    out = ops.sum(x, axis=())
    np.testing.assert_array_equal(out.data, x.data)
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.data, [[1.0, 1.0]])


def test_negative_axes_and_keepdims_match_numpy():
    data = np.random.default_rng(0).standard_normal((2, 3, 4))
    x = rn.tensor(data)
    for axis in (-1, -2, (-1, 0), (0, -2)):
        for keepdims in (False, True):
            for name in ("sum", "mean", "max", "min", "var"):
                expected = getattr(np, name)(data, axis=axis, keepdims=keepdims)
                np.testing.assert_allclose(getattr(ops, name)(x, axis=axis, keepdims=keepdims).data,
                                           expected, err_msg=f"{name} axis={axis}")


def test_public_api_names():
    for name in ("Tensor", "tensor", "zeros", "ones", "randn", "rand", "grad", "no_grad",
                 "enable_grad", "detect_anomaly", "gradcheck", "gradgradcheck", "softmax",
                 "log_softmax", "logsumexp", "cross_entropy", "nll_loss", "mse_loss",
                 "binary_cross_entropy_with_logits", "OpError"):
        assert hasattr(rn, name), name
