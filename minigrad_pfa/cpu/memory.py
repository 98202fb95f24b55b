"""Keep freed memory in the process (glibc): large temporaries without page faults.

A training step allocates and frees the same large arrays every step (activations, BN
and ReLU outputs, input errors, per-shard im2col buffers). glibc serves an allocation
above ``M_MMAP_THRESHOLD`` with a fresh ``mmap`` and gives freed heap tops back to the OS
above ``M_TRIM_THRESHOLD``, so each step the kernel faults in and zeroes those pages
again: about 20 000 page faults and 0.2-1 s of system time per ResNet-20 batch-128 step
on this machine (``minigrad-pfa bench --proposals``, variant ``malloc-keep``). With

    mallopt(M_MMAP_THRESHOLD, 1 GiB)        large arrays come from the heap
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)    freed heap memory stays in the process

the step reuses its own pages: measured (ResNet-20 BP, batch 128, CPU time, loaded
2-core box) 0.90 -> 0.80 s and 0.98 -> 0.83 s on one thread, 0.46 -> 0.42 s on the
calling thread of two. The resident size then stays at its peak instead of shrinking
between steps (the peak itself does not grow).

Other C libraries (musl, macOS) have no ``mallopt`` thresholds: there this is a no-op
that says so in its return value (a speed setting, not a result).
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's <malloc.h>
_done = {"applied": None}


def keep_freed_memory() -> bool:
    """Apply the two thresholds once per process; True where glibc accepted them."""
    if _done["applied"] is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            _done["applied"] = False
        else:
            # mallopt takes a C int: 2**31 - 1 is the largest trim threshold it accepts
            _done["applied"] = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) and
                                    mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return _done["applied"]
