"""CPU-only parallel execution of the engine's step (batch shards on a thread pool).

:mod:`.threads` holds the setting (``set_threads``), the pool and the shard helpers; the
sharded operations live next to their serial reference (conv's sample chunks) or here
(:mod:`.batchnorm`, :mod:`.elementwise`), dispatched only for NumPy arrays, so CuPy and
the device-agnostic reference code never see them. :mod:`.overlap` lets a weight layer's
parameter gradients run on a worker beside the rest of the backward pass.
"""
from .threads import (THREADS_ENV, block_bounds, default_threads, get_threads, is_sharded,
                      map_shards, set_threads, sum_blocks, usable_cores, using_threads)

__all__ = ["THREADS_ENV", "block_bounds", "default_threads", "get_threads", "is_sharded",
           "map_shards", "set_threads", "sum_blocks", "usable_cores", "using_threads"]
