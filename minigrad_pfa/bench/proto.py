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

``spin-pool``
    The engine's pool helpers poll for work for 2 ms before they sleep
    (:mod:`.spinpool`), as PyTorch's OpenMP workers do, instead of sleeping at once.
    Measured slower in a quick run (1.12-1.15x the engine's step on 2 threads), within the
    noise of a full one (the reason it cannot win is in
    :mod:`minigrad_pfa.cpu.threads`, "Why the helpers sleep"): not adopted, kept so that
    the finding can be rerun on another machine.

Adopted (moved into the engine, deleted here): ``chunked-conv``, the sample-chunked
im2col + GEMM of :mod:`minigrad_pfa.functional.conv` (its default on the CPU).
"""
from __future__ import annotations

VARIANTS = ("malloc-keep", "spin-pool")


def malloc_keep() -> None:
    """Keep freed memory in the process (glibc only; see the module docstring).

    Adopted by the engine (:mod:`minigrad_pfa.cpu.memory`, applied by ``set_threads``, so
    by every engine worker of the benchmark): this variant now measures the engine as it
    is and stays only as the ``--proposals`` plumbing's example."""
    from ..cpu.memory import keep_freed_memory
    if not keep_freed_memory():
        raise RuntimeError("mallopt refused the thresholds (not glibc?)")


def apply_variants(names) -> None:
    """Apply the named variants to this process (before the model is built)."""
    for name in names or ():
        if name == "malloc-keep":
            malloc_keep()
        elif name == "spin-pool":
            from .spinpool import use_spinning_pool
            use_spinning_pool()
        else:
            raise ValueError(f"unknown variant {name!r}; expected one of {VARIANTS}")
