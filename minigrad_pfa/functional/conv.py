"""2-D convolution maths by im2col + GEMM, channels-last internally.

Notation
--------
n : batch size            c, ic : input channels        oc : output channels
h, w : input height/width   kh, kw : kernel height/width
sh, sw : strides            ph, pw : zero paddings
oh = (h + 2 ph - kh) // sh + 1,   ow = (w + 2 pw - kw) // sw + 1
N = n * oh * ow (rows of col),    K = kh * kw * ic (columns of col)

x (n, ic, h, w), W (oc, ic, kh, kw), b (oc,), y (n, oc, oh, ow), delta = dL/dy.
Shapes are PyTorch's NCHW; 4-D results are stored *channels-last*: an (n, c, h, w) array
that is the transposed view of a C-contiguous (n, h, w, c) buffer, so that
``y.transpose(0, 2, 3, 1)`` is contiguous and every GEMM below sees contiguous
matrices with no copy. Inputs may have any memory layout.

Equations (row / batch form, the conv analogue of ``y = x @ W.T + b``)::

    col[(n, oy, ox), (i, j, c)] = xpad[n, c, oy*sh + i, ox*sw + j]         (im2col)
    Wmat[o, (i, j, c)]          = W[o, c, i, j]                            (kernel_to_matrix)
    forward          y2d      = col @ Wmat.T + b                            (N, oc)
    input error      dx       = col2im(delta2d @ Mmat)                      (any kernel M)
    weight gradient  gW       = matrix_to_kernel(delta2d.T @ col)
    bias gradient    gb       = delta summed over n, oh, ow

where ``delta2d[(n, oy, ox), o] = delta[n, o, oy, ox]`` and ``col2im`` is the adjoint of
``im2col`` (``<im2col(x), c> = <x, col2im(c)>``). The input error uses *any* kernel
``M`` (oc', ic, kh, kw): BP passes ``W``; FA/SF/KP pass ``B``; PFA passes ``B @ R`` (or
``R`` with mid channels); DFA passes ``D_l`` with the output error broadcast over the grid.

im2col is one copy of a strided *view* of the zero-padded channels-last input
(``V[n, oy, ox, i, j, c] = xpad[n, oy*sh + i, ox*sw + j, c]``; no gather indices), and
col2im is its adjoint: one ``+=`` per kernel offset into a padded buffer, then a crop.
Both run unchanged on NumPy and CuPy; col2im needs no scatter-add (``np.add.at`` differs
on CuPy) because within one offset the ``+=`` never writes the same element twice.

Sample chunks (CPU). The rows of ``col`` are grouped by sample, so the forward GEMM
splits exactly into chunks of ``s`` samples, ``y2d[chunk] = col[chunk] @ Wmat.T``, and the
weight gradient into a sum, ``gW = sum over chunks of delta2d[chunk].T @ col[chunk]``.
On NumPy (the default there, :func:`use_chunks`) im2col and the GEMM run chunk by
chunk with ``s`` chosen so that one chunk's ``col`` is about :data:`CHUNK_BYTES` (it
stays in the CPU caches between the copy that writes it and the GEMM that reads it),
written into one reused buffer; the weight gradient recomputes ``col`` chunk by chunk
from the cached input instead of caching the whole batch's ``col``. Its chunks are the
blocks of :func:`minigrad_pfa.cpu.threads.block_bounds` (at least n / s of them, fixed by
the batch and the work), each block's ``delta2d[b].T @ col[b]`` computed alone and the
partials added in block order, so ``gW`` has the same bits on any number of threads.
Stride-1 forwards (and the "conv" input error built on them) copy less: per chunk only the
kw taps of every padded row, ``colw[n, yp, ox, (j, c)] = xpad[n, yp, ox + j, c]``, and
``y2d[n] = sum_i colw[n, i:i+oh] @ Wrow_i`` over the kh kernel rows (:class:`_RowWindows`;
a third of im2col's bytes for 3x3; ResNet-20 BP steps 0.90x on 1 and 2 threads), in chunks
sized by those buffers (padded input, taps, result; :meth:`_RowWindows.sample_bytes`) and
with the taps view built once per shard: at batch 128 in float32, 6, 11 and 20 samples per
chunk in ResNet-20's three stages where im2col's sizing gives 3, 7 and 14, so fewer rounds
of Python between the GEMMs, which two threads take turns at (the GIL). On
the Intel Xeon KVM guest (AVX-512, 2 cores), a 16-channel 32x32 forward at batch 128 took
7.2 -> 7.0 ms on one thread and 5.2 -> 4.3 ms on two (``python -m
minigrad_pfa.bench.allcore``: the ResNet-20 BP step with the overlap off, 0.40 -> 0.34 s on
two threads).
On CuPy the default
is one whole-batch GEMM (the better shape for a GPU), with ``col`` cached.
"""
from __future__ import annotations

from ..backend import get_array_module
from ..cpu.threads import (GEMM_MACS_PER_ELEMENT, block_bounds, is_sharded, map_shards,
                           shard_bounds, sum_blocks)
from ..jit import active as _jit_active
from ..jit import conv as _jit_conv  # compiled kernels; Numba is imported on first use

# ----------------------------------------------------------------------------- helpers


def _pair(v, name: str) -> tuple[int, int]:
    """An int or a pair -> (int, int), with a clear error otherwise."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name}: expected an int or a pair (h, w), got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _check_4d(name: str, a) -> None:
    if a.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D array (n, c, h, w), got shape {tuple(a.shape)}")


def _check_same_dtype(op: str, a_name: str, a, b_name: str, b) -> None:
    # NEP 50 would silently promote float32 @ float64 to float64; refuse instead.
    if a.dtype != b.dtype:
        raise TypeError(f"{op}: {a_name} ({a.dtype}) and {b_name} ({b.dtype}) must have "
                        "the same float dtype")


def conv_output_size(h: int, w: int, kh: int, kw: int, stride, padding) -> tuple[int, int]:
    """Output grid of a convolution or pooling window, PyTorch's floor convention.

    ``oh = (h + 2 ph - kh) // sh + 1``, ``ow = (w + 2 pw - kw) // sw + 1``.

    Raises
    ------
    ValueError
        Non-positive stride, negative padding, or a kernel larger than the padded input.
    """
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if sh < 1 or sw < 1:
        raise ValueError(f"stride must be >= 1, got {(sh, sw)}")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be >= 0, got {(ph, pw)}")
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel size must be >= 1, got {(kh, kw)}")
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(f"kernel {(kh, kw)} does not fit the input {(h, w)} padded by "
                         f"{(ph, pw)}: expected kh <= h + 2*ph and kw <= w + 2*pw")
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def channels_last(x):
    """(n, c, h, w) of any layout -> C-contiguous (n, h, w, c) (free for channels-last x)."""
    xp = get_array_module(x)
    return xp.ascontiguousarray(x.transpose(0, 2, 3, 1))


def pad_channels_last(xl, padding, value: float = 0.0):
    """Pad the spatial axes of an (n, h, w, c) array by (ph, pw) on each side with ``value``.

    Returns ``xl`` itself when there is no padding (no copy).
    """
    ph, pw = padding
    if ph == 0 and pw == 0:
        return xl
    xp = get_array_module(xl)
    n, h, w, c = xl.shape
    out = xp.full((n, h + 2 * ph, w + 2 * pw, c), value, dtype=xl.dtype)
    out[:, ph:ph + h, pw:pw + w, :] = xl
    return out


def window_slice(i: int, j: int, oh: int, ow: int, stride) -> tuple:
    """Index of kernel offset (i, j) in a padded (n, hp, wp, c) array.

    ``xpad[window_slice(i, j, ...)][n, oy, ox, c] = xpad[n, oy*sh + i, ox*sw + j, c]``:
    the (n, oh, ow, c) grid of input pixels that tap (i, j) of the kernel sees.
    """
    sh, sw = stride
    return (slice(None), slice(i, i + sh * (oh - 1) + 1, sh),
            slice(j, j + sw * (ow - 1) + 1, sw), slice(None))


# ---------------------------------------------------------------------- im2col / col2im


def kernel_windows(xpad, kh: int, kw: int, oh: int, ow: int, stride):
    """No-copy strided view of all kernel windows of a padded (n, hp, wp, c) array.

    ``V[n, oy, ox, i, j, c] = xpad[n, oy*sh + i, ox*sw + j, c]`` (shape (n, oh, ow, kh, kw, c)).
    Windows overlap, so the view aliases memory: read it, never write to it.
    """
    xp = get_array_module(xpad)
    sh, sw = stride
    s_n, s_y, s_x, s_c = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=(xpad.shape[0], oh, ow, kh, kw, xpad.shape[3]),
        strides=(s_n, s_y * sh, s_x * sw, s_y, s_x, s_c))


def _im2col_cl(xl, kh: int, kw: int, stride, padding):
    """im2col of a channels-last (n, h, w, c) array -> (col (N, K), (oh, ow))."""
    xp = get_array_module(xl)
    n, h, w, c = xl.shape
    oh, ow = conv_output_size(h, w, kh, kw, stride, padding)
    # contiguous padded copy (the padding pass is needed anyway; it also fixes the layout
    # of NCHW inputs) so that in the window view each (j, c) run of kw*c values is contiguous
    xpad = xp.ascontiguousarray(pad_channels_last(xl, padding))
    if kh == 1 and kw == 1 and tuple(stride) == (1, 1):
        return xpad.reshape(n * oh * ow, c), (oh, ow)  # 1x1 stride-1: col is x itself
    # One strided copy of the window view. This replaces a loop over the kh*kw offsets
    # (col[..., i, j, :] = xpad[window_slice(i, j)]) that copies runs of only c values:
    # measured ~4x slower on the CPU for 16 channels (~60 ms vs ~16 ms, ResNet-20 layer 1).
    col = xp.ascontiguousarray(kernel_windows(xpad, kh, kw, oh, ow, stride))
    return col.reshape(n * oh * ow, kh * kw * c), (oh, ow)


def im2col(x, kh: int, kw: int, stride, padding):
    """Unfold the kernel windows of ``x`` into the rows of a matrix.

    Parameters
    ----------
    x : array (n, c, h, w), any memory layout
    kh, kw : int
        Kernel size.
    stride, padding : int or (int, int)
        (sh, sw) and zero padding (ph, pw).

    Returns
    -------
    col : array (n*oh*ow, kh*kw*c)
        ``col[(n, oy, ox), (i, j, c)] = xpad[n, c, oy*sh + i, ox*sw + j]``: rows in
        (n, oh, ow) order, columns in (kh, kw, c) order (matching :func:`kernel_to_matrix`).
    """
    _check_4d("im2col: x", x)
    col, _ = _im2col_cl(x.transpose(0, 2, 3, 1), kh, kw, _pair(stride, "stride"),
                        _pair(padding, "padding"))
    return col


def fold_windows(block, x_shape, kernel, stride, padding, dtype, xp):
    """Sum per-offset window blocks back onto the input grid (the shared adjoint loop).

    ``dx[n, y, x, c] = sum over (i, j), (oy, ox) with oy*sh + i - ph = y, ox*sw + j - pw = x
    of block(i, j)[n, oy, ox, c]``, computed as one ``+=`` per kernel offset into a
    zero-padded channels-last buffer, then cropped. Within one offset the window slice
    hits distinct pixels, so ``+=`` is a plain read-modify-write (race-free on CuPy, no
    scatter-add); overlaps between windows come from different offsets.

    Parameters
    ----------
    block : callable (i, j) -> array (n, oh, ow, c)
    x_shape : (n, c, h, w)
    kernel, stride, padding : (kh, kw), (sh, sw), (ph, pw)
    dtype, xp : dtype and array module of the result

    Returns
    -------
    dx : array (n, c, h, w), channels-last memory
    """
    n, c, h, w = (int(s) for s in x_shape)
    kh, kw = kernel
    ph, pw = padding
    oh, ow = conv_output_size(h, w, kh, kw, stride, padding)
    buf = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            buf[window_slice(i, j, oh, ow, stride)] += block(i, j)
    if ph or pw:
        buf = xp.ascontiguousarray(buf[:, ph:ph + h, pw:pw + w, :])
    return buf.transpose(0, 3, 1, 2)


def col2im(col, x_shape, kh: int, kw: int, stride, padding):
    """Adjoint of :func:`im2col`: fold rows of ``col`` back onto the input grid, summing overlaps.

    ``dx[n, c, y, x] = sum over (oy, ox, i, j) with oy*sh + i - ph = y, ox*sw + j - pw = x
    of col[(n, oy, ox), (i, j, c)]``, so that ``<im2col(x), col> = <x, col2im(col)>``.
    One ``+=`` per kernel offset into a padded buffer, then a crop (:func:`fold_windows`).

    Parameters
    ----------
    col : array (n*oh*ow, kh*kw*c)
    x_shape : (n, c, h, w)
    kh, kw, stride, padding : as in :func:`im2col`

    Returns
    -------
    dx : array (n, c, h, w), channels-last memory
    """
    xp = get_array_module(col)
    n, c, h, w = (int(s) for s in x_shape)
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    oh, ow = conv_output_size(h, w, kh, kw, stride, padding)
    if col.shape != (n * oh * ow, kh * kw * c):
        raise ValueError(f"col2im: expected col of shape {(n * oh * ow, kh * kw * c)} for "
                         f"x_shape {(n, c, h, w)}, got {tuple(col.shape)}")
    col6 = col.reshape(n, oh, ow, kh, kw, c)
    return fold_windows(lambda i, j: col6[:, :, :, i, j, :], (n, c, h, w), (kh, kw), stride,
                        padding, col.dtype, xp)


def kernel_to_matrix(K):
    """Kernel (oc, ic, kh, kw) -> matrix (oc, kh*kw*ic) in im2col's (kh, kw, c) column order."""
    _check_4d("kernel_to_matrix: K", K)
    return K.transpose(0, 2, 3, 1).reshape(K.shape[0], -1)


def matrix_to_kernel(Kmat, kernel_shape):
    """Inverse of :func:`kernel_to_matrix`: (oc, kh*kw*ic) -> C-contiguous (oc, ic, kh, kw)."""
    xp = get_array_module(Kmat)
    oc, ic, kh, kw = (int(s) for s in kernel_shape)
    if Kmat.shape != (oc, kh * kw * ic):
        raise ValueError(f"matrix_to_kernel: expected a ({oc}, {kh * kw * ic}) matrix for "
                         f"kernel shape {(oc, ic, kh, kw)}, got {tuple(Kmat.shape)}")
    # kernels are small; keep them in PyTorch's standard contiguous layout
    return xp.ascontiguousarray(Kmat.reshape(oc, kh, kw, ic).transpose(0, 3, 1, 2))


def _delta2d(delta):
    """(n, c, oh, ow) of any layout (broadcast views included) -> contiguous (n*oh*ow, c)."""
    return channels_last(delta).reshape(-1, delta.shape[1])


# ---------------------------------------------------------------------- sample chunks

#: Target bytes of one chunk's ``col`` on the chunked path: small enough to stay in the
#: L2/L3 caches between im2col's copy and the GEMM, large enough for an efficient GEMM.
#: Measured for ResNet-20 at batch 128 (float32, 1 CPU thread): the chunked path with
#: 4 MB makes a BP step 1.77 s -> 1.0 s and its peak RSS 1.06 GB -> 0.33 GB. 2 MB (one
#: core's L2 on the 2-core EPYC VM) against 4 MB, whole BP steps in interleaved rounds:
#: batch 128 0.94-0.99x on 1 thread and 0.96-0.99x on 2, batch 32 0.94x and 0.86-0.96x.
CHUNK_BYTES = 2 << 20


def use_chunks(xp, chunked=None) -> bool:
    """The path rule: ``chunked`` if given, else chunks on NumPy and one whole-batch GEMM
    on CuPy (a GPU wants few large kernels; its memory traffic is not cache-bound)."""
    if chunked is None:
        return xp.__name__ == "numpy"
    return bool(chunked)


def chunk_samples(n: int, sample_bytes: int) -> int:
    """``s = clip(CHUNK_BYTES // sample_bytes, 1, n)``: samples per chunk so that a chunk's
    buffers (``sample_bytes`` per sample) are about :data:`CHUNK_BYTES` (at least one sample)."""
    return max(1, min(n, CHUNK_BYTES // max(sample_bytes, 1)))


def samples_per_chunk(n: int, oh: int, ow: int, K: int, itemsize: int) -> int:
    """Samples per im2col chunk: its ``col`` (s*oh*ow, K) is about :data:`CHUNK_BYTES`."""
    return chunk_samples(n, oh * ow * K * itemsize)


def _fill_padded(pad, src, padding) -> None:
    """Copy ``src`` (m, h, w, c) into the interior of ``pad[:m]``: ``pad`` (s >= m, h + 2 ph,
    w + 2 pw, c) is a chunk buffer reused call after call, whose zero border is written once,
    when it is allocated, and never touched again."""
    m, h, w = src.shape[:3]
    ph, pw = padding
    pad[:m, ph:ph + h, pw:pw + w, :] = src


class _ChunkWindows:
    """im2col of successive sample chunks of a channels-last (n, h, w, c) array.

    ``cols(a, m)`` returns the ``col`` rows of samples ``a .. a+m-1`` as an
    (m*oh*ow, kh*kw*c) view of one buffer that every call reuses (so a result is valid
    until the next call). The padded chunk also lives in one reused buffer whose zero
    border is written once. 1x1 stride-1 unpadded kernels need no copy: col is x.
    """

    def __init__(self, xl, kh: int, kw: int, stride, padding, s: int):
        xp = get_array_module(xl)
        self.xp, self.xl = xp, xp.ascontiguousarray(xl)  # no copy for channels-last x
        n, h, w, c = self.xl.shape
        self.kernel, self.stride, self.padding = (kh, kw), stride, padding
        self.grid = conv_output_size(h, w, kh, kw, stride, padding)
        oh, ow = self.grid
        ph, pw = padding
        self.identity = (kh, kw, ph, pw) == (1, 1, 0, 0) and tuple(stride) == (1, 1)
        self.pad = None if self.identity or not (ph or pw) else \
            xp.zeros((s, h + 2 * ph, w + 2 * pw, c), dtype=xl.dtype)
        self.col = None if self.identity else \
            xp.empty((s * oh * ow, kh * kw * c), dtype=xl.dtype)
        # the window view is built once (as_strided costs ~13 us a call, ~1800 calls a
        # ResNet-20 step): over the reused padded buffer, or over the whole unpadded input
        self.windows = None if self.identity else kernel_windows(
            self.xl if self.pad is None else self.pad, kh, kw, oh, ow, stride)

    def __call__(self, a: int, m: int):
        src = self.xl[a:a + m]
        if self.identity:
            return src.reshape(-1, src.shape[3])
        oh, ow = self.grid
        if self.pad is not None:
            _fill_padded(self.pad, src, self.padding)
            view = self.windows[:m]
        else:
            view = self.windows[a:a + m]
        col = self.col[:m * oh * ow]
        self.xp.copyto(col.reshape(view.shape), view)
        return col


class _RowWindows:
    """Stride 1: the kernel's kw taps of every padded row, for the kh row-tap GEMMs.

    ``colw[n, yp, ox, (j, c)] = xpad[n, yp, ox + j, c]`` for every padded row yp (hp = h + 2 ph
    of them), so that the im2col rows of kernel row i are the contiguous per-sample slabs
    ``colw[n, i:i + oh]`` and::

        y2d[n] = sum_i colw[n, i:i + oh] @ Wrow_i,   Wrow_i[(j, c), o] = W[o, c, i, j]

    (i = 0 .. kh-1, added in that order). The copy is kw*c values per padded position instead
    of im2col's kh*kw*c per output position (a third for 3x3): on one thread, float32, batch
    128, a 3x3 forward chunk loop took 13.9 -> 10.9 ms (16 channels, 32x32), 10.2 -> 8.5 ms
    (32, 16x16) and 8.1 -> 7.1 ms (64, 8x8). Buffers are reused across calls like
    :class:`_ChunkWindows`; every GEMM is one sample's, so the rounding of a sample's rows does
    not depend on the chunk or shard it is in.
    """

    def __init__(self, xl, Wrows, kernel, padding, s: int):
        xp = get_array_module(xl)
        self.xp, self.xl = xp, xl
        n, h, w, c = xl.shape
        (kh, kw), oc = kernel, Wrows[0].shape[1]
        ph, pw = padding
        self.padding = padding
        self.hp, wp = h + 2 * ph, w + 2 * pw
        self.oh, self.ow = self.hp - kh + 1, wp - kw + 1
        self.pad = xp.zeros((s, self.hp, wp, c), dtype=xl.dtype) if (ph or pw) else None
        self.colw = xp.empty((s, self.hp, self.ow, kw * c), dtype=xl.dtype)
        self.tmp = xp.empty((s, self.oh * self.ow, oc), dtype=xl.dtype)
        self.Wrows = Wrows  # (kh, kw*c, oc): a (kw*c, oc) matrix per kernel row (kernel_rows)
        # the taps view, built once (as_strided costs ~13 us): over the reused padded
        # buffer, or over the whole unpadded input
        src = self.pad if self.pad is not None else xl
        s0, s1, s2, s3 = src.strides
        self.taps = xp.lib.stride_tricks.as_strided(
            src, shape=(src.shape[0], self.hp, self.ow, kw, c), strides=(s0, s1, s2, s2, s3))

    @staticmethod
    def sample_bytes(hw, c, kernel, padding, oc, itemsize) -> int:
        """Bytes of one sample's buffers: padded input, its kw taps per row, the GEMM result."""
        (h, w), (kh, kw), (ph, pw) = hw, kernel, padding
        hp, wp = h + 2 * ph, w + 2 * pw
        oh, ow = hp - kh + 1, wp - kw + 1
        return (hp * wp * c * bool(ph or pw) + hp * ow * kw * c + oh * ow * oc) * itemsize

    def gemm_into(self, a: int, m: int, y3) -> None:
        """``y3`` (m, oh*ow, oc) <- the convolution of samples a .. a+m-1."""
        xp = self.xp
        if self.pad is not None:
            _fill_padded(self.pad, self.xl[a:a + m], self.padding)
            taps = self.taps[:m]
        else:
            taps = self.taps[a:a + m]
        colw = self.colw[:m]
        xp.copyto(colw.reshape(taps.shape), taps)
        shape, tmp = (m, self.oh * self.ow, colw.shape[3]), self.tmp[:m]
        for i, Wi in enumerate(self.Wrows):
            rows_i = colw[:, i:i + self.oh].reshape(shape)  # per-sample contiguous slabs
            if i == 0:
                xp.matmul(rows_i, Wi, out=y3)
            else:
                xp.matmul(rows_i, Wi, out=tmp)
                y3 += tmp


def kernel_rows(W):
    """(oc, c, kh, kw) -> one C-contiguous (kh, kw*c, oc) array whose row ``i`` is the kernel
    row matrix ``Wrow_i[(j, c), o] = W[o, c, i, j]`` (one copy; the compiled loop of
    :mod:`minigrad_pfa.jit.conv` takes the whole array)."""
    xp = get_array_module(W)
    oc, c, kh, kw = W.shape
    return xp.ascontiguousarray(W.transpose(2, 3, 1, 0)).reshape(kh, kw * c, oc)


def row_taps(kernel, stride) -> bool:
    """The forward GEMM by kernel rows (:class:`_RowWindows`): stride 1 and a kernel wider
    than one tap (1x1 kernels need no copy at all)."""
    return tuple(stride) == (1, 1) and tuple(kernel) != (1, 1)


# ------------------------------------------------------------------------------ conv


def _conv_gemm(x, W, b, stride, padding, chunked=None):
    """``y2d = im2col(x) @ Wmat.T (+ b)``; returns (y channels-last (n, oc, oh, ow), col).

    Whole batch: one im2col and one GEMM, ``col`` returned for the cache. Chunked
    (:func:`use_chunks`): ``y2d[chunk] = col[chunk] @ Wmat.T`` written straight into ``y``
    chunk by chunk; ``col`` is never whole and None is returned for it.
    """
    xp = get_array_module(x)
    n = x.shape[0]
    oc, ic, kh, kw = W.shape
    # Wmat.T is a transposed (Fortran-ordered) view: BLAS reads it with no copy
    WmT = kernel_to_matrix(W).T
    if use_chunks(xp, chunked):
        oh, ow = conv_output_size(x.shape[2], x.shape[3], kh, kw, stride, padding)
        xl = xp.ascontiguousarray(x.transpose(0, 2, 3, 1))  # no copy for channels-last x
        y = xp.empty((n, oh, ow, oc), dtype=x.dtype)
        Wrows = kernel_rows(W) if row_taps((kh, kw), stride) else None  # once, not per shard
        jit = _compiled_rows(xp, (kh, kw), stride, x.dtype)

        def rows(sl):  # y[sl] from x[sl], chunk by chunk (one batch shard, cpu.threads)
            xs, ys, m = xl[sl], y[sl], sl.stop - sl.start
            if m == 0:
                return
            if jit:  # --cpu-kernels numba: one compiled sample loop (jit.conv)
                _jit_conv.forward_rows(xs, Wrows, padding, ys.reshape(m, oh * ow, oc))
                return
            if Wrows is not None:
                s = chunk_samples(m, _RowWindows.sample_bytes(
                    xs.shape[1:3], ic, (kh, kw), padding, oc, x.dtype.itemsize))
            else:
                s = samples_per_chunk(m, oh, ow, kh * kw * ic, x.dtype.itemsize)
            # chunks of sizes differing by at most one sample: no small remainder
            chunks = shard_bounds(m, -(-m // s))
            if Wrows is not None:
                rows_w = _RowWindows(xs, Wrows, (kh, kw), padding, chunks[0].stop)
                for c in chunks:
                    rows_w.gemm_into(c.start, c.stop - c.start,
                                     ys[c].reshape(c.stop - c.start, oh * ow, oc))
                return
            cols = _ChunkWindows(xs, kh, kw, stride, padding, chunks[0].stop)
            for c in chunks:
                xp.matmul(cols(c.start, c.stop - c.start), WmT, out=ys[c].reshape(-1, oc))

        macs = n * oh * ow * kh * kw * ic * oc
        map_shards(rows, n, xp, elements=macs // GEMM_MACS_PER_ELEMENT, gemm_rows=oh * ow)
        y2d, col = y.reshape(-1, oc), None
    else:
        col, (oh, ow) = _im2col_cl(x.transpose(0, 2, 3, 1), kh, kw, stride, padding)
        y2d = col @ WmT
    if b is not None:
        y2d += b
    return y2d.reshape(n, oh, ow, oc).transpose(0, 3, 1, 2), col


def conv2d_forward(x, W, b, stride, padding, keep_col: bool = True, chunked=None):
    """``y = conv(x, W) + b`` as ``y2d = col @ Wmat.T + b``.

    Parameters
    ----------
    x : array (n, ic, h, w)
        Any memory layout (NCHW-contiguous raw data or channels-last activations).
    W : array (oc, ic, kh, kw)
    b : array (oc,) or None
    stride, padding : (sh, sw), (ph, pw) (ints are accepted too)
    keep_col : bool, default True
        Whole-batch path only: cache ``col`` for :func:`conv2d_weight_grad` (one im2col
        per step) or only ``x`` (im2col is recomputed in the backward pass). The chunked
        path never forms the whole ``col`` and always caches ``x``.
    chunked : bool or None, default None
        Run im2col and the GEMM over sample chunks (see the module docstring) or as one
        whole-batch GEMM; None: chunks on NumPy, whole batch on CuPy (:func:`use_chunks`).
        Measured for ResNet-20 at batch 128 in float32 on one CPU thread: the whole-batch
        ``col`` of a 16-channel 32x32 3x3 conv is 75 MB (about 0.78 GB cached over the 19
        convs); chunks of :data:`CHUNK_BYTES` (4 MB then) stay in cache, which makes that
        layer's forward 3x faster (52 -> 17 ms), and recomputing ``col`` chunk by chunk makes its
        weight gradient cost what the GEMM on the cached ``col`` did (17 ms; a
        whole-batch recompute took 34 ms).

    Returns
    -------
    y : array (n, oc, oh, ow), channels-last memory, dtype of x
    cache : dict
        Opaque; what :func:`conv2d_weight_grad` needs (``col`` or ``x``, shapes, stride,
        padding, and which path recomputes ``col``).
    """
    _check_4d("conv2d_forward: x", x)
    _check_4d("conv2d_forward: W", W)
    if x.shape[1] != W.shape[1]:
        raise ValueError(f"conv2d_forward: x has {x.shape[1]} channels but W {tuple(W.shape)} "
                         f"expects {W.shape[1]}")
    _check_same_dtype("conv2d_forward", "x", x, "W", W)
    if b is not None and b.shape != (W.shape[0],):
        raise ValueError(f"conv2d_forward: expected b of shape ({W.shape[0]},), "
                         f"got {tuple(b.shape)}")
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    chunked = use_chunks(get_array_module(x), chunked)
    y, col = _conv_gemm(x, W, b, stride, padding, chunked)
    keep = col is not None and keep_col
    # caching x itself costs nothing extra: the layer before keeps it alive for its own
    # backward pass anyway. A cached padded copy would save the weight gradient its
    # per-chunk padding, but measured (ResNet-20 shapes, batch 128, float32, 1 thread)
    # within noise (17.0 vs 15.6, 14.3 vs 15.1, 14.6 vs 13.7 ms) for +3-9 MB per layer.
    cache = {"x_shape": tuple(x.shape), "kernel_size": tuple(W.shape[2:]),
             "stride": stride, "padding": padding, "chunked": chunked,
             "col": col if keep else None, "x": None if keep else x}
    return y, cache


def _input_error_col2im(delta, M, x_shape, stride, padding):
    """``dx = col2im(delta2d @ Mmat)``: the literal transpose (materialises the (N, K) dcol)."""
    kh, kw = M.shape[2:]
    dcol = _delta2d(delta) @ kernel_to_matrix(M)
    return col2im(dcol, x_shape, kh, kw, stride, padding)


def _input_error_fold(delta, M, x_shape, stride, padding):
    """``dx = col2im(delta2d @ Mmat)`` one kernel offset at a time, never forming dcol.

    Column block (i, j) of ``delta2d @ Mmat`` is ``delta2d @ M[:, :, i, j]`` (N, ic), so
    the fold adds nine small contiguous GEMM results instead of strided slices of a
    K-times wider matrix.
    """
    xp = get_array_module(delta)
    n, ic, h, w = x_shape
    kh, kw = M.shape[2:]
    oh, ow = delta.shape[2:]
    d2 = _delta2d(delta)
    # contiguous (oc', ic) slices: BLAS cannot take M[:, :, i, j] (a strided view) directly
    Mij = xp.ascontiguousarray(M.transpose(2, 3, 0, 1))
    return fold_windows(lambda i, j: (d2 @ Mij[i, j]).reshape(n, oh, ow, ic), x_shape,
                        (kh, kw), stride, padding, delta.dtype, xp)


def _input_error_fold_compiled(delta, M, x_shape, stride, padding, work):
    """:func:`_input_error_fold` as compiled sample loops (``--cpu-kernels numba``,
    :func:`minigrad_pfa.jit.conv.input_error_fold`): per sample one GEMM with the kernel
    matrix and the fold in the NumPy path's order, batch shards writing their samples of one
    channels-last ``dx``."""
    xp = get_array_module(delta)
    n, ic, h, w = x_shape
    ocp, _, kh, kw = M.shape
    oh, ow = delta.shape[2:]
    d3 = channels_last(delta).reshape(n, oh * ow, ocp)
    Mmat = xp.ascontiguousarray(kernel_to_matrix(M))
    dx = xp.empty((n, h, w, ic), dtype=delta.dtype)
    map_shards(lambda sl: _jit_conv.input_error_fold(d3, Mmat, (kh, kw), stride, padding, dx,
                                                     sl.start, sl.stop),
               n, xp, work, gemm_rows=oh * ow)
    return dx.transpose(0, 3, 1, 2)


def _input_error_conv(delta, M, padding, chunked=None):
    """Stride 1 only: ``dx = conv(pad(delta), flip(M).swap(oc, ic))``, no scatter.

    With stride 1, ``dx[n, c, y, x] = sum_{o,i,j} delta[n, o, y + ph - i, x + pw - j]
    M[o, c, i, j]``: a forward correlation of ``delta`` zero-padded by
    (kh-1-ph, kw-1-pw) with the kernel ``M'[c, o, i, j] = M[o, c, kh-1-i, kw-1-j]``; its
    output grid is exactly (h, w). Needs ph <= kh-1 and pw <= kw-1. Runs the forward
    GEMM of :func:`_conv_gemm`, in sample chunks where ``chunked`` (:func:`use_chunks`).
    """
    kh, kw = M.shape[2:]
    Mflip = M[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    dx, _ = _conv_gemm(delta, Mflip, None, (1, 1), (kh - 1 - padding[0], kw - 1 - padding[1]),
                       chunked)
    return dx


# Choice of method by "auto", from CPU measurements at batch 128 (float32, 3x3 kernels,
# padding 1, 1 thread, CPU ms, min of 11; the box was shared, so +-30%):
#   delta (oc') -> dx (ic, grid)    col2im   fold   conv
#   10 -> 16, 32x32 s1 (DFA)        132      45     25
#   10 -> 64, 8x8 s1 (DFA)          16.5     5.5    2.1
#   16 -> 16, 32x32 s1 (BP)         120      34     37
#   32 -> 32, 16x16 s1              46       18     19
#   64 -> 64, 8x8 s1                16       12     12
#   32 -> 16, 32x32 s1              125      42     65
#   32 -> 16, 32x32 s2              25       16     -
#   64 -> 32, 16x16 s2              14       8.7    -
#   64 -> 16, 32x32 s1              186      86     146
#   256 -> 64, 8x8 s1               39       49     55
#   160 -> 16, 32x32 s1 (PFA mid)   176      229    307
#   640 -> 64, 8x8 s1 (PFA mid)     104      100    157
#   160 -> 32, 16x16 s2             19.5     26     -
# "conv" and "fold" tie at oc' = ic on the CPU; "conv" is kept there because it is one
# large GEMM (fewer, larger kernels on a GPU).
#: "conv" (stride 1) is used while oc' <= CONV_MAX_RATIO * ic
CONV_MAX_RATIO = 1.0
#: the literal col2im is used from oc' >= COL2IM_MIN_RATIO * ic (its one wide GEMM wins)
COL2IM_MIN_RATIO = 8.0
INPUT_ERROR_METHODS = ("auto", "fold", "conv", "col2im")


def conv2d_input_error(delta, M, x_shape, stride, padding, method: str = "auto",
                       chunked=None):
    """Transposed convolution of an error with any kernel: ``dx = col2im(delta2d @ Mmat)``.

    Parameters
    ----------
    delta : array (n, oc', oh, ow), any layout (broadcast views allowed)
    M : array (oc', ic, kh, kw)
        The kernel the rule uses (``W`` for BP); oc' may differ from W's oc.
    x_shape : (n, ic, h, w)
        Shape of the forward input.
    stride, padding : (sh, sw), (ph, pw)
    method : {"auto", "fold", "conv", "col2im"}
        Three equal ways (up to rounding) to compute the same ``dx``:

        * ``"col2im"``: the literal ``col2im(delta2d @ Mmat)``, any stride;
        * ``"fold"``: the same sum one kernel offset at a time,
          ``dx = fold_(i,j) delta2d @ M[:, :, i, j]``, never forming the (N, K) matrix;
        * ``"conv"``: stride 1 and ph <= kh-1, pw <= kw-1 only: a forward im2col-GEMM of
          ``delta`` zero-padded by (kh-1-ph, kw-1-pw) with the flipped, in/out-swapped
          kernel (no scatter at all).

        ``"auto"`` picks by the measured costs above: ``"conv"`` when it applies and
        ``oc' <= CONV_MAX_RATIO * ic``, else ``"col2im"`` when
        ``oc' >= COL2IM_MIN_RATIO * ic``, else ``"fold"``.
    chunked : bool or None, default None
        Method ``"conv"`` only: its GEMM in sample chunks or whole batch, as in
        :func:`conv2d_forward` (None: chunks on NumPy, whole batch on CuPy).

    Returns
    -------
    dx : array (n, ic, h, w), channels-last memory
    """
    _check_4d("conv2d_input_error: delta", delta)
    _check_4d("conv2d_input_error: M", M)
    _check_same_dtype("conv2d_input_error", "delta", delta, "M", M)
    if method not in INPUT_ERROR_METHODS:
        raise ValueError(f"conv2d_input_error: unknown method {method!r}; "
                         f"choose one of {INPUT_ERROR_METHODS}")
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    n, ic, h, w = (int(s) for s in x_shape)
    ocp, kh, kw = M.shape[0], M.shape[2], M.shape[3]
    oh, ow = conv_output_size(h, w, kh, kw, stride, padding)
    if M.shape[1] != ic or delta.shape != (n, ocp, oh, ow):
        raise ValueError(f"conv2d_input_error: expected M (oc', {ic}, kh, kw) and delta "
                         f"(n, oc', oh, ow) = ({n}, {ocp}, {oh}, {ow}) for x_shape "
                         f"{(n, ic, h, w)}, got M {tuple(M.shape)}, delta {tuple(delta.shape)}")
    conv_ok = stride == (1, 1) and padding[0] <= kh - 1 and padding[1] <= kw - 1
    if method == "auto":
        if conv_ok and ocp <= CONV_MAX_RATIO * ic:
            method = "conv"
        else:
            method = "col2im" if ocp >= COL2IM_MIN_RATIO * ic else "fold"
    if method == "conv":
        if not conv_ok:
            raise ValueError("conv2d_input_error: method 'conv' needs stride 1 and padding "
                             f"<= kernel - 1, got stride {stride}, padding {padding}, "
                             f"kernel {(kh, kw)}")
        return _input_error_conv(delta, M, padding, chunked)
    xp = get_array_module(delta)
    work = n * oh * ow * ocp * ic * kh * kw // GEMM_MACS_PER_ELEMENT
    if method == "fold" and _jit_active(xp) and _jit_conv.supports(delta.dtype):
        return _input_error_fold_compiled(delta, M, (n, ic, h, w), stride, padding, work)
    fn = _input_error_fold if method == "fold" else _input_error_col2im
    if not is_sharded(xp, n, work, gemm_rows=oh * ow):
        return fn(delta, M, (n, ic, h, w), stride, padding)
    # batch shards (cpu.threads): samples are independent, so each shard folds its own
    parts = map_shards(lambda sl: fn(delta[sl], M, (sl.stop - sl.start, ic, h, w), stride,
                                     padding).transpose(0, 2, 3, 1), n, xp, work,
                      gemm_rows=oh * ow)
    return xp.concatenate(parts, axis=0).transpose(0, 3, 1, 2)


def conv2d_weight_grad(delta, cache):
    """``gW = matrix_to_kernel(delta2d.T @ col)`` for an error with any number of channels.

    With a cached ``col`` (whole-batch path, ``keep_col``) this is one GEMM; otherwise
    ``col`` is recomputed from the cached ``x``: chunk by chunk on the chunked path,
    ``gW = sum over chunks of delta2d[chunk].T @ col[chunk]``, else in one piece.

    Parameters
    ----------
    delta : array (n, oc', oh, ow), any layout
        W's output error, or PFA's mid-channel error (then the result is ``gR``).
    cache : dict from :func:`conv2d_forward`

    Returns
    -------
    gK : array (oc', ic, kh, kw), C-contiguous
    """
    _check_4d("conv2d_weight_grad: delta", delta)
    n, ic, h, w = cache["x_shape"]
    kh, kw = cache["kernel_size"]
    stride, padding = cache["stride"], cache["padding"]
    oh, ow = conv_output_size(h, w, kh, kw, stride, padding)
    if delta.shape[0] != n or tuple(delta.shape[2:]) != (oh, ow):
        raise ValueError(f"conv2d_weight_grad: delta {tuple(delta.shape)} does not match the "
                         f"forward output grid (n, oc', oh, ow) = ({n}, oc', {oh}, {ow})")
    col, x = cache["col"], cache["x"]
    _check_same_dtype("conv2d_weight_grad", "delta", delta, "x", x if col is None else col)
    ocp, K = delta.shape[1], kh * kw * ic
    d2 = _delta2d(delta)
    if col is None and cache.get("chunked", False):
        xp = get_array_module(x)
        xl = xp.ascontiguousarray(x.transpose(0, 2, 3, 1))
        d3 = d2.reshape(n, oh * ow, ocp)
        if _compiled_rows(xp, (kh, kw), stride, x.dtype):
            # --cpu-kernels numba: per-sample row-tap GEMMs summed in fixed blocks (jit.conv)
            gKmat = _jit_conv.weight_grad_rows(xl, d3, (kh, kw), padding)
            return matrix_to_kernel(gKmat, (ocp, ic, kh, kw))

        # blocks of the batch fixed by its size alone (cpu.threads.block_bounds): at least
        # the chunks' count, so that a block's col fits CHUNK_BYTES; a run of blocks per
        # thread, one partial per block, added in block order (the same bits for any T)
        chunks = -(-n // samples_per_chunk(n, oh, ow, K, x.dtype.itemsize))
        blocks = block_bounds(n, n * oh * ow * K * ocp // GEMM_MACS_PER_ELEMENT, xp,
                              at_least=chunks)

        def partials(run):  # [delta2d[b].T @ col[b] for each block b of a run]
            a0 = run[0].start
            cols = _ChunkWindows(xl[a0:run[-1].stop], kh, kw, stride, padding,
                                 max(b.stop - b.start for b in run))
            return [d3[b].reshape(-1, ocp).T @ cols(b.start - a0, b.stop - b.start)
                    for b in run]

        gKmat = sum_blocks(partials, blocks, xp)
    else:
        if col is None:
            col, _ = _im2col_cl(x.transpose(0, 2, 3, 1), kh, kw, stride, padding)
        gKmat = d2.T @ col
    return matrix_to_kernel(gKmat, (ocp, ic, kh, kw))


def _compiled_rows(xp, kernel, stride, dtype) -> bool:
    """True when a layer's row-tap GEMMs (:func:`row_taps`) run the compiled loops of
    :mod:`minigrad_pfa.jit.conv`: ``--cpu-kernels numba``, NumPy arrays, float32 / float64."""
    return row_taps(kernel, stride) and _jit_active(xp) and _jit_conv.supports(dtype)


def conv2d_bias_grad(delta):
    """``gb[o] = sum over n, oy, ox of delta[n, o, oy, ox]``; delta (n, oc, oh, ow) -> (oc,)."""
    _check_4d("conv2d_bias_grad: delta", delta)
    n, oc = delta.shape[:2]
    # two-stage sum (over the grid, then the batch) keeps float32 rounding small
    return delta.transpose(0, 2, 3, 1).reshape(n, -1, oc).sum(axis=1).sum(axis=0)


def channel_matmul(a, B):
    """Contract the channel axis (axis 1) of ``a`` with ``B`` (c, m).

    ``a`` (n, c) -> ``a @ B`` (n, m); ``a`` (n, c, h, w) -> (n, m, h, w) channels-last,
    one GEMM on the (n*h*w, c) view: ``out[n, k, y, x] = sum_c a[n, c, y, x] B[c, k]``.
    This is a 1x1 convolution with kernel ``B.T[:, :, None, None]`` (PFA's ``delta @ B``).
    """
    if B.ndim != 2 or a.ndim not in (2, 4) or a.shape[1] != B.shape[0]:
        raise ValueError(f"channel_matmul: expected a (n, c) or (n, c, h, w) and B (c, m) with "
                         f"matching c, got a {tuple(a.shape)}, B {tuple(B.shape)}")
    _check_same_dtype("channel_matmul", "a", a, "B", B)
    if a.ndim == 2:
        return a @ B
    n, c, h, w = a.shape
    xp = get_array_module(a)
    a3, k = channels_last(a).reshape(n, h * w, c), B.shape[1]
    out = xp.empty((n, h * w, k), dtype=a.dtype)
    # rows of samples are independent: batch shards write disjoint rows (cpu.threads)
    map_shards(lambda sl: xp.matmul(a3[sl].reshape(-1, c), B, out=out[sl].reshape(-1, k)),
               n, xp, elements=n * h * w * c * k // GEMM_MACS_PER_ELEMENT, gemm_rows=h * w)
    return out.reshape(n, h, w, B.shape[1]).transpose(0, 3, 1, 2)
