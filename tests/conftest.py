"""Shared pytest fixtures: backends (NumPy always; CuPy only where a device exists).

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

BACKENDS = ["numpy", pytest.param("cupy", marks=pytest.mark.skipif(
    not cuda_available(), reason="CuPy with a CUDA device is required for the GPU backend"))]


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array module under test: numpy, or cupy when a GPU is present (skipped otherwise)."""
    if request.param == "numpy":
        return np
    import cupy
    return cupy


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
