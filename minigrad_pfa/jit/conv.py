"""Stride-1 convolutions in compiled sample loops (Numba) that call BLAS without the GIL.

Notation as in :mod:`minigrad_pfa.functional.conv`: a channels-last input xl (m, h, w, c),
zero padding (ph, pw), kernel (kh, kw), stride 1, so hp = h + 2 ph padded rows and an output
grid oh = hp - kh + 1, ow = w + 2 pw - kw + 1, P = oh * ow output positions per sample;
oc output channels (oc' for an error with other channels). For one sample n, the kw taps of
every padded row (:class:`minigrad_pfa.functional.conv._RowWindows`)::

    colw[yp, ox, j*c + ch] = xpad[n, yp, ox + j, ch]        (hp, ow, kw*c), zero in the border

whose kernel-row slab ``colw[i:i + oh]`` is a contiguous (P, kw*c) matrix, and the kernel
rows ``Wr[i][(j, ch), o] = W[o, ch, i, j]`` (kh, kw*c, oc)::

    forward           y[n] (P, oc)          = sum_i colw[i:i+oh] @ Wr[i]       (i = 0 .. kh-1)
    weight gradient   G[i] (oc', kw*c)     += delta[n].T @ colw[i:i+oh]        (n in the block)
                      gKmat[:, i*kw*c:(i+1)*kw*c] = G[i]

The input error of a stride-1 layer is a forward of the padded error with the flipped kernel
(``functional.conv._input_error_conv``), so it runs :func:`forward_rows` too. Any other input
error that the NumPy path folds (``functional.conv._input_error_fold``: strided layers, and
errors with more channels than the input, as PFA's mid-channel errors and DFA's) is, per
sample, one GEMM with the kernel matrix ``Mmat[o, (i, j, ch)] = M[o, ch, i, j]`` (oc', K),
K = kh*kw*ic, then the fold of its columns onto the input grid, offset by offset::

    input error       dcol (P, K)           = delta[n] @ Mmat                  (one GEMM)
                      dx[n, y, x, ch]       = sum over (i, j) in order of
                                              dcol[(oy, ox), (i, j, ch)]
                      with y = oy*sh + i - ph, x = ox*sw + j - pw inside the grid

which are the NumPy fold's additions in its order (a zero buffer, then offset (i, j) added
for (i, j) in row-major order), so only the GEMM's rounding may differ from it.

Why: on the NumPy path one chunk of samples is seven NumPy calls (pad, taps copy, three
batched GEMMs, two additions), each a turn of the interpreter lock that the engine's other
threads wait for. Here one call per shard builds each sample's taps in cache and hands them
to BLAS's GEMM with beta = 1 (the sum over kernel rows accumulates in the result: no
temporary and no addition pass), all without the lock. The GEMM is SciPy's BLAS
(``scipy.linalg.cython_blas``, the same OpenBLAS kernels as NumPy's on the PyPI wheels),
called through its C function pointer; it is held to one thread like NumPy's
(:func:`minigrad_pfa.cpu.threads.set_threads` limits every loaded BLAS, and loading it here
re-applies the limit).

Same numbers with any thread count: every GEMM is one sample's, and the weight gradient's
partial sums are the fixed blocks of :func:`minigrad_pfa.cpu.threads.block_bounds`, samples
added in order within a block, blocks in order after. The results are the NumPy path's up to
rounding (the weight gradient sums per sample, not per chunk); tests compare them.

Cost per sample (float32): the taps hp*ow*kw*c values written once (the NumPy path also
writes the padded copy and kh - 1 temporaries of P*oc), kh GEMMs of 2*P*kw*c*oc flops. The
fold: one GEMM of 2*P*oc'*K flops into a (P, K) buffer that stays in cache, and kh*kw
passes adding P*ic values into the sample's h*w*ic (the NumPy path: kh*kw GEMMs over the
whole shard, each result a (shard*P, ic) temporary in memory, added into a padded copy that
is then cropped and the shards' results concatenated).
Measured on the Intel Xeon VM (2 vCPUs, ``python -m minigrad_pfa.bench.kernels``, medians of
3 interleaved rounds): a 3x3 layer's forward + weight gradient + input error at batch 128
took 32.4 / 26.9 / 21.6 ms against NumPy's 56.9 / 42.7 / 26.3 ms on one thread for
16 / 32 / 64 channels (32, 16, 8 pixels square), 21.1 / 14.8 / 14.6 against 31.3 / 25.4 /
19.5 ms on two; in the first prototype the forward alone gave the same bits as NumPy's.
"""
from __future__ import annotations

import functools

import numpy as np

from ..cpu.threads import GEMM_MACS_PER_ELEMENT, block_bounds, sum_blocks
from . import blas


def _row_taps(xl, n, ph, pw, kw, colw, border):
    """colw[yp, ox, j*c + ch] = xl[n, yp - ph, ox + j - pw, ch]; the taps outside xl are
    zeroed only when ``border`` (the first sample of a call: they are the same every sample)."""
    h, w, c = xl.shape[1], xl.shape[2], xl.shape[3]
    hp, ow = colw.shape[0], colw.shape[1]
    for yp in range(hp):
        ys = yp - ph
        for ox in range(ow):
            for j in range(kw):
                xs = ox + j - pw
                base = j * c
                if ys < 0 or ys >= h or xs < 0 or xs >= w:
                    if border:
                        for ch in range(c):
                            colw[yp, ox, base + ch] = 0
                else:
                    for ch in range(c):
                        colw[yp, ox, base + ch] = xl[n, ys, xs, ch]


def _make_kernels(gemm, dtype):
    """The forward and weight-gradient loops compiled around one BLAS ``gemm`` (s or d,
    :mod:`.blas`).

    BLAS is column-major: a C-ordered (r, k) matrix is its (k, r) transpose there, so
    ``C = A @ B`` (row-major) is ``gemm('N', 'N', N, M, K, 1, B, N, A, K, beta, C, N)`` and
    ``C = A.T @ B`` with A (K, M), B (K, N) is ``gemm('N', 'T', N, M, K, 1, B, N, A, M, beta,
    C, N)``.
    """
    import numba

    taps = numba.njit(nogil=True)(_row_taps)
    NN = blas.TRANS  # NN[0:] -> 'N', NN[1:] -> 'T'

    def forward(xl, Wr, ph, pw, y):
        """y (m, P, oc) <- the convolution of xl (m, h, w, c) with Wr (kh, kw*c, oc)."""
        m, c = xl.shape[0], xl.shape[3]
        kh, kwc, oc = Wr.shape
        kw = kwc // c
        hp = xl.shape[1] + 2 * ph
        oh, ow = hp - kh + 1, xl.shape[2] + 2 * pw - kw + 1
        colw = np.empty((hp, ow, kwc), dtype)
        ints = np.array([oc, oh * ow, kwc], np.int32)  # N, M, K
        one = np.ones(1, dtype)
        zero = np.zeros(1, dtype)
        for n in range(m):
            taps(xl, n, ph, pw, kw, colw, n == 0)
            yn = y[n]
            for i in range(kh):
                gemm(NN.ctypes, NN.ctypes, ints[0:].ctypes, ints[1:].ctypes, ints[2:].ctypes,
                     one.ctypes, Wr[i].ctypes, ints[0:].ctypes, colw[i:].ctypes,
                     ints[2:].ctypes, (zero if i == 0 else one).ctypes, yn.ctypes,
                     ints[0:].ctypes)

    def weight_grad(xl, d3, kh, ph, pw, lo, hi, G):
        """G (kh, oc', kw*c) <- sum over samples lo .. hi-1 of delta[n].T @ colw[i:i+oh]."""
        c = xl.shape[3]
        ocp = d3.shape[2]
        kwc = G.shape[2]
        kw = kwc // c
        hp = xl.shape[1] + 2 * ph
        oh, ow = hp - kh + 1, xl.shape[2] + 2 * pw - kw + 1
        colw = np.empty((hp, ow, kwc), dtype)
        ints = np.array([kwc, ocp, oh * ow], np.int32)  # N, M, K of C (oc', kw*c)
        one = np.ones(1, dtype)
        zero = np.zeros(1, dtype)
        for n in range(lo, hi):
            taps(xl, n, ph, pw, kw, colw, n == lo)
            for i in range(kh):
                gemm(NN.ctypes, NN[1:].ctypes, ints[0:].ctypes, ints[1:].ctypes,
                     ints[2:].ctypes, one.ctypes, colw[i:].ctypes, ints[0:].ctypes,
                     d3[n].ctypes, ints[1:].ctypes, (zero if n == lo else one).ctypes,
                     G[i].ctypes, ints[0:].ctypes)

    def fold(d3, Mmat, kh, kw, sh, sw, ph, pw, lo, hi, dx):
        """dx[n] (h, w, ic) <- the fold of delta[n] @ Mmat, samples lo .. hi-1."""
        h, w, ic = dx.shape[1], dx.shape[2], dx.shape[3]
        ocp, K = Mmat.shape
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        P = oh * ow
        dcol = np.empty((P, K), dtype)
        ints = np.array([K, P, ocp], np.int32)  # N, M, K of dcol = delta[n] @ Mmat
        one = np.ones(1, dtype)
        zero = np.zeros(1, dtype)
        for n in range(lo, hi):
            gemm(NN.ctypes, NN.ctypes, ints[0:].ctypes, ints[1:].ctypes, ints[2:].ctypes,
                 one.ctypes, Mmat.ctypes, ints[0:].ctypes, d3[n].ctypes, ints[2:].ctypes,
                 zero.ctypes, dcol.ctypes, ints[0:].ctypes)
            x = dx[n]
            x[:] = 0  # the NumPy fold's zero buffer: 0 + v keeps its additions' bits
            for i in range(kh):
                for j in range(kw):
                    base = (i * kw + j) * ic
                    for oy in range(oh):
                        y = oy * sh + i - ph
                        if y < 0 or y >= h:
                            continue
                        for ox in range(ow):
                            xx = ox * sw + j - pw
                            if xx < 0 or xx >= w:
                                continue
                            p = oy * ow + ox
                            for ch in range(ic):
                                x[y, xx, ch] += dcol[p, base + ch]

    jit = numba.njit(nogil=True)
    return jit(forward), jit(weight_grad), jit(fold)


@functools.cache
def _kernels(dtype):
    """(forward, weight_grad, fold) for float32 or float64, compiled once per process.

    Not cached on disk: the GEMM is a function pointer found when SciPy loads, which Numba
    does not save (compiling them takes about a second, once per process and dtype).
    """
    return _make_kernels(blas.gemm(dtype), np.dtype(dtype))


def supports(dtype) -> bool:
    """True when arrays of ``dtype`` have a compiled path (float32, float64)."""
    return blas.supports(dtype)


def forward_rows(xl, Wr, padding, y3) -> None:
    """``y3[n] = sum_i colw_n[i:i+oh] @ Wr[i]`` for every sample of ``xl``, in place.

    Parameters
    ----------
    xl : C-contiguous (m, h, w, c) float32 / float64 (one batch shard)
    Wr : C-contiguous (kh, kw*c, oc), the kernel rows (:func:`functional.conv.kernel_rows`)
    padding : (ph, pw)
    y3 : C-contiguous (m, oh*ow, oc), written
    """
    forward = _kernels(xl.dtype)[0]
    forward(xl, Wr, int(padding[0]), int(padding[1]), y3)


def weight_grad_rows(xl, d3, kernel, padding):
    """``gKmat`` (oc', kh*kw*c): the weight gradient of a stride-1 layer, in fixed blocks.

    Parameters
    ----------
    xl : C-contiguous (n, h, w, c), the forward input
    d3 : C-contiguous (n, oh*ow, oc'), the output error, channels last
    kernel : (kh, kw)
    padding : (ph, pw)

    Returns
    -------
    gKmat : (oc', kh*kw*c) in ``functional.conv.kernel_to_matrix``'s column order (i, j, c).
    """
    grad = _kernels(xl.dtype)[1]
    n, c = xl.shape[0], xl.shape[3]
    (kh, kw), (ph, pw) = kernel, (int(padding[0]), int(padding[1]))
    ocp = d3.shape[2]
    blocks = block_bounds(n, d3.size * kh * kw * c // GEMM_MACS_PER_ELEMENT, np)

    def partials(run):  # G_b (kh, oc', kw*c) of each block b of a run, computed alone
        out = []
        for b in run:
            G = np.empty((kh, ocp, kw * c), xl.dtype)
            grad(xl, d3, kh, ph, pw, b.start, b.stop, G)
            out.append(G)
        return out

    G = sum_blocks(partials, blocks, np)  # added in block order: same bits for any T
    return G.transpose(1, 0, 2).reshape(ocp, kh * kw * c)


def input_error_fold(d3, Mmat, kernel, stride, padding, dx, lo, hi) -> None:
    """``dx[n] = fold(delta[n] @ Mmat)`` for the samples ``lo .. hi-1``, in place.

    Parameters
    ----------
    d3 : C-contiguous (n, oh*ow, oc'), the output error, channels last
    Mmat : C-contiguous (oc', kh*kw*ic), ``functional.conv.kernel_to_matrix(M)``
    kernel, stride, padding : (kh, kw), (sh, sw), (ph, pw)
    dx : C-contiguous (n, h, w, ic), rows lo .. hi-1 written (one batch shard)
    """
    fold = _kernels(d3.dtype)[2]
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    fold(d3, Mmat, int(kh), int(kw), int(sh), int(sw), int(ph), int(pw), int(lo), int(hi), dx)
