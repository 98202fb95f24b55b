"""Shared pytest fixtures: backends (NumPy and the CuPy stand-in always; CuPy only where a
device exists).

BLAS runs single-threaded in the tests: they check correctness on small arrays, where a
multi-threaded BLAS mostly spins (and on a loaded 2-core machine runs many times slower).
This must happen before NumPy is first imported.
"""
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from minigrad_pfa.backend import cuda_available  # noqa: E402

BACKENDS = ["numpy", "standin", pytest.param("cupy", marks=pytest.mark.skipif(
    not cuda_available(), reason="CuPy with a CUDA device is required for the GPU backend"))]


@pytest.fixture
def standin():
    """The strict CPU stand-in of CuPy switched on for one test: ``"cuda"`` means it
    (minigrad_pfa.standin); yields its array module."""
    from minigrad_pfa.backend import use_standin
    from minigrad_pfa.standin import cupy as standin_cupy
    before = use_standin(True)
    try:
        yield standin_cupy
    finally:
        use_standin(before)


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array module under test: numpy; the CuPy stand-in (``"cuda"`` is the stand-in for
    the test); cupy when a GPU is present (skipped otherwise)."""
    if request.param == "numpy":
        yield np
    elif request.param == "standin":
        yield request.getfixturevalue("standin")
    else:
        import cupy
        yield cupy


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
