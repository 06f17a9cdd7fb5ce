r"""1x1 convolutions with a stride (ResNet's projection shortcuts), fused into matrix products.

A 1x1 convolution of stride :math:`(s_h, s_w)` without padding reads one input cell per output
and channel, so per sample n it is a matrix product with the subsampled input
:math:`\hat x_{n,c,l} = x_{n,c,\, s_h i,\, s_w j}` (l = (i, j), L = OH * OW positions):

.. math::
    y_{n,k,l} = b_k + \sum_c w_{k,c}\, \hat x_{n,c,l}, \qquad
    \bar x_{n,c,\, s_h i,\, s_w j} = \sum_k w_{k,c}\, \bar y_{n,k,l}, \qquad
    \bar w_{k,c} = \sum_{n,l} \bar y_{n,k,l}\, \hat x_{n,c,l},

and :math:`\bar x` is zero on every cell that no output reads. (He et al. 2016, "Deep residual
learning for image recognition", option B shortcuts.)

On the direct loops of :mod:`refnas.kernels.numba_direct` these layers took five passes
(x's phase planes laid out twice, gy once, x̄ zero-filled, then written every other cell),
at 20-22% of the matmul rate for 3 x 8.4 MFLOP that move about 7 MB. Here a job on Numba's pool
does everything for one sample (forward) or a group of samples (backward) while their data is
in its core's cache:

* the forward gathers :math:`\hat x_n` (C, L) and multiplies :math:`W \hat x_n` straight into
  y, the sums starting from the bias; in a training step it also keeps
  :math:`\hat x_n^\top` (L, C) for the weight gradient (:class:`KeptColumns`), transposed
  by 8 x 8 tiles in registers while :math:`\hat x_n` is in L1;
* the input gradient multiplies :math:`W^\top \bar y_n`, reading :math:`\bar y` where it lies,
  then zeroes each of x̄'s planes whole and writes its cells (the plane still in L1), or,
  on stride-2 maps with rows of 32+ cells, writes x̄'s rows whole (:func:`_scatter`);
* the weight gradient adds :math:`\sum_n \bar y_n \hat x_n^\top` over a group of samples
  into the group's share in one product (the sum over the group in registers), from the
  kept :math:`\hat x^\top` or, without it, gathering and transposing each sample's; the
  shares are added up at the end.

All three are one register-blocked product (:func:`_product`: 6 rows x 16 columns of partial
sums in twelve AVX2 registers, the layout of :mod:`numba_direct`'s loops); maps or channel
counts that are not whole blocks of 16 go through rows padded with zeros. It needs at least 6
rows (channels), so :func:`applies` leaves narrower convolutions to the other loops.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba import uint64 as u64
from numba.extending import intrinsic

from refnas.kernels.numba_direct import (_EMPTY, _EMPTY_INTS as _NO_INTS, _arguments, _launch,
                                        _job_dims, _shuffle, _stack_array, _vector_at)
from refnas.kernels.numba_jobs import job

ROWS = 6             # rows of the product (output channels) per register block
COLS = 16            # its columns (positions, or input channels) per block: two 8-float vectors
_SUMS = 96           # a block's partial sums (a literal, for the stack array)
assert _SUMS == ROWS * COLS


def applies(x_shape, w_shape, stride, padding, dilation, groups, dtype) -> bool:
    """Whether this convolution runs here: float32, ungrouped, 1x1, strided, unpadded, and at
    least ROWS channels on either side (the rows of the products' register blocks: the
    forward's and weight gradient's are output channels, the input gradient's input
    channels; see :func:`_product`)."""
    return (w_shape[2] == 1 and w_shape[3] == 1 and groups == 1 and padding[0] == 0
            and padding[1] == 0 and (stride[0] != 1 or stride[1] != 1)
            and np.dtype(dtype) == np.float32 and min(x_shape) > 0
            and min(x_shape[1], w_shape[0]) >= ROWS)


# --------------------------------------------------------------------------------------------
# Cells in and out
# --------------------------------------------------------------------------------------------
@intrinsic
def _transpose_8x8(typingctx, src, src_at, src_pitch, dst, dst_at, dst_pitch):
    """dst[dst_at + j*dst_pitch + i] = src[src_at + i*src_pitch + j] for i, j < 8: eight
    vector loads, the usual 24 AVX shuffles (unpack, shuffle, swap halves), eight vector
    stores. (A loop of scalar copies transposed x̂ at about a cycle per value, which cost the
    first shortcut's forward as much as keeping x̂^T saved its weight gradient.)"""
    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0]).data
        target = context.make_array(signature.args[3])(context, builder, args[3]).data

        def address(data, at, pitch, i):
            return _vector_at(builder, data,
                              builder.add(at, builder.mul(pitch, ir.Constant(pitch.type, i))))

        r = [builder.load(address(source, args[1], args[2], i), align=4) for i in range(8)]
        t = [_shuffle(builder, r[i], r[i + 1], lanes) for i in range(0, 8, 2)
             for lanes in ([0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15])]
        u = [_shuffle(builder, t[i + h], t[i + h + 2], lanes) for i in (0, 4) for h in (0, 1)
             for lanes in ([0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15])]
        for j in range(8):
            half = [0, 1, 2, 3, 8, 9, 10, 11] if j < 4 else [4, 5, 6, 7, 12, 13, 14, 15]
            column = _shuffle(builder, u[j % 4], u[j % 4 + 4], half)
            builder.store(column, address(target, args[4], args[5], j), align=4)
        return context.get_dummy_value()

    return types.void(src, src_at, src_pitch, dst, dst_at, dst_pitch), codegen


@intrinsic
def _evens_8(typingctx, src, src_at, dst, dst_at):
    """dst[dst_at + t] = src[src_at + 2t] for t < 8: two vector loads, one shuffle (two
    instructions), one vector store."""
    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0]).data
        target = context.make_array(signature.args[2])(context, builder, args[2]).data
        second = builder.add(args[1], ir.Constant(args[1].type, 8))
        low = builder.load(_vector_at(builder, source, args[1]), align=4)
        high = builder.load(_vector_at(builder, source, second), align=4)
        evens = _shuffle(builder, low, high, [0, 2, 4, 6, 8, 10, 12, 14])
        builder.store(evens, _vector_at(builder, target, args[3]), align=4)
        return context.get_dummy_value()

    return types.void(src, src_at, dst, dst_at), codegen


@njit(inline="always")
def _gather(x, n, channels, h, w, sh, sw, oh, ow, runs, panel, pitch):
    """x̂ of sample n: panel[(c, l)] = x[n, c, i*sh, j*sw] (l = i*OW + j; rows ``pitch``
    apart); nothing else is written. The first ``runs`` cells of each row (see :func:`_task`)
    by :func:`_evens_8`, 8 at a time, and the cells past the runs in a loop of their own,
    entered only when there are some. (Each row had been a loop of copies ``x[2j]``, which
    LLVM vectorised, followed by the loop of what was left, usually nothing: 5.2 ns per
    16-cell row on the first shortcut, 2.9 ns as runs; that forward, keeping x̂^T,
    109 -> 98-100 us on two threads.)"""
    for c in range(channels):
        plane = u64((n * channels + c) * h * w)
        for i in range(oh):
            src, out = plane + u64(i * sh * w), u64(c * pitch + i * ow)
            for j in range(0, runs, 8):
                _evens_8(x, src + u64(2 * j), panel, out + u64(j))
        if runs < ow:
            for i in range(oh):
                src, out = plane + u64(i * sh * w), u64(c * pitch + i * ow)
                for j in range(runs, ow):
                    panel[out + u64(j)] = x[src + u64(j * sw)]


@njit(inline="always")
def _transpose(panel, pitch, length, channels, c_pitch, into, at):
    """x̂_n^T: into[at + (l, c)] = panel[(c, l)] for l < length (rows ``c_pitch`` apart), and
    zero for channels from ``channels`` to ``c_pitch``; by 8 x 8 tiles where they fit.
    (The weight gradient used to gather x̂^T straight from x, with scalar stores a row apart:
    40% of the first shortcut's weight gradient. Gathering x̂ and transposing it costs about
    as much there; the gain is in the forward, which has x̂_n in L1 anyway and keeps x̂_n^T,
    so that the weight gradient reads no x.)"""
    whole_l, whole_c = length // 8 * 8, channels // 8 * 8
    for l in range(0, whole_l, 8):
        for c in range(0, whole_c, 8):
            _transpose_8x8(panel, u64(c * pitch + l), u64(pitch), into,
                           u64(at + l * c_pitch + c), u64(c_pitch))
    if whole_l == length and whole_c == c_pitch:
        return          # (the loop below costs a few ns per position with nothing to do)
    for l in range(length):                  # what is left, and zeros up to whole blocks
        row = u64(at + l * c_pitch)
        for c in range(whole_c if l < whole_l else 0, channels):
            into[row + u64(c)] = panel[u64(c * pitch + l)]
        for c in range(channels, c_pitch):
            into[row + u64(c)] = 0


@intrinsic
def _spread_8(typingctx, src, src_at, dst, dst_at):
    """dst[dst_at + 2t] = src[src_at + t] and dst[dst_at + 2t + 1] = 0 for t < 8: one vector
    load, the values interleaved with zeros by two shuffles, two vector stores."""
    def codegen(context, builder, signature, args):
        f32x8 = ir.VectorType(ir.FloatType(), 8)
        source = context.make_array(signature.args[0])(context, builder, args[0]).data
        target = context.make_array(signature.args[2])(context, builder, args[2]).data

        values = builder.load(_vector_at(builder, source, args[1]), align=4)
        for half, lanes in ((0, [0, 8, 1, 9, 2, 10, 3, 11]), (8, [4, 12, 5, 13, 6, 14, 7, 15])):
            pairs = _shuffle(builder, values, ir.Constant(f32x8, None), lanes)  # (value, 0)
            at = builder.add(args[3], ir.Constant(args[3].type, half))
            builder.store(pairs, _vector_at(builder, target, at), align=4)
        return context.get_dummy_value()

    return types.void(src, src_at, dst, dst_at), codegen


@intrinsic
def _zero_8(typingctx, dst, dst_at):
    """dst[dst_at .. dst_at + 8] = 0: one vector store."""
    def codegen(context, builder, signature, args):
        f32x8 = ir.VectorType(ir.FloatType(), 8)
        target = context.make_array(signature.args[0])(context, builder, args[0]).data
        builder.store(ir.Constant(f32x8, [0.0] * 8), _vector_at(builder, target, args[1]), align=4)
        return context.get_dummy_value()

    return types.void(dst, dst_at), codegen


@njit(inline="always")
def _scatter(cells, pitch, n, channels, h, w, sh, sw, oh, ow, runs, gx):
    """x̄ of sample n: gx[n, c, i*sh, j*sw] = cells[c, i*OW + j] (rows ``pitch`` apart), every
    other cell zero: each plane zeroed whole (LLVM makes the loop a memset), then its cells
    written. The first ``runs`` cells of each row (see :func:`_task`) go out 8 at a time,
    as vectors of (cell, 0) pairs, whose zeros land on cells already zero; the cells past the
    runs go in a loop of their own, entered only when there are some (as in :func:`_gather`).

    When the runs cover every row of a stride-2 map of rows of 32+ cells (ResNet-18's first
    shortcut), there is no memset: each output row's runs write its row of x̄ whole, and the
    row below is zeroed by vector stores (:func:`_zero_8`), every cell written once.

    Measured on the first shortcut's input gradient (0.123 ms): the memset took 0.018 ms and
    the cells' scalar stores 0.024 ms, more than their count explains (the memset's lines
    are no longer in L1 when they come); as vector runs 0.017 ms. Runs of 4 (4x4 outputs)
    were no faster, and neither was the product storing its sums straight into x̄ as pairs.
    Rows written whole, without the memset: 98-100 -> 95 us on the first shortcut's input
    gradient (32x32 maps), but 79.4-79.8 -> 81 us on the second's (16x16; same process)."""
    # rows written whole (no memset): runs over every cell, nothing below the last row
    whole = sh == 2 and runs == ow and 2 * ow == w and 2 * oh == h and w >= 32
    for c in range(channels):
        plane = u64((n * channels + c) * h * w)
        if whole:
            for i in range(oh):
                row, values = plane + u64(2 * i * w), u64(c * pitch + i * ow)
                for j in range(0, runs, 8):
                    _spread_8(cells, values + u64(j), gx, row + u64(2 * j))
                for k in range(0, w, 8):
                    _zero_8(gx, row + u64(w + k))
            continue
        for k in range(h * w):
            gx[plane + u64(k)] = 0
        for i in range(oh):
            row, values = plane + u64(i * sh * w), u64(c * pitch + i * ow)
            for j in range(0, runs, 8):
                _spread_8(cells, values + u64(j), gx, row + u64(2 * j))
        if runs < ow:
            for i in range(oh):
                row, values = plane + u64(i * sh * w), u64(c * pitch + i * ow)
                for j in range(runs, ow):
                    gx[row + u64(j * sw)] = cells[values + u64(j)]


# --------------------------------------------------------------------------------------------
# The product
# --------------------------------------------------------------------------------------------
@njit(cache=True, fastmath={"contract"})
def _product(a, a_at, a_row, a_inner, rows, inner, b, b_at, b_pitch, width, start, out, o_at,
             o_pitch, repeat, a_step):
    r"""out[m, j] = start[m] + \sum_s \sum_r A_s[m, r] b[s*inner + r, j] for m < rows
    (at least ROWS), r < inner, s < repeat, j < width (a multiple of COLS), where
    A_s[m, r] = a[a_at + s*a_step + m*a_row + r*a_inner], ``start`` is the bias (or empty:
    zero), and b's and out's rows start at b_at and o_at, b_pitch and o_pitch apart.
    (``repeat`` > 1: the weight gradient's sum over a group of samples, in registers.)

    Register blocks of ROWS x COLS sums: per r, two vector loads of b's row and ROWS broadcasts
    of A feed twelve fused multiply-adds. The sums start from the bias and are stored once, so
    ``out`` is written and never read (starting from out, set to the bias beforehand, had
    cost the shortcuts' forward a pass over y). The blocks of columns are the outer loop, so
    that all rows sweep one tile of b while it is in cache. When the rows are not whole blocks,
    the last block starts ROWS rows before the end, overlapping the one before it: it
    computes some sums again from the same values and stores them to the same place. So every
    loop has a fixed trip count (which LLVM's SLP vectoriser needs), and a block's rows of A
    are ROWS consecutive rows, one pointer apart (rows clamped one by one to the last had kept
    six pointers in registers, and spilled some: the shortcuts' passes 1-9% slower)."""
    sums = numba.carray(_stack_array(_SUMS, b.dtype), (_SUMS,))
    for j0 in range(0, width, COLS):
        for m1 in range(0, rows, ROWS):
            m0 = min(m1, rows - ROWS)
            for mm in range(ROWS):
                shift = start[m0 + mm] if start.size else 0
                for t in range(COLS):
                    sums[mm * COLS + t] = shift
            for s in range(repeat):
                a_first = u64(a_at + s * a_step + m0 * a_row)
                for r in range(inner):
                    line = u64(b_at + (s * inner + r) * b_pitch + j0)
                    at = a_first + u64(r * a_inner)
                    for mm in range(ROWS):
                        weight = a[at + u64(mm * a_row)]
                        for t in range(COLS):
                            sums[mm * COLS + t] += weight * b[line + u64(t)]
            for mm in range(ROWS):
                row = u64(o_at + (m0 + mm) * o_pitch + j0)
                for t in range(COLS):
                    out[row + u64(t)] = sums[mm * COLS + t]


# the backward's tasks per thread, each a group of samples (1, 2 and 4 measured alike)
TASKS_PER_THREAD = 2

# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------
_FORWARD, _INPUT_GRAD, _WEIGHT_GRAD = 0, 1, 2       # the products
# what a launch asks for (dims[10]): the forward, keeping x̂^T or not; the backward, gathering
# x̂^T from x or given it (:class:`KeptColumns`)
_FORWARD_ONLY, _FORWARD_KEEPING, _BACKWARD, _BACKWARD_GIVEN_COLUMNS = 0, 1, 2, 3


def _task(task, address, tasks):
    """The samples of task ``task`` (one, or a group of them for a weight gradient), and for
    each, the products asked for: the forward y_n = W x̂_n + b (and, keeping, x̂_n^T), else
    the cells of x̄ = W^T ȳ_n (when gx is given) and the group's share of w̄ = sum of
    ȳ_n x̂_n^T (when shares are given: rows of whole blocks of COLS channels), from x̂_n^T
    gathered here or kept by the forward.

    One call site each of the gather, the transpose, the product and the scatter: every call
    site of an inlined function is compiled anew, and the cold compile of all kernels is held
    under 30 s."""
    # the direct loops' argument block: the forward's bias and the backward's shares share a
    # slot; gx is the forward's y
    x, w, bias, gy, out, _, _, dims = _arguments(address)
    n, c_in, k_out, h, wd, sh, sw, oh, ow, group, mode = dims[:11]
    length = oh * ow
    # the cells of an output row that the gather and the scatter move in runs of 8 (column
    # stride 2 only): a run from cell j covers columns 2j .. 2j + 15 of x's and x̄'s rows,
    # which must lie inside them (2j + 16 <= W)
    runs = min(ow, wd // 2) // 8 * 8 if sw == 2 else 0
    pitch, c_pitch = -(-length // COLS) * COLS, -(-c_in // COLS) * COLS     # whole blocks
    forward = mode == _FORWARD_ONLY or mode == _FORWARD_KEEPING
    # the forward keeping x̂^T writes it into the gy slot; a backward given it reads it from
    # the x slot (see :class:`KeptColumns`)
    keeping, kept = mode == _FORWARD_KEEPING, mode == _BACKWARD_GIVEN_COLUMNS
    shares, weight_grad, input_grad = bias, not forward and bias.size > 0, \
        not forward and out.size > 0
    # scratch: x̂_n; the group's x̂_n^T one after the other (for w̄, unless kept); the input
    # gradient's cells; and, for maps that are not whole blocks of COLS positions, y's or
    # ȳ's rows padded to whole blocks
    first, share = np.int64(task) * group, np.int64(task) * k_out * c_pitch
    count = min(group, n - first)
    padded = pitch != length
    gathering = forward or weight_grad and not kept
    panel = np.empty(c_in * pitch if gathering else 0, np.float32)
    if padded:                  # (the gather leaves the columns past the map's last)
        panel[:] = 0
    columns = np.empty(count * length * c_pitch if weight_grad and not kept else 0,
                       np.float32)
    cells = np.empty(c_in * pitch if input_grad else 0, np.float32)
    rows = np.zeros(k_out * pitch if padded else 0, np.float32)
    # two passes over the samples: the forward, or the weight gradient's gathers and its one
    # product at the group's last sample; then the input gradient sample by sample (after the
    # weight gradient, which reads the group's ȳ while it is in L2, before x̄'s cells go
    # through it)
    for step in range(2 * count):
        sample = first + step % count
        at = sample * k_out * length
        for kind in range(3):
            if not (forward, input_grad, weight_grad)[kind] or \
                    (kind == _INPUT_GRAD) != (step >= count):
                continue
            if kind != _INPUT_GRAD and gathering:
                _gather(x, sample, c_in, h, wd, sh, sw, oh, ow, runs, panel, pitch)   # x̂_n
                if kind == _WEIGHT_GRAD or keeping:                        # and x̂_n^T
                    into, into_at = (gy, sample * length * c_pitch) if keeping else \
                        (columns, (sample - first) * length * c_pitch)
                    _transpose(panel, pitch, length, c_in, c_pitch, into, into_at)
            repeat, a_step = 1, 0
            if kind == _WEIGHT_GRAD:
                if sample < first + count - 1:
                    continue              # the group's x̂^T first, then one product for all
                # sum over the group of ȳ_n (K, L) times x̂_n^T (L, C), added to the share
                a, a_at, a_row, a_inner, m, inner = gy, first * k_out * length, length, 1, \
                    k_out, length
                repeat, a_step = count, k_out * length
                b, b_at, b_pitch = (x, first * length * c_pitch, c_pitch) if kept else \
                    (columns, 0, c_pitch)
                target, t_at, t_pitch = shares, share, c_pitch
            elif kind == _FORWARD:       # W (K, C) times x̂_n (C, L), from the bias
                a, a_at, a_row, a_inner, m, inner = w, 0, c_in, 1, k_out, c_in
                b, b_at, b_pitch = panel, 0, pitch
                target, t_at, t_pitch = (rows, 0, pitch) if padded else (out, at, length)
            else:                        # W^T (C, K) times ȳ_n (K, L), from zero
                a, a_at, a_row, a_inner, m, inner = w, 0, 1, c_in, c_in, k_out
                b, b_at, b_pitch = gy, at, length
                if padded:               # ȳ's rows padded to whole blocks
                    for k in range(k_out):
                        for p in range(length):
                            rows[k * pitch + p] = gy[at + k * length + p]
                    b, b_at, b_pitch = rows, 0, pitch
                target, t_at, t_pitch = cells, 0, pitch
            _product(a, a_at, a_row, a_inner, m, inner, b, b_at, b_pitch,
                     c_pitch if kind == _WEIGHT_GRAD else pitch,
                     bias if kind == _FORWARD else bias[:0], target, t_at, t_pitch, repeat,
                     a_step)
            if kind == _INPUT_GRAD:
                _scatter(cells, pitch, sample, c_in, h, wd, sh, sw, oh, ow, runs, out)
            elif kind == _FORWARD and padded:
                for k in range(k_out):
                    for p in range(length):
                        out[u64(at + k * length + p)] = rows[u64(k * pitch + p)]


_JOB = job(_task, vectorise=True)


class KeptColumns:
    """x̂^T of every sample, (N, L, C rounded up to whole blocks of COLS), written by a forward
    that keeps it for the weight gradient: the forward has x̂_n in L1 when it transposes it,
    where the backward would gather it from x again (the weight gradient of ResNet-18's first
    shortcut took 0.069 instead of 0.116 ms without that gather). ``key`` is the
    (x shape, stride) it belongs to; a backward of another convolution ignores it."""
    __slots__ = ("key", "columns")

    def __init__(self, key, columns):
        self.key, self.columns = key, columns


def _dims(x_shape, k_out, stride, group=1, mode=_FORWARD_ONLY):
    """The job's eleven integers, padded with zeros to the direct loops' argument block."""
    n, c_in, h, w = x_shape
    return _job_dims((n, c_in, k_out, h, w, stride[0], stride[1], (h - 1) // stride[0] + 1,
                     (w - 1) // stride[1] + 1, group, mode))


def _run(x, w, bias_or_shares, gy, out, dims, tasks):
    """The job's tasks on the pool, through the direct loops' launcher."""
    _launch(_JOB.addresses, False, x, w, bias_or_shares, gy, out, _NO_INTS, _NO_INTS, dims,
            tasks)


def _key(x_shape, stride):
    return tuple(x_shape), tuple(stride)


def forward(x, w, bias, stride, keep=False):
    """y (N, K, OH, OW) of the 1x1 convolution of x (N, C, H, W) by w (K, C, 1, 1), stride
    ``stride``, no padding (C-contiguous float32 arrays), a task per sample. With ``keep``,
    (y, :class:`KeptColumns` for :func:`backward`)."""
    dims = _dims(x.shape, w.shape[0], stride, mode=_FORWARD_KEEPING if keep else _FORWARD_ONLY)
    n, c_in, oh, ow = x.shape[0], x.shape[1], dims[7], dims[8]
    y = np.empty((n, w.shape[0], oh, ow), np.float32)
    columns = np.empty((n, oh * ow, -(-c_in // COLS) * COLS), np.float32) if keep else None
    _run(x.reshape(-1), w.reshape(-1), _EMPTY if bias is None else bias.reshape(-1),
         _EMPTY if columns is None else columns.reshape(-1), y.reshape(-1), dims, n)
    return (y, KeptColumns(_key(x.shape, stride), columns)) if keep else y


def backward(gy, x_shape, w_shape, stride, x=None, w=None, kept=None):
    """(gx, gw) of that convolution in one pass over the samples: gx when w is given (else
    None), gw when x or ``kept`` (:class:`KeptColumns` of this convolution's forward) is
    given (else None). Each task takes a group of samples (two tasks per thread when it adds
    up a share of gw, else one sample)."""
    n, (k_out, c_in) = x_shape[0], w_shape[:2]
    if not (isinstance(kept, KeptColumns) and kept.key == _key(x_shape, stride)):
        kept = None
    source = x if kept is None else kept.columns
    group = max(1, n // (TASKS_PER_THREAD * numba.get_num_threads())) if source is not None \
        else 1
    tasks = -(-n // group)
    dims = _dims(x_shape, k_out, stride, group,
                 _BACKWARD if kept is None else _BACKWARD_GIVEN_COLUMNS)
    gx = None if w is None else np.empty(x_shape, np.float32)
    shares = None if source is None else np.empty((tasks, k_out, -(-c_in // COLS) * COLS),
                                                  np.float32)
    _run(_EMPTY if source is None else source.reshape(-1),
         _EMPTY if w is None else w.reshape(-1),
         _EMPTY if shares is None else shares.reshape(-1), gy.reshape(-1),
         _EMPTY if gx is None else gx.reshape(-1), dims, tasks)
    gw = None if shares is None else np.add.reduce(shares, 0)[:, :c_in].reshape(w_shape)
    return gx, gw


__all__ = ["applies", "forward", "backward", "KeptColumns"]
