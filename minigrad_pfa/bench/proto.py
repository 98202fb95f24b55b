"""Prototypes of engine speed-ups, measured by ``minigrad-pfa bench --proposals``.

Not used by the engine: a worker applies a variant (by monkeypatching, in its own fresh
process) before it builds the model, so that the benchmark measures the proposal side
by side with the engine as it is. Once the engine adopts a proposal, its variant here
should be deleted.

Variants
--------
``malloc-keep``
    glibc's allocator keeps freed memory for reuse: ``mallopt(M_MMAP_THRESHOLD, 1 GiB)``
    (large arrays come from the heap instead of a fresh ``mmap`` each) and
    ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)`` (freed heap memory is not returned to the OS).
    Without it every large temporary (im2col matrices, BN and ReLU outputs) is a fresh
    mapping whose pages the kernel faults in and zeroes on first touch: about 20 000
    page faults and 0.2-1 s of system time per ResNet-20 batch-128 step here.
``chunked-conv``
    im2col + GEMM over chunks of samples whose ``col`` (about :data:`CHUNK_BYTES`) stays
    in the CPU caches, written into one reused buffer (the padded chunk too, whose zero
    border is written once); the weight gradient recomputes ``col`` chunk by chunk
    (``gW = sum over chunks of delta2d_chunk.T @ col_chunk``) instead of caching the
    whole-batch ``col`` (75 MB per 16-channel 32x32 layer at batch 128). The stride-1
    input error (a forward conv of the padded error) goes through the same path. The
    same equations as :mod:`minigrad_pfa.functional.conv`; tested against it in
    ``tests/test_bench.py``. CPU only (on a GPU one whole-batch GEMM is the better shape).
"""
from __future__ import annotations

import numpy as np

from ..functional import conv as C

#: bytes of one chunk's ``col``: small enough for the L2/L3 caches, large enough that a
#: chunk's GEMM is efficient
CHUNK_BYTES = 4 << 20

VARIANTS = ("malloc-keep", "chunked-conv")


def malloc_keep() -> None:
    """Keep freed memory in the process (glibc only; see the module docstring)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name or "libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's <malloc.h>
    # mallopt takes a C int: 2**31 - 1 is the largest trim threshold it accepts
    if not (libc.mallopt(m_mmap_threshold, 1 << 30) and
            libc.mallopt(m_trim_threshold, 2 ** 31 - 1)):
        raise RuntimeError("mallopt refused the thresholds (not glibc?)")


def samples_per_chunk(n: int, oh: int, ow: int, K: int, itemsize: int) -> int:
    """Samples per chunk so that a chunk's ``col`` (s*oh*ow, K) is about CHUNK_BYTES."""
    return max(1, min(n, CHUNK_BYTES // max(oh * ow * K * itemsize, 1)))


class _Windows:
    """im2col of successive sample chunks of a channels-last (n, h, w, c) array into one
    reused ``col`` buffer (and one zero-bordered padding buffer)."""

    def __init__(self, xl, kh, kw, stride, padding, oh, ow, s):
        self.xl = xl if xl.flags.c_contiguous else np.ascontiguousarray(xl)
        n, h, w, c = self.xl.shape
        self.k, self.stride, self.padding, self.grid = (kh, kw), stride, padding, (oh, ow)
        ph, pw = padding
        self.pad = (np.zeros((s, h + 2 * ph, w + 2 * pw, c), xl.dtype) if (ph or pw)
                    else None)
        self.col = np.empty((s * oh * ow, kh * kw * c), xl.dtype)

    def __call__(self, a: int, m: int):
        """``col`` rows of samples a .. a+m-1: (m*oh*ow, kh*kw*c), a view of the buffer."""
        (kh, kw), (oh, ow) = self.k, self.grid
        src = self.xl[a:a + m]
        if self.pad is not None:
            ph, pw = self.padding
            h, w = src.shape[1:3]
            self.pad[:m, ph:ph + h, pw:pw + w, :] = src  # the border stays zero
            src = self.pad[:m]
        view = C.kernel_windows(src, kh, kw, oh, ow, self.stride)
        col = self.col[:m * oh * ow]
        np.copyto(col.reshape(view.shape), view)
        return col


def conv_gemm_chunked(x, W, b, stride, padding):
    """``y2d = im2col(x) @ Wmat.T (+ b)`` chunk by chunk; returns (y channels-last, None)."""
    n = x.shape[0]
    oc, ic, kh, kw = W.shape
    xl = x.transpose(0, 2, 3, 1)
    oh, ow = C.conv_output_size(xl.shape[1], xl.shape[2], kh, kw, stride, padding)
    WmT = C.kernel_to_matrix(W).T
    y = np.empty((n, oh, ow, oc), dtype=x.dtype)
    s = samples_per_chunk(n, oh, ow, kh * kw * ic, x.dtype.itemsize)
    windows = _Windows(xl, kh, kw, stride, padding, oh, ow, s)
    for a in range(0, n, s):
        m = min(s, n - a)
        np.matmul(windows(a, m), WmT, out=y[a:a + m].reshape(-1, oc))
    if b is not None:
        y += b
    return y.transpose(0, 3, 1, 2), None


def conv2d_forward(x, W, b, stride, padding, keep_col: bool = True):
    """As :func:`minigrad_pfa.functional.conv.conv2d_forward`, caching ``x`` only."""
    stride, padding = C._pair(stride, "stride"), C._pair(padding, "padding")
    y, _ = conv_gemm_chunked(x, W, b, stride, padding)
    return y, {"x_shape": tuple(x.shape), "kernel_size": tuple(W.shape[2:]),
               "stride": stride, "padding": padding, "col": None, "x": x}


def conv2d_weight_grad(delta, cache):
    """``gW = sum over chunks of delta2d_chunk.T @ col_chunk`` (col recomputed per chunk)."""
    n, ic, h, w = cache["x_shape"]
    kh, kw = cache["kernel_size"]
    ocp, (oh, ow) = delta.shape[1], delta.shape[2:]
    K = kh * kw * ic
    d = delta.transpose(0, 2, 3, 1)
    d = d if d.flags.c_contiguous else np.ascontiguousarray(d)
    g = np.zeros((ocp, K), dtype=delta.dtype)
    s = samples_per_chunk(n, oh, ow, K, delta.dtype.itemsize)
    windows = _Windows(cache["x"].transpose(0, 2, 3, 1), kh, kw, cache["stride"],
                       cache["padding"], oh, ow, s)
    for a in range(0, n, s):
        m = min(s, n - a)
        g += d[a:a + m].reshape(-1, ocp).T @ windows(a, m)
    return C.matrix_to_kernel(g, (ocp, ic, kh, kw))


def chunked_conv() -> None:
    """Route the engine's conv forward, weight gradient and stride-1 input error here."""
    C._conv_gemm = conv_gemm_chunked
    C.conv2d_forward = conv2d_forward
    C.conv2d_weight_grad = conv2d_weight_grad


def apply_variants(names) -> None:
    """Apply the named variants to this process (before the model is built)."""
    for name in names or ():
        if name == "malloc-keep":
            malloc_keep()
        elif name == "chunked-conv":
            chunked_conv()
        else:
            raise ValueError(f"unknown variant {name!r}; expected one of {VARIANTS}")
