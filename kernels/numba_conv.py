r"""Numba + BLAS kernels for 2-D convolution: forward, input gradient, weight gradient.

Ungrouped float32 convolutions go to loops of their own where those pay: strided 1x1 ones
(projection shortcuts) to the fused products of :mod:`refnas.kernels.numba_pointwise`, those
with 64 or more outputs per plane to the direct loops of :mod:`refnas.kernels.numba_direct` (no
im2col, no BLAS); everything else is done here.

The arithmetic is matrix products done by the BLAS behind ``np.matmul`` (float32 sgemm, on every
core); Numba does the memory work around them, one (sample, channel) plane per task (serially,
or as a job on Numba's pool, :mod:`refnas.kernels.numba_jobs`; see PARALLEL_PACK_MIN_SIZE):

* **im2col** (Chellapilla et al. 2006) packs the receptive fields of the input into a matrix
  with one row per (channel, kernel offset) :math:`k = (c, p, q)` and one column per output
  position :math:`l = (i, j)`:
  :math:`X_{k,l} = x_{c,\, i s_h + p d_h - \pi_h,\, j s_w + q d_w - \pi_w}` (zero outside);
* forward: :math:`Y_g = W_g X_g` per group g (plus the bias, added while the product is
  written out), one product per sample, or per chunk of samples for small maps;
* weight gradient: :math:`\bar W_g = \bar Y_g X_g^\top`, summed over samples inside one product
  by laying the columns of all samples side by side (the "wide" layout, K x N*L);
* input gradient: :math:`\bar X_g = W_g^\top \bar Y_g`, then **col2im** adds each column entry
  back to the input pixel it was read from. Each parallel task owns one (sample, channel) input
  plane and adds into it alone, so no two tasks write one element (no scatter-add races).

A plane is packed by gathering: it is copied into a zero-bordered scratch once, then every
column entry is one load at a precomputed index (no bounds logic per cell). A 1x1 convolution
with stride 1 and no padding needs no packing at all: its columns are the input itself.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from refnas.backend import kernel, register_kernel
from refnas.kernels import numba_direct as direct
from refnas.kernels import numba_pointwise as pointwise
from refnas.kernels.numba_jobs import block_of, job, launch, put_vector, vector
from refnas.kernels.numba_support import contiguous, same_float_dtype, scratch


# Each plane is copied once into the interior of a zero-bordered scratch, and each row (p, q) is
# filled by a precomputed *gather table* (``_Geometry.table``): cols[row (p, q), l] =
# padded[table[(p*KW + q)*L + l]], one branch-free load per cell; the padding cells read the zero
# border.
@njit(cache=True, inline="always")
def _fill_interior(plane, dims, padded):
    h, w, ph, pw = dims[2], dims[3], dims[8], dims[9]
    width = w + 2 * pw
    for r in range(h):
        row, source = padded[(r + ph) * width + pw:], plane[r * w:(r + 1) * w]
        for k in range(w):
            row[k] = source[k]


@njit(cache=True, inline="always")
def _gather_plane(plane, dims, table, padded, cols, base, row_step):
    """The KH*KW column rows of one plane by the gather table (row (p, q) at base +
    (p*KW + q)*row_step); ``padded`` has a zero border."""
    kh, kw, length = dims[4], dims[5], dims[12] * dims[13]
    _fill_interior(plane, dims, padded)
    for pq in range(kh * kw):
        target, index = cols[base + pq * row_step:], table[pq * length:(pq + 1) * length]
        for k in range(length):
            target[k] = padded[index[k]]


@njit(cache=True, inline="always")
def _scatter_plane(cols, base, row_step, dims, table, padded, plane):
    """The adjoint of :func:`_gather_plane`: add each column entry into the padded plane at its
    table index, then keep the interior."""
    h, w, kh, kw, ph, pw = dims[2], dims[3], dims[4], dims[5], dims[8], dims[9]
    length, width = dims[12] * dims[13], w + 2 * pw
    for k in range(padded.size):
        padded[k] = 0
    for pq in range(kh * kw):
        source, index = cols[base + pq * row_step:], table[pq * length:(pq + 1) * length]
        for k in range(length):
            padded[index[k]] += source[k]
    for r in range(h):
        row, target = padded[(r + ph) * width + pw:], plane[r * w:(r + 1) * w]
        for k in range(w):
            target[k] = row[k]


# ``dims`` = (N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW), built by _Geometry.dims().
@njit(cache=True, inline="always")
def _plane_rows(dims, task, wide):
    """Where the KH*KW column rows of input plane ``task`` (= sample * C + channel) start, and
    the distance between consecutive rows, in either column layout."""
    n, c, kh, kw, oh, ow = dims[0], dims[1], dims[4], dims[5], dims[12], dims[13]
    i, first_row, length = task // c, (task % c) * kh * kw, oh * ow
    if wide:                                   # (C*KH*KW, N, OH*OW)
        return (first_row * n + i) * length, n * length
    return (i * c * kh * kw + first_row) * length, length     # (N, C*KH*KW, OH*OW)


@njit(cache=True)
def _im2col_planes(x, dims, wide, table, cols, start, stop):
    """Pack the input planes task in [start, stop) of x (flat, N*C planes of H*W) into the flat
    ``cols``: per sample (N, C*KH*KW, OH*OW), or, when ``wide``, side by side (C*KH*KW, N*OH*OW),
    by the gather ``table``."""
    h, w = dims[2], dims[3]
    padded = np.zeros((h + 2 * dims[8]) * (w + 2 * dims[9]), x.dtype)
    for task in range(start, stop):
        base, row_step = _plane_rows(dims, task, wide)
        plane = x[task * h * w:(task + 1) * h * w]
        _gather_plane(plane, dims, table, padded, cols, base, row_step)


@njit(cache=True)
def _col2im_planes(cols, dims, wide, table, gx, start, stop):
    """gx (flat, N*C planes of H*W) = the adjoint of :func:`_im2col_planes` applied to cols,
    for the planes task in [start, stop); each task writes only its own plane."""
    h, w = dims[2], dims[3]
    padded = np.empty((h + 2 * dims[8]) * (w + 2 * dims[9]), gx.dtype)
    for task in range(start, stop):
        base, row_step = _plane_rows(dims, task, wide)
        plane = gx[task * h * w:(task + 1) * h * w]
        _scatter_plane(cols, base, row_step, dims, table, padded, plane)


_PLANES_BLOCK = 22    # unpack?, wide?, dims (14), (address, length) of x, table and cols


def _planes_task(task, address, tasks):
    """Plane ``task`` (= sample * C + channel) of im2col (x -> cols) or, when ``unpack``,
    col2im (cols -> x), float32."""
    block = block_of(address, _PLANES_BLOCK)
    dims = (block[2], block[3], block[4], block[5], block[6], block[7], block[8], block[9],
            block[10], block[11], block[12], block[13], block[14], block[15])
    x, table = vector(block, 16, np.float32), vector(block, 18, np.intp)
    cols, wide, t = vector(block, 20, np.float32), block[1] != 0, np.int64(task)
    if block[0]:
        _col2im_planes(cols, dims, wide, table, x, t, t + 1)
    else:
        _im2col_planes(x, dims, wide, table, cols, t, t + 1)


_planes_job = job(_planes_task)


@njit(cache=True)
def _launch_planes(address, unpack, x, dims, wide, table, cols):
    block = np.empty(_PLANES_BLOCK, np.int64)
    block[0], block[1] = unpack, wide
    for i in range(14):
        block[2 + i] = dims[i]
    put_vector(block, 16, x)
    put_vector(block, 18, table)
    put_vector(block, 20, cols)
    launch(address, dims[0] * dims[1], block)


def _planes_parallel(unpack, x, dims, wide, table, cols):
    """im2col (x -> cols) or, when ``unpack``, col2im (cols -> x), one (sample, channel) plane
    per task on Numba's pool (float32, flat C-contiguous arrays)."""
    assert x.dtype == cols.dtype == np.float32 and table.dtype == np.intp and len(dims) == 14
    _launch_planes(_planes_job.addresses, unpack, x, dims, wide, table, cols)


# --------------------------------------------------------------------------------------------
# Geometry, chunks and packing (Python)
# --------------------------------------------------------------------------------------------
# Samples are processed in chunks whose column matrix is about this size, so that it is still in
# the (32 MiB, shared) L3 cache when the matrix product reads it (packing all samples at once
# would write the whole column matrix, often tens of MB, out to memory and read it back).
CHUNK_BYTES = 1 << 23

# Packing runs in parallel (a job on Numba's pool) for float32 column matrices of at least this
# many elements; float64 packs on one thread. Measured on this 2-core machine with BLAS on
# Numba's pool (numba_blas), alternating in one process: col2im of ResNet-18's strided input
# gradients onto 8x8 and 4x4 maps (590k and 295k elements) took 0.87 instead of 1.05 ms and 0.75
# instead of 0.86; whole steps, ResNet-18 72.8-73.8 against 73.5-73.8 ms and CNN-S 7.78-8.03
# against 7.93-8.08 ms with the old 4M threshold. (Before BLAS shared the pool, serial packing
# beside BLAS's spinning threads had been faster.)
PARALLEL_PACK_MIN_SIZE = 1 << 16


# Below this many output positions per sample, one product per sample is too thin for BLAS:
# the forward and input-gradient products then take the samples of a chunk side by side.
WIDE_BELOW = 256


# Every plane is packed by gather table. "Same" convolutions of 64+ cells had a second method,
# shifted copies of the whole plane (14x14: 15.7 vs 8.2 GB/s of columns), but since the direct
# loops took those convolutions over it served only float64 and 1-3-channel ones (a CNN-S step
# 7.43 vs 7.56 ms without it), and it cost 3 s of the cold compile of all kernels.
_NO_TABLE = np.empty(0, np.intp)
_tables: dict[tuple, np.ndarray] = {}


def _gather_table(geometry: "_Geometry") -> np.ndarray:
    """table[(p*KW + q)*L + i*OW + j] = the index in the zero-bordered plane ((H + 2PH) rows of
    W + 2PW) of the input cell under output (i, j) and kernel offset (p, q)."""
    key = (geometry.x_shape[2:], geometry.kernel, geometry.stride, geometry.padding,
           geometry.dilation)
    table = _tables.get(key)
    if table is None:
        (kh, kw), (sh, sw), (dh, dw), (oh, ow) = (geometry.kernel, geometry.stride,
                                                  geometry.dilation, geometry.out_hw)
        width = geometry.x_shape[3] + 2 * geometry.padding[1]
        rows = (np.arange(kh)[:, None, None, None] * dh + np.arange(oh)[None, None, :, None] * sh)
        cols = (np.arange(kw)[None, :, None, None] * dw + np.arange(ow)[None, None, None, :] * sw)
        table = _tables[key] = np.ascontiguousarray((rows * width + cols).reshape(-1),
                                                    dtype=np.intp)
    return table


class _Geometry:
    """The integer tuples the Numba kernels take, and the sizes derived from them."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, groups, out_hw=None):
        self.x_shape = tuple(int(v) for v in x_shape)
        self.kernel = (int(w_shape[2]), int(w_shape[3]))
        self.stride, self.padding, self.dilation = (
            tuple(int(v) for v in pair) for pair in (stride, padding, dilation))
        self.out_hw = tuple(int(v) for v in out_hw) if out_hw is not None else tuple(
            (n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip(
                self.x_shape[2:], self.kernel, self.stride, self.padding, self.dilation))
        self.groups = int(groups)
        self.rows = self.x_shape[1] * self.kernel[0] * self.kernel[1]      # K, all groups
        self.length = self.out_hw[0] * self.out_hw[1]                      # L
        # a 1x1, stride-1, unpadded convolution: the input already is its column matrix
        self.pointwise = (self.kernel == (1, 1) and self.stride == (1, 1)
                          and self.padding == (0, 0))
        self.wide = self.length < WIDE_BELOW
        self.table = _gather_table(self) if not self.pointwise else _NO_TABLE

    def dims(self, n: int) -> tuple[int, ...]:
        """The 14 integers the Numba kernels take, for a chunk of n samples."""
        return (n, *self.x_shape[1:], *self.kernel, *self.stride, *self.padding, *self.dilation,
                *self.out_hw)

    def chunks(self, itemsize: int):
        """Slices of the samples, each with about CHUNK_BYTES of columns."""
        n = self.x_shape[0]
        size = max(1, min(n, CHUNK_BYTES // max(self.rows * self.length * itemsize, 1)))
        return [slice(start, min(start + size, n)) for start in range(0, n, size)]

    def pack(self, x, wide: bool, buffer):
        """im2col of the samples x (a chunk): (n, K, L), or (K, n*L) when ``wide``."""
        n = x.shape[0]
        if self.pointwise:
            cols = x.reshape(n, self.rows, self.length)
            return (np.ascontiguousarray(cols.transpose(1, 0, 2)).reshape(self.rows, -1)
                    if wide else cols)
        cols = buffer[:n * self.rows * self.length]
        args = (x.reshape(-1), self.dims(n), wide, self.table, cols)
        if cols.size >= PARALLEL_PACK_MIN_SIZE and cols.dtype == np.float32:
            _planes_parallel(False, *args)
        else:
            _im2col_planes(*args, 0, n * self.x_shape[1])
        return cols.reshape(self.rows, n * self.length) if wide else cols.reshape(
            n, self.rows, self.length)

    def unpack(self, cols, wide: bool, gx):
        """col2im of columns, (n, K, L) or (K, n*L) when ``wide``, into gx (n, C, H, W)."""
        if cols.size >= PARALLEL_PACK_MIN_SIZE and cols.dtype == np.float32:
            _planes_parallel(True, gx.reshape(-1), self.dims(gx.shape[0]), wide, self.table,
                             cols.reshape(-1))
        else:
            _col2im_planes(cols.reshape(-1), self.dims(gx.shape[0]), wide, self.table,
                           gx.reshape(-1), 0, gx.shape[0] * gx.shape[1])

    def buffer(self, dtype):
        """Scratch space for one chunk's columns, reused from call to call."""
        chunk = self.chunks(np.dtype(dtype).itemsize)[0]
        return scratch((chunk.stop - chunk.start) * self.rows * self.length, dtype, "columns")


def _supported(a, b, *args, bias=None, **kwargs) -> bool:
    return same_float_dtype(a, b, bias) and a.ndim == 4 and b.ndim == 4


def _supported_backward(gy, x, w, *args, **kwargs) -> bool:
    return same_float_dtype(gy, x, w) and gy.ndim == x.ndim == w.ndim == 4


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
@register_kernel("conv2d_forward", "numba", supports=_supported)
def conv2d_forward(x, w, stride, padding, dilation, groups, bias=None, keep_columns=False):
    """y (N, O, OH, OW) = per group W_g @ im2col(x)_g (+ bias), one sgemm per sample or per
    chunk (Numba + BLAS); the bias is added as the product is written out.

    With ``keep_columns``, returns (y, columns): the wide column matrix (K, N*L) of the whole
    batch when it was packed in one chunk (small maps), or, from the direct loops, x's
    planes (:class:`numba_direct.PaddedInput`) or a first layer's column-masked copies of x
    (:class:`numba_direct.MaskedCopies`), or, from the strided 1x1 loops,
    the subsampled input transposed (:class:`numba_pointwise.KeptColumns`), which
    :func:`conv2d_weight_grad` and :func:`conv2d_backward` can take instead of packing x
    again; else None.
    """
    x, w = contiguous(x), contiguous(w)
    if x.size == 0 or w.size == 0:                    # nothing to sum: the reference's bias
        return kernel("conv2d_forward", "numpy")(x, w, stride, padding, dilation, groups,
                                                 bias=bias, keep_columns=keep_columns)
    if pointwise.applies(x.shape, w.shape, stride, padding, dilation, groups, x.dtype):
        return pointwise.forward(x, w, None if bias is None else contiguous(bias), stride,
                                 keep=keep_columns)
    if direct.applies("forward", x.shape, w.shape, stride, padding, dilation, groups, x.dtype):
        return direct.forward(x, w, None if bias is None else contiguous(bias), padding,
                              dilation, stride, keep=keep_columns)
    geometry = _Geometry(x.shape, w.shape, stride, padding, dilation, groups)
    n, o, g = x.shape[0], w.shape[0], geometry.groups
    y = np.empty((n, o, *geometry.out_hw), x.dtype)
    y_groups = y.reshape(n, g, o // g, geometry.length)
    w_mat = w.reshape(g, o // g, -1)                                     # (G, O/G, K/G)
    bias_groups = None if bias is None else bias.reshape(1, g, o // g, 1)
    chunks = geometry.chunks(x.itemsize)
    keep = keep_columns and geometry.wide and len(chunks) == 1
    # kept columns need an array of their own (a pointwise pack makes one anyway); otherwise
    # the per-thread scratch is reused
    buffer = np.empty(n * geometry.rows * geometry.length, x.dtype) \
        if keep and not geometry.pointwise else geometry.buffer(x.dtype)
    cols = None
    for chunk in chunks:
        cols = geometry.pack(x[chunk], geometry.wide, buffer)
        if geometry.wide:                                                # (G, O/G, n*L)
            y_wide = np.matmul(w_mat, cols.reshape(g, -1, cols.shape[1]))
            y_wide = y_wide.reshape(g, o // g, -1, geometry.length).transpose(2, 0, 1, 3)
            if bias is None:
                y_groups[chunk] = y_wide
            else:                                                        # in the same pass
                np.add(y_wide, bias_groups, out=y_groups[chunk])
        else:                                                            # (n, G, O/G, L)
            np.matmul(w_mat, cols.reshape(cols.shape[0], g, -1, geometry.length),
                      out=y_groups[chunk])
            if bias is not None:                 # while the chunk's output is still in cache
                y_groups[chunk] += bias_groups
    if keep_columns:
        return y, (cols if keep else None)
    return y


@register_kernel("conv2d_weight_grad", "numba", supports=_supported)
def conv2d_weight_grad(x, gy, weight_shape, stride, padding, dilation, groups, columns=None):
    """gw = per group gY_g (O/G, n*L) @ im2col(x)_g^T (n*L, K/G), summed over chunks of n
    samples: the sum over samples happens inside the sgemm (Numba + BLAS). ``columns``, the
    whole batch's wide column matrix kept by :func:`conv2d_forward` (or what the direct or
    strided 1x1 loops kept), saves packing x again."""
    x, gy = contiguous(x), contiguous(gy)
    if x.size == 0 or gy.size == 0:                   # a sum over nothing
        return np.zeros(tuple(weight_shape), x.dtype)
    if pointwise.applies(x.shape, weight_shape, stride, padding, dilation, groups, x.dtype):
        return pointwise.backward(gy, x.shape, tuple(weight_shape), stride, x=x,
                                  kept=columns)[1]
    if direct.applies("weight_grad", x.shape, weight_shape, stride, padding, dilation, groups,
                      x.dtype):
        return direct.weight_grad(x, gy, weight_shape, padding, dilation, stride,
                                  kept=columns)
    geometry = _Geometry(x.shape, weight_shape, stride, padding, dilation, groups, gy.shape[2:])
    o, g = gy.shape[1], geometry.groups
    gw = np.zeros((g, o // g, geometry.rows // g), x.dtype)
    whole = (geometry.rows, x.shape[0] * geometry.length)
    kept = (isinstance(columns, np.ndarray) and columns.shape == whole
            and columns.dtype == x.dtype and columns.flags.c_contiguous)
    chunks = [slice(0, x.shape[0])] if kept else geometry.chunks(x.itemsize)
    buffer = None if kept else geometry.buffer(x.dtype)
    for chunk in chunks:
        cols = columns if kept else geometry.pack(x[chunk], True, buffer)    # (K, n*L)
        gy_wide = np.ascontiguousarray(gy[chunk].reshape(-1, o, geometry.length)
                                       .transpose(1, 0, 2))              # (O, n, L)
        gw += np.matmul(gy_wide.reshape(g, o // g, -1),
                        cols.reshape(g, geometry.rows // g, -1).transpose(0, 2, 1))
    return gw.reshape(tuple(weight_shape))


@register_kernel("conv2d_input_grad", "numba", supports=_supported)
def conv2d_input_grad(gy, w, input_shape, stride, padding, dilation, groups):
    """gx = col2im(per group W_g^T @ gY_g), one sgemm per sample (Numba + BLAS)."""
    gy, w = contiguous(gy), contiguous(w)
    if gy.size == 0 or w.size == 0:                   # a sum over nothing
        return np.zeros(tuple(input_shape), gy.dtype)
    if pointwise.applies(input_shape, w.shape, stride, padding, dilation, groups, gy.dtype):
        return pointwise.backward(gy, tuple(input_shape), w.shape, stride, w=w)[0]
    if direct.applies("input_grad", input_shape, w.shape, stride, padding, dilation, groups,
                      gy.dtype):
        return direct.input_grad(gy, w, padding, dilation, stride, input_shape)
    geometry = _Geometry(input_shape, w.shape, stride, padding, dilation, groups, gy.shape[2:])
    n, o, g = gy.shape[0], w.shape[0], geometry.groups
    w_t = w.reshape(g, o // g, -1).transpose(0, 2, 1)                    # (G, K/G, O/G)
    gy_groups = gy.reshape(n, g, o // g, geometry.length)
    if geometry.pointwise:
        return np.matmul(w_t, gy_groups).reshape(geometry.x_shape)
    gx = np.empty(geometry.x_shape, gy.dtype)
    buffer = geometry.buffer(gy.dtype)
    for chunk in geometry.chunks(gy.itemsize):
        count = chunk.stop - chunk.start
        cols = buffer[:count * geometry.rows * geometry.length]
        if geometry.wide:                                                # (G, K/G, n*L)
            gy_wide = np.ascontiguousarray(gy_groups[chunk].transpose(1, 2, 0, 3))
            np.matmul(w_t, gy_wide.reshape(g, o // g, -1),
                      out=cols.reshape(g, geometry.rows // g, -1))
        else:                                                            # (n, G, K/G, L)
            np.matmul(w_t, gy_groups[chunk],
                      out=cols.reshape(count, g, geometry.rows // g, geometry.length))
        geometry.unpack(cols, geometry.wide, gx[chunk])
    return gx




@register_kernel("conv2d_backward", "numba", supports=_supported_backward)
def conv2d_backward(gy, x, w, stride, padding, dilation, groups, columns=None):
    """(gx, gw): a strided 1x1 convolution in one pass over the samples
    (:func:`numba_pointwise.backward`); a stride-1 "same" convolution on the direct loops pads
    gy once for both (:func:`numba_direct.backward`); any other, the two kernels above, one
    after the other."""
    gy, x, w = contiguous(gy), contiguous(x), contiguous(w)
    # (empty arrays: the two kernels below answer them)
    empty = gy.size == 0 or x.size == 0 or w.size == 0
    if not empty and pointwise.applies(x.shape, w.shape, stride, padding, dilation, groups,
                                       x.dtype):
        return pointwise.backward(gy, x.shape, w.shape, stride, x=x, w=w, kept=columns)
    if not empty and tuple(stride) == (1, 1) and all(
            direct.applies(kind, x.shape, w.shape, stride, padding, dilation, groups, x.dtype)
            for kind in ("input_grad", "weight_grad")):
        both = direct.backward(gy, x, w, padding, dilation, kept=columns)
        if both is not None:
            return both
    return (conv2d_input_grad(gy, w, x.shape, stride, padding, dilation, groups),
            conv2d_weight_grad(x, gy, w.shape, stride, padding, dilation, groups,
                               columns=columns))


__all__ = ["conv2d_forward", "conv2d_weight_grad", "conv2d_input_grad", "conv2d_backward"]
