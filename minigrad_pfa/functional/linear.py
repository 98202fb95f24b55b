"""Fully connected layer maths (row / batch form, PyTorch layout).

Notation
--------
n : batch size, in : input features, out : output features.
x (n, in), W (out, in), b (out,), y (n, out), delta = dL/dy (n, out).

    forward          y        = x @ W.T + b
    input error      delta_in = delta @ M         (M = W for BP; the rule chooses M)
    weight gradient  gW       = delta.T @ x       gb = delta.sum(0)
"""
from __future__ import annotations

from ..backend import get_array_module
from ..cpu import elementwise as _cpu
from ..cpu.threads import GEMM_MACS_PER_ELEMENT, GEMM_MIN_ROWS, is_sharded
from ..jit import active as _jit_active
from ..jit import linear as _jit_linear  # Numba is imported on first use

#: a feature shard of a linear GEMM (and a deferred parameter-gradient task of a linear
#: layer, :mod:`minigrad_pfa.cpu.overlap`) needs this many times the pool's smallest work
#: (:data:`minigrad_pfa.cpu.threads.MIN_ELEMENTS`, 4.2 M multiply-adds): 33.5 M, about 1 ms
#: of one core. An MLP step is a few such GEMMs with little else, so each region's hand-off
#: falls on a helper whose virtual CPU has halted meanwhile (0.3-1 ms on these VMs,
#: ``python -m minigrad_pfa.bench.dispatch``). Measured on the Intel Xeon VM, 2 threads,
#: wall-clock medians of 4 interleaved rounds (each configuration in its own process):
#: MLP 784-512-512-10 BP at batch 64 took 12.4 / 8.7 / 6.9 ms with divisor 1 / 4 / 8 against
#: 6.4 ms on one thread (at 8 none of its GEMMs is cut: it runs as on one thread); PFA
#: (r = 10), whose feedback GEMMs are 10x larger, 94 ms with divisor 1, 63 ms with 8, 66 ms
#: on one thread. ResNets are not affected: their only linear layer is 64 x 10.
WORK_DIVISOR = 8


def work(macs: int) -> int:
    """A linear GEMM's work for the shard rule: multiply-adds / (``GEMM_MACS_PER_ELEMENT``
    x :data:`WORK_DIVISOR`)."""
    return int(macs) // GEMM_MACS_PER_ELEMENT // WORK_DIVISOR


def _shard_work(xp, n: int, features: int, macs: int):
    """The GEMM's work (:func:`work`) when it runs in feature shards (NumPy, several engine
    threads, enough work: :mod:`minigrad_pfa.cpu`), else None (one serial GEMM)."""
    work_ = work(macs)
    # a batch under GEMM_MIN_ROWS rows stays serial: with n = 1 NumPy takes a matrix-vector
    # product, whose rounding was measured to change when it is split
    sharded = n >= GEMM_MIN_ROWS and is_sharded(xp, features, work_, gemm_rows=1)
    return work_ if sharded else None


# Sharded (several CPU threads): each thread computes a block of *features* of the result,
# reading the whole (small) batch, so no partial sums: ``y = x @ W.T`` by rows of W,
# ``delta_in = delta @ M`` by columns of M (each shard writes its columns of one C-ordered
# result: the serial orientation and layout, so the layers after see the same arrays on any
# number of threads), ``gW = delta.T @ x`` by rows of gW. Measured on the
# MLP 784-512-512-10 at batch 64, batch shards of 32 rows plus the weight gradients'
# partial sums cost more than they saved (2 threads: 7.7 ms of CPU, 4.9 ms on the calling
# thread vs 4.7 ms serial); feature shards too, unless large (WORK_DIVISOR). Under
# ``--cpu-kernels numba`` the same feature shards run on Numba's threads (jit.linear), whose
# hand-off is cheap enough for the whole work.
def _product(A, B, split: str, n: int, macs: int):
    """``A @ B`` (2-D, batch ``n``) in feature shards of its columns (``split="cols"``) or
    rows ("rows"): compiled, on the engine's pool, or one serial GEMM."""
    xp = get_array_module(A)
    features = B.shape[1] if split == "cols" else A.shape[0]
    if _jit_active(xp) and A.ndim == 2:
        s = _jit_linear.shards(n, features, macs, A.dtype)
        C = _jit_linear.matmul(A, B, split, s) if s else None
        if C is not None:
            return C
    work_ = _shard_work(xp, n, features, macs) if A.ndim == 2 else None
    if work_ is None:
        return A @ B
    return (_cpu.matmul_cols if split == "cols" else _cpu.matmul_rows)(A, B, work_)


def linear_forward(x, W, b=None):
    """``y = x @ W.T + b``; x (n, in), W (out, in), b (out,) or None -> y (n, out)."""
    y = _product(x, W.T, "cols", x.shape[0], x.size * W.shape[0])
    if b is not None:
        y += b
    return y


def linear_input_error(delta, M):
    """``delta_in = delta @ M``; delta (n, out'), M (out', in) -> (n, in)."""
    return _product(delta, M, "cols", delta.shape[0], delta.size * M.shape[1])


def linear_weight_grad(delta, x):
    """``gW = delta.T @ x``; delta (n, out'), x (n, in) -> (out', in)."""
    return _product(delta.T, x, "rows", delta.shape[0], delta.size * x.shape[1])


def linear_bias_grad(delta):
    """``gb = delta.sum(0)``; delta (n, out) -> (out,)."""
    return delta.sum(axis=0)
