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
  y, whose rows start from the bias;
* the input gradient multiplies :math:`W^\top \bar y_n`, reading :math:`\bar y` where it lies,
  then zeroes each of x̄'s planes whole and writes its cells (the plane still in L1);
* the weight gradient gathers :math:`\hat x_n^\top` (L, C) for each sample of its group and
  adds :math:`\sum_n \bar y_n \hat x_n^\top` into the group's share in one product (the sum
  over the group in registers); the shares are added up at the end.

All three are one register-blocked product (:func:`_product`: 6 rows x 16 columns of partial
sums in twelve AVX2 registers, the layout of :mod:`numba_direct`'s loops); maps or channel
counts that are not whole blocks of 16 go through rows padded with zeros.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit
from numba import uint64 as u64

from refnas.kernels.numba_direct import _EMPTY, _EMPTY_INTS as _NO_INTS, _arguments, _launch, \
    _stack_array
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
    return (np.dtype(dtype) == np.float32 and groups == 1 and tuple(w_shape[2:]) == (1, 1)
            and tuple(stride) != (1, 1) and tuple(padding) == (0, 0)
            and min(x_shape) > 0 and min(x_shape[1], w_shape[0]) >= ROWS)


# --------------------------------------------------------------------------------------------
# Cells in and out
# --------------------------------------------------------------------------------------------
@njit(inline="always")
def _gather(x, n, channels, h, w, sh, sw, oh, ow, panel, base, pitch, transposed):
    """x̂ of sample n: panel[base + (c, l)] = x[n, c, i*sh, j*sw] (l = i*OW + j; rows
    ``pitch`` apart), or ``transposed``, panel[base + (l, c)]; nothing else is written."""
    c_step, l_step = (1, pitch) if transposed else (pitch, 1)
    for c in range(channels):
        plane = u64((n * channels + c) * h * w)
        for i in range(oh):
            src, out = plane + u64(i * sh * w), u64(base + c * c_step + i * ow * l_step)
            if not transposed and sw == 2:        # (a literal stride: vector loads + shuffles)
                for j in range(ow):
                    panel[out + u64(j)] = x[src + u64(2 * j)]
            else:
                for j in range(ow):
                    panel[out + u64(j * l_step)] = x[src + u64(j * sw)]


@njit(inline="always")
def _scatter(cells, pitch, n, channels, h, w, sh, sw, oh, ow, gx):
    """x̄ of sample n: gx[n, c, i*sh, j*sw] = cells[c, i*OW + j] (rows ``pitch`` apart), every
    other cell zero: each plane zeroed whole (vector stores), then its cells written (the
    plane is in L1 by then)."""
    for c in range(channels):
        plane = u64((n * channels + c) * h * w)
        for k in range(h * w):
            gx[plane + u64(k)] = 0
        for i in range(oh):
            row, values = plane + u64(i * sh * w), u64(c * pitch + i * ow)
            for j in range(ow):
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
_FORWARD, _INPUT_GRAD, _WEIGHT_GRAD = 0, 1, 2


def _task(task, address, tasks):
    """The samples of task ``task`` (one, or a group of them for a weight gradient), and for
    each, the products asked for: the forward y_n = W x̂_n + b (when no gy is given), else
    the cells of x̄ = W^T ȳ_n (when gx is given) and the group's share of w̄ = sum of
    ȳ_n x̂_n^T (when shares are given: rows of whole blocks of COLS channels).

    One call site each of the gather, the product and the scatter: every call site of an
    inlined function is compiled anew, and the cold compile of all kernels is held under
    30 s."""
    # the direct loops' argument block: the forward's bias and the backward's shares share a
    # slot; gx is the forward's y
    x, w, bias, gy, out, _, _, dims = _arguments(address)
    n, c_in, k_out, h, wd, sh, sw, oh, ow, group = dims[:10]
    length = oh * ow
    pitch, c_pitch = -(-length // COLS) * COLS, -(-c_in // COLS) * COLS     # whole blocks
    forward = gy.size == 0
    shares, weight_grad, input_grad = bias, not forward and bias.size > 0, \
        not forward and out.size > 0
    # scratch: x̂_n, or the group's x̂_n^T one after the other (for w̄); the input gradient's
    # cells; and, for maps that are not whole blocks of COLS positions, y's or ȳ's rows padded
    # to whole blocks
    first, share = np.int64(task) * group, np.int64(task) * k_out * c_pitch
    count = min(group, n - first)
    padded = pitch != length
    # (zeroed where the gather leaves cells: the padding rows and columns of whole blocks)
    panel = np.empty(count * length * c_pitch if weight_grad else c_in * pitch, np.float32)
    if padded or c_pitch != c_in:
        panel[:] = 0
    cells = np.empty(c_in * pitch if input_grad else 0, np.float32)
    rows = np.zeros(k_out * pitch if padded else 0, np.float32)
    for sample in range(first, first + count):
        at = sample * k_out * length
        for kind in range(3):
            if not (forward, input_grad, weight_grad)[kind]:
                continue
            if kind != _INPUT_GRAD:       # x̂_n, (C, L), or its transpose after the group's
                _gather(x, sample, c_in, h, wd, sh, sw, oh, ow, panel,
                        (sample - first) * length * c_pitch if kind == _WEIGHT_GRAD else 0,
                        pitch if kind == _FORWARD else c_pitch, kind == _WEIGHT_GRAD)
            repeat, a_step = 1, 0
            if kind == _WEIGHT_GRAD:
                if sample < first + count - 1:
                    continue              # the group's x̂^T first, then one product for all
                # sum over the group of ȳ_n (K, L) times x̂_n^T (L, C), added to the share
                a, a_at, a_row, a_inner, m, inner = gy, first * k_out * length, length, 1, \
                    k_out, length
                repeat, a_step = count, k_out * length
                b, b_at, b_pitch = panel, 0, c_pitch
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
                _scatter(cells, pitch, sample, c_in, h, wd, sh, sw, oh, ow, out)
            elif kind == _FORWARD and padded:
                for k in range(k_out):
                    for p in range(length):
                        out[u64(at + k * length + p)] = rows[u64(k * pitch + p)]


_JOB = job(_task, vectorise=True)


def _dims(x_shape, k_out, stride, group=1):
    """The job's ten integers, padded with zeros to the 17 of the direct loops' argument
    block."""
    n, c_in, h, w = x_shape
    return (n, c_in, k_out, h, w, stride[0], stride[1], (h - 1) // stride[0] + 1,
            (w - 1) // stride[1] + 1, group, 0, 0, 0, 0, 0, 0, 0)


def _run(x, w, bias_or_shares, gy, out, dims, tasks):
    """The job's tasks on the pool, through the direct loops' launcher."""
    _launch(_JOB.addresses, False, x, w, bias_or_shares, gy, out, _NO_INTS, _NO_INTS, dims,
            tasks)


def forward(x, w, bias, stride):
    """y (N, K, OH, OW) of the 1x1 convolution of x (N, C, H, W) by w (K, C, 1, 1), stride
    ``stride``, no padding (C-contiguous float32 arrays), a task per sample."""
    dims = _dims(x.shape, w.shape[0], stride)
    y = np.empty((x.shape[0], w.shape[0], dims[7], dims[8]), np.float32)
    _run(x.reshape(-1), w.reshape(-1), _EMPTY if bias is None else bias.reshape(-1), _EMPTY,
         y.reshape(-1), dims, x.shape[0])
    return y


def backward(gy, x_shape, w_shape, stride, x=None, w=None):
    """(gx, gw) of that convolution in one pass over the samples: gx when w is given (else
    None), gw when x is given (else None). Each task takes a group of samples (two tasks per
    thread when it adds up a share of gw, else one sample)."""
    n, (k_out, c_in) = x_shape[0], w_shape[:2]
    group = max(1, n // (TASKS_PER_THREAD * numba.get_num_threads())) if x is not None else 1
    tasks = -(-n // group)
    dims = _dims(x_shape, k_out, stride, group)
    gx = None if w is None else np.empty(x_shape, np.float32)
    shares = None if x is None else np.empty((tasks, k_out, -(-c_in // COLS) * COLS),
                                             np.float32)
    _run(_EMPTY if x is None else x.reshape(-1), _EMPTY if w is None else w.reshape(-1),
         _EMPTY if shares is None else shares.reshape(-1), gy.reshape(-1),
         _EMPTY if gx is None else gx.reshape(-1), dims, tasks)
    gw = None if shares is None else shares.sum(axis=0)[:, :c_in].reshape(w_shape)
    return gx, gw


__all__ = ["applies", "forward", "backward"]
