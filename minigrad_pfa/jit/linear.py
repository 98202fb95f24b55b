"""A fully connected layer's GEMMs in feature shards on Numba's threads.

Notation as in :mod:`minigrad_pfa.functional.linear`: n batch, x (n, in), W (out, in),
delta (n, out'), M (out', in). Each product is ``C = A @ B`` (row-major, C (m, p)) cut into
S shards of C's columns or rows, one per ``prange`` iteration (:mod:`.parallel`), each one
BLAS call on its piece (:mod:`.blas`)::

    forward          y        = x @ W.T       columns f of y:   y[:, f]  = x @ W[f].T
    input error      delta_in = delta @ M     columns f:        ...[:, f] = delta @ M[:, f]
    weight gradient  gW       = delta.T @ x   rows f of gW:     gW[f]    = delta[:, f].T @ x

which are the cuts :func:`minigrad_pfa.cpu.elementwise.matmul_cols` / ``matmul_rows`` make
on the engine's pool: the whole batch in every shard, so no partial sums. Transposed operands
are read in place (BLAS's 'T' flag and leading dimension), never copied.

Same numbers, float32 only. A float32 piece of C is the serial product's own: OpenBLAS
computes an element of C with the same kernel and the same blocking of the inner dimension
whichever columns or rows of C a call covers, as long as every piece keeps
:data:`minigrad_pfa.cpu.threads.GEMM_MIN_ROWS` columns / rows and is not a "small" problem
(:mod:`minigrad_pfa.cpu.threads`, "Same numbers with any T"). ``python -m
minigrad_pfa.bench.pieces`` checks it over batch 8-256 and 10-1000 features, every
two-piece cut at a multiple of 8 whose smaller piece has at least 4.2 M multiply-adds (SciPy's
OpenBLAS 0.3.30, SkylakeX kernels, Intel Xeon VM): no float32 cut of any product differed
from the whole (0 of 1239 forward, 1003 input-error, 1239 + 1003 weight-gradient cuts);
float64 ones did (119 of 1003 input-error cuts, 271 of 1239 weight-gradient row cuts), so
float64 products stay on the NumPy path. Tests compare the compiled results with NumPy's
one ``@`` bit for bit at 1, 2 and 3 threads.

Cost. One region per product. On the engine's pool two shards cost a helper's wake-up
each, more than they save at an MLP's sizes, which is why the NumPy path shards an MLP's
GEMMs only from 8x this work (:data:`minigrad_pfa.functional.linear.WORK_DIVISOR`); on
Numba's threads a region of two 280 us shards took 295 us back to back (``python -m
minigrad_pfa.bench.dispatch``, Intel Xeon VM, 2 vCPUs, December 2026). Whole MLP
784-512-512-10 BP steps at batch 64 with these products and :mod:`.optim`'s SGD (``python -m
minigrad_pfa.bench.kernels --model mlp --batch 64 --rounds 4 --steps 50 --no-ops``): 1 thread
NumPy 6.9 ms, Numba 6.0 ms; 2 threads 7.0 against 4.2 ms (1.65x).
"""
from __future__ import annotations

import functools

import numpy as np

from ..cpu.threads import GEMM_MACS_PER_ELEMENT, GEMM_MIN_ROWS, num_shards
from . import blas, parallel


#: the dtype whose products are cut into compiled shards (see "Same numbers")
DTYPE = np.dtype(np.float32)


def _make_kernels(gemm, dtype):
    """The piece and its two drivers (columns, rows) compiled around one BLAS ``gemm``."""
    import numba

    TR = blas.TRANS

    @numba.njit(nogil=True)
    def piece(ta, tb, m, p, k, A, lda, B, ldb, C, ldc):
        # row-major C (m, p) = op(A) @ op(B) is column-major C.T = op(B).T @ op(A).T
        ints = np.array([p, m, k, ldb, lda, ldc], np.int32)
        one = np.ones(1, dtype)
        zero = np.zeros(1, dtype)
        gemm(TR[tb:].ctypes, TR[ta:].ctypes, ints[0:].ctypes, ints[1:].ctypes,
             ints[2:].ctypes, one.ctypes, B.ctypes, ints[3:].ctypes, A.ctypes,
             ints[4:].ctypes, zero.ctypes, C.ctypes, ints[5:].ctypes)

    @numba.njit(nogil=True, parallel=True)
    def cols(A, B, C, ta, lda, tb, ldb, ldc, bounds):
        """C[:, f] = A @ B[:, f] for the column shards f of ``bounds``."""
        for s in numba.prange(bounds.shape[0] - 1):
            f0, f1 = bounds[s], bounds[s + 1]
            piece(ta, tb, C.shape[0], f1 - f0, A.shape[1], A, lda, B[:, f0:f1], ldb,
                  C[:, f0:f1], ldc)

    @numba.njit(nogil=True, parallel=True)
    def rows(A, B, C, ta, lda, tb, ldb, ldc, bounds):
        """C[f] = A[f] @ B for the row shards f of ``bounds``."""
        for s in numba.prange(bounds.shape[0] - 1):
            f0, f1 = bounds[s], bounds[s + 1]
            piece(ta, tb, f1 - f0, C.shape[1], A.shape[1], A[f0:f1], lda, B, ldb,
                  C[f0:f1], ldc)

    return cols, rows


@functools.cache
def _kernels(dtype):
    """(cols, rows) drivers for float32 or float64, compiled once per process."""
    return _make_kernels(blas.gemm(dtype), np.dtype(dtype))


def _operand(X):
    """(trans, ld) of a 2-D operand X (r, c) for :func:`_make_kernels`' piece: 0 and its row
    stride when its rows are contiguous, 1 and its column stride when its columns are (a
    transposed view, read in place), None otherwise (the caller takes NumPy's path)."""
    item = X.itemsize
    r, c = X.shape
    s0, s1 = X.strides
    if (s1 == item or c == 1) and s0 % item == 0 and s0 // item >= max(1, c):
        return 0, max(1, s0 // item)
    if (s0 == item or r == 1) and s1 % item == 0 and s1 // item >= max(1, r):
        return 1, max(1, s1 // item)
    return None


def shards(n: int, features: int, macs: int, dtype) -> int:
    """S shards of a product's ``features`` on Numba's threads, or 0 when it stays on the
    NumPy path: one engine thread, inside a pool shard or task, fewer than 2 shards by the
    pool's rule with the whole work (``num_shards`` of ``macs`` / ``GEMM_MACS_PER_ELEMENT``,
    :data:`GEMM_MIN_ROWS` features each), a batch under :data:`GEMM_MIN_ROWS` rows (NumPy's
    matrix-vector path rounds otherwise), a dtype other than :data:`DTYPE`, or no thread-safe
    threading layer."""
    if n < GEMM_MIN_ROWS or np.dtype(dtype) != DTYPE:
        return 0
    s = num_shards(features, macs // GEMM_MACS_PER_ELEMENT, gemm_rows=1)
    if s < 2:
        return 0
    s = min(s, parallel.max_threads())
    return s if s >= 2 else 0


def _bounds(size: int, s: int, align: int = GEMM_MIN_ROWS) -> np.ndarray:
    """a_0 = 0 < a_1 < ... < a_S = size: S near-equal pieces cut at multiples of ``align``
    (the cuts ``python -m minigrad_pfa.bench.pieces`` checked); fewer if ``size`` is short."""
    cuts = sorted({(k * size // s) // align * align for k in range(1, s)} - {0})
    return np.array([0] + [c for c in cuts if c < size] + [size], dtype=np.int64)


def matmul(A, B, split: str, s: int):
    """``A @ B`` (m, p) in ``s`` shards of its columns (``split="cols"``) or rows ("rows"),
    one GEMM each on Numba's threads; C-contiguous like NumPy's result. None (the caller
    takes NumPy's path) when an operand has no BLAS layout (neither its rows nor its columns
    contiguous) and for a result of one row or column."""
    a, b = _operand(A), _operand(B)
    m, p = A.shape[0], B.shape[1]
    # NumPy takes gemv for a one-row or one-column result, which rounds differently from
    # gemm pieces
    if a is None or b is None or A.dtype != B.dtype or m == 1 or p == 1 or \
            max(m, p, A.shape[1], a[1], b[1]) >= 2 ** 31:  # SciPy's BLAS takes 32-bit ints
        return None
    C = np.empty((m, p), dtype=A.dtype)
    cols, rows = _kernels(A.dtype)
    parallel.use_threads(s)
    bounds = _bounds(p if split == "cols" else m, s)
    (cols if split == "cols" else rows)(A, B, C, a[0], a[1], b[0], b[1], max(1, p), bounds)
    return C
