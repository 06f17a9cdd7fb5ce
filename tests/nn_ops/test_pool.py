"""Max, average, adaptive and global pooling: definitions, PyTorch, finite differences, errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refnas as rn
from refnas import ops
from tests.nn_ops.support import assert_matches_torch, pool_problems


def direct_pool(x, kernel, stride, padding, reduce, count_include_pad=True):
    """Pool by visiting every window (tiny sizes only); padding cells are skipped and counted
    only when ``count_include_pad``."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            rows = [r for r in range(i * sh - ph, i * sh - ph + kh) if 0 <= r < h]
            cols = [s for s in range(j * sw - pw, j * sw - pw + kw) if 0 <= s < w]
            block = x[:, :, rows][:, :, :, cols]
            if reduce == "max":
                y[:, :, i, j] = block.max(axis=(2, 3))
            else:
                count = kh * kw if count_include_pad else len(rows) * len(cols)
                y[:, :, i, j] = block.sum(axis=(2, 3)) / count
    return y


@given(pool_problems(), st.booleans())
def test_pools_match_their_definition(problem, count_include_pad):
    x, kernel, stride, padding = problem
    np.testing.assert_array_equal(ops.max_pool2d(rn.Tensor(x), kernel, stride, padding).data,
                                  direct_pool(x, kernel, stride, padding, "max"))
    y = ops.avg_pool2d(rn.Tensor(x), kernel, stride, padding, count_include_pad)
    np.testing.assert_allclose(y.data, direct_pool(x, kernel, stride, padding, "avg",
                                                   count_include_pad), atol=1e-12)


@given(pool_problems(), st.booleans())
def test_pools_match_torch(problem, count_include_pad):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, kernel, stride, padding = problem
    assert_matches_torch(lambda t: ops.max_pool2d(t, kernel, stride, padding),
                         lambda t: F.max_pool2d(t, kernel, stride, padding), [x])
    assert_matches_torch(lambda t: ops.avg_pool2d(t, kernel, stride, padding, count_include_pad),
                         lambda t: F.avg_pool2d(t, kernel, stride, padding,
                                                count_include_pad=count_include_pad), [x])


@given(pool_problems())
def test_max_pool_argmax_matches_torch_indices(problem):
    torch = pytest.importorskip("torch")
    x, kernel, stride, padding = problem
    _, saved = ops.max_pool2d_primitive.forward(x, kernel_size=kernel, stride=stride,
                                                padding=padding)
    _, indices = torch.nn.functional.max_pool2d(torch.tensor(x), kernel, stride, padding,
                                                return_indices=True)
    np.testing.assert_array_equal(saved["argmax"], indices.numpy())
    assert saved["argmax"].dtype == np.int64


def test_max_pool_ties_pick_the_first_element_in_window_order():
    x = np.zeros((1, 1, 2, 2))
    _, saved = ops.max_pool2d_primitive.forward(x, kernel_size=2, stride=2, padding=0)
    assert saved["argmax"].item() == 0
    x = np.array([[[[0.0, 1.0], [1.0, 0.0]]]])
    _, saved = ops.max_pool2d_primitive.forward(x, kernel_size=2, stride=2, padding=0)
    assert saved["argmax"].item() == 1


@pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0))])
def test_pool_derivatives(kernel, stride, padding):
    rng = np.random.default_rng(1)
    x = (rng.permutation(2 * 2 * 5 * 4).reshape(2, 2, 5, 4) - 40) * 0.1
    for f in (lambda x: ops.max_pool2d(x, kernel, stride, padding),
              lambda x: ops.avg_pool2d(x, kernel, stride, padding, count_include_pad=False),
              lambda x: ops.avg_pool2d(x, kernel, stride, padding)):
        rn.gradcheck(f, [x])
        rn.gradgradcheck(f, [x])


def test_max_pool_second_order_routes_through_the_same_selection():
    """d/d(gy) of the max-pool input gradient gathers at the argmax: a Hessian-vector product of
    sum(max_pool(x)^2) equals 2 v at the selected positions."""
    rng = np.random.default_rng(2)
    x = rn.Tensor((rng.permutation(16).reshape(1, 1, 4, 4) - 8) * 0.3, requires_grad=True)
    (g,) = rn.grad((ops.max_pool2d(x, 2) ** 2).sum(), [x], create_graph=True)
    v = rng.standard_normal(x.shape)
    (hv,) = rn.grad((g * rn.Tensor(v)).sum(), [x])
    selected = np.zeros(16)
    selected[ops.max_pool2d_primitive.forward(x.data, kernel_size=2)[1]["argmax"].ravel()] = 1
    np.testing.assert_allclose(hv.data.ravel(), 2 * v.ravel() * selected)


# --------------------------------------------------------------------------------------------
# Adaptive and global average pooling
# --------------------------------------------------------------------------------------------
def direct_adaptive(x, oh, ow):
    h, w = x.shape[2:]
    y = np.zeros(x.shape[:2] + (oh, ow))
    for i in range(oh):
        r0, r1 = int(np.floor(i * h / oh)), int(np.ceil((i + 1) * h / oh))
        for j in range(ow):
            c0, c1 = int(np.floor(j * w / ow)), int(np.ceil((j + 1) * w / ow))
            y[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return y


@given(st.integers(1, 7), st.integers(1, 7), st.integers(1, 8), st.integers(1, 8))
def test_adaptive_avg_pool_matches_its_bins(h, w, oh, ow):
    x = np.random.default_rng(h * 10 + w).standard_normal((2, 2, h, w))
    np.testing.assert_allclose(ops.adaptive_avg_pool2d(rn.Tensor(x), (oh, ow)).data,
                               direct_adaptive(x, oh, ow), atol=1e-12)


@given(st.integers(1, 7), st.integers(1, 7), st.integers(1, 5), st.integers(1, 5))
def test_adaptive_avg_pool_matches_torch(h, w, oh, ow):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(h + 7 * w).standard_normal((1, 3, h, w))
    assert_matches_torch(lambda t: ops.adaptive_avg_pool2d(t, (oh, ow)),
                         lambda t: torch.nn.functional.adaptive_avg_pool2d(t, (oh, ow)), [x])


def test_adaptive_and_global_pool_details():
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 4))
    assert ops.adaptive_avg_pool2d(rn.Tensor(x), (None, 2)).shape == (2, 3, 5, 2)
    np.testing.assert_allclose(ops.global_avg_pool2d(rn.Tensor(x)).data, x.mean(axis=(2, 3)))
    np.testing.assert_allclose(ops.adaptive_avg_pool2d(rn.Tensor(x), 1).data[:, :, 0, 0],
                               x.mean(axis=(2, 3)))
    rn.gradcheck(lambda t: ops.adaptive_avg_pool2d(t, (2, 3)), [x[:1, :1]])
    rn.gradcheck(ops.global_avg_pool2d, [x[:1]])


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, words", [
    (lambda x: ops.max_pool2d(x[0], 2), ["max_pool2d", "4-D", "(3, 4, 4)"]),
    (lambda x: ops.avg_pool2d(x, 5), ["avg_pool2d", "larger than the padded input"]),
    (lambda x: ops.max_pool2d(x, 2, padding=2), ["max_pool2d", "at most half"]),
    (lambda x: ops.max_pool2d(x, 0), ["kernel_size", "0"]),
    (lambda x: ops.avg_pool2d(x, 2, stride=0), ["stride"]),
    (lambda x: ops.avg_pool2d(x, 2, padding=-1), ["padding"]),
    (lambda x: ops.adaptive_avg_pool2d(x, 0), ["adaptive_avg_pool2d", "output_size"]),
    (lambda x: ops.global_avg_pool2d(x[0]), ["global_avg_pool2d", "4-D"]),
])
def test_pool_errors_name_the_problem(call, words):
    x = rn.Tensor(np.zeros((1, 3, 4, 4)))
    with pytest.raises(rn.OpError) as info:
        call(x)
    for word in words:
        assert word in str(info.value)
