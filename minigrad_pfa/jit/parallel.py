"""Numba's own threads for a compiled region: the threading layer and the thread count.

Notation as in :mod:`minigrad_pfa.cpu.threads`: T the engine's threads, S the shards of one
operation (``num_shards``). A compiled region is one call of a ``parallel=True`` function
whose ``prange`` loop runs one shard per iteration, with Numba's thread count set to S::

    for k in prange(S):  kernel(..., a_k, a_{k+1})        (static schedule: S threads)

Why Numba's threads and not the engine's pool, for some regions. The pool's helpers sleep
between regions (a Python thread polling for work would hold the interpreter lock,
:mod:`minigrad_pfa.cpu.threads` "Why the helpers sleep"), so every region pays a wake-up:
on the Intel Xeon VM (2 vCPUs, December 2026, ``python -m minigrad_pfa.bench.dispatch``) a
region of two 221 us shards took 610 us back to back and 1243 us after 1 ms idle. Numba's
OpenMP layer (GNU libgomp) runs a region on C workers that spin a while afterwards without
any lock: two shards of 300 k square roots took 624 us against 612 us for one alone,
749 us after 1 ms idle. That is worth it where a step is a chain of short regions with
nothing else between them: an MLP's GEMMs (:mod:`.linear`).

Where it was not worth it: the ResNet kernels (:mod:`.batchnorm`, :mod:`.conv`) driven
the same way gave the same bits but no faster steps, because their regions alternate with
NumPy operations on the engine's pool (ReLU, residual additions, strided convolutions) and
a spinning OpenMP worker holds the core the pool's helper wakes up on (ResNet-20 BP on
2 threads, Numba's threads and the pool alternating in one process, pool / Numba time per
round: batch 128 0.64-0.92, batch 32 0.78-1.70; ``OMP_WAIT_POLICY=passive`` 0.91-1.15;
15-35 % of the VM's time stolen by its host meanwhile; again once the batch-norm loops were
vectorised: batch 128 0.73-1.26, batch 32 0.79-0.98. The drivers were a prototype, not kept).

Threading layer. Regions can start from two Python threads at once (a deferred gradient
task of :mod:`minigrad_pfa.cpu.overlap` beside the main thread); Numba's ``workqueue``
layer aborts the process on that, so the layer must be ``threadsafe`` (OpenMP or TBB).
When neither loads, :func:`layer` is None and the callers keep the NumPy path (same
numbers), with a warning that names the fix. GNU OpenMP is not fork-safe: a process that
forks after a compiled region must not run one in the child (the engine's runs fork
nothing; ``bench.dispatch``'s forked workers run NumPy convolutions only).
"""
from __future__ import annotations

import functools
import os
import threading
import warnings

import numpy as np

#: what to install when Numba finds no thread-safe threading layer
LAYER_HINT = "pip install tbb (or install GNU OpenMP, libgomp1)"

_local = threading.local()


@functools.cache
def layer() -> str | None:
    """Numba's threading layer for compiled regions ("omp" or "tbb"), or None (warned once)."""
    import numba

    if not os.environ.get("NUMBA_THREADING_LAYER"):
        numba.config.THREADING_LAYER = "threadsafe"

    @numba.njit(parallel=True)
    def probe(a):
        for i in numba.prange(a.shape[0]):
            a[i] += 1.0

    try:
        probe(np.zeros(2))
        name = numba.threading_layer()
    except (ValueError, RuntimeError) as exc:  # no layer could be loaded
        warnings.warn(f"Numba has no thread-safe threading layer ({exc}); the compiled "
                      f"regions stay off and those operations take the NumPy path: "
                      f"{LAYER_HINT}", RuntimeWarning)
        return None
    if name not in ("omp", "tbb"):
        warnings.warn(f"Numba's threading layer is {name!r}, which is not thread-safe; the "
                      f"compiled regions stay off: unset NUMBA_THREADING_LAYER or "
                      f"{LAYER_HINT}", RuntimeWarning)
        return None
    return name


def max_threads() -> int:
    """Most threads a region can have: Numba's pool size (``NUMBA_NUM_THREADS``, the cores
    at import unless set), 1 without a thread-safe layer."""
    if layer() is None:
        return 1
    import numba
    return int(numba.config.NUMBA_NUM_THREADS)


#: smallest work of one shard of a compiled elementwise region, in elements: a region costs
#: 5-26 us to start on Numba's OpenMP threads (above), a pass over 32 Ki float32 elements
#: about 10-20 us here, so a shard carries at least that much (the engine's pool needs
#: eight times more, :data:`minigrad_pfa.cpu.threads.MIN_ELEMENTS`)
MIN_ELEMENTS = 1 << 15


def num_shards(n: int, elements: int) -> int:
    """Shards of a compiled elementwise region over ``n`` items with ``elements`` of work: the
    pool's rule (:func:`minigrad_pfa.cpu.threads.num_shards`: 1 with one engine thread or
    inside a pool shard or task, whose thread must not start a team) with
    :data:`MIN_ELEMENTS`, and at most Numba's threads."""
    from ..cpu.threads import num_shards as pool_shards
    s = pool_shards(n, elements, min_elements=MIN_ELEMENTS)
    return s if s == 1 else min(s, max_threads())


def use_threads(threads: int) -> None:
    """Numba's thread count for regions started by this Python thread (it is per thread in
    Numba; cached here, since setting it costs ~5 us)."""
    if getattr(_local, "threads", None) != threads:
        import numba
        numba.set_num_threads(threads)
        _local.threads = threads


def bounds_array(slices: list) -> np.ndarray:
    """Contiguous slices s_0 .. s_{k-1} as [s_0.start, s_0.stop, s_1.stop, ...] (int64)."""
    return np.array([slices[0].start] + [s.stop for s in slices], dtype=np.int64)
