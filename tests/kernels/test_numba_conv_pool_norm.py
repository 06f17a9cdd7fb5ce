"""Numba convolution, pooling and batch-norm kernels equal their NumPy references over drawn
shapes, strides, paddings, dilations, groups, dtypes and memory layouts."""
from __future__ import annotations

from contextlib import ExitStack
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, strategies as st

import refnas.ops  # noqa: F401  (registers the NumPy references)
from refnas.kernels.numba_support import PARALLEL_MIN_SIZE
from tests.kernels.helpers import assert_close, layout, needs_numba, normal, numba_and_reference

pytestmark = needs_numba
DTYPES = st.sampled_from([np.float32, np.float64])


def _conv_case(data):
    """(x shape, w shape, stride, padding, dilation, groups, output hw) with a kernel that fits."""
    groups = data.draw(st.sampled_from([1, 1, 2, 3]), label="groups")
    cg, og = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    kernel_hw = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    stride = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    padding = (data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2)))
    dilation = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    hw = tuple(max(d * (k - 1) + 1 - 2 * p, 1) + data.draw(st.integers(0, 6))
               for k, p, d in zip(kernel_hw, padding, dilation))
    out_hw = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                   for n, k, s, p, d in zip(hw, kernel_hw, stride, padding, dilation))
    x_shape = (data.draw(st.integers(1, 3)), groups * cg, *hw)
    w_shape = (groups * og, cg, *kernel_hw)
    return x_shape, w_shape, stride, padding, dilation, groups, out_hw


def _conv_strategy(data) -> ExitStack:
    """Patch the Numba convolution's layout choices to drawn values, so that every path runs on
    small inputs: per-sample or side-by-side ("wide") products, one or many chunks of samples,
    serial or parallel packing."""
    from refnas.kernels import numba_conv
    stack = ExitStack()
    for name, values in [("WIDE_BELOW", [0, 10**9]), ("CHUNK_BYTES", [1, 1 << 23]),
                         ("PARALLEL_PACK_MIN_SIZE", [0, 1 << 22])]:
        stack.enter_context(mock.patch.object(numba_conv, name,
                                              data.draw(st.sampled_from(values), label=name)))
    return stack


@given(data=st.data(), dtype=DTYPES)
def test_conv2d_forward_and_gradients(data, dtype):
    with _conv_strategy(data):
        _check_conv(data, dtype)


def _check_conv(data, dtype):
    x_shape, w_shape, stride, padding, dilation, groups, out_hw = _conv_case(data)
    geometry = (stride, padding, dilation, groups)
    x, w = normal(data, x_shape, dtype), normal(data, w_shape, dtype)
    gy = normal(data, (x_shape[0], w_shape[0], *out_hw), dtype)
    bias = normal(data, (w_shape[0],), dtype) if data.draw(st.booleans(), label="bias") else None
    _compare_conv(x, w, gy, geometry, bias)


def _compare_conv(x, w, gy, geometry, bias=None):
    """Forward (with the bias, when given), input gradient and weight gradient of the two
    backends agree, within a bound from the same kernel on absolute values."""
    fast, reference = numba_and_reference("conv2d_forward")
    magnitude = None if bias is None else np.abs(bias)
    assert_close(fast(x, w, *geometry, bias=bias), reference(x, w, *geometry, bias=bias),
                 bound=reference(np.abs(x), np.abs(w), *geometry, bias=magnitude))
    fast, reference = numba_and_reference("conv2d_input_grad")
    assert_close(fast(gy, w, x.shape, *geometry), reference(gy, w, x.shape, *geometry),
                 bound=reference(np.abs(gy), np.abs(w), x.shape, *geometry))
    fast, reference = numba_and_reference("conv2d_weight_grad")
    assert_close(fast(x, gy, w.shape, *geometry), reference(x, gy, w.shape, *geometry),
                 bound=reference(np.abs(x), np.abs(gy), w.shape, *geometry))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_pointwise_and_workload_shapes(dtype):
    """The 1x1 shortcut path (no packing) and a ResNet-like 3x3 layer, at a realistic size."""
    rng = np.random.default_rng(1)
    for x_shape, w_shape, stride, padding in [((4, 16, 8, 8), (32, 16, 1, 1), (1, 1), (0, 0)),
                                              ((4, 16, 8, 8), (32, 16, 1, 1), (2, 2), (0, 0)),
                                              ((8, 16, 16, 16), (16, 16, 3, 3), (1, 1), (1, 1))]:
        geometry = (stride, padding, (1, 1), 1)
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal(w_shape).astype(dtype)
        y = numba_and_reference("conv2d_forward")[1](x, w, *geometry)
        bias = rng.standard_normal(w_shape[0]).astype(dtype)
        _compare_conv(x, w, rng.standard_normal(y.shape).astype(dtype), geometry, bias)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_forward_keeps_columns_that_the_weight_gradient_uses(dtype, monkeypatch):
    """On a small map (the wide layout, one chunk) the forward hands back its packed columns;
    the weight gradient given them packs nothing and equals the reference; columns of another
    shape are not trusted (x is packed again)."""
    from refnas.kernels import numba_conv
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 6, 7, 7)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    geometry = ((1, 1), (1, 1), (1, 1), 2)
    forward, forward_reference = numba_and_reference("conv2d_forward")
    y, columns = forward(x, w, *geometry, keep_columns=True)
    assert columns is not None and columns.shape == (6 * 3 * 3, 5 * 7 * 7)
    assert_close(y, forward_reference(x, w, *geometry),
                 bound=forward_reference(np.abs(x), np.abs(w), *geometry))
    assert forward_reference(x, w, *geometry, keep_columns=True)[1] is None
    gy = rng.standard_normal(y.shape).astype(dtype)
    packs = []
    pack = numba_conv._Geometry.pack
    monkeypatch.setattr(numba_conv._Geometry, "pack",
                        lambda self, *args: packs.append(args[1]) or pack(self, *args))
    weight_grad, weight_grad_reference = numba_and_reference("conv2d_weight_grad")
    expected = weight_grad_reference(x, gy, w.shape, *geometry)
    bound = weight_grad_reference(np.abs(x), np.abs(gy), w.shape, *geometry)
    assert_close(weight_grad(x, gy, w.shape, *geometry, columns=columns), expected, bound=bound)
    assert packs == []
    assert_close(weight_grad(x, gy, w.shape, *geometry, columns=columns[:, 1:].copy()),
                 expected, bound=bound)
    assert packs == [True]


def test_conv2d_saves_the_kept_columns_only_while_recording():
    """The conv2d primitive saves the kernel's columns in its graph node (for the weight
    gradient) when a graph is recorded, and asks for none under no_grad."""
    import refnas as rn
    from refnas import ops
    rng = np.random.default_rng(4)
    # (one 6x6 map: too few outputs for the direct loops, so im2col, which keeps its columns)
    x = rn.tensor(rng.standard_normal((1, 2, 6, 6)).astype(np.float32))
    w = rn.tensor(rng.standard_normal((2, 2, 3, 3)).astype(np.float32), requires_grad=True)
    with rn.use_backend("numba"):
        y = ops.conv2d(x, w, padding=1)
        assert y._kwargs["columns"].shape == (2 * 9, 1 * 36)
        y.sum().backward()
        with rn.no_grad():
            assert ops.conv2d(x, w, padding=1)._op is None
    with rn.use_backend("numpy"):
        w_numpy = rn.tensor(w.data, requires_grad=True)
        ops.conv2d(x, w_numpy, padding=1).sum().backward()
    np.testing.assert_allclose(w.grad.data, w_numpy.grad.data, rtol=1e-5, atol=1e-4)


def _pool_case(data):
    kernel_size = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    stride = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    padding = tuple(data.draw(st.integers(0, k // 2)) for k in kernel_size)
    hw = tuple(max(k - 2 * p, 1) + data.draw(st.integers(0, 6))
               for k, p in zip(kernel_size, padding))
    shape = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)), *hw)
    return shape, kernel_size, stride, padding


def _distinct(data, shape, dtype):
    """Distinct values (no ties, so the argmax is unique) in random order and drawn layout."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    values = (rng.permutation(int(np.prod(shape))) - np.prod(shape) / 2).reshape(shape) * 0.25
    return layout(data, values.astype(dtype))


@given(data=st.data(), dtype=DTYPES)
def test_max_pool2d(data, dtype):
    shape, kernel_size, stride, padding = _pool_case(data)
    x = _distinct(data, shape, dtype)
    fast, reference = numba_and_reference("max_pool2d_forward")
    (y, argmax), (y_ref, argmax_ref) = fast(x, kernel_size, stride, padding), \
        reference(x, kernel_size, stride, padding)
    assert_close((y, argmax), (y_ref, argmax_ref))       # argmax: exactly equal
    gy = normal(data, y.shape, dtype)
    fast, reference = numba_and_reference("max_pool2d_backward")
    args = (gy, argmax_ref, shape, kernel_size, stride, padding)
    assert_close(fast(*args), reference(*args), bound=reference(np.abs(gy), *args[1:]))


@given(data=st.data(), dtype=DTYPES, count_include_pad=st.booleans())
def test_avg_pool2d(data, dtype, count_include_pad):
    shape, kernel_size, stride, padding = _pool_case(data)
    x = normal(data, shape, dtype)
    geometry = (kernel_size, stride, padding, count_include_pad)
    fast, reference = numba_and_reference("avg_pool2d_forward")
    y = reference(x, *geometry)
    assert_close(fast(x, *geometry), y, bound=reference(np.abs(x), *geometry))
    gy = normal(data, y.shape, dtype)
    fast, reference = numba_and_reference("avg_pool2d_backward")
    assert_close(fast(gy, shape, *geometry), reference(gy, shape, *geometry),
                 bound=reference(np.abs(gy), shape, *geometry))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pooling_at_workload_sizes(dtype):
    """CNN-S-sized inputs: the 2x2/2 fast path and a general window on many planes."""
    x = np.random.default_rng(2).standard_normal((64, 16, 28, 28)).astype(dtype)
    for geometry in [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1))]:
        fast, reference = numba_and_reference("max_pool2d_forward")
        y, argmax = reference(x, *geometry)
        assert_close(fast(x, *geometry), (y, argmax))
        fast, reference = numba_and_reference("max_pool2d_backward")
        assert_close(fast(y, argmax, x.shape, *geometry),
                     reference(y, argmax, x.shape, *geometry),
                     bound=reference(np.abs(y), argmax, x.shape, *geometry))
        fast, reference = numba_and_reference("avg_pool2d_forward")
        assert_close(fast(x, *geometry, False), reference(x, *geometry, False),
                     bound=reference(np.abs(x), *geometry, False))
        fast, reference = numba_and_reference("avg_pool2d_backward")
        assert_close(fast(y, x.shape, *geometry, True), reference(y, x.shape, *geometry, True),
                     bound=reference(np.abs(y), x.shape, *geometry, True))


@given(data=st.data(), dtype=DTYPES)
def test_max_pool2d_2x2_fast_path_ties_zeros_and_nan(data, dtype):
    """The 2x2/stride-2 loop on odd and even sides (the last row/column is dropped when odd),
    values from a small set (ties, +0 and -0, infinities) and, in some planes, NaN: y, its sign
    and argmax (first maximum in window order, first NaN) equal the reference exactly."""
    n, c = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    shape = (n, c, data.draw(st.integers(2, 9)), data.draw(st.integers(2, 9)))
    pool = [-np.inf, -1.0, -0.0, 0.0, 1.0, 2.0, np.inf]
    if data.draw(st.booleans(), label="with NaN"):
        pool.append(np.nan)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    x = layout(data, rng.choice(np.array(pool), size=shape).astype(dtype))
    geometry = ((2, 2), (2, 2), (0, 0))
    fast, reference = numba_and_reference("max_pool2d_forward")
    (y, argmax), (y_ref, argmax_ref) = fast(x, *geometry), reference(x, *geometry)
    np.testing.assert_array_equal(argmax, argmax_ref)
    np.testing.assert_array_equal(y, y_ref)                  # NaN where the reference has NaN
    np.testing.assert_array_equal(np.signbit(y), np.signbit(y_ref))
    assert argmax.dtype == np.int64 and y.dtype == dtype
    gy = normal(data, y.shape, dtype)
    fast, reference = numba_and_reference("max_pool2d_backward")
    args = (gy, argmax_ref, shape, *geometry)
    np.testing.assert_array_equal(fast(*args), reference(*args))    # one addend per cell


def test_max_pool2d_backward_rejects_an_argmax_outside_its_plane():
    """Numba does not check bounds: an index past the (H, W) plane must raise, not write
    outside the gradient."""
    gy = np.ones((1, 2, 2, 2))
    argmax = np.zeros((1, 2, 2, 2), np.int64)
    argmax[0, 1, 1, 1] = 16                                   # H * W = 16 for a 4x4 input
    fast, _ = numba_and_reference("max_pool2d_backward")
    with pytest.raises(ValueError, match="max_pool2d_backward: an argmax index"):
        fast(gy, argmax, (1, 2, 4, 4), (2, 2), (2, 2), (0, 0))


@given(data=st.data(), dtype=DTYPES)
def test_batch_norm(data, dtype):
    c = data.draw(st.integers(1, 5))
    large = data.draw(st.integers(0, 4), label="large") == 0      # the parallel path
    flat_shape = (data.draw(st.integers(2, 9)), c)
    image_shape = (data.draw(st.integers(1, 3)), c, data.draw(st.integers(1, 5)),
                   data.draw(st.integers(2, 5)))
    shape = data.draw(st.sampled_from([flat_shape, image_shape]))
    if large:
        shape = (2, c, 128, PARALLEL_MIN_SIZE // 256 + 1)
    shift = data.draw(st.sampled_from([0.0, 3.0]), label="mean offset")
    x = normal(data, shape, dtype) + dtype(shift)
    weight, bias = normal(data, (c,), dtype), normal(data, (c,), dtype)
    relu = data.draw(st.booleans(), label="relu")                  # the fused BN + ReLU
    fast, reference = numba_and_reference("batch_norm_forward")
    y, mean, invstd = reference(x, weight, bias, 1e-5, relu)
    # the bound: normalised values are O(|weight| * |xhat|), invstd has the condition of 1/sigma
    scale = np.abs(y) + np.abs(weight).max() * 4 + np.abs(bias).max()
    assert_close(fast(x, weight, bias, 1e-5, relu), (y, mean, invstd),
                 bound=(scale, np.abs(mean) + shift + 1, invstd * 10))
    gy = normal(data, shape, dtype)
    fast, reference = numba_and_reference("batch_norm_backward")
    want = reference(gy, x, weight, mean, invstd, bias, relu)
    m = x.size // c
    sums = np.abs(gy).reshape(shape[0], c, -1).sum(axis=(0, 2)) * 4       # ~ sum |g| |xhat|
    assert_close(fast(gy, x, weight, mean, invstd, bias, relu), want,
                 bound=(np.abs(want[0]) + np.abs(weight * invstd).max() * sums.max() / m * 4,
                        sums, sums))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool2d_nan_is_the_maximum_like_the_reference(dtype):
    """np.argmax takes the first NaN of a window; the Numba kernel's fast NaN-free loop must
    not change that (it checks each plane for NaN first)."""
    x = np.arange(2 * 3 * 6 * 6, dtype=dtype).reshape(2, 3, 6, 6)
    x[0, 1, 2, 3] = x[1, 2, 0, 0] = x[1, 2, 1, 1] = np.nan
    for geometry in [((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (1, 1))]:
        fast, reference = numba_and_reference("max_pool2d_forward")
        (y, argmax), (y_ref, argmax_ref) = fast(x, *geometry), reference(x, *geometry)
        np.testing.assert_array_equal(argmax, argmax_ref)
        np.testing.assert_array_equal(y, y_ref)          # NaN where the reference has NaN


def _compare_batch_norm(x, weight, bias, gy, relu=False):
    """Forward and backward of the two backends agree (the bounds of test_batch_norm)."""
    c = x.shape[1]
    fast, reference = numba_and_reference("batch_norm_forward")
    y, mean, invstd = reference(x, weight, bias, 1e-5, relu)
    scale = np.abs(y) + np.abs(weight).max() * 4 + np.abs(bias).max()
    assert_close(fast(x, weight, bias, 1e-5, relu), (y, mean, invstd),
                 bound=(scale, np.abs(mean) + 1, invstd * 10))
    fast, reference = numba_and_reference("batch_norm_backward")
    want = reference(gy, x, weight, mean, invstd, bias, relu)
    m = x.size // c
    sums = np.abs(gy).reshape(x.shape[0], c, -1).sum(axis=(0, 2)) * 4
    assert_close(fast(gy, x, weight, mean, invstd, bias, relu), want,
                 bound=(np.abs(want[0]) + np.abs(weight * invstd).max() * sums.max() / m * 4,
                        sums, sums))


def _compare_batch_norm_add_relu(x, weight, bias, shortcut, gz, gz_more=None):
    """The fused end of a residual block, max(BN(x) + s, 0), forward and backward, on the two
    backends; z's gradient is gz, or gz + gz_more (two parts, added by the kernel). Both
    backwards get the reference's output z, so that they mask by the same [z > 0] (a value
    within rounding of 0 may fall either side in the two forwards)."""
    c = x.shape[1]
    fast, reference = numba_and_reference("batch_norm_add_relu_forward")
    z, mean, invstd = reference(x, weight, bias, shortcut, 1e-5)
    scale = np.abs(z) + np.abs(shortcut) + np.abs(weight).max() * 4 + np.abs(bias).max()
    assert_close(fast(x, weight, bias, shortcut, 1e-5), (z, mean, invstd),
                 bound=(scale, np.abs(mean) + 1, invstd * 10))
    fast, reference = numba_and_reference("batch_norm_add_relu_backward")
    want = reference(gz, x, z, weight, mean, invstd, bias, gz_more)
    total = gz if gz_more is None else gz + gz_more
    np.testing.assert_array_equal(want[3], total * (z > 0))    # the shortcut's gradient
    m = x.size // c
    sums = np.abs(total).reshape(x.shape[0], c, -1).sum(axis=(0, 2)) * 4
    assert_close(fast(gz, x, z, weight, mean, invstd, bias, gz_more), want,
                 bound=(np.abs(want[0]) + np.abs(weight * invstd).max() * sums.max() / m * 4,
                        sums, sums, None))


@given(data=st.data(), dtype=DTYPES)
def test_batch_norm_add_relu(data, dtype):
    """max(BN(x) + s, 0) in the batch norm's passes equals the reference's batch norm, sum and
    maximum, on drawn shapes (N, C) and (N, C, H, W), non-contiguous operands among them, and
    on the parallel path's sizes."""
    c = data.draw(st.integers(1, 5))
    shape = data.draw(st.sampled_from([
        (data.draw(st.integers(2, 9)), c),
        (data.draw(st.integers(1, 3)), c, data.draw(st.integers(1, 5)),
         data.draw(st.integers(2, 5))),
        (2, c, 128, PARALLEL_MIN_SIZE // 256 + 1)]))
    x = normal(data, shape, dtype) + dtype(data.draw(st.sampled_from([0.0, 3.0])))
    shortcut, gz = normal(data, shape, dtype), normal(data, shape, dtype)
    if data.draw(st.booleans(), label="transposed shortcut"):
        shortcut = np.ascontiguousarray(shortcut.swapaxes(0, -1)).swapaxes(0, -1)
    weight, bias = normal(data, (c,), dtype), normal(data, (c,), dtype)
    parts = data.draw(st.booleans(), label="z's gradient in two parts")
    _compare_batch_norm_add_relu(x, weight, bias, shortcut, gz,
                                 normal(data, shape, dtype) if parts else None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 2, 257), (2, 3, 16, 16), (2, 3, 511), (4, 5),
                                   (128, 256), (5, 3, 1), (32, 16, 32, 32), (3, 5, 300, 300)])
@pytest.mark.parametrize("shared_pool", [True, False])
def test_batch_norm_block_edges_and_workload_size(shape, dtype, shared_pool, monkeypatch):
    """Rows shorter than, equal to and longer than a summation block (numba_norm.BLOCK),
    (N, C) and (N, C, 1) inputs (the loops along channels), the first ResNet-18 stage and a
    large image, with and without the fused ReLU, and with the fused shortcut and ReLU (a
    residual block's end; its gradient whole and in two parts); the large float32 images on
    ranges of
    channels in parallel (as while BLAS shares the pool; 5 channels over 4 ranges leave them
    uneven) and serially."""
    from refnas.kernels import numba_norm
    monkeypatch.setattr(numba_norm, "pool_shared", lambda: shared_pool)
    large = np.prod(shape) >= numba_norm.PARALLEL_MIN_SIZE and shape[1] > 1
    assert numba_norm._tasks(np.empty(shape, dtype).reshape(shape[0], shape[1], -1)) == (
        min(shape[1], 2 * numba_norm.numba.get_num_threads())
        if large and shared_pool and dtype == np.float32 else 1)
    rng = np.random.default_rng(3)
    c = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    weight, bias = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    for relu in (False, True):
        _compare_batch_norm(x, weight, bias, rng.standard_normal(shape).astype(dtype), relu)
    for parts in (1, 2):
        gz = [rng.standard_normal(shape).astype(dtype) for _ in range(parts)]
        _compare_batch_norm_add_relu(x, weight, bias, rng.standard_normal(shape).astype(dtype),
                                     *gz)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(8, 2, 6, 6), (64, 2)])
def test_batch_norm_variance_survives_a_mean_far_from_zero(shape, dtype):
    """One-pass statistics: with |mean| / sigma = 1e4 the unshifted formula E[x^2] - E[x]^2
    loses every digit in float32; the shifted sums keep the reference's accuracy. The first
    sample of channel 1 sits 30 sigma from the rest, so the shift is far from the mean there."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape) + 1e4
    x[0, 1] += 30.0
    x = x.astype(dtype)
    fast, _ = numba_and_reference("batch_norm_forward")
    ones, zeros = np.ones(2, dtype), np.zeros(2, dtype)
    _, mean, invstd = fast(x, ones, zeros, 1e-5)
    axes = (0,) + tuple(range(2, x.ndim))
    exact = 1.0 / np.sqrt(x.astype(np.float64).var(axis=axes) + 1e-5)
    np.testing.assert_allclose(invstd, exact, rtol=1e-4 if dtype == np.float32 else 1e-10)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=axes),
                               rtol=1e-6 if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (4, 3)])
def test_batch_norm_nan_stays_in_its_channel(shape, dtype):
    """A NaN makes its channel's statistics and outputs NaN, as in the reference, and leaves the
    other channels alone (the variance clamp at 0 must not turn a NaN into 0)."""
    x = np.random.default_rng(5).standard_normal(shape).astype(dtype)
    x[(2, 1) + (3,) * (len(shape) - 2)] = np.nan
    ones, zeros = np.ones(3, dtype), np.zeros(3, dtype)
    fast, reference = numba_and_reference("batch_norm_forward")
    for got, want in zip(fast(x, ones, zeros, 1e-5), reference(x, ones, zeros, 1e-5)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(fast(x, ones, zeros, 1e-5)[2][1])
