r"""Direct 2-D convolution in Numba: no im2col, no BLAS, register-blocked loops.

For ungrouped float32 convolutions (any padding and dilation; stride 1, or for the forward
and weight gradient a column stride of 2 whose phases pair, and any stride for the input
gradient; see :func:`applies`) :mod:`refnas.kernels.numba_conv` hands its three kernels to the
loops here. They compute the
same sums as the reference,

.. math::
    y_{n,k,i,j} = b_k + \sum_{c,p,q} w_{k,c,p,q}\, \hat x_{n,c,\, s_h i + p d_h,\, s_w j + q d_w},
    \qquad
    \bar w_{k,c,p,q} = \sum_{n,i,j} \bar y_{n,k,i,j}\, \hat x_{n,c,\, s_h i + p d_h,\, s_w j + q d_w},

(:math:`\hat x` the zero-padded input), but read the input where it lies instead of copying
KH*KW shifted versions of it into a column matrix first. The input gradient of a stride-1
convolution is the forward loop applied to :math:`\bar y` with the kernel flipped and its two
channel axes swapped (its adjoint is a "full" convolution), so one loop serves both; a strided
one's goes phase by phase (:func:`_input_grad_by_phases`). Strides are phases of the input
(:class:`_Grid`), small maps interleave the samples (ditto).

**Flattened planes.** Each padded plane (HP rows of pitch WP) is one flat vector. Output
position (i, j) is computed at flat index o = i*WP + j, and tap (p, q) reads the input at
o + p*d_h*WP + q*d_w: the same offset for every output, so a run of consecutive outputs reads a
run of consecutive inputs, even across row ends. The WP - OW positions at the end of each row
are computed and dropped (6% extra work on 32x32 maps, 20% on 8x8; Dukhan 2019 counts this
kind of waste against the packing it saves).

**Register blocking.** The inner loops hold OUT_BLOCK x POS_BLOCK partial sums (forward; 4
output channels x 24 positions, twelve 8-float AVX2 registers) while they sweep over the input
channels and taps: per tap, three vector loads of x and four broadcasts of w feed twelve fused
multiply-adds, and the sums are written out once per block. This is how oneDNN's direct kernels
are laid out (Georganas et al. 2018, "Anatomy of high-performance deep learning convolutions on
SIMD architectures"). The weight gradient blocks GRAD_OUT_BLOCK output channels x GRAD_IN_BLOCK
input channels (or GRAD_IN_BLOCK taps of one channel, :func:`_taps_in_slots`) x LANES
positions per tap and adds up the lanes once per task.

Two things make LLVM emit those loops as vector code, and both are load-bearing: the partial
sums live in a fixed-size *stack* array (:func:`_stack_array`, so that LLVM can keep them in
registers; a NumPy array would be heap memory it cannot promote), and the kernels are compiled
with LLVM's SLP vectoriser switched on for them alone (their jobs are made with
``vectorise=True``, see :class:`refnas.kernels.numba_jobs.Job`; Numba switches it off by
default since numba#8852, after miscompilations in other code; these kernels are tested equal
to the NumPy reference). Indices are unsigned so that Numba drops its negative-index check.
Measured on this 2-core AMD EPYC (AVX2), one core, ResNet-18's 16- and 32-channel 3x3 layers:
88-94 GFLOP/s, against 4 GFLOP/s for the same loops without the two.
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba import uint64 as u64
from numba.core import cgutils
from numba.extending import intrinsic

from refnas.kernels.numba_jobs import (block_of, call_job, job, launch, launch_serially,
                                      put_vector, vector)
from refnas.kernels.numba_support import flat, pool_shared, scratch

OUT_BLOCK = 4        # forward: output channels per register block
POS_BLOCK = 24       # forward: flat output positions per block (three 8-float vectors)
GRAD_OUT_BLOCK = 4   # weight gradient: output channels per block
GRAD_IN_BLOCK = 3    # weight gradient: input channels per block
LANES = 8            # weight gradient: positions per step (one 8-float vector)
IN_CHUNK = 16        # forward on interleaved planes: input channels per sweep over positions
_PLACE = 15          # forward: values per part of the output channels (see _forward_tasks)

# the sizes of the two stack arrays of partial sums (module constants, so Numba sees literals)
_FORWARD_SUMS = 96   # OUT_BLOCK * POS_BLOCK
_GRAD_SUMS = 96      # GRAD_OUT_BLOCK * GRAD_IN_BLOCK * LANES
assert _FORWARD_SUMS == OUT_BLOCK * POS_BLOCK and _GRAD_SUMS == GRAD_OUT_BLOCK * GRAD_IN_BLOCK * LANES


@intrinsic
def _stack_array(typingctx, size, dtype):
    """A pointer to ``size`` (a literal) uninitialised elements of ``dtype`` on the stack,
    64-byte aligned, in a function whose stack is realigned to 64 bytes on entry.

    The alignment is load-bearing too. Without it the speed of a whole training step depended
    on where the process's stack happened to start (ASLR moves it in 16-byte steps): ResNet-18
    steps took 72-75 ms in some processes and 85-91 ms in others, run after run ("the slow
    process lottery"), and 82-84 ms in every process when called from a Python thread, whose
    stack is page-aligned. With both alignments, twelve processes in a row took 71-76 ms: the
    vector loads and stores of the partial sums (and the register spills next to them) no
    longer straddle cache lines."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    count = size.literal_value

    def codegen(context, builder, signature, args):
        sums = cgutils.alloca_once(builder, context.get_value_type(dtype.dtype), size=count)
        sums.align = 64
        builder.function.attributes.alignstack = 64
        return sums

    return types.CPointer(dtype.dtype)(size, dtype), codegen


# --------------------------------------------------------------------------------------------
# Runs of 8 float32 cells as AVX vectors (LLVM IR by hand: the shuffles that a loop over
# every other cell needs, without the loops around them; see :func:`_split_row`)
# --------------------------------------------------------------------------------------------
def _shuffle(builder, a, b, lanes):
    """The lanes ``lanes`` of a and b side by side (0-7: a's, 8-15: b's)."""
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 8), lanes))


def _vector_at(builder, data, index):
    """A pointer to the 8 floats from data[index], for a vector load or store."""
    return builder.bitcast(builder.gep(data, [index]),
                           ir.VectorType(ir.FloatType(), 8).as_pointer())


@intrinsic
def _split_16(typingctx, src, src_at, dst, even_at, odd_at):
    """dst[even_at + t] = src[src_at + 2t], dst[odd_at + t] = src[src_at + 2t + 1] for t < 8:
    two vector loads, two shuffles, two vector stores."""
    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0]).data
        target = context.make_array(signature.args[2])(context, builder, args[2]).data
        second = builder.add(args[1], ir.Constant(args[1].type, 8))
        low, high = (builder.load(_vector_at(builder, source, index), align=4)
                     for index in (args[1], second))
        for lanes, where in (([0, 2, 4, 6, 8, 10, 12, 14], args[3]),
                             ([1, 3, 5, 7, 9, 11, 13, 15], args[4])):
            builder.store(_shuffle(builder, low, high, lanes),
                          _vector_at(builder, target, where), align=4)
        return context.get_dummy_value()

    return types.void(src, src_at, dst, even_at, odd_at), codegen


@intrinsic
def _put_evens_8(typingctx, src, src_at, shift, dst, dst_at, odd):
    """dst[dst_at + 2t + odd] = src[src_at + t] + shift for t < 8, the other eight of the 16
    cells from dst_at rewritten as they were: one vector load of src, two of dst, four
    shuffles, two selects, two vector stores (a read-modify-write: nothing else may write
    those cells meanwhile)."""
    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0]).data
        target = context.make_array(signature.args[3])(context, builder, args[3]).data
        lane0 = builder.insert_element(ir.Constant(ir.VectorType(ir.FloatType(), 8), None),
                                       args[2], ir.Constant(ir.IntType(32), 0))
        shifts = _shuffle(builder, lane0, lane0, [0] * 8)
        values = builder.fadd(builder.load(_vector_at(builder, source, args[1]), align=4),
                              shifts)
        second = builder.add(args[4], ir.Constant(args[4].type, 8))
        for half, where in ((0, args[4]), (4, second)):
            old = builder.load(_vector_at(builder, target, where), align=4)
            # lanes 0-7: old's, 8-15: values'; value t of this half goes to lane 2t (or 2t + 1)
            into_evens = [8 + half + t // 2 if t % 2 == 0 else t for t in range(8)]
            into_odds = [t if t % 2 == 0 else 8 + half + t // 2 for t in range(8)]
            new = builder.select(args[5], _shuffle(builder, old, values, into_odds),
                                 _shuffle(builder, old, values, into_evens))
            builder.store(new, _vector_at(builder, target, where), align=4)
        return context.get_dummy_value()

    return types.void(src, src_at, shift, dst, dst_at, odd), codegen


@intrinsic
def _transpose_8x8(typingctx, src, src_at, apart, dst, even_at, odd_at, step, shift):
    """An 8 x 8 block transposed from ``src`` into ``dst``, plus ``shift``: row i of the block
    is src[src_at + i*apart:][:8], and column t (the rows' cell t) is stored whole at
    dst[(odd_at if t is odd else even_at) + (t div 2)*step]. Eight vector loads, 24 shuffles
    (the unpack / shuffle / 128-bit-lane network of an AVX 8x8 transpose), eight vector
    stores, where moving the cells one by one takes 64 scalar loads and stores, those on one
    side ``apart`` or ``step`` floats apart. It writes eight samples' runs of 8 cells into
    interleaved planes (row i = sample i; shift 0), and the forward's sums from interleaved
    planes into y (row i = a column of 8 samples, column t = sample t's run; shift = bias)."""
    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0]).data
        target = context.make_array(signature.args[3])(context, builder, args[3]).data
        at, gap, even, odd, stride = args[1], args[2], args[4], args[5], args[6]
        lane0 = builder.insert_element(ir.Constant(ir.VectorType(ir.FloatType(), 8), None),
                                       args[7], ir.Constant(ir.IntType(32), 0))
        shifts = _shuffle(builder, lane0, lane0, [0] * 8)
        rows = [builder.load(_vector_at(builder, source, builder.add(
            at, builder.mul(gap, ir.Constant(gap.type, i)))), align=4) for i in range(8)]
        pairs = []          # rows (2i, 2i + 1) interleaved, low and high halves of each lane
        for i in range(0, 8, 2):
            pairs += [_shuffle(builder, rows[i], rows[i + 1], [0, 8, 1, 9, 4, 12, 5, 13]),
                      _shuffle(builder, rows[i], rows[i + 1], [2, 10, 3, 11, 6, 14, 7, 15])]
        quads = []          # four rows' cells t and t + 4 together
        for a, b in ((0, 2), (4, 6)):
            for x, y in ((pairs[a], pairs[b]), (pairs[a + 1], pairs[b + 1])):
                quads += [_shuffle(builder, x, y, [0, 1, 8, 9, 4, 5, 12, 13]),
                          _shuffle(builder, x, y, [2, 3, 10, 11, 6, 7, 14, 15])]
        for t in range(4):  # the 128-bit lanes: column t from the low ones, t + 4 the high
            for column, lanes in ((t, [0, 1, 2, 3, 8, 9, 10, 11]),
                                  (t + 4, [4, 5, 6, 7, 12, 13, 14, 15])):
                where = builder.add(odd if column % 2 else even,
                                    builder.mul(stride, ir.Constant(stride.type, column // 2)))
                column_values = _shuffle(builder, quads[t], quads[t + 4], lanes)
                builder.store(builder.fadd(column_values, shifts),
                              _vector_at(builder, target, where), align=4)
        return context.get_dummy_value()

    return types.void(src, src_at, apart, dst, even_at, odd_at, step, shift), codegen


# --------------------------------------------------------------------------------------------
# Planes onto the flat padded grid
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _paired_phase_planes(src, target, base, step, h, w, top, left, sh, rows, cols, phases,
                         apart=0):
    """Write one h x w plane ``src`` as its phase planes into a ``zeroed`` target, for a column
    stride of 2 when each phase (alpha, 0) is followed by (alpha, 1) (see :class:`_Grid`):
    phase f = (alpha, beta) holds, at row r and column m, the padded plane's cell
    (r*sh + alpha, 2m + beta), i.e. the input cell (r*sh + alpha - top, 2m + beta - left), at
    target[base + ((f*rows + r)*cols + m)*step]. Both column phases of a row come from one
    pass over the source row (:func:`_split_row`). (Unsigned indices: Numba's negative-index
    checks had made the phase planes four times slower than the copy they replaced.) With
    ``apart`` > 0, eight samples at once, their planes ``apart`` apart in ``src`` and their
    cells in lanes base .. base + 7 (:func:`_split_rows_8`)."""
    for f in range(0, phases.size // 2, 2):
        alpha = phases[2 * f]
        for r in range(rows):
            a = r * sh + alpha - top
            if 0 <= a < h:
                out = u64(base + (f * rows + r) * cols * step)
                if apart:
                    _split_rows_8(src, u64(a * w), u64(apart), target, out,
                                  out + u64(rows * cols * step), step, w, left, cols)
                else:
                    _split_row(src, u64(a * w), target, out, out + u64(rows * cols * step),
                               step, w, left, cols)


@njit(cache=True, inline="always")
def _split_row(src, row, target, out0, out1, step, w, left, cols):
    """Column stride 2: the source row at ``src[row:row + w]`` into the row of phase beta = 0
    at ``out0`` and of beta = 1 at ``out1`` (``cols`` cells each, ``step`` apart): column c
    goes to phase (c + left) mod 2, cell (c + left) div 2. Pairs of columns in one loop
    (vectorised by LLVM for ``step`` 1), instead of one phase at a time with a run-time stride:
    ResNet-18's first strided layer's input 0.24 against 0.43 ms serially, the interleaved
    8x8 one 0.16 against 0.30 ms. For ``step`` 1, runs of 8 pairs by :func:`_split_16`, and
    the loops of what is left entered only when something is (the vectorised pair loop and an
    empty loop after it, row after row, had cost the first strided layer's forward 673-688
    against 653-657 us now)."""
    even, odd, pairs = _column_pairs(out0, out1, step, w, left, cols)
    if step == 1:
        runs = pairs // 8 * 8
        for j in range(0, runs, 8):
            _split_16(src, row + u64(2 * j), target, even + u64(j), odd + u64(j))
        for j in range(runs, pairs):
            target[even + u64(j)] = src[row + u64(2 * j)]
            target[odd + u64(j)] = src[row + u64(2 * j + 1)]
    else:
        for j in range(pairs):
            target[even + u64(j * step)] = src[row + u64(2 * j)]
            target[odd + u64(j * step)] = src[row + u64(2 * j + 1)]
    if 2 * pairs < w:
        for c in range(2 * pairs, w):                         # an odd last column, or cells
            m = (c + left) // 2                               # past the phase rows' end
            if m < cols:
                target[(out1 if (c + left) % 2 else out0) + u64(m * step)] = src[row + u64(c)]


@njit(inline="always")
def _column_pairs(out0, out1, step, w, left, cols):
    """Where a row split by column phases (stride 2) puts its columns: column 2j at
    even + j*step, 2j + 1 at odd + j*step, for j < pairs (the rest: an odd last column, or
    cells past the phase rows' end)."""
    even, odd = (out0, out1) if left % 2 == 0 else (out1, out0)    # c = 2j, c = 2j + 1
    even, odd = even + u64(left // 2 * step), odd + u64((left + 1) // 2 * step)
    return even, odd, max(0, min(w // 2, cols - (left + 1) // 2))


@njit(cache=True, inline="always")
def _split_rows_8(source, row, apart, target, out0, out1, step, w, left, cols):
    """:func:`_split_row` for eight samples at once onto interleaved planes (``step`` = the
    planes' lanes): sample n's row at source[row + n*apart:], its cells at the targets'
    positions + n. Runs of 4 column pairs go as 8 x 8 transposes (:func:`_transpose_8x8`), the
    rest cell by cell (side by side, the phase planes of ResNet-18's strided layers onto 8x8
    and 4x4 outputs 0.095 -> 0.045 and 0.069 -> 0.030 ms)."""
    even, odd, pairs = _column_pairs(out0, out1, step, w, left, cols)
    runs = pairs // 4 * 4
    for j in range(0, runs, 4):
        _transpose_8x8(source, row + u64(2 * j), apart, target, even + u64(j * step),
                       odd + u64(j * step), u64(step), np.float32(0))
    for n in range(8):
        at = row + u64(n) * apart
        for j in range(runs, pairs):
            target[even + u64(j * step + n)] = source[at + u64(2 * j)]
            target[odd + u64(j * step + n)] = source[at + u64(2 * j + 1)]
        for c in range(2 * pairs, w):
            m = (c + left) // 2
            if m < cols:
                target[(out1 if (c + left) % 2 else out0) + u64(m * step + n)] = \
                    source[at + u64(c)]


@njit(cache=True, inline="always")
def _pad_plane(src, out, h, w, top, left, pitch, kept_from=0, kept_to=-1):
    """Stride 1, one phase: the h x w plane ``src`` at row ``top`` and column ``left`` of
    ``out`` (rows of ``pitch``), every other value zero (contiguous copies and fills, which
    LLVM vectorises). Only columns [kept_from, kept_to) of src are copied (kept_to -1: all),
    the others written as zeros (the column-masked copies of :func:`_masked_copies`)."""
    kept_to = w if kept_to < 0 else kept_to
    start = top * pitch + left
    for k in range(start):
        out[k] = 0
    if pitch == w:
        # rows end to end (the first layers' masked copies): one copy of the plane, then the
        # masked columns' zeros, a loop over rows per column. (Four loops per row, most of
        # them over no or one cell, had cost CNN-S's first forward 149 against 139-142 us.)
        for k in range(h * w):
            out[u64(start) + u64(k)] = src[u64(k)]
        for k in range(u64(start + h * w), u64(out.size)):
            out[k] = 0
        for k in range(w - (kept_to - kept_from)):
            column = u64(start + (k if k < kept_from else kept_to + k - kept_from))
            for r in range(h):
                out[column + u64(r * w)] = 0
        return
    for r in range(h):
        row, line = u64(start + r * pitch), u64(r * w)
        for k in range(w):
            out[row + u64(k)] = src[line + u64(k)]
        for k in range(kept_from):            # (a masked copy's few columns)
            out[row + u64(k)] = 0
        for k in range(kept_to, w):
            out[row + u64(k)] = 0
        end = row + u64(pitch) if r + 1 < h else u64(out.size)
        for k in range(row + u64(w), end):
            out[k] = 0


@njit(inline="always")
def _kept_columns(q, step, left, w):
    """The columns [from, to) of an input row that masked copy q keeps (:func:`_masked_copies`):
    those that tap column q reads for some output, with column dilation ``step`` and the row
    padded by ``left``."""
    shift = q * step - left
    return max(shift, 0), min(w, w + shift)


@njit(inline="always")
def _pad_planes(source, dims, phases, target, first, last):
    """Tasks [first, last) of writing the (samples, channels) planes of ``source`` onto the
    grid (:class:`_Grid`): one task per plane, each to its own ``length`` of ``target`` (in
    (channel, sample) order when ``swap``), or, with ``lanes`` > 1, one task per channel, whose
    samples are interleaved in one ``length``. Every value that is no input cell is zero.
    Strided grids must pair their column phases (:func:`_pairs_phases`)."""
    samples, channels, h, w, top, left, sh, sw, rows, cols, lanes, length, swap, copies, \
        copy_step = dims[:15]
    interleaved = lanes > 1
    for task in range(first, last):
        if interleaved:      # zeroing the plane at once beat writing the zeros sample by sample
            start, stop = task * length, (task + 1) * length
        else:
            place = (task % channels) * samples + task // channels if swap else task
            if sh == 1 and sw == 1:
                # one copy, or ``copies`` column-masked ones (see :func:`_masked_copies`)
                for q in range(max(copies, 1)):
                    kept_from, kept_to = _kept_columns(q, copy_step, left, w) if copies \
                        else (0, w)
                    at = (q * samples * channels + place) * length
                    _pad_plane(source[task * h * w:(task + 1) * h * w],
                               target[at:at + length], h, w, top, left, cols, kept_from,
                               kept_to)
                continue
            # zeroed whole: the phase rows are written in pairs
            start, stop = place * length, (place + 1) * length
        for k in range(stop - start):      # (unsigned: no negative-index checks)
            target[u64(start) + u64(k)] = 0
        if interleaved and sh == 1 and sw == 1:        # one phase: the cells
            # eight samples at a time, 8 x 8 blocks of (sample, cell) transposed in registers,
            # the rest sample by sample (side by side, x's planes of ResNet-18's 16x16 layers
            # 0.071 -> 0.033 ms, CNN-S's 14x14 0.084 -> 0.039, the 8x8 ones 0.035 -> 0.022;
            # rows of 4 keep the cell-by-cell loop)
            whole = samples // 8 * 8 if w >= 8 else 0
            apart = u64(channels * h * w)
            for n0 in range(0, whole, 8):
                plane = u64((n0 * channels + task) * h * w)
                for r in range(h):
                    row = u64(start + ((top + r) * cols + left) * lanes + n0)
                    for k0 in range(0, w - 7, 8):
                        at = row + u64(k0 * lanes)
                        _transpose_8x8(source, plane + u64(r * w + k0), apart, target, at,
                                       at + u64(lanes), u64(2 * lanes), np.float32(0))
                    # a row's last columns, the 8 samples innermost: their stores side by
                    # side (one loop with the samples past the last 8, sample by sample, had
                    # made CNN-S's 14x14 planes 0.052 -> 0.090 ms)
                    for k in range(w // 8 * 8, w):
                        for n in range(8):
                            target[row + u64(k * lanes + n)] = \
                                source[plane + u64(n) * apart + u64(r * w + k)]
            for n in range(whole, samples):
                plane = u64((n * channels + task) * h * w)
                for r in range(h):
                    row = u64(start + ((top + r) * cols + left) * lanes + n)
                    for k in range(w):
                        target[row + u64(k * lanes)] = source[plane + u64(r * w + k)]
            continue
        # strided: the phase planes, their column phases in pairs (interleaved: eight
        # samples at a time, then the rest one by one)
        whole = samples // 8 * 8 if interleaved else 0
        for n0 in range(0, whole, 8):
            plane = n0 * channels + task
            _paired_phase_planes(source[plane * h * w:], target, start + n0, lanes, h, w, top,
                                 left, sh, rows, cols, phases, channels * h * w)
        for n in range(whole, samples if interleaved else 1):
            plane = n * channels + task if interleaved else task
            base = start + n if interleaved else place * length
            _paired_phase_planes(source[plane * h * w:(plane + 1) * h * w], target, base,
                                 lanes, h, w, top, left, sh, rows, cols, phases)


# --------------------------------------------------------------------------------------------
# The taps: where each reads, and for which outputs it reads inside the image
# --------------------------------------------------------------------------------------------
_ANYWHERE = 1 << 40      # an end past every row and position: a tap that is never skipped


def _inside(size, pad, read, step, count) -> tuple[int, int]:
    r"""The outputs [lo, hi) along one axis (of ``count``) whose input index
    :math:`s i + r - p` (stride ``step``, the tap's read ``r`` = p d, padding ``pad``) lies in
    the image, :math:`0 \le s i + r - p < \text{size}`: lo = ceil((p - r)/s), hi = ceil((size +
    p - r)/s), clipped to [0, count] (lo >= hi: the tap reads only padding)."""
    return max(0, -((read - pad) // step)), min(count, -((read - pad - size) // step))


def _tap_table(offsets, rows=None, positions=None):
    """The loops' table of taps (int64, five rows of T): each tap's offset (see :class:`_Grid`),
    then the output rows [first, end) and the positions of a row [first, end) where it reads
    inside the image; without ``rows`` and ``positions``, everywhere (_ANYWHERE).

    The loops that sweep row by row (interleaved planes) skip a tap where it would read only
    padding: with 3x3 kernels and padding 1 on ResNet-18's 4x4 maps, a third of the rows and
    of the columns' taps; the sums are the same (they added zeros), and oneDNN's direct
    kernels skip these taps too."""
    t = offsets.size
    rows = [(0, _ANYWHERE)] * t if rows is None else rows
    positions = [(0, _ANYWHERE)] * t if positions is None else positions
    return np.array([list(offsets), *zip(*rows), *zip(*positions)], np.int64).reshape(-1)


@njit(inline="always")
def _tap_reach(table, first, end):
    """The output rows [first, end) and positions of a row [first, end) where some of the taps
    [first, end) read inside the image (:func:`_tap_table`)."""
    t = table.size // 5
    row_lo, row_hi, at_lo, at_hi = _ANYWHERE, 0, _ANYWHERE, 0
    for tap in range(first, end):
        row_lo, row_hi = min(row_lo, table[t + tap]), max(row_hi, table[2 * t + tap])
        at_lo, at_hi = min(at_lo, table[3 * t + tap]), max(at_hi, table[4 * t + tap])
    return row_lo, row_hi, at_lo, at_hi


@njit(inline="always")
def _reads_image(table, tap, row, at):
    """Whether tap ``tap`` reads inside the image for output row ``row`` at one of the
    positions [at, at + POS_BLOCK) of the row (a forward block)."""
    t = table.size // 5
    return (table[t + tap] <= row < table[2 * t + tap]
            and table[3 * t + tap] < at + POS_BLOCK and at < table[4 * t + tap])


# --------------------------------------------------------------------------------------------
# Forward (and, with the kernel flipped, input gradient)
# --------------------------------------------------------------------------------------------
@njit(cache=True, fastmath={"contract"})
def _forward_tasks(xf, wf, bias, raw, yf, taps_table, place, dims, first, last):
    """Tasks [first, last) of y = w * x (+ b): one per (plane group n, block of OUT_BLOCK output
    channels of each part), or, when ``padded_here``, one per sample n with all its blocks.

    Tap t of the kernel reads the input ``taps_table[t]`` past the output position (see
    :class:`_Grid` and :func:`_tap_table`). A plane holds one sample, or all N samples
    interleaved (``lanes`` = N); then there is one plane group and the outputs are swept row
    by row (``rows`` > 1), skipping the padding columns, and a block skips the taps that read
    only padding for all its outputs (:func:`_reads_image`). With ``padded_here`` (stride 1, a
    plane per sample), each task first pads its sample's planes from the raw input ``raw``
    into ``xf``, a work area of the caller's (:func:`_samples_task`; ``padded_here`` 2: the
    caller has laid out the sample's phase planes there): they are then read from L2, not from
    a padded copy of the whole batch made in a pass of its own. The blocks of
    partial sums are stored whole, as vectors, into a grid of the task's own; the valid
    positions are copied out to y once the block of channels is done (still in cache).
    Storing only the valid positions of each block, position by position, had cost as much
    as the arithmetic on 16-channel layers.

    ``place`` holds one row of _PLACE values per *part* of the output channels (one part for a
    convolution; one per phase for :func:`_input_grad_by_phases`): its channels
    [k_first, k_end) apply the taps [tap_lo, tap_hi), with weights (k_end - k_first, C,
    tap_hi - tap_lo) from ``w_base`` in ``wf``; and its output rows i0 .. i0+count-1 and
    columns j0 .. j0+count-1 of channel k go to ``yf`` from (n*K' + k - k_first)*plane + first
    (K' = k_end - k_first), rows ``row`` and columns ``col`` apart: y itself, or every s-th cell
    of a larger array (the input gradient's phases write into gx in place). With one sample a
    plane and a column stride of 2, the first ``runs`` cells of each row go in runs of 8
    (:func:`_put_evens_8`, 16 columns from the even one at or before the row's first cell):
    of the first strided layer's input gradient (0.84 ms), its phases' cells had taken
    0.17 ms one by one; 0.77-0.78 ms now. That writes the cells between them too, as they
    were: the other column phase's, which belong to the same task (its block of channels in
    every part), so no other thread writes them meanwhile. (The tasks had taken one block of
    one part each, the parts in turn, so that the threads' shares of the taps were even; a
    task per block of every part keeps them even too.)"""
    (c_in, k_out, oh, ow, pitch, taps, length, span, lanes, rows, chunk, padded_here,
     h, w, top, left, flipped) = dims
    k_blocks = (k_out + OUT_BLOCK - 1) // OUT_BLOCK
    parts = place.size // _PLACE
    # a task's blocks: all of its sample's, or one of each part, the same channels in each
    blocks_per_task = k_blocks if padded_here else parts
    sums = numba.carray(_stack_array(_FORWARD_SUMS, xf.dtype), (_FORWARD_SUMS,))
    gridf = np.empty(OUT_BLOCK * span, xf.dtype)
    for task in range(first, last):
        n = task // (k_blocks // blocks_per_task)
        # sample n's planes in xf: at its place among all samples', or, padded here (1) or
        # laid out by the caller (2), at the start of the work area that ``xf`` then is
        # (:func:`_samples_task`)
        planes_of_n = 0 if padded_here else n * c_in
        if padded_here == 1:
            for c in range(c_in):
                plane, at = (n * c_in + c) * h * w, (planes_of_n + c) * length
                _pad_plane(raw[plane:plane + h * w], xf[at:at + length], h, w, top, left,
                           pitch)
        for kb in range(blocks_per_task):
            if not padded_here:
                # block kb of each part: the same channels of every phase (so the tasks'
                # shares of the parts' taps are even, and each owns its cells of gx whole)
                kb = kb * (k_blocks // parts) + task % (k_blocks // parts)
            k0 = kb * OUT_BLOCK
            at = kb // (k_blocks // parts) * _PLACE        # the row of the block's part
            tap_lo, tap_hi, k_first, k_end = place[at + 8], place[at + 9], place[at + 10], \
                place[at + 11]
            # w is (K, C, taps) from w_base; or, ``flipped``, the (C, K, taps) kernel of the
            # convolution that this one is the adjoint of, read with its taps reversed and its
            # channel axes swapped
            part_taps = tap_hi - tap_lo
            k_step, c_step, tap_first = (
                (taps, k_out * taps, taps - 1) if flipped else
                (c_in * part_taps, part_taps,
                 place[at + 12] - k_first * c_in * part_taps - tap_lo))
            # the part's output rows i0 .. i0+count_h-1 and columns j0 .. j0+count_w-1: one
            # sweep over those rows (the row ends computed and dropped), or one per row over
            # those columns; in blocks that the sweep over all outputs has too (so that they
            # stay inside the grid)
            i0, count_h, j0, count_w = place[at + 4], place[at + 5], place[at + 6], \
                place[at + 7]
            sweeps = range(i0, i0 + count_h) if rows > 1 else range(1)
            for c0 in range(0, c_in, chunk):
                for r in sweeps:
                    if rows > 1:
                        lo = r * pitch + j0 * lanes // POS_BLOCK * POS_BLOCK
                        hi = r * pitch + (j0 + count_w) * lanes
                    else:
                        lo, hi = i0 * pitch // POS_BLOCK * POS_BLOCK, (i0 + count_h) * pitch
                    for o0 in range(lo, hi, POS_BLOCK):
                        if c0 == 0:
                            for s in range(_FORWARD_SUMS):
                                sums[s] = 0
                        else:
                            for kk in range(OUT_BLOCK):
                                for t in range(POS_BLOCK):
                                    sums[kk * POS_BLOCK + t] = gridf[u64(kk * span + o0 + t)]
                        # taps outside, channels inside: a part of a strided layer's
                        # phases has 1-4 taps, too few for an inner loop (the strided input
                        # gradients 2-7% faster, the 4x4 layers' passes 2-5%, the others alike)
                        for tap in range(tap_lo, tap_hi):
                            if rows > 1 and not _reads_image(taps_table, tap, r,
                                                             o0 - r * pitch):
                                continue
                            tap_at = u64(taps_table[u64(tap)]) + u64(o0)
                            for c in range(c0, min(c0 + chunk, c_in)):
                                row = u64((planes_of_n + c) * length) + tap_at
                                for kk in range(OUT_BLOCK):
                                    # a block past the part's last channel reads that
                                    # channel, then is dropped
                                    k = min(k0 + kk, k_end - 1)
                                    # (the direction a test, not a run-time step of
                                    # +-1 to multiply by: with the step, the strided
                                    # forwards and phase-wise input gradients took 2-16%
                                    # longer, with tap loops alike in the assembly)
                                    weight = wf[u64(k * k_step + c * c_step + (
                                        tap_first - tap if flipped else tap_first + tap))]
                                    for t in range(POS_BLOCK):
                                        sums[kk * POS_BLOCK + t] += weight * xf[row + u64(t)]
                        for kk in range(OUT_BLOCK):
                            for t in range(POS_BLOCK):
                                gridf[u64(kk * span + o0 + t)] = sums[kk * POS_BLOCK + t]
            out_plane, out_first, out_row, out_col = place[at], place[at + 1], place[at + 2], \
                place[at + 3]
            # the cells of a row that go in runs of 8 (one sample a plane, column stride 2)
            runs, parity = (place[at + 13], place[at + 14]) if lanes == 1 else (0, 0)
            # interleaved planes onto y's rows: 8 samples x 8 cells at a time by transposes
            # (where y's rows are contiguous), the rest cell by cell
            apart = u64((k_end - k_first) * out_plane)         # sample to sample in y
            whole_s = lanes // 8 * 8 if out_col == 1 and count_w >= 8 else 0
            whole_j = count_w // 8 * 8
            for kk in range(min(OUT_BLOCK, k_end - k0)):
                shift = bias[k0 + kk] if bias.size else 0
                # y's cells of channel k0 + kk: sample s's plane from first + s*apart
                first = u64((n * lanes * (k_end - k_first) + k0 - k_first + kk) * out_plane
                            + out_first)
                for s0 in range(0, whole_s, 8):
                    out = first + u64(s0) * apart
                    for i in range(count_h):
                        grid_row = u64(kk * span + (i0 + i) * pitch + j0 * lanes + s0)
                        target = out + u64(i * out_row)
                        for j in range(0, whole_j, 8):
                            _transpose_8x8(gridf, grid_row + u64(j * lanes), u64(lanes), yf,
                                           target + u64(j), target + u64(j) + apart,
                                           2 * apart, np.float32(shift))
                for s in range(lanes):
                    out = first + u64(s) * apart
                    for i in range(count_h):
                        grid_row = u64(kk * span + (i0 + i) * pitch + j0 * lanes + s)
                        target = out + u64(i * out_row)
                        if lanes == 1 and out_col == 1:
                            for j in range(count_w):
                                yf[target + u64(j)] = gridf[grid_row + u64(j)] + shift
                        else:
                            # the other column phase's cells between them are this task's
                            # too (gx's planes of its channels), written before or after
                            for j in range(0, runs, 8):
                                _put_evens_8(gridf, grid_row + u64(j), np.float32(shift), yf,
                                             target + u64(2 * j) - u64(parity), parity == 1)
                            # (runs is 0 with lanes > 1; the transposes' samples are done
                            # up to whole_j)
                            for j in range(max(runs, whole_j if s < whole_s else 0), count_w):
                                yf[target + u64(j * out_col)] = \
                                    gridf[grid_row + u64(j * lanes)] + shift


@njit(cache=True, fastmath={"contract"})
def _masked_forward_sample(copies, wf, bias, raw, yf, offsets, dims, n):
    r"""Sample n of a first layer's forward (:func:`_masked_forward`): its KW column-masked
    copies of x written into ``copies`` (copy q of channel c from q*``apart`` + (n*C + c) *
    ``length``; :func:`_masked_copies`), then

    .. math:: y_{n,k,o} = b_k + \sum_c \sum_t w_{k,c,t}\, \text{copies}_{n,c}[o + \text{offsets}_t]

    over y's own plane (o = i*W + j, no padding columns), in blocks of OUT_BLOCK channels x
    POS_BLOCK positions whose sums are stored straight into y; the last block of a plane starts
    POS_BLOCK before its end, overlapping the one before (same sums, stored again), and a
    block past the last channel computes and stores that channel again.

    A loop of its own, not a mode of :func:`_forward_tasks`: with nine taps a block (one input
    channel), what surrounds the taps weighs as much as they do, and the general loop's parts,
    chunks and flipped kernels had made CNN-S's first forward 10-30% slower (0.182-0.184
    against 0.158-0.163 ms in a calm period; the stem's 9-19%), for 0.2-0.9 s more cold
    compile."""
    c_in, k_out, plane, taps, length, apart, h, w, top, left, kw, step, own = dims[:13]
    # sample n's copies: at its place among all samples', or (``own``) at the start of
    # ``copies``, a work area of the caller's (:func:`_samples_task`)
    planes_of_n = 0 if own else n * c_in
    for q in range(kw):
        kept_from, kept_to = _kept_columns(q, step, left, w)
        for c in range(c_in):
            at, src = q * apart + (planes_of_n + c) * length, (n * c_in + c) * h * w
            _pad_plane(raw[src:src + h * w], copies[at:at + length], h, w, top, left, w,
                       kept_from, kept_to)
    sums = numba.carray(_stack_array(_FORWARD_SUMS, copies.dtype), (_FORWARD_SUMS,))
    for k0 in range(0, k_out, OUT_BLOCK):
        for block in range(0, plane, POS_BLOCK):
            o0 = min(block, plane - POS_BLOCK)
            for s in range(_FORWARD_SUMS):
                sums[s] = 0
            for c in range(c_in):
                at = u64((planes_of_n + c) * length + o0)
                for tap in range(taps):
                    row = at + u64(offsets[tap])
                    for kk in range(OUT_BLOCK):
                        weight = wf[u64((min(k0 + kk, k_out - 1) * c_in + c) * taps + tap)]
                        for t in range(POS_BLOCK):
                            sums[kk * POS_BLOCK + t] += weight * copies[row + u64(t)]
            for kk in range(OUT_BLOCK):
                k = min(k0 + kk, k_out - 1)
                shift = bias[k] if bias.size else np.float32(0)
                out = u64((n * k_out + k) * plane + o0)
                for t in range(POS_BLOCK):
                    yf[out + u64(t)] = sums[kk * POS_BLOCK + t] + shift


# --------------------------------------------------------------------------------------------
# Weight gradient
# --------------------------------------------------------------------------------------------
@njit(inline="always")
def _weight_grad_tasks(xf, gf, gwf, taps_table, dims, first, last):
    """Tasks [first, last) of (block of GRAD_OUT_BLOCK output channels, block of GRAD_IN_BLOCK
    input channels): gw[k, c, tap] += the sum over samples and positions of gy * x at the
    tap's offset (gw zeroed by the caller, or holding the samples' parts so far).

    Here x and gy are laid out channel-major: all samples of a channel are one flat range
    (``x_stride`` and ``g_stride`` apart), (N, C) planes one after another, or one plane of N
    interleaved samples. The positions are swept in ``rows`` runs of ``run`` values, ``pitch``
    apart in gy and ``x_pitch`` (if not 0) in x. It goes in strips of ``strip`` positions
    (STRIP, or a whole run of up to WHOLE_RUN_MAX): all taps sweep one strip while its few KB
    of gy and x are in the L1 cache (one sweep per tap over whole planes ran from L2 at about
    half the speed); runs shorter than a strip go
    several to a strip (the rows of 4x4 and 8x8 interleaved maps: their weight gradients 7-8%
    faster than a strip per row, a ResNet-18 step 0.9-1.2 ms less). Each (strip, tap) adds its
    register sums into the tap's lanes in ``totals``; the lanes are added up once, at the end
    of the task. Positions outside the output hold
    gy = 0, so they add nothing, except that an infinite x there turns the sum into NaN where
    the reference would give an infinite one.

    The blocks of input channels from ``slots_from`` on (of ``c_blocks``; see
    :func:`_slot_blocks`) are one channel each, and their GRAD_IN_BLOCK slots hold that many
    of the channel's taps instead of channels ("taps in slots"): every block, where
    :func:`_taps_in_slots` says so, or the channels that whole blocks leave over. Either way a
    tap's sum for a channel adds the same products in the same order, so the results do not
    depend on the blocks.

    Swept row by row, a tap sweeps only the rows and the positions of a row where it reads
    inside the image (:func:`_tap_table`): elsewhere x is padding, whose terms are zero."""
    c_in, k_out, rows, run, pitch, taps, x_stride, g_stride, strip, x_pitch, \
        slots_from, c_blocks = dims[:12]
    band = max(1, strip // max(run, 1))      # rows per strip, when a whole row fits in one
    sums = numba.carray(_stack_array(_GRAD_SUMS, xf.dtype), (_GRAD_SUMS,))
    totals = np.empty(taps * _GRAD_SUMS, xf.dtype)
    for task in range(first, last):
        k0 = (task // c_blocks) * GRAD_OUT_BLOCK
        block = task % c_blocks
        # blocks from slots_from on are one channel each, its taps in the slots
        taps_in_slots = block >= slots_from
        c0 = slots_from * GRAD_IN_BLOCK + block - slots_from if taps_in_slots else \
            block * GRAD_IN_BLOCK
        # taps in slots: their lanes go into one row of totals, as a block's always do
        # (adding each slot into its own tap's row had kept LLVM from holding the sums in
        # registers, and the loop below scalar)
        tap_step = GRAD_IN_BLOCK if taps_in_slots else 1
        # where the slots' channels start in x (channels past the last read it again, and
        # their sums are dropped)
        x_0 = u64(c0 * x_stride)
        x_1, x_2 = (x_0, x_0) if taps_in_slots else (
            u64(min(c0 + 1, c_in - 1) * x_stride), u64(min(c0 + 2, c_in - 1) * x_stride))
        totals[:] = 0
        for r0 in range(0, rows, band):
            for s0 in range(0, run, strip):          # (one strip per row when band > 1)
                for tap in range(0, taps, tap_step):
                    for s in range(_GRAD_SUMS):
                        sums[s] = 0
                    # the rows, and positions of a row, where the block's taps read inside
                    # the image (elsewhere x is padding: zero terms)
                    first_row, end_row, first_at, end_at = _tap_reach(
                        taps_table, tap, min(tap + tap_step, taps))
                    first_at = max(s0, first_at // LANES * LANES)
                    end_at = min(s0 + min(strip, run - s0), -(-end_at // LANES) * LANES)
                    for r in range(max(r0, first_row), min(r0 + band, rows, end_row)):
                        # x's runs may lie further apart than gy's (``x_pitch``, when not 0)
                        ahead = u64(r * (x_pitch - pitch)) if x_pitch else u64(0)
                        # the taps of the three slots (taps in slots: slots past the last
                        # tap read it again, and their sums are dropped)
                        shift = u64(taps_table[u64(tap)]) + ahead
                        shift_1 = u64(taps_table[u64(min(tap + 1, taps - 1))]) + ahead \
                            if taps_in_slots else shift
                        shift_2 = u64(taps_table[u64(min(tap + 2, taps - 1))]) + ahead \
                            if taps_in_slots else shift
                        shift, shift_1, shift_2 = shift + x_0, shift_1 + x_1, shift_2 + x_2
                        for o in range(r * pitch + first_at, r * pitch + end_at, LANES):
                            for kk in range(GRAD_OUT_BLOCK):
                                # blocks past the last channel read channel K-1 (or C-1),
                                # and their sums are dropped
                                g_row = u64(min(k0 + kk, k_out - 1) * g_stride + o)
                                for cc in range(GRAD_IN_BLOCK):
                                    slot_shift = shift if cc == 0 else \
                                        shift_1 if cc == 1 else shift_2
                                    x_row = slot_shift + u64(o)
                                    base = (kk * GRAD_IN_BLOCK + cc) * LANES
                                    for lane in range(LANES):
                                        sums[base + lane] += \
                                            gf[g_row + u64(lane)] * xf[x_row + u64(lane)]
                    # (taps in slots: the lanes of taps tap .. tap+2 in one row of totals)
                    row = tap // tap_step
                    lanes_of_tap = totals[row * _GRAD_SUMS:(row + 1) * _GRAD_SUMS]
                    for s in range(_GRAD_SUMS):
                        lanes_of_tap[s] += sums[s]
        for tap in range(taps):
            for kk in range(min(GRAD_OUT_BLOCK, k_out - k0)):
                for cc in range(1 if taps_in_slots else min(GRAD_IN_BLOCK, c_in - c0)):
                    # where (tap, channel c0 + cc) summed: its row of totals and slot
                    row, slot = (tap // tap_step, tap % tap_step) if taps_in_slots else \
                        (tap, cc)
                    base = row * _GRAD_SUMS + (kk * GRAD_IN_BLOCK + slot) * LANES
                    total = totals[base]
                    for lane in range(1, LANES):
                        total += totals[base + lane]
                    gwf[u64(((k0 + kk) * c_in + c0 + cc) * taps + tap)] += total


# --------------------------------------------------------------------------------------------
# The loops on the pool: a job each (C callbacks run task by task by numba_jobs's driver;
# a parallel driver of their own had cost 4 s of the 30 s cold-compile budget)
# --------------------------------------------------------------------------------------------
_PAD, _FORWARD, _WEIGHT_GRAD, _MASKED_FORWARD, _SAMPLES = 0, 1, 2, 3, 4
_EMPTY = np.empty(0, np.float32)
_EMPTY_INTS = np.empty(0, np.int64)
_DIMS = 17      # a job's integers (as many as the forward loop's)
_BLOCK = 14 + _DIMS     # a job's arguments: five float32 vectors, two int64 vectors, the dims


@njit(cache=True)
def _arguments(address):
    """A loop's arguments from its block (filled by :func:`_launch`): a..e (float32 vectors),
    ints, place (int64 vectors) and dims."""
    block = block_of(address, _BLOCK)
    a, b, c = vector(block, 0, np.float32), vector(block, 2, np.float32), \
        vector(block, 4, np.float32)
    d, e, ints = vector(block, 6, np.float32), vector(block, 8, np.float32), \
        vector(block, 10, np.int64)
    place = vector(block, 12, np.int64)
    dims = (block[14], block[15], block[16], block[17], block[18], block[19], block[20],
            block[21], block[22], block[23], block[24], block[25], block[26], block[27],
            block[28], block[29], block[30])
    return a, b, c, d, e, ints, place, dims


def _pad_task(task, address, tasks):
    """A plane padded by :func:`_pad_planes` (a -> e, ints = the phases)."""
    a, _, _, _, e, ints, _, dims = _arguments(address)
    _pad_planes(a, dims, ints, e, np.int64(task), np.int64(task) + 1)


def _forward_task(task, address, tasks):
    """A block of :func:`_forward_tasks` (a..e = padded x, w, bias, raw x, y; ints = the taps'
    table (:func:`_tap_table`), place = its parts)."""
    a, b, c, d, e, ints, place, dims = _arguments(address)
    _forward_tasks(a, b, c, d, e, ints, place, dims, np.int64(task), np.int64(task) + 1)


def _masked_forward_task(task, address, tasks):
    """Sample ``task`` of :func:`_masked_forward_sample` (a..e = the copies, w, bias, raw x,
    y; ints = the tap offsets)."""
    a, b, c, d, e, ints, _, dims = _arguments(address)
    _masked_forward_sample(a, b, c, d, e, ints, dims, np.int64(task))


def _weight_grad_task(task, address, tasks):
    """A block of :func:`_weight_grad_tasks` (a, b, c = x, gy, gw; ints = the taps' table), or,
    ``task`` -1, all ``tasks`` of them, one after the other (one sample's, for
    :func:`_samples_task`)."""
    a, b, c, _, _, ints, _, dims = _arguments(address)
    first, last = (np.int64(0), np.int64(tasks)) if task < 0 else \
        (np.int64(task), np.int64(task) + 1)
    _weight_grad_tasks(a, b, c, ints, dims, first, last)


@njit(inline="always")
def _argument_block(a, b, c, d, e, ints, place, dims):
    """A job's argument block (read by :func:`_arguments`), ``dims`` (a tuple or an int64
    vector) followed by zeros."""
    block = np.empty(_BLOCK, np.int64)
    put_vector(block, 0, a)
    put_vector(block, 2, b)
    put_vector(block, 4, c)
    put_vector(block, 6, d)
    put_vector(block, 8, e)
    put_vector(block, 10, ints)
    put_vector(block, 12, place)
    for i in range(len(dims)):
        block[14 + i] = dims[i]
    for i in range(len(dims), _DIMS):
        block[14 + i] = 0
    return block


def _samples_task(task, address, tasks):
    """Group ``task`` of ``tasks`` of samples, one after the other, on a work area of its own
    (in the L2 cache from the group's first sample on). For each sample: a *pass* (the forward
    loop's, padding the sample's planes into the area (``padded_here``), or a first layer's
    forward on its masked copies there), then, for a *weight gradient*, the sample's part of
    gw, added into the group's part (the parts are added up in their order, so that the sum
    does not depend on which thread ran which group): x's planes (plain, phase planes or
    masked copies) are laid out in the area by the padding job, and ȳ is read from the pass's
    planes (an input gradient's), laid out in the area too, or read where it lies. A batch's
    planes, kept from the forward for the weight gradient and laid out again for the two
    gradients, had been written to memory and read back; in the host's slow periods (memory
    bandwidth down several-fold) that traffic had made ResNet-18's 32x32 layers 73-82%
    slower.

    a = the work areas (``area`` values each: the pass's planes, x's from ``x_at``, ȳ's from
    ``g_at``), then the groups' parts of gw (``gw_size`` values each); b = w, c = the bias (a
    forward) or x (a weight gradient), d = the pass's input (x, or ȳ) or ȳ, e = the pass's
    output (y, or x̄); ints = the pass's taps (``pass_ints`` values), the weight gradient's
    taps table, x's phases (``x_phases`` values), ȳ's; place = the pass's place rows
    (``parts``), its dims (_DIMS), the weight gradient's (_WEIGHT_DIMS), then the padding
    job's for one sample of x, and of ȳ (_PAD_DIMS each); dims = (N, area, planes (the pass's
    values, zeros after them up to x's), x_at, x_end (after x's planes, the zeros that their
    taps read past them, up to ȳ's or the area's end), g_at (0: ȳ not laid out), gw_size,
    shift (where ȳ's output positions start in the pass's planes), g_sample (ȳ's values per
    sample), the pass's job, the weight gradient's, its tasks, the padding job, parts,
    pass_ints, x_phases, lays_out (the pass's planes are x's, which the padding job lays out
    first: a strided forward))."""
    a, b, c, d, e, ints, place, dims = _arguments(address)
    n, area, planes, x_at, x_end, g_at, gw_size, shift, g_sample, pass_job, weight_job, \
        weight_tasks, pad_job, parts, pass_ints, x_phases, lays_out = dims[:17]
    first, last = task * n // tasks, (task + 1) * n // tasks
    work = a[task * area:(task + 1) * area]
    planes_end = x_at if weight_job else area
    work[planes:planes_end] = 0                # what the last plane's taps may read past it
    rows = parts * _PLACE
    at = rows + _DIMS                          # the weight gradient's dims in place
    x_dims, g_dims = place[at + _WEIGHT_DIMS:at + _WEIGHT_DIMS + _PAD_DIMS], \
        place[at + _WEIGHT_DIMS + _PAD_DIMS:at + _WEIGHT_DIMS + 2 * _PAD_DIMS]
    x_values = x_dims[1] * x_dims[2] * x_dims[3]                # a sample's C x H x W
    table_end = pass_ints + 5 * place[at + 5]  # (no weight gradient: no taps)
    if pass_job:
        pass_block = _argument_block(work[:planes_end], b, _EMPTY if weight_job else c, d, e,
                                     ints[:pass_ints], place[:rows], place[rows:at])
        if lays_out:        # the pass's planes are x's, laid out here by the padding job
            lay_out = _argument_block(d, _EMPTY, _EMPTY, _EMPTY, work[:planes_end],
                                      ints[table_end:table_end + x_phases], _EMPTY_INTS,
                                      x_dims)
    if weight_job:
        x_planes = work[x_at:g_at if g_at else area]
        x_planes[x_end - x_at:] = 0
        x_block = _argument_block(c, _EMPTY, _EMPTY, _EMPTY, x_planes,
                                  ints[table_end:table_end + x_phases], _EMPTY_INTS, x_dims)
        if g_at:
            g_block = _argument_block(d, _EMPTY, _EMPTY, _EMPTY, work[g_at:],
                                      ints[table_end + x_phases:], _EMPTY_INTS, g_dims)
        gy = work[shift:planes_end] if pass_job else work[g_at:] if g_at else d
        gw_part = a[tasks * area + task * gw_size:tasks * area + (task + 1) * gw_size]
        weight = _argument_block(x_planes, gy, gw_part, _EMPTY, _EMPTY,
                                 ints[pass_ints:table_end], _EMPTY_INTS,
                                 place[at:at + _WEIGHT_DIMS])
    for sample in range(first, last):
        if lays_out:
            put_vector(lay_out, 0, d[sample * x_values:(sample + 1) * x_values])
            for plane in range(x_dims[1]):
                call_job(pad_job, np.intc(plane), lay_out.ctypes.data, np.intc(x_dims[1]))
        if pass_job:
            call_job(pass_job, np.intc(sample), pass_block.ctypes.data, np.intc(n))
        if weight_job:
            put_vector(x_block, 0, c[sample * x_values:(sample + 1) * x_values])
            for plane in range(x_dims[1]):
                call_job(pad_job, np.intc(plane), x_block.ctypes.data, np.intc(x_dims[1]))
            if g_at:
                put_vector(g_block, 0, d[sample * g_sample:(sample + 1) * g_sample])
                for plane in range(g_dims[1]):
                    call_job(pad_job, np.intc(plane), g_block.ctypes.data, np.intc(g_dims[1]))
            elif not pass_job:                 # ȳ where it lies: the sample's
                put_vector(weight, 2, d[sample * g_sample:(sample + 1) * g_sample])
            call_job(weight_job, np.intc(-1), weight.ctypes.data, np.intc(weight_tasks))


# each loop is compiled inside its job's compile, once: the weight gradient and the padding
# inlined (a job calling a compiled function links it in and has LLVM optimise it again); the
# forward as a function of its own, compiled under the job's SLP setting (inlined, LLVM's SLP
# vectoriser left its FMAs scalar)
_JOBS = {_PAD: job(_pad_task), _FORWARD: job(_forward_task, vectorise=True),
         _WEIGHT_GRAD: job(_weight_grad_task, vectorise=True),
         _MASKED_FORWARD: job(_masked_forward_task, vectorise=True),
         _SAMPLES: job(_samples_task)}


@njit(cache=True)
def _launch(job_, serial, a, b, c, d, e, ints, place, dims, n_tasks):
    block = _argument_block(a, b, c, d, e, ints, place, dims)
    if serial:
        launch_serially(job_, n_tasks, block)
    else:
        launch(job_, n_tasks, block)


def _job_dims(values) -> tuple:
    """A job's integers: ``values``, then zeros up to the _DIMS of the argument block (each
    loop reads the ones it knows)."""
    values = tuple(values)
    assert len(values) <= _DIMS, (len(values), _DIMS)
    return values + (0,) * (_DIMS - len(values))


def _parallel(kind, a, b, c, d, e, ints, dims, n_tasks, place=_EMPTY_INTS, serial=False):
    """Tasks 0..n_tasks-1 of loop ``kind`` (see :data:`_JOBS`) on Numba's pool, or one after
    the other in this thread (``serial``), with the integers ``dims`` (:func:`_job_dims`)."""
    _launch(_JOBS[kind].addresses, serial, a, b, c, d, e, ints, place, _job_dims(dims), n_tasks)


# --------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------
class _Grid:
    r"""Where the direct loops find x (N, C, H, W) for a convolution by w (K, C, KH, KW).

    **Phase planes.** With stride s, output (i, j) and tap (p, q) read the padded input at
    (s_h i + p d_h, s_w j + q d_w). Split the padded plane into its s_h*s_w *phases* (every
    s-th row and column, from offsets (alpha, beta)), and that cell is cell
    (i + \lfloor p d_h / s_h \rfloor, j + \lfloor q d_w / s_w \rfloor) of phase
    (p d_h mod s_h, q d_w mod s_w): a stride-1 read. So each tap is one fixed offset from the
    output position, ``offsets[tap]``, and the same loops serve every stride; only the phases
    some tap reads are stored. (With stride 1 there is one phase, the padded plane.) The
    planes are written by column pairs (:func:`_paired_phase_planes`), so a strided grid must
    have a column stride of 2 and its phases in pairs (:func:`_pairs_phases`).

    **Layouts.** Either one plane per (sample, channel), or, with ``interleave``, one plane per
    channel holding all N samples interleaved: value (row, col, n) at (row * cols + col) * N + n.
    Then each output row is a run of OW * N values, so whole blocks fit in the row and the
    padding columns need not be computed: on 8x8 maps, 97% of the computed positions are
    outputs instead of 67%, and 4x4 maps become worth it. :func:`_interleaves` chooses."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, interleave):
        (self.n, self.c, self.h, self.w), (self.k, _, kh, kw) = x_shape, w_shape
        (sh, sw), (self.ph, self.pw), (dh, dw) = stride, padding, dilation
        self.stride = (sh, sw)
        self.oh = (self.h + 2 * self.ph - dh * (kh - 1) - 1) // sh + 1
        self.ow = (self.w + 2 * self.pw - dw * (kw - 1) - 1) // sw + 1
        self.lanes = self.n if interleave else 1
        self.groups = 1 if interleave else self.n            # plane groups: samples, or one
        reads = [(p * dh, q * dw) for p in range(kh) for q in range(kw)]
        phases = _phases((sh, sw), (dh, dw), (kh, kw))
        self.phases = np.array(phases, np.int64).reshape(-1)
        # strided grids are laid out by column-phase pairs (see applies)
        assert (sh, sw) == (1, 1) or _pairs_phases(sw, phases), phases
        self.rows = self.oh + max(a // sh for a, _ in reads)   # of a phase plane
        self.cols = self.ow + max(b // sw for _, b in reads)
        self.pitch = self.cols * self.lanes                   # values from row to row
        phase_length = self.rows * self.pitch
        self.offsets = np.array([phases.index((a % sh, b % sw)) * phase_length
                                 + a // sh * self.pitch + b // sw * self.lanes
                                 for a, b in reads], np.int64)
        self.reach = reach = int(self.offsets.max())         # how far past an output taps read
        # the taps' table, with the output rows and positions of a row (column j's lanes)
        # where each reads inside the image, for the loops that sweep row by row
        inside_rows = [_inside(self.h, self.ph, a, sh, self.oh) for a, _ in reads]
        inside_cols = [_inside(self.w, self.pw, b, sw, self.ow) for _, b in reads]
        self.taps = _tap_table(self.offsets, inside_rows, [
            (lo * self.lanes, hi * self.lanes) for lo, hi in inside_cols])
        self.taps_anywhere = _tap_table(self.offsets)
        # the forward sweeps interleaved planes row by row, unless a row's blocks would reach
        # into the next row's (blocks summed in chunks of channels must not overlap)
        row_blocks = -(-self.ow * self.lanes // POS_BLOCK) * POS_BLOCK
        self.sweeps = self.oh if interleave and row_blocks <= self.pitch else 1
        end = (self.oh - 1) * self.pitch + row_blocks if self.sweeps > 1 else \
            self.oh * self.pitch
        self.span = -(-end // POS_BLOCK) * POS_BLOCK          # output positions, whole blocks
        # a multiple of LANES, so that the weight gradient's vectors never straddle two planes
        self.length = -(-max(len(phases) * phase_length, self.span + reach) // LANES) * LANES
        # the output gradient's planes: rows of the same pitch, and as long as x's when the
        # weight gradient sweeps all samples' planes in one run (stride 1, a plane per sample;
        # strided, it sweeps sample by sample, interleaved, row by row)
        own_length = interleave or self.stride != (1, 1)
        self.g_rows = self.oh if own_length else self.rows
        self.g_length = -(-self.g_rows * self.pitch // LANES) * LANES if own_length else \
            self.length
        self._placement = None

    def _pad(self, a, phases, dims, tasks, slot, size, own=False):
        # the phase planes of a sample must fit in its length (else tasks would race)
        assert phases.size // 2 * dims[8] * dims[9] * dims[10] <= dims[11], (dims, phases)
        target = np.empty(size + self.reach, np.float32) if own else \
            scratch(size + self.reach, np.float32, slot)
        # in parallel when the pool's threads are awake: a ResNet-18 step took ~2% less
        _parallel(_PAD, flat(a), _EMPTY, _EMPTY, _EMPTY, target, phases, dims, tasks,
                  serial=not pool_shared())
        target[size:] = 0
        return target

    def input_dims(self, samples, channel_major=False):
        """The padding job's integers (:func:`_pad_planes`) for ``samples`` samples of x."""
        return (samples, self.c, self.h, self.w, self.ph, self.pw, *self.stride, self.rows,
                self.cols, self.lanes, self.length, int(channel_major), 0, 0)

    def output_gradient_dims(self, samples):
        """The padding job's integers for ``samples`` samples of gy (see
        :meth:`output_gradient`)."""
        return (samples, self.k, self.oh, self.ow, 0, 0, 1, 1, self.g_rows, self.cols,
                self.lanes, self.g_length, 1, 0, 0)

    def padded_input(self, x, channel_major=False, own=False):
        """x on the grid: its phase planes, (N, C) planes of ``length`` ((C, N) when
        ``channel_major``, or C interleaved planes), and ``reach`` zeros after the last; in an
        array of its own with ``own`` (else in this thread's scratch)."""
        planes = self.c * self.groups
        return self._pad(x, self.phases, self.input_dims(self.n, channel_major), planes,
                         "direct input", planes * self.length, own)

    def output_gradient(self, gy):
        """gy (N, K, OH, OW) on the output positions of the grid, channel-major."""
        planes = self.k * self.groups
        return self._pad(gy, _ONE_PHASE, self.output_gradient_dims(self.n), planes,
                         "direct output gradient", planes * self.g_length)

    def by_samples(self):
        """Whether the passes on this grid go sample by sample in work areas
        (:func:`_by_samples`): a plane per sample, and enough samples to share out."""
        return self.lanes == 1 and self.n >= PADDED_HERE_MIN_SAMPLES

    def padded_here(self):
        """Whether the forward loop's passes go sample by sample, each padding its sample into
        a work area (:func:`_pass_by_samples`): stride 1 and :meth:`by_samples`. (Strided
        ones have the padding job lay out each sample's phase planes there first.)"""
        return self.stride == (1, 1) and self.by_samples()

    def placement(self):
        """The forward's one part (see :func:`_forward_tasks`): every tap and output channel,
        y's cells all of them, in (N, K, OH, OW) order."""
        if self._placement is None:
            self._placement = np.array([self.oh * self.ow, 0, self.ow, 1, 0, self.oh, 0,
                                        self.ow, 0, self.offsets.size, 0, self.k, 0, 0, 0],
                                       np.int64)
        return self._placement

    def forward_dims(self, flipped=False):
        # interleaved planes are N times longer: sweep them a chunk of channels at a time, so
        # that the rows under a block stay in L1 from one tap to the next (8x8 and 4x4 maps:
        # 115 and 90 GFLOP/s in one sweep, 150 and 140 in chunks of 16; 8 and 32 were no
        # better); each phase plane adds its own rows (stride 2, 4 phases: chunks of 4 took
        # 0.95, 0.75 and 0.78 ms on ResNet-18's three strided 3x3 layers, chunks of 16 1.2,
        # 0.95 and 0.89); but onto maps of at most 16 outputs, whose phase rows are short,
        # chunks of 16 again (Zen 4, side by side, six rounds: the strided layer onto 4x4
        # outputs 0.62-0.64 ms in chunks of 4, 0.55-0.58 in 8, 0.54-0.57 in 16; the one onto
        # 8x8 outputs as fast in 4 as in 8 or 16, or faster)
        phases = self.phases.size // 2
        chunk = self.c if self.lanes == 1 else \
            IN_CHUNK if self.oh * self.ow <= 16 else max(1, IN_CHUNK // phases)
        return (self.c, self.k, self.oh, self.ow, self.pitch, self.offsets.size, self.length,
                self.span, self.lanes, self.sweeps, chunk, int(self.padded_here()), self.h,
                self.w, self.ph, self.pw, int(flipped))


_ONE_PHASE = np.zeros(2, np.int64)


@functools.lru_cache(maxsize=512)
def _grid(x_shape, w_shape, stride, padding, dilation, interleave) -> _Grid:
    """The :class:`_Grid` of a convolution, made once per geometry (making one takes tens of
    microseconds of Python, a few percent of a small layer's time)."""
    return _Grid(x_shape, w_shape, stride, padding, dilation, interleave)


def _ints(pair) -> tuple[int, int]:
    return int(pair[0]), int(pair[1])


# the weight gradient's strips of positions (a multiple of LANES). 512 against 256: 2-5% faster
# on ResNet-18's 32x32 and 16x16 layers (the strided ones: no strip of 16 positions left over
# from each sample's 272), a step 0.5 ms less; 768-2048 no better
STRIP = 512
# ... but a run of up to this many positions is one strip (its 4 rows of gy and 3 of x, 28 KB,
# fit the 32 KB L1): a strip of what a run leaves over had cost its tap sweeps' set-up for a
# few vectors. ResNet-18's 32x32 weight gradient (runs of 1088: 512 + 512 + 64) 1.109 -> 1.041
# ms, CNN-S's second (rows of 896) 0.889 -> 0.834; side by side, four rounds
WHOLE_RUN_MAX = 1152

# the passes on plain planes go sample by sample from this many samples on (fewer would not
# fill the cores)
PADDED_HERE_MIN_SAMPLES = 8
# ... in groups of samples, this many per thread (see _pass_by_samples)
GROUPS_PER_THREAD = 4

# Maps of at most this many positions (per sample) go on interleaved planes: the forward and
# input gradient of stride-1 convolutions ("forward"), their weight gradient, and strided
# convolutions (by their output maps). Measured on an AVX2 EPYC, 2 threads, GFLOP/s of
# one-plane-per-sample / interleaved planes: forward 16x16 146 / 127, 8x8 114 / 150; weight
# gradient 32x32 116 / 97, 16x16 117 / 134, 8x8 - / 140. On the Zen 4 EPYC, with the padding
# taps skipped, the 16x16 forward alone is 4% faster interleaved, its input gradient 2% slower,
# and a training step's forward + backward faster: all three passes then share one grid (x's
# planes kept for the weight gradient, gy's padded once for both gradients). Side by side,
# ten rounds: ResNet-18's 16x16 layers 2.777 -> 2.625 ms, CNN-S's 14x14 one 2.632 -> 2.469;
# ResNet-18 steps 52.41 -> 51.76 ms (eight rounds, faster in each). The strided layer onto
# 16x16 outputs stays on plain planes (interleaved, its forward took 0.882 against 0.629 ms).
INTERLEAVE_MAX = {"forward": 256, "weight_grad": 256, "strided": 64}


def _interleaves(kind, n, h, w, stride=(1, 1)) -> bool:
    """Whether the ``kind`` ("forward", which serves the input gradient too, or "weight_grad")
    of a convolution of n samples of h x w maps runs on interleaved planes. Strided ones decide
    by their output map, about (h/s_h) x (w/s_w), all kinds alike, as kind "strided" (which
    the phase-wise input gradient passes for its stride-1 convolution of gy) (ResNet-18, ms
    interleaved / one plane per sample: forward 16x16 outputs 1.17 / 0.77, 8x8 0.76 / 0.73,
    4x4 0.77 / 0.91; weight gradient 16x16 1.02 / 0.91, 8x8 0.78 / 0.93, 4x4 0.91 / 0.91,
    and 1x1: 0.41 / 0.25, 0.22 / 0.29, 0.23 / 0.37)."""
    if tuple(stride) != (1, 1):
        h, w, kind = h // stride[0], w // stride[1], "strided"
    return h * w <= INTERLEAVE_MAX[kind] and n > 1


# --------------------------------------------------------------------------------------------
# The three kernels
# --------------------------------------------------------------------------------------------
# Where the direct loops beat im2col + sgemm. Measured on this machine (2 threads, BLAS on the
# same pool, whole training steps alternating between thresholds in one process): handing them
# every map of at least 64 outputs made a ResNet-18 step 87.5 instead of 91.3 ms (256 outputs)
# and a CNN-S step 9.0 instead of 11.2 ms; taking the 4x4 maps too (16) was slower again (91.3
# against 88.6 ms) while they had a plane per sample (2.25x the map, padded); interleaved, they
# pay. Blocks of output channels (input channels, for the weight gradient) are filled up with
# copies of the last channel, whose sums are dropped; even so, convolutions with fewer channels
# than a block run faster here than with im2col, whose products are then thin (ms, direct /
# im2col: ResNet-18's stem, 3 input channels, input gradient 0.35 / 1.00; CNN-S's first layer,
# 1 input channel, weight gradient 0.52 / 0.73; 2 and 1 output channels of 8 on 32x32 maps,
# forward 0.20 / 1.27 and 0.23 / 0.91, input gradient 0.15 / 2.11 and 0.12 / 4.41).
MIN_POSITIONS = 64

# strided input gradients go phase by phase from this many output positions per sample, and
# this many input channels (ms, phases / im2col, stride 2 onto 32x32 and 28x28 maps: 3
# channels 0.21 / 0.28, 1 channel 0.26 / 0.20)
PHASES_MIN_POSITIONS = 64
PHASES_MIN_CHANNELS = 3


@functools.lru_cache(maxsize=256)
def _phases(stride, dilation, kernel) -> list[tuple[int, int]]:
    """The phases (alpha, beta) of the padded input that some tap reads (see :class:`_Grid`)."""
    return sorted({(p * dilation[0] % stride[0], q * dilation[1] % stride[1])
                   for p in range(kernel[0]) for q in range(kernel[1])})


def _pairs_phases(column_stride, phases) -> bool:
    """Whether a strided grid's phases come in column pairs, as its planes are laid out
    (:func:`_paired_phase_planes`): column stride 2, each phase (alpha, 0) followed by
    (alpha, 1). ResNet's strided 3x3 convolutions do; the rest (strides of 3, one column
    phase: a 1x1 or dilated kernel) are left to im2col. A general phase-plane writer had cost
    0.9 s of the 30 s cold-compile budget for layers that no workload has (strided 1x1 ones
    have loops of their own, :mod:`refnas.kernels.numba_pointwise`)."""
    return column_stride == 2 and phases == [(a, b) for a, _ in phases[::2] for b in (0, 1)]


def applies(kind, x_shape, w_shape, stride, padding, dilation, groups, dtype) -> bool:
    """Whether the kernel ``kind`` ("forward", "input_grad" or "weight_grad") of this
    convolution runs here: float32, ungrouped, outputs (and for a strided input gradient,
    channels) past the thresholds above, and for a strided forward or weight gradient, phases
    in column pairs (:func:`_pairs_phases`)."""
    (n, c, h, w), (k, _, kh, kw), (dh, dw) = x_shape, w_shape, dilation
    # (no channels: the loops' sweeps over the input channels, which the input gradient's are
    # the output channels, would leave their sums unset)
    if not (np.dtype(dtype) == np.float32 and groups == 1 and min(padding) >= 0
            and min(c, k) > 0):
        return False
    if kind != "input_grad" and tuple(stride) != (1, 1) and not _pairs_phases(
            stride[1], _phases(tuple(stride), tuple(dilation), (kh, kw))):
        return False
    positions = (((h + 2 * padding[0] - dh * (kh - 1) - 1) // stride[0] + 1)
                 * ((w + 2 * padding[1] - dw * (kw - 1) - 1) // stride[1] + 1))
    interleaved = _interleaves("forward" if kind == "input_grad" else kind, n, h, w, stride)
    if positions * (n if interleaved else 1) < MIN_POSITIONS:
        return False
    if kind == "input_grad" and _by_phases(stride, padding, dilation, (kh, kw)):
        # all phases in one convolution of gy: it pays on ResNet-18's 16x16 and 8x8 output
        # maps (0.93 against 1.42 ms with im2col + col2im, 0.85 against 0.89), not on its 4x4
        # ones (1.05 against 0.77)
        return positions >= PHASES_MIN_POSITIONS and c >= PHASES_MIN_CHANNELS
    return True


class PaddedInput:
    """The forward's planes of x, kept for the weight gradient when both run on one grid:
    padding x again had cost 0.07-0.26 ms per layer, 3-3.5 ms per ResNet-18 step. Interleaved
    planes are laid out alike for both; plain ones are the forward's (N, C) planes, which the
    weight gradient then sweeps sample by sample."""
    __slots__ = ("grid", "planes")

    def __init__(self, grid, planes):
        self.grid, self.planes = grid, planes


def _convolve(x, w, bias, stride, padding, dilation, flipped=False, keep=False,
              keep_output_planes=False, out=None, parts=None):
    """y (N, K, OH, OW) = w * x (+ bias), by the register-blocked loop; ``flipped``: w is given
    as the (C, K, KH, KW) kernel whose flipped, channel-swapped self is the one to apply. With
    ``keep``, (y, :class:`PaddedInput` or None). With ``out`` and ``parts`` (a
    :class:`_PhasePlan`), the parts of the output channels apply their own taps of w (given
    flat) and write their cells into the C-contiguous float32 array ``out``, which is
    returned (see :func:`_forward_tasks`)."""
    stride, padding, dilation = _ints(stride), _ints(padding), _ints(dilation)
    w_shape = parts.w_shape if parts is not None else \
        (w.shape[1], w.shape[0], *w.shape[2:]) if flipped else w.shape
    grid = _grid(x.shape, w_shape, stride, padding, dilation, _interleaves(
        "forward" if parts is None else "strided", x.shape[0], *x.shape[2:], stride))
    y = np.empty((grid.n, grid.k, grid.oh, grid.ow), np.float32) if out is None else out
    # keep x's planes (in an array of their own, alive until the backward pass) only where the
    # weight gradient runs on the same grid (a first layer's forward on masked copies of x
    # does not come here: :func:`forward`), and not for a pass sample by sample, whose
    # backward goes sample by sample too (:func:`backward`); ``keep_output_planes``
    # hands back the planes in this thread's scratch, valid until the next direct loop runs
    # (for :func:`backward`)
    own = keep and (grid.lanes > 1) == _interleaves(
        "weight_grad", x.shape[0], x.shape[2], x.shape[3], stride) and not grid.by_samples()
    keep = keep or keep_output_planes
    kept = None
    taps, place = (grid.taps, grid.placement()) if parts is None else (parts.taps, parts.place)
    if y.size and grid.by_samples():
        # sample by sample in work areas: nothing kept (the backward goes sample by sample too)
        _pass_by_samples(grid, x, w, bias, y, taps, place, flipped)
    elif y.size:
        padded = grid.padded_input(x, own=own)
        tasks = grid.groups * -(-grid.k // OUT_BLOCK) // (
            1 if parts is None else len(parts.ranges))
        kept = PaddedInput(grid, padded) if own or keep_output_planes else None
        _parallel(_FORWARD, padded, flat(w), _EMPTY if bias is None else flat(bias), _EMPTY,
                  y.reshape(-1), taps, grid.forward_dims(flipped), tasks, place)
    return (y, kept) if keep else y


def _rounded(values):
    """``values`` rounded up to whole cache lines (of float32)."""
    return -(-values // 16) * 16


class _SamplePass:
    """A pass of :func:`_samples_task`: the ``job`` run per sample, the ``planes`` it writes
    into the work area (values) and the ``reach`` of zeros after them that its taps may read,
    its taps ``ints``, ``place`` rows and ``dims``; ``lays_out``: None, or the padding job's
    (dims, phases) that lay out a sample of x as its planes first."""
    __slots__ = ("job", "planes", "reach", "ints", "place", "dims", "lays_out")

    def __init__(self, job, planes, reach, ints, place, dims, lays_out=None):
        self.job, self.planes, self.reach, self.ints, self.place = job, planes, reach, ints, \
            place
        self.dims, self.lays_out = _job_dims(dims), lays_out


class _SampleWeights:
    """The weight gradient of :func:`_samples_task`: the padding job's ``x_dims`` for one
    sample of x and its ``x_phases``, the ``x_values`` its planes take in the work area (with
    the zeros their taps read past them: ``x_reach``); the loop's taps ``table``, ``dims`` and
    ``tasks`` (:func:`_weight_grad_dims`), gw's ``size``; and where ȳ is read: ``shift`` into
    the pass's planes, or, without a pass, ``g_sample`` values per sample, laid out by the
    padding job's ``g_dims`` (in ``g_values`` of the area) or where it lies (no ``g_dims``)."""
    __slots__ = ("x_dims", "x_phases", "x_values", "x_reach", "table", "dims", "tasks", "size",
                 "shift", "g_sample", "g_dims", "g_values")

    def __init__(self, x_dims, x_phases, x_values, x_reach, table, dims, tasks, size, shift=0,
                 g_sample=0, g_dims=None, g_values=0):
        self.x_dims, self.x_phases, self.x_values, self.x_reach = x_dims, x_phases, x_values, \
            x_reach
        self.table, self.dims, self.tasks, self.size = table, dims, tasks, size
        self.shift, self.g_sample, self.g_dims, self.g_values = shift, g_sample, g_dims, \
            g_values


_PAD_DIMS = 15      # the padding job's integers (see _pad_planes)


def _by_samples(n, w, third, source, out, pass_=None, weights=None):
    """:func:`_samples_task` over n samples, in groups on the pool, each group on a work area
    of its own: ``pass_`` (:class:`_SamplePass`) reads ``source`` (and the bias ``third``)
    and writes ``out``; ``weights`` (:class:`_SampleWeights`) sums gw from x (``third``) and ȳ
    (the pass's planes, or ``source``). Returns gw (flat), or None."""
    threads = numba.get_num_threads()
    # a few groups per thread, so that the pool can even out the threads' shares (a group per
    # thread: 0.98 against 0.82 ms on a 32x32 layer, the second thread late to start)
    groups = max(1, min(n, GROUPS_PER_THREAD * threads))
    planes = pass_.planes if pass_ is not None else 0
    x_at = _rounded(planes + pass_.reach) if pass_ is not None else 0
    x_end = x_at + (weights.x_values if weights is not None else 0)
    g_at = _rounded(x_end + weights.x_reach) if weights is not None else x_at
    area = g_at + (_rounded(weights.g_values) if weights is not None else 0)
    gw_size = _rounded(weights.size) if weights is not None else 0
    work = scratch(groups * (area + gw_size), np.float32, "direct input")
    work[groups * area:] = 0                   # the groups' parts of gw
    pass_ints = pass_.ints if pass_ is not None else _EMPTY_INTS
    lays_out = pass_ is not None and pass_.lays_out is not None
    # x's layout: the weight gradient's, or the pass's own when it lays x out
    x_dims, x_phases = (weights.x_dims, weights.x_phases) if weights is not None else \
        pass_.lays_out if lays_out else ((0,) * _PAD_DIMS, _EMPTY_INTS)
    g_dims = weights.g_dims if weights is not None and weights.g_dims is not None else None
    # (every part of place present, zeros where unused: the job reads each at a fixed place)
    place = [*(pass_.place if pass_ is not None else ()),
             *(pass_.dims if pass_ is not None else (0,) * _DIMS),
             *(weights.dims if weights is not None else (0,) * _WEIGHT_DIMS), *x_dims,
             *(g_dims if g_dims is not None else (0,) * _PAD_DIMS)]
    ints = np.concatenate([pass_ints, weights.table if weights is not None else _EMPTY_INTS,
                           x_phases, _ONE_PHASE])
    job = [n, area, planes, x_at, x_end, g_at if g_dims is not None else 0, gw_size,
           weights.shift if weights is not None else 0,
           weights.g_sample if weights is not None else 0,
           pass_.job if pass_ is not None else 0,
           _JOBS[_WEIGHT_GRAD].address if weights is not None else 0,
           weights.tasks if weights is not None else 0,
           _JOBS[_PAD].address if weights is not None or lays_out else 0,
           len(pass_.place) // _PLACE if pass_ is not None else 0, pass_ints.size,
           x_phases.size, int(lays_out)]
    _parallel(_SAMPLES, work, flat(w), third, flat(source), out, ints, job, groups,
              np.array(place, np.int64))
    if weights is None:
        return None
    # the groups' parts added in their order: the same sum whichever thread ran which group
    return work[groups * area:].reshape(groups, gw_size)[:, :weights.size].sum(axis=0)


def _pass_by_samples(grid, raw, w, bias, out, taps, place, flipped, weight=None):
    """The forward loop's pass of ``grid`` (a plane per sample) over the samples of ``raw``
    into ``out``, sample by sample (:func:`_by_samples`). With ``weight`` = (x, x's
    grid, where ȳ's outputs start in the pass's planes), the pass is an input gradient, and
    each sample's part of the weight gradient follows it; returns gw (K, C, taps), else
    None."""
    dims = list(grid.forward_dims(flipped))
    # a strided pass: its phase planes laid out by the padding job (padded_here 2)
    lays_out = None if grid.padded_here() else (grid.input_dims(1), grid.phases)
    dims[11] = 1 if lays_out is None else 2
    pass_ = _SamplePass(_JOBS[_FORWARD].address, grid.c * grid.length, grid.reach, taps,
                        place, dims, lays_out)
    if weight is None:
        _by_samples(grid.n, w, _EMPTY if bias is None else flat(bias), raw, out.reshape(-1),
                    pass_)
        return None
    x, x_grid, shift = weight
    k, c, count = grid.c, x_grid.c, x_grid.taps_anywhere.size // 5
    # one run: the sample's output rows, whole vectors
    run = -(-x_grid.oh * x_grid.pitch // LANES) * LANES
    dims, tasks = _weight_grad_dims(c, k, 1, run, run, count, x_grid.length, grid.length, 0,
                                    (1, 1))
    weights = _SampleWeights(x_grid.input_dims(1), x_grid.phases, c * x_grid.length,
                             x_grid.reach, x_grid.taps_anywhere, dims, tasks, k * c * count,
                             shift=shift)
    return _by_samples(grid.n, w, flat(x), raw, out.reshape(-1), pass_, weights)


def forward(x, w, bias, padding, dilation, stride=(1, 1), keep=False):
    """The forward kernel: y (N, K, OH, OW) = w * x (+ bias); with ``keep``, (y, x's padded
    planes or masked copies for :func:`weight_grad`, or None when the weight gradient runs on
    another grid)."""
    stride, padding, dilation = _ints(stride), _ints(padding), _ints(dilation)
    if _masked_copies_apply(x.shape, w.shape, stride, padding, dilation):
        return _masked_forward(x, w, bias, padding, dilation, keep)
    return _convolve(x, w, bias, stride, padding, dilation, keep=keep)


def input_grad(gy, w, padding, dilation, stride=(1, 1), input_shape=None):
    """The input gradient gx (N, C, H, W) of a convolution by w of x (``input_shape``).

    Stride 1, padded within reach: the "full" convolution of gy (N, K, OH, OW) by w flipped in
    space with its channel axes swapped, padding d*(KH - 1) - p; the loop reads w that way in
    place (a flipped copy had cost 54 us on 128x128x3x3). Otherwise, phase by phase
    (:func:`_input_grad_by_phases`)."""
    (kh, kw), (dh, dw), (ph, pw) = w.shape[2:], dilation, padding
    if not _by_phases(stride, padding, dilation, (kh, kw)):
        return _convolve(gy, w, None, (1, 1), (dh * (kh - 1) - ph, dw * (kw - 1) - pw),
                         dilation, flipped=True)
    return _input_grad_by_phases(gy, w, tuple(input_shape), _ints(stride), _ints(padding),
                                 _ints(dilation))


class _GyPlanes:
    """gy's planes from the input gradient, as the weight gradient sweeps them: ``planes``
    starts at output (0, 0) and ``sweep`` = (x_stride, g_stride, rows, run, pitch, x_pitch)."""
    __slots__ = ("planes", "sweep")

    def __init__(self, planes, sweep):
        self.planes, self.sweep = planes, sweep


def backward(gy, x, w, padding, dilation, kept=None):
    """(gx, gw) of a stride-1 convolution, padding gy once when both gradients can share it,
    else None.

    For a "same" convolution (padding d(k - 1)/2 on both axes) the input gradient's padded
    planes of gy have the rows of x's grid (pitch WP), with gy one padding row and column in:
    the weight gradient reads them there, instead of laying gy out again (which cost ~2 ms of a
    ResNet-18 step). It needs x's planes kept by :func:`forward` on its grid, in the layout the
    input gradient's planes share: interleaved for both, or plain (N, C) ones for both. On
    plain planes of enough samples, both gradients go sample by sample instead, and need
    nothing kept (:func:`_backward_by_samples`)."""
    (n, c, h, wd), (k, _, kh, kw) = x.shape, w.shape
    padding, dilation = _ints(padding), _ints(dilation)
    if any(2 * p != d * (size - 1) for p, d, size in zip(padding, dilation, (kh, kw))):
        return None
    grid = _grid(x.shape, tuple(w.shape), (1, 1), padding, dilation,
                 _interleaves("weight_grad", n, h, wd))
    if grid.padded_here() and gy.size and x.size:
        return _backward_by_samples(gy, x, w, grid, padding, dilation)
    if not (isinstance(kept, PaddedInput) and kept.grid is grid):
        return None
    # (for a "same" convolution the input gradient's padding d(k - 1) - p is p itself)
    gx, planes = _convolve(gy, w, None, (1, 1), padding, dilation, flipped=True,
                           keep_output_planes=True)
    return gx, weight_grad(x, gy, w.shape, padding, dilation, kept=kept,
                           gy_planes=_shared_gy_planes(planes, grid, k, c, padding))


def _backward_by_samples(gy, x, w, grid, padding, dilation):
    """(gx, gw) of a stride-1 "same" convolution on plain planes (x's ``grid``), sample by
    sample: each sample's input gradient, then its part of the weight gradient from ȳ's
    planes still in the work area (:func:`_pass_by_samples`); None when the input gradient's
    grid is another layout or pitch."""
    (kh, kw), (dh, dw) = w.shape[2:], dilation
    flipped_shape = (w.shape[1], w.shape[0], kh, kw)
    ig = _grid(gy.shape, flipped_shape, (1, 1), padding, dilation,
               _interleaves("forward", *gy.shape[:1], *gy.shape[2:]))
    # (for a "same" convolution the input gradient's padding d(k - 1) - p is p itself)
    assert (ig.ph, ig.pw) == (dh * (kh - 1) - padding[0], dw * (kw - 1) - padding[1])
    shift = padding[0] * ig.cols + padding[1]
    if not ig.padded_here() or ig.pitch != grid.pitch or \
            shift + -(-grid.oh * grid.pitch // LANES) * LANES > ig.length:
        return None
    gx = np.empty(x.shape, np.float32)
    gw = _pass_by_samples(ig, gy, w, None, gx, ig.taps, ig.placement(), True,
                          weight=(x, grid, shift))
    return gx, gw.reshape(w.shape)


def _shared_gy_planes(planes, grid, k, c, padding):
    """The input gradient's planes of gy as :func:`weight_grad` on ``grid`` can sweep them, or
    None when it cannot (another layout or pitch, rows of partial vectors, or a sweep that
    would read into the next plane)."""
    if planes is None or planes.grid.lanes != grid.lanes or planes.grid.pitch != grid.pitch:
        return None
    ig = planes.grid
    shift = (padding[0] * ig.cols + padding[1]) * ig.lanes
    if grid.lanes > 1:                        # interleaved: row by row, output cells only
        if grid.ow * grid.lanes % LANES:      # rows of whole vectors only
            return None
        sweep = (grid.length, ig.length, grid.oh, grid.ow * grid.lanes, grid.pitch, 0)
    else:                                     # (N, K) planes: sample by sample, output rows
        run = -(-grid.oh * grid.pitch // LANES) * LANES
        if shift + run > ig.length:
            return None
        sweep = (grid.length, ig.length, grid.n, run, k * ig.length, c * grid.length)
    return _GyPlanes(planes.planes[shift:], sweep)


def _by_phases(stride, padding, dilation, kernel) -> bool:
    """Whether the input gradient goes phase by phase: strided, or padded past the kernel's
    reach (the "full" convolution's padding, d*(K - 1) - p, would be negative)."""
    return tuple(stride) != (1, 1) or any(p > d * (k - 1) for p, d, k in zip(padding, dilation,
                                                                          kernel))


def _input_grad_by_phases(gy, w, x_shape, stride, padding, dilation):
    r"""The input gradient of a strided (or over-padded) convolution, by the phases of the
    padded input.

    Cell :math:`(s_h A + \alpha, s_w B + \beta)` of the padded input is read by the taps with
    :math:`p d_h \equiv \alpha \pmod{s_h}` and :math:`q d_w \equiv \beta \pmod{s_w}`, from
    output :math:`(A - u_p, B - v_q)`, :math:`u_p = \lfloor p d_h / s_h \rfloor`,
    :math:`v_q = \lfloor q d_w / s_w \rfloor`:

    .. math::
        \bar x_{n,c,\, s_h A + \alpha,\, s_w B + \beta} = \sum_k \sum_{p, q}
        w_{k,c,p,q}\, \bar y_{n,k,\, A - u_p,\, B - v_q},

    a stride-1 convolution of gy by the phase's taps, flipped, with the channel axes swapped.
    All phases run as one convolution of gy padded once (by U = max u_p and V = max v_q),
    whose output channels come in parts, one per phase, each with its own taps
    (:class:`_PhasePlan`); the direct forward loop computes it, and writes each part's outputs
    straight into its phase's cells of gx, cropped to the image. Every tap belongs to one
    phase, so the phases together do the forward's arithmetic; each cell of x is written once.
    (One convolution per phase, each into an array of its own, then copied, had taken 1.38 ms
    on ResNet-18's first strided layer; writing in place 1.12.)"""
    plan = _phase_plan(x_shape, tuple(w.shape), tuple(gy.shape), stride, padding, dilation)
    # each phase writes its cells of gx in place; cells that no tap reads stay zero
    gx = (np.empty if plan.covers else np.zeros)(x_shape, np.float32)
    if plan.taps_p.size:
        # each phase's weights (C, K, its taps), one after the other
        weights = np.concatenate([w[:, :, plan.taps_p[lo:hi], plan.taps_q[lo:hi]]
                                  .transpose(1, 0, 2).reshape(-1) for lo, hi in plan.ranges])
        _convolve(gy, weights, None, (1, 1), plan.padding, (1, 1), out=gx, parts=plan)
    return gx


class _PhasePlan:
    """How :func:`_input_grad_by_phases` runs one geometry as one convolution of gy: its output
    channels in parts of C (each rounded up to whole blocks), one per phase; ``w_shape`` and
    ``padding`` of that convolution, the taps' ``offsets`` and the parts' ``place`` rows (see
    :func:`_forward_tasks`), the kernel taps (taps_p, taps_q) of each phase's ``ranges``, and
    whether the phases' cells ``covers`` all of x."""

    def __init__(self, x_shape, w_shape, gy_shape, stride, padding, dilation):
        (_, c, h, wd), (k, _, kh, kw) = x_shape, w_shape
        (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
        phases, runs, covered = [], [], 0
        for alpha in range(sh):
            rows = [p for p in range(kh) if p * dh % sh == alpha]
            for beta in range(sw):
                cols = [q for q in range(kw) if q * dw % sw == beta]
                # the first phase cell inside the image, and where it lies
                first_a, first_b = -((alpha - ph) // sh), -((beta - pw) // sw)
                a0, b0 = sh * first_a + alpha - ph, sw * first_b + beta - pw
                if not rows or not cols or a0 >= h or b0 >= wd:
                    continue
                u, v = max(p * dh // sh for p in rows), max(q * dw // sw for q in cols)
                # the phase's cells that its outputs (gy's map + (u, v)) reach
                cells_h, cells_w = -(-(h - a0) // sh), -(-(wd - b0) // sw)
                count_h = min(cells_h, gy_shape[2] + u - first_a)
                count_w = min(cells_w, gy_shape[3] + v - first_b)
                if count_h > 0 and count_w > 0:
                    taps = [(p, q) for p in rows for q in cols]
                    # the cells of a row that go to gx in runs of 8 (:func:`_put_evens_8`:
                    # spans of 16 columns from the even one at or before b0, inside the row),
                    # and b0's parity
                    runs.append((max(0, min(count_w, (wd - b0 + b0 % 2) // 2)) // 8 * 8
                                 if sw == 2 else 0, b0 % 2))
                    phases.append((taps, (h * wd, a0 * wd + b0, sh * wd, sw, first_a, count_h,
                                          first_b, count_w)))
                    covered += count_h * count_w
        self.covers = covered == h * wd
        # gy padded by the largest shift of any tap, (U, V): tap (p, q) reads it
        # (U - floor(p d_h / s_h), V - floor(q d_w / s_w)) past the output cell
        shifts = [(p * dh // sh, q * dw // sw) for taps, _ in phases for p, q in taps]
        big_u, big_v = max((a for a, _ in shifts), default=0), max((b for _, b in shifts),
                                                                   default=0)
        part = -(-c // OUT_BLOCK) * OUT_BLOCK
        self.w_shape = (len(phases) * part, k, big_u + 1, big_v + 1)
        self.padding = (big_u, big_v)
        # (a strided layer's pass: interleaved by the strided layers' threshold)
        grid = _grid(gy_shape, self.w_shape, (1, 1), self.padding, (1, 1),
                     _interleaves("strided", gy_shape[0], *gy_shape[2:]))
        self.offsets = np.array([grid.offsets[(big_u - a) * (big_v + 1) + big_v - b]
                                 for a, b in shifts], np.int64)
        # a tap shifted by (a, b) reads gy's cell (i - a, j - b) for output (i, j)
        self.taps = _tap_table(self.offsets, [
            _inside(gy_shape[2], a, 0, 1, grid.oh) for a, _ in shifts], [
            tuple(grid.lanes * end for end in _inside(gy_shape[3], b, 0, 1, grid.ow))
            for _, b in shifts])
        self.taps_p = np.array([p for taps, _ in phases for p, _ in taps], np.int64)
        self.taps_q = np.array([q for taps, _ in phases for _, q in taps], np.int64)
        self.ranges, rows, lo = [], [], 0
        for f, (taps, cells) in enumerate(phases):
            self.ranges.append((lo, lo + len(taps)))
            rows.append((*cells, lo, lo + len(taps), f * part, f * part + c, c * k * lo,
                         *runs[f]))
            lo += len(taps)
        self.place = np.array(rows, np.int64).reshape(-1)


@functools.lru_cache(maxsize=256)
def _phase_plan(x_shape, w_shape, gy_shape, stride, padding, dilation) -> _PhasePlan:
    return _PhasePlan(x_shape, w_shape, gy_shape, stride, padding, dilation)


def _masked_copies_apply(x_shape, w_shape, stride, padding, dilation) -> bool:
    """Whether a convolution runs on column-masked copies of x (:func:`_masked_copies`): its
    forward (:func:`_masked_forward`) and its weight gradient, which then sweeps ȳ where it
    lies. Stride 1, "same" along the rows (OW = W), whole vectors of outputs per sample and a
    block of them at least, and KW copies of x smaller than laying ȳ out on x's grid
    (KW * C < K: a network's first layers, whose input gradient is never computed)."""
    (n, c, h, w), (k, _, kh, kw) = x_shape, w_shape
    oh = h + 2 * padding[0] - dilation[0] * (kh - 1)
    return (tuple(stride) == (1, 1) and 2 * padding[1] == dilation[1] * (kw - 1)
            and oh > 0 and oh * w % LANES == 0 and oh * w >= POS_BLOCK and kw * c < k
            and not _interleaves("weight_grad", n, h, w))


class _MaskedLayout:
    """Where :func:`_masked_copies` puts the KW copies of x (N, C, H, W): copy q of plane
    (n, c) from ``q * apart + (n*C + c) * length``, with ``length`` = (H + 2 PH) W + 2 PW
    rounded up to whole vectors; and where tap (p, q) reads, ``offsets``, past the output
    position."""

    def __init__(self, x_shape, w_shape, padding, dilation):
        (n, c, h, w), (_, _, kh, kw), (ph, pw), (dh, dw) = x_shape, w_shape, padding, dilation
        self.x_shape, self.padding, self.dilation = (n, c, h, w), (ph, pw), (dh, dw)
        self.length = -(-((h + 2 * ph) * w + 2 * pw) // LANES) * LANES
        self.apart = n * c * self.length
        self.copies = kw
        self.size = kw * self.apart
        self.oh = h + 2 * ph - dh * (kh - 1)
        self.offsets = np.array([q * self.apart + p * dh * w + q * dw
                                 for p in range(kh) for q in range(kw)], np.int64)
        self.taps = _tap_table(self.offsets)

    def pad_dims(self):
        """The padding job's integers (:func:`_pad_planes`) that write the copies."""
        (n, c, h, w), (ph, pw) = self.x_shape, self.padding
        return (n, c, h, w, ph, pw, 1, 1, h + 2 * ph, w, 1, self.length, 0, self.copies,
                self.dilation[1])

    def forward_dims(self, k, own):
        """The integers of :func:`_masked_forward_sample` for ``k`` output channels, the
        copies in ``own`` work areas or not."""
        (_, c, h, w), (ph, pw) = self.x_shape, self.padding
        return (c, k, self.oh * w, self.offsets.size, self.length, self.apart, h, w, ph, pw,
                self.copies, self.dilation[1], int(own))


@functools.lru_cache(maxsize=256)
def _masked_layout(x_shape, w_shape, padding, dilation) -> _MaskedLayout:
    return _MaskedLayout(x_shape, w_shape, padding, dilation)


class MaskedCopies:
    """The column-masked copies of x that :func:`forward` wrote, kept for the weight gradient
    (which would otherwise write them again, 0.04 ms on CNN-S's first layer)."""
    __slots__ = ("layout", "copies")

    def __init__(self, layout, copies):
        self.layout, self.copies = layout, copies


def _masked_copies(x, layout):
    r"""KW copies of x on a grid of row pitch W (no padding columns), copy q holding only the
    columns that tap column q reads for some output, the others zero, with PH rows of zeros
    above and below (laid out as ``layout`` says). Output (i, j) is then at o = i W + j, as in
    y and ȳ themselves, and tap (p, q) reads copy q at o + p d_h W + q d_w: a read that runs
    off the row's end lands on a zero of the neighbouring row instead of padding. (Laying ȳ
    out on x's padded grid instead had cost CNN-S's first layer 0.16 of its weight
    gradient's 0.30 ms: ȳ has 16 channels, x one.)"""
    copies = scratch(layout.size, np.float32, "direct input")
    _parallel(_PAD, flat(x), _EMPTY, _EMPTY, _EMPTY, copies, _ONE_PHASE, layout.pad_dims(),
              x.shape[0] * x.shape[1], serial=not pool_shared())
    return copies


def _masked_forward(x, w, bias, padding, dilation, keep):
    """The forward of a convolution on column-masked copies of x (:func:`_masked_copies_apply`),
    a task per sample writing its copies and then its y (:func:`_masked_forward_sample`). With
    ``keep``: (y, the copies as :class:`MaskedCopies`, in an array of their
    own)."""
    (n, c, h, wd), k = x.shape, w.shape[0]
    bias = _EMPTY if bias is None else flat(bias)
    if n >= PADDED_HERE_MIN_SAMPLES:
        # sample by sample, each sample's copies in its group's work area (a layout of one
        # sample); nothing kept: the weight gradient goes sample by sample too
        one = _masked_layout((1, c, h, wd), w.shape, padding, dilation)
        y = np.empty((n, k, one.oh, wd), np.float32)
        _by_samples(n, w, bias, x, y.reshape(-1),
                    _SamplePass(_JOBS[_MASKED_FORWARD].address, one.size, 0, one.offsets, (),
                                one.forward_dims(k, own=True)))
        return (y, None) if keep else y
    layout = _masked_layout(x.shape, w.shape, padding, dilation)
    copies = np.empty(layout.size, np.float32) if keep else \
        scratch(layout.size, np.float32, "direct input")
    y = np.empty((n, k, layout.oh, wd), np.float32)
    _parallel(_MASKED_FORWARD, copies, flat(w), bias, flat(x), y.reshape(-1), layout.offsets,
              layout.forward_dims(k, own=False), n)
    return (y, MaskedCopies(layout, copies)) if keep else y


def weight_grad(x, gy, w_shape, padding, dilation, stride=(1, 1), kept=None, gy_planes=None):
    """gw (K, C, KH, KW) = sum over n, i, j of gy[n, k, i, j] * x_pad[n, c, s_h i + p d_h,
    s_w j + q d_w]. ``kept``: x's planes from :func:`forward`, used when they are this grid's
    (anything else is ignored); ``gy_planes``: gy's padded planes from :func:`backward`.
    Without ``gy_planes``, a network's first layer sweeps gy where it lies against
    column-masked copies of x (:func:`_masked_copies_apply`)."""
    stride, padding, dilation = _ints(stride), _ints(padding), _ints(dilation)
    w_shape = tuple(int(v) for v in w_shape)
    gw = np.zeros(w_shape, np.float32)
    if gy.size and x.size and gy_planes is None and _masked_copies_apply(
            x.shape, w_shape, stride, padding, dilation):
        # ȳ where it lies (N, K, OH*OW), sample by sample
        (n, c, h, wd), k, length = x.shape, w_shape[0], gy.shape[2] * gy.shape[3]
        layout = _masked_layout(x.shape, w_shape, padding, dilation)
        if isinstance(kept, MaskedCopies) and kept.layout is layout:
            copies = kept.copies
        elif n >= PADDED_HERE_MIN_SAMPLES:
            # each sample's copies in its group's work area, then its part of gw
            one = _masked_layout((1, c, h, wd), w_shape, padding, dilation)
            count = one.taps.size // 5
            dims, tasks = _weight_grad_dims(c, k, 1, length, length, count, one.length, length,
                                            0, stride)
            weights = _SampleWeights(one.pad_dims(), _ONE_PHASE, one.size, 0, one.taps, dims,
                                     tasks, gw.size, g_sample=k * length)
            gw[...] = _by_samples(n, _EMPTY, flat(x), gy, _EMPTY, weights=weights).reshape(
                w_shape)
            return gw
        else:
            copies = _masked_copies(x, layout)
        _sweep_weight_grad(copies, flat(gy), gw, layout.taps, c, k, n, length, k * length,
                           layout.length, length, c * layout.length, stride)
        return gw
    grid = _grid(x.shape, w_shape, stride, padding, dilation,
                 _interleaves("weight_grad", x.shape[0], *x.shape[2:], stride))
    if gy.size and x.size and gy_planes is None and grid.by_samples():
        # each sample's x and ȳ laid out in its group's work area, then its part of gw (its
        # forward kept nothing)
        count = grid.taps_anywhere.size // 5
        dims, tasks = _weight_grad_dims(grid.c, grid.k, 1, grid.g_length, grid.g_length, count,
                                        grid.length, grid.g_length, 0, stride)
        weights = _SampleWeights(grid.input_dims(1), grid.phases, grid.c * grid.length,
                                 grid.reach, grid.taps_anywhere, dims, tasks, gw.size,
                                 g_sample=grid.k * grid.oh * grid.ow,
                                 g_dims=grid.output_gradient_dims(1),
                                 g_values=grid.k * grid.g_length)
        gw[...] = _by_samples(grid.n, _EMPTY, flat(x), gy, _EMPTY, weights=weights).reshape(
            w_shape)
    elif gy.size and x.size:
        kept_planes = kept.planes if isinstance(kept, PaddedInput) and kept.grid is grid \
            else None
        gy_grid = grid.output_gradient(gy) if gy_planes is None else gy_planes.planes
        x_grid = kept_planes if kept_planes is not None else \
            grid.padded_input(x, channel_major=True)         # last: still in cache
        x_stride, g_stride = grid.groups * grid.length, grid.groups * grid.g_length
        run, pitch, x_pitch = grid.ow * grid.lanes, grid.pitch, 0
        taps = grid.taps_anywhere
        if gy_planes is not None:                 # gy inside the input gradient's planes
            x_stride, g_stride, rows, run, pitch, x_pitch = gy_planes.sweep
            taps = grid.taps if grid.lanes > 1 else taps     # (interleaved: row by row)
        elif grid.lanes > 1 and run % LANES == 0:            # row by row, outputs only
            rows, taps = grid.oh, grid.taps
        elif grid.lanes == 1 and (stride != (1, 1) or kept_planes is not None):
            # sample by sample: x channel-major, or the forward's (N, C) planes
            rows, run, pitch, x_pitch = grid.n, grid.g_length, grid.g_length, grid.length
            if kept_planes is not None:
                x_stride, x_pitch = grid.length, grid.c * grid.length
        else:                                                # everything, zeros included
            rows, run = 1, g_stride
        _sweep_weight_grad(x_grid, gy_grid, gw, taps, grid.c, grid.k, rows, run, pitch,
                           x_stride, g_stride, x_pitch, stride)
    return gw


def _sweep_weight_grad(x_planes, gy_planes, gw, taps, c, k, rows, run, pitch, x_stride,
                       g_stride, x_pitch, stride):
    """gw (zeroed, K x C x taps) = the sums of :func:`_weight_grad_tasks` over ``rows`` runs of
    ``run`` positions (``pitch`` apart in gy, ``x_pitch`` in x when not 0; channels
    ``x_stride`` and ``g_stride`` apart), a task per block of channels on the pool, for a
    convolution of stride ``stride`` whose taps are ``taps`` (:func:`_tap_table`)."""
    dims, tasks = _weight_grad_dims(c, k, rows, run, pitch, taps.size // 5, x_stride,
                                    g_stride, x_pitch, stride)
    _parallel(_WEIGHT_GRAD, x_planes, gy_planes, gw.reshape(-1), _EMPTY, _EMPTY, taps, dims,
              tasks)


_WEIGHT_DIMS = 12      # the weight gradient loop's integers


def _weight_grad_dims(c, k, rows, run, pitch, count, x_stride, g_stride, x_pitch, stride):
    """The dims of :func:`_weight_grad_tasks` for ``count`` taps (see
    :func:`_sweep_weight_grad`), and its number of tasks: blocks of GRAD_IN_BLOCK channels up
    to ``slots_from``, then blocks of one channel with its taps in the slots
    (:func:`_slot_blocks`)."""
    slots_from, c_blocks = _slot_blocks(c, count, stride)
    strip = run if STRIP < run <= WHOLE_RUN_MAX else STRIP
    dims = (c, k, rows, run, pitch, count, x_stride, g_stride, strip, x_pitch, slots_from,
            c_blocks)
    return dims, -(-k // GRAD_OUT_BLOCK) * c_blocks


# The most input channels whose weight gradient puts taps in its blocks' slots when the
# channels are not whole blocks (see _taps_in_slots)
TAPS_IN_SLOTS_MAX_CHANNELS = 16


def _taps_in_slots(c, taps, stride) -> bool:
    """Whether the weight gradient's blocks are one input channel with GRAD_IN_BLOCK of its
    taps in the block's slots (:func:`_weight_grad_tasks`), rather than GRAD_IN_BLOCK
    channels: for one channel (CNN-S's first layer: 0.49 -> 0.32 ms), and, with stride 1,
    for up to TAPS_IN_SLOTS_MAX_CHANNELS channels that are not whole blocks when the taps
    are (a 3x3 kernel's 9).

    Measured on a Zen 4 EPYC, old and new loops side by side, six rounds: 16 channels (in
    blocks of 3 the loops computed 18) 8.4% faster on 32x32 maps and 6.8% on 14x14; 32
    channels (33) within noise (-3.5 to +1%). Slower: 64 channels on 8x8 maps 1.5%, 128 on
    4x4 maps 9% (their blocks waste 1-3%, and a task per channel reads ȳ's rows three times
    as often), and the 16-channel stride-2 layer 6% (its slots then read three phase
    planes)."""
    return c == 1 or (tuple(stride) == (1, 1) and taps % GRAD_IN_BLOCK == 0
                      and c % GRAD_IN_BLOCK != 0 and c <= TAPS_IN_SLOTS_MAX_CHANNELS)


def _slot_blocks(c, taps, stride) -> tuple[int, int]:
    """(slots_from, c_blocks) of :func:`_weight_grad_tasks`: its blocks of input channels, the
    first ``slots_from`` of GRAD_IN_BLOCK channels each and the others of one channel with
    GRAD_IN_BLOCK of its taps in the slots. All of them one channel where
    :func:`_taps_in_slots` says so; else whole blocks of channels, and the channels left over
    (C mod GRAD_IN_BLOCK) one block each with their taps in the slots when the taps fill the
    slots, instead of a block whose slots repeat the last channel and whose sums are dropped
    (ResNet-18's first strided layer: 18 channels computed for 16). Side by side, 40 rounds,
    the same gw to the bit: that layer's weight gradient 0.781 -> 0.733 ms, the other strided
    3x3 ones 1.7% and 2.3% faster, the 32- and 64-channel stride-1 ones 1.2% and 2.3%; the
    128-channel one (two channels left over of 128) +0.4%, within noise; ResNet-18 steps
    unchanged (30 blocks, 1.001)."""
    if _taps_in_slots(c, taps, stride):
        return 0, c
    whole = c // GRAD_IN_BLOCK
    if taps % GRAD_IN_BLOCK == 0:
        return whole, c - 2 * whole       # whole blocks, then C mod GRAD_IN_BLOCK channels
    return -(-c // GRAD_IN_BLOCK), -(-c // GRAD_IN_BLOCK)
