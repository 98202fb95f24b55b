"""Compiled CPU kernels (Numba): the engine's memory-bound passes in one loop each.

An optional extra, ``pip install 'minigrad_pfa[jit]'``, chosen per run: ``train --cpu-kernels
numba`` (also ``grid``, ``bench``), ``$MINIGRAD_PFA_CPU_KERNELS=numba`` or
:func:`set_cpu_kernels`. The default, ``numpy``, is the engine's own NumPy code, which every
published number of this project used; choosing ``numba`` without Numba installed is an
error that names the install command (never a silent fallback to NumPy).

Why: NumPy applies a formula as a chain of ufuncs, one pass over memory and one GIL turn
each; a batch-norm training step (:mod:`.batchnorm`) is five such passes forward and five
backward, and with several engine threads (:mod:`minigrad_pfa.cpu.threads`) every call
between two NumPy operations is a hand-off of the interpreter lock. A Numba function
compiled with ``nogil=True`` does the whole formula for a shard in one loop without the
lock, so T threads run T shards at memory speed.

Same numbers with any thread count, as on the NumPy path: sums over the batch are cut into
the blocks of :func:`minigrad_pfa.cpu.threads.block_bounds` (fixed by the batch and the work,
never by T) and added in block order; the elementwise maps run in row shards. The kernels
are *not* the NumPy path's bits (they accumulate in float64 and keep other temporaries):
tests compare the two to a tolerance and each with itself across thread counts.

Where: only NumPy arrays (CuPy has its own fused kernels, :mod:`minigrad_pfa.functional.fused`).
What is compiled: the training batch norm (:mod:`.batchnorm`), with a ReLU after it (and a
ResNet block's residual sum before that ReLU) in its output pass and the ReLU's mask read in
its backward passes when the layers come in that order (``nn.layers._BatchNorm.forward_relu``,
the same bits as the layers one by one); ReLU forward and backward
(:mod:`.activation`, one pass each, NumPy's bits); the stride-1 convolutions
with a kernel wider than 1x1 (:mod:`.conv`: forward, the input error that is a forward of
the error, the weight gradient), where per sample the row taps are built in cache and handed
to BLAS's GEMM (:mod:`.blas`), accumulating over the kernel rows in the result, all in one
call per shard without the lock; the folded input errors (strided layers, errors with more
channels than the input: one GEMM per sample and the fold in the NumPy path's order,
:mod:`.conv`); the fully connected layers' float32 GEMMs in feature shards (:mod:`.linear`)
and SGD's update chain in one pass (:mod:`.optim`), these two on Numba's own threads
(:mod:`.parallel`), whose hand-off is cheaper than the engine pool's. Everything else (the
forward and weight gradient of strided and 1x1 convolutions, the literal col2im input error,
pooling, the rules' channel products, other optimizers) runs the NumPy path. ``python -m
minigrad_pfa.bench.kernels`` times both choices side by side (interleaved rounds in one
process), for whole steps (``--model resnet20`` or ``mlp``) and for ResNet-20's batch norms
and convolutions alone; ``bench --cpu-kernels numba`` runs the whole benchmark with them.

Loops index arrays counted from 0 (rows sliced first): Numba cannot vectorise a loop whose
index might be negative, because of the wrap-around test. ``python -m
minigrad_pfa.bench.kernels`` (one thread, Intel Xeon VM): the batch norm's forward + backward
ran 1.2-1.6x NumPy's with ``range(lo, hi)`` loops (commit c5ef49a) and 1.8-2.0x over sliced
rows; SGD's compiled step, written that way from the start, 1.9x NumPy's chain on 401 408
parameters.

Tried and not adopted (Intel Xeon VM, 2 vCPUs, December 2026; one thread unless said):

* im2col's gather compiled alone (zero padding and windows in one pass from x, into a
  whole chunk's ``col``, then NumPy's GEMM): bit-identical, but slower -- ResNet-20's chunk
  windows at batch 128 took 30.0 / 11.8 / 5.2 ms against NumPy's 10.9 / 6.3 / 3.2 ms for
  16 / 32 / 64 channels. What :mod:`.conv` does instead -- one sample's row taps, in cache,
  and the GEMMs in the same compiled call -- is faster (its module docstring).
* oneMKL's sgemm through ctypes for the convolutions' skinny GEMMs (what PyTorch uses):
  1.3-1.9x OpenBLAS on (8192, 48 | 144, 16) and (2048, 576, 64) in one run, 0.7-1.2x in an
  interleaved rerun, and a ResNet-20 batch-128 step on 2 threads took 1.19x as long as with
  OpenBLAS (1.25 s against 1.05 s, the medians of 3 interleaved rounds): no gain that
  this VM's noise could confirm, for a 229 MB dependency.
* The batch norm and convolution kernels on Numba's threads (``prange`` drivers over the
  same shards and blocks, :mod:`.parallel`): the same bits, but no faster ResNet-20 steps on
  2 threads (see :mod:`.parallel` for the figures): their regions alternate with NumPy
  operations on the engine's pool, whose helper then competes with a spinning OpenMP worker.
* The row taps copied through (kw, c) views of the taps buffer: 3.4x slower than indexing
  the buffer directly (27 against 92 us per sample at 16 channels, 32 x 32).
* The batch norm's sums over positions with several positions added before each update of
  the (c,) float64 accumulator (which Numba keeps in memory, so each update waits for the
  previous store): the statistics and error-sum passes alone ran 1.0-1.3x (up to 2x) as
  fast at 16-64 channels, batch 128, one thread, but ResNet-20 BP steps at batch 128 in
  one process, 8 interleaved rounds each, gave 0.94x and 0.99x the time on 2 threads and
  1.01x and 1.04x on 1: no gain a step shows, for two loops' remainder handling.
* The row taps copied as one run of kw*c values where a window lies inside the row (through a
  row view, or a flat view with slice assignment) instead of kw runs of c values: 0.4-0.6x
  and 0.25-0.3x the speed at 16-64 channels (batch 128, 3x3, one thread); the taps of the
  16-channel layers take 2.0-2.2 ms of a 9 ms forward there, the GEMMs the rest. The taps
  compiled with the channel count as a constant (a closure per count): 4.6-5x faster for the
  stem's 3 channels (about 0.5 % of a ResNet-20 step), 0.6-1.2x at 16-64 channels.
* A strided layer's forward and weight gradient as compiled sample loops (each sample's whole
  im2col built in cache, one GEMM of its oh*ow rows): ResNet-20's two stride-2 layers at
  batch 128 ran 0.99-1.40x NumPy's chunked path forward and 0.80-1.17x for the weight
  gradient, in two interleaved rounds at 1 and 2 threads (the NumPy path's GEMM covers a
  chunk of samples, 4-16x more rows per call). Their folded input error is compiled
  (:mod:`.conv`).
* The 16-channel layers (ResNet-20's first stage, where OpenBLAS's GEMMs with 16 output
  columns run at half its peak: it packs the whole taps slab for so few columns) as direct
  convolutions in a register-blocked Numba kernel with no taps and no BLAS: the source
  generated for R output positions x 16 channels held in scalar locals (R = 4, 8, 16), the
  sample padded once into a row buffer, the weight gradient blocked over 4-16 taps the same
  way. Numba keeps such locals in registers only with its SLP vectoriser on
  (``NUMBA_SLP_VECTORIZE=1``; without it, scalar FMAs at 3-6 GFLOP/s), which Numba turns
  off by default because of LLVM miscompilations (numba#8852), and then emits a clean
  micro-kernel (8 broadcasts, 2 weight loads, 16 FMAs per tap; zmm registers with
  ``-prefer-256-bit`` in ``NUMBA_CPU_FEATURES``). One sample's forward alone ran 50-60
  GFLOP/s against 45-72 for OpenBLAS's GEMM without its taps, but the layer at batch 128 (one
  thread, three rounds in one process) took 11.5-11.8 ms forward against the row-tap path's
  9.9-13.2 ms, and 10.8-11.5 ms for the weight gradient against 8.2-10.3 ms (R = 8; 4 and 16
  were slower): no gain, for a compiler switch its authors disabled.
* The batch norm's per-row moments with one scalar local per channel instead of the (c,)
  accumulator arrays (generated for c = 16, 32, 64; the same bits, the additions in the same
  order): 0.54x the speed at 16 channels and 0.37x at 32 and 64 (batch 128, one thread):
  without the SLP vectoriser each channel is a scalar chain, where the array form vectorises
  across channels.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

#: environment variable with a run's default CPU kernels ("numpy" or "numba")
CPU_KERNELS_ENV = "MINIGRAD_PFA_CPU_KERNELS"

#: the choices, the default first
CHOICES = ("numpy", "numba")

#: what to run when Numba is missing
INSTALL_HINT = "pip install 'minigrad_pfa[jit]' (or: pip install numba)"

_state = {"name": None}


def check_cpu_kernels(name, what: str = "cpu kernels") -> str:
    """``name`` if it is one of :data:`CHOICES` whose package imports, else a clear error.

    Raises
    ------
    ValueError
        An unknown name.
    ImportError
        ``"numba"`` without Numba installed (the message names the install command).
    """
    if name not in CHOICES:
        raise ValueError(f"{what} must be one of {', '.join(CHOICES)}; got {name!r}")
    if name == "numba":
        try:
            import numba  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"{what} 'numba' needs Numba, which is not installed: "
                              f"{INSTALL_HINT}") from exc
    return name


def get_cpu_kernels() -> str:
    """The CPU kernels in use: the last :func:`set_cpu_kernels`, else
    ``$MINIGRAD_PFA_CPU_KERNELS``, else ``"numpy"``."""
    if _state["name"] is None:
        env = os.environ.get(CPU_KERNELS_ENV, "").strip()
        _state["name"] = check_cpu_kernels(env, f"${CPU_KERNELS_ENV}") if env else "numpy"
    return _state["name"]


def set_cpu_kernels(name: str) -> str:
    """Use ``name`` ("numpy" or "numba") for the CPU step from now on; returns the previous."""
    prev = get_cpu_kernels()
    _state["name"] = check_cpu_kernels(name)
    return prev


@contextmanager
def using_cpu_kernels(name: str | None):
    """``with using_cpu_kernels("numba"):`` for one block (None: leave the setting)."""
    if name is None:
        yield
        return
    prev = set_cpu_kernels(name)
    try:
        yield
    finally:
        _state["name"] = prev


def active(xp) -> bool:
    """True when NumPy arrays (``xp``) go through the compiled kernels."""
    return xp.__name__ == "numpy" and get_cpu_kernels() == "numba"
