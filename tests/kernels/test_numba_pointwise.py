"""Strided 1x1 convolutions (projection shortcuts) on their fused products equal the NumPy
reference, the registered Numba kernels hand them exactly those convolutions, and their loops
compile to vector code."""
from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refnas.ops  # noqa: F401  (registers the NumPy references)
from refnas.backend import kernel
from tests.kernels.helpers import (assert_close, fused_multiply_adds, needs_numba, normal,
                                   numba_and_reference)

pytestmark = needs_numba


def _pointwise():
    from refnas.kernels import numba_pointwise
    return numba_pointwise


def _check(x, w, bias, gy, stride):
    """All four registered kernels (forward, both gradients alone, and the fused backward)
    against the reference, each within the rounding bound of its sums."""
    geometry = (stride, (0, 0), (1, 1), 1)
    forward, forward_reference = numba_and_reference("conv2d_forward")
    input_grad, input_reference = numba_and_reference("conv2d_input_grad")
    weight_grad, weight_reference = numba_and_reference("conv2d_weight_grad")
    magnitudes = (np.abs(x), np.abs(w), np.abs(gy))
    bias_kwargs = {} if bias is None else {"bias": bias}
    bound_kwargs = {} if bias is None else {"bias": np.abs(bias)}
    assert_close(forward(x, w, *geometry, **bias_kwargs),
                 forward_reference(x, w, *geometry, **bias_kwargs),
                 bound=forward_reference(*magnitudes[:2], *geometry, **bound_kwargs))
    want_gx = input_reference(gy, w, x.shape, *geometry)
    bound_gx = input_reference(magnitudes[2], magnitudes[1], x.shape, *geometry)
    want_gw = weight_reference(x, gy, w.shape, *geometry)
    bound_gw = weight_reference(magnitudes[0], magnitudes[2], w.shape, *geometry)
    assert_close(input_grad(gy, w, x.shape, *geometry), want_gx, bound=bound_gx)
    assert_close(weight_grad(x, gy, w.shape, *geometry), want_gw, bound=bound_gw)
    backward = kernel("conv2d_backward", "numba")
    assert_close(backward(gy, x, w, *geometry), (want_gx, want_gw), bound=(bound_gx, bound_gw))
    # as a training step runs them: the forward keeps x̂^T, both backward kernels take it
    y, kept = forward(x, w, *geometry, keep_columns=True, **bias_kwargs)
    assert isinstance(kept, _pointwise().KeptColumns)
    assert_close(y, forward_reference(x, w, *geometry, **bias_kwargs),
                 bound=forward_reference(*magnitudes[:2], *geometry, **bound_kwargs))
    assert_close(weight_grad(x, gy, w.shape, *geometry, columns=kept), want_gw, bound=bound_gw)
    assert_close(backward(gy, x, w, *geometry, columns=kept), (want_gx, want_gw),
                 bound=(bound_gx, bound_gw))


@given(data=st.data())
def test_strided_pointwise_convolutions_equal_the_reference(data):
    """Channel counts on both sides of the register block (6 rows x 16 columns: a last block
    of rows that overlaps the one before, and columns past the last whole block through the
    zero-padded tail), strides up to 3 on either axis (2 has paths of its own), odd maps whose
    last row or column no output reads, rows of x̄ wide enough for its cells to go out as
    vector runs of 8 (and the cells after them), with and without bias, in every memory
    layout; sample groups of one and more."""
    stride = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 3)).filter(
        lambda s: s != (1, 1)), label="stride")
    n = data.draw(st.sampled_from([1, 2, 3, 9]), label="n")
    c, k = (data.draw(st.one_of(st.integers(6, 8), st.integers(11, 13), st.integers(15, 18),
                                st.integers(30, 34)), label=name) for name in ("c", "k"))
    # widths from 16 on give x̄'s rows runs of 8 cells written as vectors; even heights with
    # widths of 32 and 48 and a stride of 2, rows written whole without a memset
    hw = (data.draw(st.one_of(st.integers(1, 13), st.sampled_from([16, 32])), label="h"),
          data.draw(st.one_of(st.integers(1, 13), st.integers(14, 26), st.sampled_from([32, 48])),
                    label="w"))
    out_hw = tuple((size - 1) // s + 1 for size, s in zip(hw, stride))
    assert _pointwise().applies((n, c, *hw), (k, c, 1, 1), stride, (0, 0), (1, 1), 1,
                                np.float32)
    x = normal(data, (n, c, *hw), np.float32)
    w = normal(data, (k, c, 1, 1), np.float32)
    gy = normal(data, (n, k, *out_hw), np.float32)
    bias = normal(data, (k,), np.float32) if data.draw(st.booleans(), label="bias") else None
    _check(x, w, bias, gy, stride)


@pytest.mark.parametrize("x_shape, w_shape", [
    ((32, 16, 32, 32), (32, 16, 1, 1)), ((32, 32, 16, 16), (64, 32, 1, 1)),
    ((32, 64, 8, 8), (128, 64, 1, 1))])
def test_resnet18_shortcuts_equal_the_reference(x_shape, w_shape):
    """ResNet-18's three projection shortcuts at training size (groups of 8 samples per task
    for the weight gradient's shares, on 32x32, 16x16 and 8x8 maps)."""
    rng = np.random.default_rng(17)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    gy = rng.standard_normal((x_shape[0], w_shape[0], x_shape[2] // 2, x_shape[3] // 2)
                             ).astype(np.float32)
    _check(x, w, bias, gy, (2, 2))


@pytest.mark.parametrize("width", [15, 31])
def test_vector_runs_of_cells_stay_inside_their_row(width):
    """x̄'s cells go out as runs of 8 (cell, 0) pairs, 16 values from an even column; on odd
    widths whose last run would end one past the row, that run is left to the scalar loop.
    (One too far writes a zero into the first cell of the next sample, which the other
    thread has written by then: samples large enough that both threads work at once.)"""
    rng = np.random.default_rng(width)
    x_shape, w_shape, geometry = (9, 32, 31, width), (8, 32, 1, 1), ((2, 2), (0, 0), (1, 1), 1)
    w = rng.standard_normal(w_shape).astype(np.float32)
    gy = rng.standard_normal((9, 8, 16, (width + 1) // 2)).astype(np.float32)
    want = kernel("conv2d_input_grad", "numpy")(gy, w, x_shape, *geometry)
    bound = kernel("conv2d_input_grad", "numpy")(np.abs(gy), np.abs(w), x_shape, *geometry)
    for _ in range(5):
        assert_close(kernel("conv2d_input_grad", "numba")(gy, w, x_shape, *geometry), want,
                     bound=bound)


def test_columns_kept_for_another_convolution_are_ignored():
    """x̂^T kept by the forward of another input shape or stride is not read (it would give
    a wrong weight gradient, or read past its end): both backward kernels gather x̂ again."""
    rng = np.random.default_rng(9)
    forward = kernel("conv2d_forward", "numba")
    w = rng.standard_normal((8, 8, 1, 1)).astype(np.float32)
    _, foreign = forward(rng.standard_normal((2, 8, 8, 8)).astype(np.float32), w, (2, 2),
                         (0, 0), (1, 1), 1, keep_columns=True)
    for x_shape, stride in (((2, 8, 16, 16), (2, 2)), ((2, 8, 8, 8), (2, 1))):
        x = rng.standard_normal(x_shape).astype(np.float32)
        geometry = (stride, (0, 0), (1, 1), 1)
        gy = rng.standard_normal(forward(x, w, *geometry).shape).astype(np.float32)
        want = kernel("conv2d_weight_grad", "numpy")(x, gy, w.shape, *geometry)
        bound = kernel("conv2d_weight_grad", "numpy")(np.abs(x), np.abs(gy), w.shape, *geometry)
        assert_close(kernel("conv2d_weight_grad", "numba")(x, gy, w.shape, *geometry,
                                                             columns=foreign), want, bound=bound)
        assert_close(kernel("conv2d_backward", "numba")(gy, x, w, *geometry,
                                                          columns=foreign)[1], want, bound=bound)


def test_the_numba_kernels_hand_over_exactly_the_strided_pointwise_convolutions():
    """Float32, ungrouped, 1x1, unpadded and strided, with at least a block of rows (6) of
    channels on either side: the fused products; a stride-1 or padded 1x1 convolution, a 3x3
    one, float64, grouped ones and ones with fewer channels go elsewhere. The forward keeps
    x̂^T for them (N, L, channels in whole blocks of 16)."""
    pointwise = _pointwise()
    calls = []
    spies = {name: (lambda name, real: lambda *a, **k: calls.append(name) or real(*a, **k))(
        name, getattr(pointwise, name)) for name in ("forward", "backward")}
    rng = np.random.default_rng(5)

    def run(x_shape, w_shape, stride=(2, 2), padding=(0, 0), groups=1, dtype=np.float32):
        calls.clear()
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal(w_shape).astype(dtype)
        geometry = (stride, padding, (1, 1), groups)
        with mock.patch.multiple(pointwise, **spies):
            y, kept = kernel("conv2d_forward", "numba")(x, w, *geometry, keep_columns=True)
            kernel("conv2d_input_grad", "numba")(y, w, x_shape, *geometry)
            kernel("conv2d_weight_grad", "numba")(x, y, w_shape, *geometry)
            kernel("conv2d_backward", "numba")(y, x, w, *geometry, columns=kept)
        return calls.copy(), kept

    calls_made, kept = run((2, 8, 16, 16), (8, 8, 1, 1))
    assert calls_made == ["forward"] + ["backward"] * 3
    assert isinstance(kept, pointwise.KeptColumns) and kept.columns.shape == (2, 64, 16)
    assert run((2, 8, 16, 15), (8, 8, 1, 1), stride=(1, 3))[0] == ["forward"] + ["backward"] * 3
    for other in ({"stride": (1, 1)}, {"padding": (1, 1)}, {"dtype": np.float64}):
        assert run((2, 8, 16, 16), (8, 8, 1, 1), **other)[0] == []
    assert run((2, 8, 16, 16), (8, 8, 3, 3))[0] == []
    assert run((2, 8, 16, 16), (8, 4, 1, 1), groups=2)[0] == []
    # fewer channels than a block of rows, on either side
    assert run((2, 5, 16, 16), (8, 5, 1, 1))[0] == []
    assert run((2, 8, 16, 16), (5, 8, 1, 1))[0] == []
    assert run((2, 6, 16, 16), (6, 6, 1, 1))[0] == ["forward"] + ["backward"] * 3


def test_the_pointwise_loops_compile_to_vector_code(tmp_path):
    """Compiled afresh (an empty Numba cache, in a new process), the job's product (twelve
    multiply-adds per step, unrolled) is fused multiply-adds on vector registers, and none is
    scalar: the SLP vectoriser and the stack-allocated sums did their work. As scalar code the
    loops would still be right, only several times slower (inlined into the job at Numba's
    level, the product came out scalar: 16 scalar multiply-adds, no vector ones). No gathers
    or scatters either (see the direct loops' test of the same)."""
    (vector, scalar, gathers), = fused_multiply_adds(tmp_path, "refnas.kernels.numba_pointwise",
                                                     {"job": "m._JOB"}).values()
    assert vector >= 12 and scalar == 0 and gathers == 0, (vector, scalar, gathers)
