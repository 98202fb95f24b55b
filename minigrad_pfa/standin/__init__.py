"""A strict CPU stand-in for CuPy, for TESTS ONLY (never a fallback for users).

Why it exists: these machines have no GPU, yet ``--device cuda`` must work the first time
it meets one. The stand-in runs the *same* engine code paths as a CuPy run, on NumPy data,
while enforcing the rules that make GPU code differ from CPU code.

Notation and rules (``D`` a stand-in device array, ``H`` a host ``numpy.ndarray``)
--------------------------------------------------------------------------------
    D.data   = a private ``numpy.ndarray`` (never handed out without an explicit crossing)
    xp       = :mod:`minigrad_pfa.standin.cupy` (what ``get_array_module(D)`` returns)

    allowed                              as in CuPy
        D op D, D op scalar, xp.f(D, ...)  results are D; reductions give 0-d D, not scalars
        xp.asarray(H), to_device(H)        host -> device transfer (counted as h2d)
    raises TypeError                     as in CuPy
        numpy.asarray(D), numpy.f(D)       implicit device -> host conversion
        D op H, H op D, xp.f(H), D[H]      a host array inside a device operation
        xp.<name> CuPy does not have       (checked against the installed ``cupy`` module)
    counted as one host synchronisation  (:data:`counters`.syncs)
        D.get(), xp.asnumpy(D), float(D), int(D), bool(D), D.item(), D.tolist(),
        operator.index(D), repr(D)

Switching it on (test-only): the pytest fixture ``standin`` (tests/conftest.py) or the
environment variable ``MINIGRAD_PFA_CUPY_STANDIN=1``. While it is on, ``--device cuda``
resolves to the stand-in and :func:`minigrad_pfa.backend.device_description` says so on
every run; see :mod:`minigrad_pfa.backend`.

Stricter than CuPy on purpose: CuPy forwards some NumPy calls on its arrays to its own
functions (``__array_function__`` / ``__array_ufunc__``, e.g. ``numpy.shape(D)``); the
stand-in refuses every one, so engine code names ``xp.<f>`` explicitly and never depends
on which NumPy functions a CuPy version happens to forward.

What it cannot check: CUDA C kernels (``ElementwiseKernel`` / ``ReductionKernel`` raise
here; the engine's fused paths use ``cupy.fuse`` on Python functions instead, which the
stand-in runs eagerly), asynchrony and stream ordering, and GPU rounding (cuBLAS / TF32).
"""
from .core import DeviceArray, HostSyncCounter, counters, count_syncs

__all__ = ["DeviceArray", "HostSyncCounter", "counters", "count_syncs"]
