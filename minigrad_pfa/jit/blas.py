"""BLAS's GEMM as a C function that compiled code calls without the GIL.

SciPy exports its BLAS (``scipy.linalg.cython_blas``) as C function pointers, which Numba
calls through ctypes from ``nogil`` functions. It is SciPy's own library, not NumPy's: on the
PyPI wheels both are OpenBLAS builds (here SciPy's 0.3.30 with 32-bit indices beside NumPy's
0.3.31 with 64-bit ones, the same SkylakeX kernels), and where a compiled path promises
NumPy's bits (:mod:`.linear`) the tests compare the two on the installed pair; another pair
(a conda or MKL NumPy) may round differently, which tests/test_jit_linear.py would show.
The Fortran interface takes every argument by pointer::

    gemm(transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)
    C (m, n) = alpha * op(A) @ op(B) + beta * C            (column-major, op: 'N' or 'T')

A C-ordered (r, k) matrix is its (k, r) transpose to column-major BLAS, so a row-major
``C = op(A) @ op(B)`` is the column-major ``C.T = op(B).T @ op(A).T``: the callers pass B
before A (:mod:`.conv`, :mod:`.linear`).

The library is held to one thread like NumPy's (:func:`minigrad_pfa.cpu.threads.set_threads`
limits every loaded BLAS; loading SciPy's here re-applies the limit): the engine's threads
and Numba's are the parallelism, each GEMM one thread's.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np

from ..cpu.threads import reapply_blas_limit

#: dtypes with a compiled GEMM (BLAS's s- and d-gemm); others stay on the NumPy path
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: the transpose flags as bytes: ``TRANS[0:]`` points at 'N', ``TRANS[1:]`` at 'T'
TRANS = np.frombuffer(b"NT", dtype=np.uint8)


@functools.cache
def gemm(dtype):
    """SciPy's ``sgemm`` (float32) or ``dgemm`` (float64) as a ctypes function of 13
    pointers, callable from Numba's nopython code; the BLAS held to one thread."""
    from numba.extending import get_cython_function_address

    name = {np.dtype(np.float32): "sgemm", np.dtype(np.float64): "dgemm"}[np.dtype(dtype)]
    vp = ctypes.c_void_p
    fn = ctypes.CFUNCTYPE(None, *[vp] * 13)(
        get_cython_function_address("scipy.linalg.cython_blas", name))
    reapply_blas_limit()  # SciPy's BLAS may have loaded after the engine limited the others
    return fn


def supports(dtype) -> bool:
    """True when arrays of ``dtype`` have a compiled GEMM (float32, float64)."""
    return np.dtype(dtype) in DTYPES
