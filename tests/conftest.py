"""Shared pytest fixtures: backends (NumPy always; CuPy only where a device exists)."""
import numpy as np
import pytest

from minigrad_pfa.backend import cuda_available

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
