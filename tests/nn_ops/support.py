"""Shared test support: Hypothesis strategies for small convolution and pooling problems (drawn
independently of the samplers in refnas, so the tests do not check the library against its own
choices) and the comparison of an op with its PyTorch counterpart."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pytest
from hypothesis import strategies as st

import refnas as rn


@st.composite
def conv_problems(draw, max_side: int = 6):
    """(x, w, geometry): a convolution whose dilated kernel fits the padded input."""
    groups = draw(st.sampled_from([1, 2, 3]))
    depthwise = draw(st.booleans())
    cg = 1 if depthwise else draw(st.integers(1, 2))
    og = draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    sides = []
    for k, p, d in zip((kh, kw), padding, dilation):
        low = max(d * (k - 1) + 1 - 2 * p, 1)
        sides.append(draw(st.integers(low, max(low, max_side))))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((draw(st.integers(1, 2)), groups * cg, *sides))
    if draw(st.booleans()):                      # a non-contiguous input
        x = np.asfortranarray(x)
    w = rng.standard_normal((groups * og, cg, kh, kw))
    return x, w, {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}


@st.composite
def pool_problems(draw, max_side: int = 7):
    """(x, kernel_size, stride, padding) with padding at most half the kernel."""
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    sides = [draw(st.integers(max(k - 2 * p, 1), max_side)) for k, p in zip(kernel, padding)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    size = n * c * sides[0] * sides[1]
    x = (rng.permutation(size).reshape(n, c, *sides) - size / 2) * 0.1   # no ties
    return x, kernel, stride, padding


def assert_matches_torch(mine: Callable, theirs: Callable, arrays: Sequence[np.ndarray],
                         atol: float = 1e-12, rtol: float = 1e-7):
    """Values and gradients of ``mine`` (refnas) and ``theirs`` (torch) agree for the same
    inputs and the same random output cotangent. Returns the refnas leaves for further checks."""
    torch = pytest.importorskip("torch")
    leaves = [rn.Tensor(a, requires_grad=True) for a in arrays]
    t_leaves = [torch.tensor(np.ascontiguousarray(a), requires_grad=True) for a in arrays]
    y, ty = mine(*leaves), theirs(*t_leaves)
    gy = np.random.default_rng(0).standard_normal(y.shape)
    y.backward(gy)
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=rtol, atol=atol)
    for leaf, t_leaf in zip(leaves, t_leaves):
        np.testing.assert_allclose(leaf.grad.data, t_leaf.grad.numpy(), rtol=rtol, atol=atol)
    return leaves
