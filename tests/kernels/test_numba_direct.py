"""The direct (register-blocked, no im2col) Numba convolution equals the NumPy reference, and the
Numba convolution kernels hand it exactly the convolutions it is meant to take."""
from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import refnas.ops  # noqa: F401  (registers the NumPy references)
from tests.kernels.helpers import (assert_close, fused_multiply_adds, needs_numba, normal,
                                   numba_and_reference)

pytestmark = needs_numba


def _direct():
    from refnas.kernels import numba_direct
    return numba_direct


def _case(data):
    """An ungrouped float32 convolution whose channel counts leave partial blocks (OUT_BLOCK = 4
    output channels, GRAD_IN_BLOCK = 3 input channels), with strides up to 3 and padding up to
    one past the kernel's reach."""
    kernel_hw = (data.draw(st.integers(1, 5), label="kh"), data.draw(st.integers(1, 5), label="kw"))
    dilation = (data.draw(st.integers(1, 2), label="dh"), data.draw(st.integers(1, 2), label="dw"))
    # (column stride 2 more often: strided forwards and weight gradients run here only with
    # column phases in pairs)
    stride = (data.draw(st.integers(1, 3), label="sh"),
              data.draw(st.sampled_from([1, 2, 2, 3]), label="sw"))
    padding = tuple(data.draw(st.integers(0, d * (k - 1) + 1), label="padding")
                    for k, d in zip(kernel_hw, dilation))
    hw = tuple(max(d * (k - 1) + 1 - 2 * p, 1) + data.draw(st.integers(0, 9), label="extra")
               for k, p, d in zip(kernel_hw, padding, dilation))
    # more than IN_CHUNK = 16 input channels now and then: interleaved planes are swept in
    # chunks of channels; 8 samples make output rows of whole weight-gradient vectors
    x_shape = (data.draw(st.sampled_from([1, 2, 3, 8]), label="n"),
               data.draw(st.one_of(st.integers(1, 9), st.integers(17, 19)), label="c"), *hw)
    w_shape = (data.draw(st.integers(1, 9), label="k"), x_shape[1], *kernel_hw)
    out_hw = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                   for n, k, p, d, s in zip(hw, kernel_hw, padding, dilation, stride))
    return x_shape, w_shape, stride, padding, dilation, out_hw


@given(data=st.data())
def test_direct_loops_equal_the_reference(data):
    """On planes of one sample or of all samples interleaved, whichever the map size would
    choose (strided convolutions always interleave), and split into phases when strided (the
    forward and weight gradient only where the column phases pair; the rest are refused); the
    input gradient of strided or over-padded convolutions phase by phase."""
    direct = _direct()
    x_shape, w_shape, stride, padding, dilation, out_hw = _case(data)
    largest = data.draw(st.sampled_from([0, 10 ** 6]), label="interleave up to")
    with mock.patch.dict(direct.INTERLEAVE_MAX, forward=largest, weight_grad=largest,
                         strided=largest):
        _check_direct_loops(data, direct, x_shape, w_shape, stride, padding, dilation, out_hw)


def _check_direct_loops(data, direct, x_shape, w_shape, stride, padding, dilation, out_hw):
    geometry = (stride, padding, dilation, 1)
    x, w = (np.ascontiguousarray(normal(data, s, np.float32)) for s in (x_shape, w_shape))
    gy = np.ascontiguousarray(normal(data, (x_shape[0], w_shape[0], *out_hw), np.float32))
    bias = normal(data, (w_shape[0],), np.float32) if data.draw(st.booleans(), label="bias") \
        else None
    _, forward = numba_and_reference("conv2d_forward")
    _, input_grad = numba_and_reference("conv2d_input_grad")
    _, weight_grad = numba_and_reference("conv2d_weight_grad")
    assert_close(direct.input_grad(gy, w, padding, dilation, stride, x_shape),
                 input_grad(gy, w, x_shape, *geometry),
                 bound=input_grad(np.abs(gy), np.abs(w), x_shape, *geometry))
    phases = direct._phases(stride, dilation, w_shape[2:])
    if stride != (1, 1) and not direct._pairs_phases(stride[1], phases):
        # strided grids whose column phases do not pair are left to im2col
        assert not any(direct.applies(kind, x_shape, w_shape, *geometry, np.float32)
                       for kind in ("forward", "weight_grad"))
        return
    assert_close(direct.forward(x, w, bias, padding, dilation, stride),
                 forward(x, w, *geometry, bias=bias),
                 bound=forward(np.abs(x), np.abs(w), *geometry,
                               bias=None if bias is None else np.abs(bias)))
    assert_close(direct.weight_grad(x, gy, w_shape, padding, dilation, stride),
                 weight_grad(x, gy, w_shape, *geometry),
                 bound=weight_grad(np.abs(x), np.abs(gy), w_shape, *geometry))
    # the forward's planes of x, kept for the weight gradient when both run on one grid
    # (interleaved or not): the same sums
    y, kept = direct.forward(x, w, bias, padding, dilation, stride, keep=True)
    np.testing.assert_array_equal(y, direct.forward(x, w, bias, padding, dilation, stride))
    interleaved = direct._interleaves("forward", x_shape[0], *x_shape[2:], stride)
    one_grid = interleaved == direct._interleaves("weight_grad", x_shape[0], *x_shape[2:],
                                                  stride)
    masked = direct._masked_copies_apply(x_shape, w_shape, stride, padding, dilation)
    # (plain planes of 8 samples or more keep nothing: their passes go sample by sample)
    by_samples = direct._grid(x_shape, w_shape, stride, padding, dilation,
                              interleaved).by_samples()
    assert (kept is not None) == (one_grid and not masked and not by_samples)
    # (read sample by sample when not interleaved: other partial sums, so compared with the
    # reference)
    assert_close(direct.weight_grad(x, gy, w_shape, padding, dilation, stride, kept=kept),
                 weight_grad(x, gy, w_shape, *geometry),
                 bound=weight_grad(np.abs(x), np.abs(gy), w_shape, *geometry))
    # both gradients at once, gy padded once ("same" stride-1 convolutions; else None)
    both = direct.backward(gy, x, w, padding, dilation, kept=kept) if stride == (1, 1) else None
    if both is not None:
        assert_close(both, (input_grad(gy, w, x_shape, *geometry),
                            weight_grad(x, gy, w_shape, *geometry)),
                     bound=(input_grad(np.abs(gy), np.abs(w), x_shape, *geometry),
                            weight_grad(np.abs(x), np.abs(gy), w_shape, *geometry)))


@given(data=st.data())
def test_first_layers_on_column_masked_copies_equal_the_reference(data):
    """A network's first layers (few input channels, stride 1, "same" along the rows): the
    forward writes KW column-masked copies of x and stores its blocks straight into y (the
    last block of a plane overlapping the one before), and the weight gradient sweeps gy where
    it lies against those copies, kept from the forward or written again (from 8 samples on,
    sample by sample in work areas, nothing kept), whatever the kernel size, dilation and row
    padding, with and without a bias, the copies padded serially or on the pool."""
    direct = _direct()
    kh, kw = data.draw(st.integers(1, 5), label="kh"), data.draw(st.integers(1, 5), label="kw")
    dh, dw = data.draw(st.integers(1, 2), label="dh"), data.draw(st.integers(1, 2), label="dw")
    if dw * (kw - 1) % 2:                    # "same" along the rows needs an even reach
        kw += 1
    padding = (data.draw(st.integers(0, dh * (kh - 1)), label="ph"), dw * (kw - 1) // 2)
    c = data.draw(st.integers(1, 3), label="c")
    # output channels past a block of OUT_BLOCK = 4 now and then, partial blocks too
    k = kw * c + data.draw(st.integers(1, 6), label="extra k")
    n = data.draw(st.sampled_from([1, 2, 3, 9]), label="n")
    w_ = 8 * data.draw(st.integers(1, 3), label="w / 8")     # whole vectors of outputs
    h = max(dh * (kh - 1) + 1 - 2 * padding[0], 1) + data.draw(st.integers(0, 9), label="h")
    oh = h + 2 * padding[0] - dh * (kh - 1)
    if oh * w_ < direct.POS_BLOCK:           # (a block of outputs at least)
        h, oh = h + -(-direct.POS_BLOCK // w_) - oh, -(-direct.POS_BLOCK // w_)
    if n > 1 and h * w_ <= direct.INTERLEAVE_MAX["weight_grad"]:
        n = 1                                # (small maps of several samples interleave)
    x_shape, w_shape = (n, c, h, w_), (k, c, kh, kw)
    geometry = ((1, 1), padding, (dh, dw), 1)
    assert direct._masked_copies_apply(x_shape, w_shape, *geometry[:3])
    x, w = (np.ascontiguousarray(normal(data, shape, np.float32)) for shape in (x_shape, w_shape))
    bias = normal(data, (k,), np.float32) if data.draw(st.booleans(), label="bias") else None
    gy = np.ascontiguousarray(normal(data, (n, k, oh, w_), np.float32))
    _, forward = numba_and_reference("conv2d_forward")
    _, reference = numba_and_reference("conv2d_weight_grad")
    want = reference(x, gy, w_shape, *geometry)
    bound = reference(np.abs(x), np.abs(gy), w_shape, *geometry)
    parallel = data.draw(st.booleans(), label="parallel pad")
    with mock.patch.object(direct, "pool_shared", lambda: parallel):
        y, kept = direct.forward(x, w, bias, padding, (dh, dw), keep=True)
        by_samples = n >= direct.PADDED_HERE_MIN_SAMPLES
        assert kept is None if by_samples else isinstance(kept, direct.MaskedCopies)
        assert_close(y, forward(x, w, *geometry, bias=bias),
                     bound=forward(np.abs(x), np.abs(w), *geometry,
                                   bias=None if bias is None else np.abs(bias)))
        np.testing.assert_array_equal(y, direct.forward(x, w, bias, padding, (dh, dw)))
        # (planes of another grid: a forward of one output channel does not take the copies)
        _, other = direct.forward(x, np.zeros((1, c, kh, kw), np.float32), None, padding,
                                  (dh, dw), keep=True)
        assert not isinstance(other, direct.MaskedCopies)
        for planes in (kept, None, other):
            assert_close(direct.weight_grad(x, gy, w_shape, padding, (dh, dw), kept=planes),
                         want, bound=bound)


@pytest.mark.parametrize("n", [64, 4])
def test_first_layers_run_on_masked_copies(n):
    """CNN-S's and ResNet-18's first convolutions (1 and 3 input channels, 16 outputs) take
    the masked copies; a 16 -> 16 layer, a strided one and one whose output rows are not whole
    vectors lay gy out on x's grid instead. Of 8 samples or more (CNN-S's 64), the forward and
    the weight gradient go sample by sample, each sample's copies in a work area: the forward
    keeps nothing and the batch's copies are never written. Of fewer, the weight gradient
    writes the copies itself, or, as training runs it, takes the forward's."""
    direct = _direct()
    applies = direct._masked_copies_apply
    assert applies((64, 1, 28, 28), (16, 1, 3, 3), (1, 1), (1, 1), (1, 1))
    assert applies((32, 3, 32, 32), (16, 3, 3, 3), (1, 1), (1, 1), (1, 1))
    assert not applies((32, 16, 32, 32), (16, 16, 3, 3), (1, 1), (1, 1), (1, 1))
    assert not applies((32, 3, 32, 32), (16, 3, 3, 3), (2, 2), (1, 1), (1, 1))
    assert not applies((32, 1, 31, 31), (16, 1, 3, 3), (1, 1), (1, 1), (1, 1))
    assert not applies((32, 1, 28, 28), (16, 1, 3, 3), (1, 1), (0, 0), (1, 1))    # OW < W
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
    gy = rng.standard_normal((n, 16, 28, 28)).astype(np.float32)
    by_samples = n >= direct.PADDED_HERE_MIN_SAMPLES
    calls = []
    real = direct._masked_copies
    with mock.patch.object(direct, "_masked_copies",
                           lambda *a: calls.append(a[0].shape) or real(*a)):
        fast, reference = numba_and_reference("conv2d_weight_grad")
        geometry = ((1, 1), (1, 1), (1, 1), 1)
        want = reference(x, gy, (16, 1, 3, 3), *geometry)
        bound = reference(np.abs(x), np.abs(gy), (16, 1, 3, 3), *geometry)
        assert_close(fast(x, gy, (16, 1, 3, 3), *geometry), want, bound=bound)
        assert calls == ([] if by_samples else [x.shape])
        forward, _ = numba_and_reference("conv2d_forward")
        _, kept = forward(x, rng.standard_normal((16, 1, 3, 3)).astype(np.float32), *geometry,
                          keep_columns=True)
        assert kept is None if by_samples else isinstance(kept, direct.MaskedCopies)
        assert_close(fast(x, gy, (16, 1, 3, 3), *geometry, columns=kept), want, bound=bound)
    assert calls == ([] if by_samples else [x.shape])


@pytest.mark.parametrize("parallel_pad", [True, False])
@pytest.mark.parametrize("x_shape, w_shape, stride", [
    ((4, 16, 32, 32), (16, 16, 3, 3), 1), ((8, 16, 32, 32), (16, 16, 3, 3), 1),
    ((3, 3, 32, 32), (16, 3, 3, 3), 1), ((2, 1, 24, 24), (16, 1, 3, 3), 1),  # runs of 576
    ((2, 32, 16, 16), (36, 32, 3, 3), 1), ((32, 64, 8, 8), (64, 64, 3, 3), 1),
    ((32, 128, 4, 4), (128, 128, 3, 3), 1), ((32, 16, 32, 32), (32, 16, 3, 3), 2),
    ((32, 32, 16, 16), (64, 32, 3, 3), 2),
    # interleaved planes written eight samples at a time, then three one by one
    ((11, 8, 13, 13), (8, 8, 3, 3), 1), ((11, 8, 13, 13), (8, 8, 3, 3), 2)])
def test_direct_loops_at_workload_sizes(x_shape, w_shape, stride, parallel_pad, monkeypatch):
    """ResNet-18-like layers through the registered Numba kernels, which take the direct path
    there (the 8x8 and 4x4 maps and the strided layers on interleaved planes; the strided
    input gradients phase by phase onto maps of 64+ outputs, else with im2col; from 8 samples
    on, the forward tasks pad their own samples), in float32, with the planes padded in
    parallel (BLAS sharing the pool) or serially; the scratch planes of one layer do not leak
    into the next."""
    direct = _direct()
    monkeypatch.setattr(direct, "pool_shared", lambda: parallel_pad)
    rng = np.random.default_rng(7)
    pad = w_shape[2] // 2
    geometry = ((stride, stride), (pad, pad), (1, 1), 1)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    out_hw = [(n + 2 * pad - w_shape[2]) // stride + 1 for n in x_shape[2:]]
    gy = rng.standard_normal((x_shape[0], w_shape[0], *out_hw)).astype(np.float32)
    for kind in ("forward", "input_grad", "weight_grad"):
        assert direct.applies(kind, x_shape, w_shape, *geometry, np.float32) == (
            kind != "input_grad" or stride == 1
            or (w_shape[1] >= direct.PHASES_MIN_CHANNELS and out_hw[0] * out_hw[1] >= 64))
    for name, args, magnitudes, kwargs in [
            ("conv2d_forward", (x, w), (np.abs(x), np.abs(w)), {"bias": bias}),
            ("conv2d_input_grad", (gy, w, x_shape), (np.abs(gy), np.abs(w), x_shape), {}),
            ("conv2d_weight_grad", (x, gy, w_shape), (np.abs(x), np.abs(gy), w_shape), {})]:
        fast, reference = numba_and_reference(name)
        bound_kwargs = {"bias": np.abs(bias)} if kwargs else {}
        assert_close(fast(*args, *geometry, **kwargs), reference(*args, *geometry, **kwargs),
                     bound=reference(*magnitudes, *geometry, **bound_kwargs))


@given(data=st.data())
def test_each_tap_skips_exactly_the_outputs_where_it_reads_padding(data):
    """The taps' table (``_tap_table``): tap (p, q) is marked inside the image for output
    row i exactly when s_h i + p d_h - p_h lies in [0, H), and for the positions of column j
    (j * lanes .. on interleaved planes) exactly when s_w j + q d_w - p_w lies in [0, W); the
    table's first row is the taps' offsets. Checked cell by cell against that definition."""
    direct = _direct()
    x_shape, w_shape, stride, padding, dilation, out_hw = _case(data)
    assume(min(out_hw) > 0 and (stride == (1, 1) or direct._pairs_phases(
        stride[1], direct._phases(stride, dilation, w_shape[2:]))))
    interleave = data.draw(st.booleans(), label="interleave")
    grid = direct._Grid(x_shape, w_shape, stride, padding, dilation, interleave)
    taps = grid.offsets.size
    table = grid.taps.reshape(5, taps)
    np.testing.assert_array_equal(table[0], grid.offsets)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    for tap in range(taps):
        p, q = divmod(tap, w_shape[3])
        for i in range(out_hw[0]):
            assert (table[1, tap] <= i < table[2, tap]) == (0 <= sh * i + p * dh - ph < x_shape[2])
        for j in range(out_hw[1]):
            inside = 0 <= sw * j + q * dw - pw < x_shape[3]
            for at in (j * grid.lanes, (j + 1) * grid.lanes - 1):
                assert (table[3, tap] <= at < table[4, tap]) == inside
    # the table that never skips
    assert (grid.taps_anywhere.reshape(5, taps)[1::2] == 0).all()
    assert (grid.taps_anywhere.reshape(5, taps)[2::2] >= 1 << 40).all()


def test_taps_that_read_only_padding_are_skipped():
    """Swept row by row (ResNet-18's 4x4 maps, samples interleaved), the loops skip a tap for
    the rows where it reads only padding, as oneDNN does: a NaN weight at tap (0, 1) makes
    every output NaN but those of row 0, which equal the convolution without that tap
    (PyTorch gives the same; the NumPy reference, which multiplies the padding's zeros by
    NaN, gives NaN everywhere). Likewise an infinite output gradient in row 0 leaves the
    weight gradient of the taps (0, q) finite, the sums without that row's products with the
    padding. A loop that summed the skipped taps fails both."""
    direct = _direct()
    rng = np.random.default_rng(3)
    x_shape, w_shape, padding = (32, 8, 4, 4), (8, 8, 3, 3), (1, 1)
    geometry = ((1, 1), padding, (1, 1), 1)
    assert direct._interleaves("forward", 32, 4, 4) and direct._interleaves("weight_grad", 32, 4, 4)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    _, reference = numba_and_reference("conv2d_forward")
    without = w.copy()
    without[:, :, 0, 1] = 0
    w[:, :, 0, 1] = np.nan
    for y in (direct.forward(x, w, None, padding, (1, 1)),
              direct.input_grad(x, w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1], padding, (1, 1),
                                (1, 1), x_shape)):
        assert np.isnan(y[:, :, 1:]).all()
        assert_close(y[:, :, :1], reference(x, without, *geometry)[:, :, :1],
                     bound=reference(np.abs(x), np.abs(without), *geometry)[:, :, :1])
    gy = rng.standard_normal(x_shape).astype(np.float32)
    gy[:, :, 0] = np.inf
    gw = direct.weight_grad(x, gy, w_shape, padding, (1, 1))
    finite = gy.copy()
    finite[:, :, 0] = 0
    _, weight_grad = numba_and_reference("conv2d_weight_grad")
    assert_close(gw[:, :, 0], weight_grad(x, finite, w_shape, *geometry)[:, :, 0],
                 bound=weight_grad(np.abs(x), np.abs(finite), w_shape, *geometry)[:, :, 0])
    assert not np.isfinite(gw[:, :, 1:]).any()


def test_strided_input_gradients_skip_the_taps_that_read_past_the_output_gradient():
    """By phases (stride 2 onto 4x4 output maps, samples interleaved, swept row by row), a
    tap reads the padding past gy where no output reads the cell of x through it; those reads
    are skipped. With a NaN weight at tap (0, 1), the input gradient is then NaN exactly
    where the reference (the adjoint, summing over the outputs that read each cell) has it:
    x's rows 1, 3, 5 at even columns, while row 7, which tap (0, 1) reads for no output, stays
    finite and equal to the reference; summing the padding's zeros times NaN, it was NaN."""
    direct = _direct()
    rng = np.random.default_rng(5)
    x_shape, w_shape, stride, padding = (32, 8, 8, 8), (8, 8, 3, 3), (2, 2), (1, 1)
    gy = rng.standard_normal((32, 8, 4, 4)).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    w[:, :, 0, 1] = np.nan
    plan = direct._phase_plan(x_shape, w_shape, gy.shape, stride, padding, (1, 1))
    # (the phase plan's convolution of gy runs on interleaved planes, swept row by row)
    assert direct._interleaves("strided", *gy.shape[:1], *gy.shape[2:])
    assert direct._grid(gy.shape, plan.w_shape, (1, 1), plan.padding, (1, 1), True).sweeps > 1
    got = direct.input_grad(gy, w, padding, (1, 1), stride, x_shape)
    _, reference = numba_and_reference("conv2d_input_grad")
    want = reference(gy, w, x_shape, stride, padding, (1, 1), 1)
    nan = np.zeros(x_shape, bool)
    nan[:, :, 1:7:2, 0::2] = True
    np.testing.assert_array_equal(np.isnan(want), nan)
    np.testing.assert_array_equal(np.isnan(got), nan)
    assert_close(np.where(nan, 0, got), np.where(nan, 0, want),
                 bound=np.where(nan, 0, reference(np.abs(gy), np.nan_to_num(np.abs(w)), x_shape,
                                                  stride, padding, (1, 1), 1)))


def _assert_runs_inside_rows(x_shape, w_shape, stride, padding, dilation):
    """The input gradient by phases writes the first ``runs`` cells of a phase's row by
    read-modify-writes of 16 columns from the even column at or before the row's first cell
    (``_put_evens_8``). Those spans must lie inside the row: one reaching into the next row
    would rewrite cells that another thread may be writing, a race that comparisons with the
    reference would rarely see. Runs are whole vectors of 8 of the row's cells, and only
    with a column stride of 2. Returns the rows' runs."""
    direct = _direct()
    out_hw = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, p, d, s in
                   zip(x_shape[2:], w_shape[2:], padding, dilation, stride))
    plan = direct._PhasePlan(x_shape, w_shape, (x_shape[0], w_shape[0], *out_hw), stride,
                             padding, dilation)
    width, all_runs = x_shape[3], []
    for row in plan.place.reshape(-1, direct._PLACE):
        first, column_step, count_w, runs, parity = row[1], row[3], row[7], row[13], row[14]
        column = first % width
        assert parity == column % 2 and runs % 8 == 0 and 0 <= runs <= count_w
        if runs:
            assert column_step == 2
            # the last span covers columns start + 2 * (runs - 8) .. start + 2 * runs - 1
            assert column - parity >= 0 and column - parity + 2 * runs <= width
        all_runs.append(int(runs))
    return all_runs


@given(data=st.data())
def test_the_phases_vector_runs_stay_inside_their_rows(data):
    """:func:`_assert_runs_inside_rows` on drawn geometries (any stride, dilation, padding)."""
    x_shape, w_shape, stride, padding, dilation, out_hw = _case(data)
    assume(min(out_hw) > 0)
    _assert_runs_inside_rows(x_shape, w_shape, stride, padding, dilation)


def test_the_phases_vector_runs_stay_inside_rows_of_every_width():
    """The same for every width from 1 to 40 (each parity of the span's room), kernels of 1 to
    5 columns, column padding up to 2, dilation 1 and 2, column stride 2; and ResNet-18's
    first strided layer (32x32 maps, 3x3, stride 2, padding 1) writes every phase's 16 cells
    of a row as two runs of 8."""
    for width in range(1, 41):
        for kw in range(1, 6):
            for pw in range(3):
                for dw in (1, 2):
                    if width + 2 * pw >= dw * (kw - 1) + 1:
                        _assert_runs_inside_rows((1, 4, 5, width), (4, 4, 3, kw), (2, 2),
                                                 (1, pw), (1, dw))
    assert _assert_runs_inside_rows((32, 16, 32, 32), (32, 16, 3, 3), (2, 2), (1, 1),
                                    (1, 1)) == [16] * 4


def test_the_numba_kernels_hand_the_direct_loops_their_convolutions():
    """Float32 ungrouped convolutions, of any stride and padding, with at least MIN_POSITIONS
    (64) outputs on their planes (a sample's map, or all samples' interleaved maps) go to the
    direct loops, whatever their channel counts; the input gradients that go phase by phase
    only onto maps of 64 outputs or more, from 3 input channels; float64, grouped and small
    ones stay with im2col."""
    direct = _direct()
    calls = []
    spies = {name: (lambda name, real: lambda *a, **k: calls.append(name) or real(*a, **k))(
        name, getattr(direct, name)) for name in ("forward", "input_grad", "weight_grad")}
    rng = np.random.default_rng(3)

    def run(x_shape, w_shape, stride=(1, 1), padding=(1, 1), groups=1, dtype=np.float32,
            keep_columns=True):
        calls.clear()
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal(w_shape).astype(dtype)
        geometry = (stride, padding, (1, 1), groups)
        forward, _ = numba_and_reference("conv2d_forward")
        with mock.patch.multiple(direct, **spies):
            y = forward(x, w, *geometry, keep_columns=keep_columns)
            y = y[0] if keep_columns else y
            numba_and_reference("conv2d_input_grad")[0](y, w, x_shape, *geometry)
            numba_and_reference("conv2d_weight_grad")[0](x, y, w_shape, *geometry)
        return sorted(calls)

    assert run((2, 8, 16, 16), (8, 8, 3, 3)) == ["forward", "input_grad", "weight_grad"]
    assert run((2, 8, 16, 16), (8, 8, 3, 3), dtype=np.float64) == []
    assert run((2, 8, 32, 32), (8, 8, 3, 3), stride=(2, 2)) == [
        "forward", "input_grad", "weight_grad"]
    # (strided 1x1 ones go to numba_pointwise)
    assert run((2, 8, 32, 32), (8, 8, 1, 1), stride=(2, 2), padding=(0, 0)) == []
    assert run((2, 8, 16, 16), (8, 8, 3, 3), stride=(2, 2)) == [          # 8x8 outputs
        "forward", "input_grad", "weight_grad"]
    assert run((4, 8, 8, 8), (8, 8, 3, 3), stride=(2, 2)) == ["forward", "weight_grad"]
    assert run((1, 8, 14, 14), (8, 8, 3, 3), stride=(2, 2)) == []               # 49 outputs
    assert run((2, 8, 16, 16), (8, 4, 3, 3), groups=2) == []
    assert run((2, 8, 16, 16), (8, 8, 3, 3), padding=(3, 3)) == [
        "forward", "input_grad", "weight_grad"]
    assert run((2, 8, 8, 8), (8, 8, 3, 3)) == ["forward", "input_grad", "weight_grad"]
    assert run((2, 8, 8, 8), (8, 8, 3, 3), keep_columns=False) == [
        "forward", "input_grad", "weight_grad"]
    assert run((1, 8, 7, 8), (8, 8, 3, 3)) == []                                # 56 outputs
    assert run((4, 8, 4, 4), (8, 8, 3, 3)) == ["forward", "input_grad", "weight_grad"]  # 4 x 16
    assert run((3, 8, 4, 4), (8, 8, 3, 3)) == []                                # 3 x 16
    # few channels: blocks filled with copies of the last channel still beat thin products
    assert run((2, 1, 16, 16), (8, 1, 3, 3)) == ["forward", "input_grad", "weight_grad"]
    assert run((2, 8, 16, 16), (2, 8, 3, 3)) == ["forward", "input_grad", "weight_grad"]
    # strided input gradients by phases from PHASES_MIN_CHANNELS = 3 input channels
    assert run((2, 3, 32, 32), (8, 3, 3, 3), stride=(2, 2)) == [
        "forward", "input_grad", "weight_grad"]
    assert run((2, 2, 32, 32), (8, 2, 3, 3), stride=(2, 2)) == ["forward", "weight_grad"]


def test_the_direct_forward_keeps_its_planes_only_for_a_weight_gradient_on_its_grid():
    """Stride-1 forwards and weight gradients interleave the same maps (up to 256 positions),
    so a direct forward asked for its columns keeps x's interleaved planes, and the weight
    gradient given them equals the reference. Where the weight gradient would run on another
    grid (here: its threshold patched to 0), the forward answers None, and the weight
    gradient lays x out itself."""
    direct = _direct()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    geometry = ((1, 1), (1, 1), (1, 1), 1)
    forward, forward_reference = numba_and_reference("conv2d_forward")
    weight_grad, weight_grad_reference = numba_and_reference("conv2d_weight_grad")
    for largest, kept in ((None, direct.PaddedInput), (0, type(None))):
        patch = {} if largest is None else {"weight_grad": largest}
        with mock.patch.dict(direct.INTERLEAVE_MAX, **patch):
            y, columns = forward(x, w, *geometry, keep_columns=True)
            assert isinstance(columns, kept)
            assert columns is None or columns.grid.lanes == 2
            assert_close(y, forward_reference(x, w, *geometry),
                         bound=forward_reference(np.abs(x), np.abs(w), *geometry))
            assert_close(weight_grad(x, gy, w.shape, *geometry, columns=columns),
                         weight_grad_reference(x, gy, w.shape, *geometry),
                         bound=weight_grad_reference(np.abs(x), np.abs(gy), w.shape, *geometry))


def test_the_direct_loops_compile_to_vector_code(tmp_path):
    """Compiled afresh (an empty Numba cache, in a new process), the three hot loops are
    fused multiply-adds on vector registers, with no gathers or scatters: the SLP vectoriser
    and the stack-allocated sums did their work. Without them the same loops run as scalar
    code, about ten times slower, and still give the right answer, so only this test would
    notice. (Compiled for the host's AVX-512 on a Zen 4 EPYC, the sums became gathers and
    scatters of the stack array, 60 times slower: see :func:`refnas.backend.numba_cpu_features`;
    this test failed there until refnas compiled for AVX2.)"""
    counts = fused_multiply_adds(tmp_path, "refnas.kernels.numba_direct", {
        "forward": "m._JOBS[m._FORWARD]", "weight_grad": "m._JOBS[m._WEIGHT_GRAD]",
        "masked_forward": "m._JOBS[m._MASKED_FORWARD]"})
    assert all(vector >= 8 and gathers == 0 for vector, _, gathers in counts.values()), counts


@pytest.mark.parametrize("c, kernel_hw, hw", [
    (2, (3, 3), (11, 12)), (4, (1, 3), (11, 12)), (5, (3, 3), (11, 12)),   # samples interleaved
    (16, (3, 3), (11, 12)), (8, (3, 2), (11, 12)),
    (16, (3, 3), (17, 17)), (7, (1, 3), (20, 18))])                       # (N, C) planes
def test_weight_gradients_with_taps_in_the_blocks_slots(c, kernel_hw, hw):
    """Stride-1 weight gradients of a few channels, not whole blocks, whose taps are whole
    blocks: each block is one channel with three of its taps in the slots; equal to the
    reference, through the direct loops alone and through conv2d_backward (ȳ's padded
    planes shared with the input gradient), on both layouts of the planes."""
    direct = _direct()
    taps = kernel_hw[0] * kernel_hw[1]
    assert direct._taps_in_slots(c, taps, (1, 1)) and not direct._taps_in_slots(c, taps, (2, 2))
    rng = np.random.default_rng(c)
    x = rng.standard_normal((3, c, *hw)).astype(np.float32)
    w = rng.standard_normal((5, c, *kernel_hw)).astype(np.float32)
    padding = (kernel_hw[0] // 2, kernel_hw[1] // 2)
    geometry = ((1, 1), padding, (1, 1), 1)
    forward, _ = numba_and_reference("conv2d_forward")
    gy = rng.standard_normal(forward(x, w, *geometry).shape).astype(np.float32)
    _, reference = numba_and_reference("conv2d_weight_grad")
    want = reference(x, gy, w.shape, *geometry)
    bound = reference(np.abs(x), np.abs(gy), w.shape, *geometry)
    assert_close(direct.weight_grad(x, gy, w.shape, padding, (1, 1)), want, bound=bound)
    backward, _ = numba_and_reference("conv2d_backward")
    _, kept = forward(x, w, *geometry, keep_columns=True)
    assert_close(backward(gy, x, w, *geometry, columns=kept)[1], want, bound=bound)


@pytest.mark.parametrize("n, c, k, hw, stride", [
    (9, 17, 8, (12, 12), 1),         # five whole blocks, two channels left over
    (9, 5, 7, (12, 12), 2),          # one block, two left over, on phase planes
    (9, 16, 8, (16, 16), 2),         # ResNet-18's first strided layer's 16: one left over
    (3, 4, 6, (11, 12), 2)])         # interleaved samples
def test_channels_left_over_by_whole_blocks_put_their_taps_in_the_slots(n, c, k, hw, stride,
                                                                         monkeypatch):
    """The channels that whole blocks of GRAD_IN_BLOCK leave over are blocks of one channel
    with their taps in the slots: the weight gradient equals the reference, and, to the bit,
    what blocks repeating the last channel give."""
    direct = _direct()
    slots_from, c_blocks = direct._slot_blocks(c, 9, (stride, stride))
    assert (slots_from, c_blocks) == (c // direct.GRAD_IN_BLOCK,
                                      slots_from + c % direct.GRAD_IN_BLOCK)
    rng = np.random.default_rng(c + stride)
    x = rng.standard_normal((n, c, *hw)).astype(np.float32)
    w = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    geometry = ((stride, stride), (1, 1), (1, 1), 1)
    forward, _ = numba_and_reference("conv2d_forward")
    gy = rng.standard_normal(forward(x, w, *geometry).shape).astype(np.float32)
    _, reference = numba_and_reference("conv2d_weight_grad")
    got = direct.weight_grad(x, gy, w.shape, (1, 1), (1, 1), (stride, stride))
    assert_close(got, reference(x, gy, w.shape, *geometry),
                 bound=reference(np.abs(x), np.abs(gy), w.shape, *geometry))
    blocks = -(-c // direct.GRAD_IN_BLOCK)
    monkeypatch.setattr(direct, "_slot_blocks", lambda *args: (blocks, blocks))
    np.testing.assert_array_equal(
        direct.weight_grad(x, gy, w.shape, (1, 1), (1, 1), (stride, stride)), got)


def test_kept_planes_of_another_convolution_are_ignored():
    """The weight gradient uses the forward's planes only when they are its own grid's: planes
    of another shape (or an im2col column matrix) are not read."""
    direct = _direct()
    rng = np.random.default_rng(11)
    x = rng.standard_normal((32, 64, 8, 8)).astype(np.float32)
    other = rng.standard_normal((32, 64, 4, 4)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((32, 64, 8, 8)).astype(np.float32)
    _, kept = direct.forward(other, w, None, (1, 1), (1, 1), keep=True)
    assert isinstance(kept, direct.PaddedInput)
    _, reference = numba_and_reference("conv2d_weight_grad")
    want = reference(x, gy, w.shape, (1, 1), (1, 1), (1, 1), 1)
    bound = reference(np.abs(x), np.abs(gy), w.shape, (1, 1), (1, 1), (1, 1), 1)
    for columns in (kept, np.zeros((3, 3), np.float32)):
        fast, _ = numba_and_reference("conv2d_weight_grad")
        assert_close(fast(x, gy, w.shape, (1, 1), (1, 1), (1, 1), 1, columns=columns), want,
                     bound=bound)
    # and through the registered forward, which hands its planes over
    forward, _ = numba_and_reference("conv2d_forward")
    _, own = forward(x, w, (1, 1), (1, 1), (1, 1), 1, keep_columns=True)
    assert isinstance(own, direct.PaddedInput)
    assert_close(fast(x, gy, w.shape, (1, 1), (1, 1), (1, 1), 1, columns=own), want, bound=bound)


@pytest.mark.parametrize("x_shape, w_shape, padding, dilation", [
    ((4, 5, 17, 17), (6, 5, 3, 3), 1, 1),          # plain planes padded in one pass
    ((4, 6, 25, 27), (8, 6, 3, 3), 1, 1),          # a weight gradient's run in one strip (728)
    ((32, 64, 8, 8), (64, 64, 3, 3), 1, 1),        # interleaved
    ((32, 128, 4, 4), (128, 128, 3, 3), 1, 1),
    ((4, 4, 20, 18), (5, 4, 3, 3), 2, 2),          # dilated
    ((4, 6, 17, 17), (7, 6, 5, 5), 2, 1)])         # 5x5
def test_both_gradients_share_the_padded_output_gradient(x_shape, w_shape, padding, dilation,
                                                         monkeypatch):
    """conv2d_backward of a stride-1 "same" convolution whose forward kept x's planes reads gy
    from the input gradient's planes (it never lays gy out for the weight gradient) and equals
    the two reference kernels; without kept planes it runs the two kernels."""
    direct = _direct()
    rng = np.random.default_rng(5)
    geometry = ((1, 1), (padding, padding), (dilation, dilation), 1)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    forward, _ = numba_and_reference("conv2d_forward")
    y, kept = forward(x, w, *geometry, keep_columns=True)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    fast, reference = numba_and_reference("conv2d_backward")
    want = reference(gy, x, w, *geometry)
    bound = reference(np.abs(gy), np.abs(x), np.abs(w), *geometry)
    laid_out = []
    real = direct._Grid.output_gradient
    monkeypatch.setattr(direct._Grid, "output_gradient",
                        lambda self, g: laid_out.append(g.shape) or real(self, g))
    assert_close(fast(gy, x, w, *geometry, columns=kept), want, bound=bound)
    assert isinstance(kept, direct.PaddedInput) and laid_out == []
    assert_close(fast(gy, x, w, *geometry), want, bound=bound)
    assert laid_out == [gy.shape]


@contextlib.contextmanager
def _threads(count):
    """Numba's and BLAS's threads set to ``count`` together (BLAS's jobs on Numba's pool must
    all run at once), then back."""
    from refnas import backend
    previous = backend.num_threads()
    backend.set_num_threads(count)
    try:
        yield
    finally:
        backend.set_num_threads(previous)


def _forward_by_samples(direct, x_shape, w_shape, geometry, monkeypatch):
    """The forward of a convolution on plain planes of 8 samples or more, with NaN left in the
    work areas by an earlier call: it keeps nothing and equals the reference. Returns x, w, a
    drawn gy, and the list into which every later layout of a whole batch's planes (x's or
    ȳ's) is recorded."""
    rng = np.random.default_rng(sum(x_shape) + sum(w_shape))
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    laid_out = []
    for name in ("padded_input", "output_gradient"):
        real = getattr(direct._Grid, name)
        monkeypatch.setattr(direct._Grid, name, lambda self, a, *args, real=real, **kw:
                            laid_out.append(a.shape) or real(self, a, *args, **kw))
    direct.scratch(1 << 22, np.float32, "direct input")[:] = np.nan
    forward, forward_reference = numba_and_reference("conv2d_forward")
    y, kept = forward(x, w, *geometry, bias=bias, keep_columns=True)
    assert kept is None
    assert_close(y, forward_reference(x, w, *geometry, bias=bias),
                 bound=forward_reference(np.abs(x), np.abs(w), *geometry, bias=np.abs(bias)))
    return x, w, rng.standard_normal(y.shape).astype(np.float32), laid_out


@pytest.mark.parametrize("x_shape, w_shape, padding, dilation", [
    ((32, 16, 32, 32), (16, 16, 3, 3), 1, 1),      # ResNet-18's first layers
    ((9, 5, 17, 19), (7, 5, 3, 3), 1, 1),          # groups of one and two samples; partial blocks
    ((8, 4, 20, 18), (5, 4, 3, 3), 2, 2),          # dilated
    ((8, 6, 17, 17), (7, 6, 5, 5), 2, 1),          # 5x5
    ((8, 20, 17, 17), (33, 20, 3, 3), 1, 1)])      # whole blocks of input channels (not slots)
@pytest.mark.parametrize("threads", [1, 2])
def test_plain_planes_of_eight_samples_or_more_go_sample_by_sample(x_shape, w_shape, padding,
                                                                    dilation, threads,
                                                                    monkeypatch):
    """On plain planes of 8 samples or more, the forward and both gradients go sample by
    sample in work areas: the forward keeps nothing, no pass lays out the batch's planes, and
    forward, input gradient alone, and both gradients at once (each sample's part of the weight
    gradient from ȳ's planes of its input gradient) equal the reference kernels, whatever the
    number of threads (groups per thread times threads: 4 or 8 groups). The weight gradient is
    the same to the bit from call to call (the groups' parts added in their order), and no
    NaN left in the work areas reaches it."""
    direct = _direct()
    geometry = ((1, 1), (padding, padding), (dilation, dilation), 1)
    with _threads(threads):
        x, w, gy, laid_out = _forward_by_samples(direct, x_shape, w_shape, geometry,
                                                 monkeypatch)
        _, input_grad = numba_and_reference("conv2d_input_grad")
        _, weight_grad = numba_and_reference("conv2d_weight_grad")
        want = (input_grad(gy, w, x_shape, *geometry), weight_grad(x, gy, w_shape, *geometry))
        bound = (input_grad(np.abs(gy), np.abs(w), x_shape, *geometry),
                 weight_grad(np.abs(x), np.abs(gy), w_shape, *geometry))
        assert_close(direct.input_grad(gy, w, (padding, padding), (dilation, dilation)),
                     want[0], bound=bound[0])
        backward, _ = numba_and_reference("conv2d_backward")
        both = backward(gy, x, w, *geometry)
        assert_close(both, want, bound=bound)
        np.testing.assert_array_equal(backward(gy, x, w, *geometry)[1], both[1])
        assert laid_out == []


@pytest.mark.parametrize("x_shape, w_shape, padding", [
    ((32, 16, 32, 32), (32, 16, 3, 3), 1),         # ResNet-18's first strided layer
    ((9, 5, 20, 22), (7, 5, 3, 3), 1),             # groups of one and two samples
    ((8, 3, 25, 18), (5, 3, 5, 5), 2)])            # 5x5, odd rows
@pytest.mark.parametrize("threads", [1, 2])
def test_strided_convolutions_of_eight_samples_or_more_go_sample_by_sample(
        x_shape, w_shape, padding, threads, monkeypatch):
    """A strided convolution on plain planes of 8 samples or more: the forward lays out each
    sample's phase planes in its group's work area and keeps nothing, and the weight gradient
    lays out each sample's phase planes of x and planes of ȳ there too (no pass lays out the
    batch); both equal the reference."""
    direct = _direct()
    geometry = ((2, 2), (padding, padding), (1, 1), 1)
    with _threads(threads):
        x, w, gy, laid_out = _forward_by_samples(direct, x_shape, w_shape, geometry,
                                                 monkeypatch)
        fast, reference = numba_and_reference("conv2d_weight_grad")
        assert_close(fast(x, gy, w_shape, *geometry), reference(x, gy, w_shape, *geometry),
                     bound=reference(np.abs(x), np.abs(gy), w_shape, *geometry))
        assert laid_out == []


@pytest.mark.parametrize("n, c, k, hw", [
    (8, 0, 4, 20), (2, 0, 4, 20), (32, 0, 4, 8),    # no input channels (plain, interleaved)
    (8, 4, 0, 20), (32, 4, 0, 8), (0, 4, 4, 20),    # no output channels, no samples
    (8, 0, 4, 3)])                                  # (im2col)
def test_empty_convolutions_equal_the_reference(n, c, k, hw):
    """Convolutions of empty arrays give the reference's answer (the bias alone, zero
    gradients), through the forward, each gradient and both at once. (The direct loops had
    left the sums of a convolution with no input channels unset, and the reference and
    im2col had failed to reshape empty matrices.)"""
    rng = np.random.default_rng(0)
    geometry = ((1, 1), (1, 1), (1, 1), 1)
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    forward, forward_reference = numba_and_reference("conv2d_forward")
    y, kept = forward(x, w, *geometry, bias=bias, keep_columns=True)
    np.testing.assert_array_equal(y, forward_reference(x, w, *geometry, bias=bias))
    gy = rng.standard_normal(y.shape).astype(np.float32)
    for name, args in (("conv2d_input_grad", (gy, w, x.shape)),
                       ("conv2d_weight_grad", (x, gy, w.shape))):
        fast, reference = numba_and_reference(name)
        np.testing.assert_array_equal(fast(*args, *geometry), reference(*args, *geometry))
    backward, reference = numba_and_reference("conv2d_backward")
    for got, want in zip(backward(gy, x, w, *geometry, columns=kept),
                         reference(gy, x, w, *geometry)):
        np.testing.assert_array_equal(got, want)


def test_conv2d_backward_without_a_graph_equals_the_two_primitives():
    """conv2d's VJP takes both gradients from kernel conv2d_backward when no graph of the
    backward pass is recorded, and from the two differentiable primitives with create_graph:
    the same gradients."""
    import refnas as rn
    rng = np.random.default_rng(9)
    x0 = rng.standard_normal((8, 16, 12, 12)).astype(np.float32)
    w0 = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    grads = []
    from refnas import backend
    for create_graph in (False, True):
        x, w = rn.tensor(x0, requires_grad=True), rn.tensor(w0, requires_grad=True)
        with rn.use_backend("numba"), backend.profile() as timing:
            y = rn.ops.conv2d(x, w, padding=1)
            (y * y).sum().backward(create_graph=create_graph)
        assert ("conv2d_backward" in timing.calls) == (not create_graph)
        grads.append((x.grad.data, w.grad.data))
    for fused, separate in zip(*grads):
        np.testing.assert_allclose(fused, separate, rtol=1e-5, atol=1e-3)
