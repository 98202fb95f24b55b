"""The engine's CPU threads: one setting, a shared worker pool and batch shards.

Notation
--------
T : the engine's threads (``set_threads``), n : rows of an array's first (batch) axis,
E : the operation's work in elements (array elements it passes over; a GEMM's
    multiply-adds / :data:`GEMM_MACS_PER_ELEMENT`), when the caller gives it,
S = min(T, n // min_rows, E // min_elements) : shards of one operation,
shard k : rows [a_k, a_{k+1}),
B = min(MAX_BLOCKS, n // min_rows, E // min_elements) : blocks of a sum over the batch
    (no T in it), block b : rows [a_b, a_{b+1}).

Model of the parallel step. NumPy releases the GIL inside array operations (ufunc loops,
copies, reductions, BLAS calls), so T Python threads that each apply NumPy operations to
their own shard of the batch run on T cores. Every operation of the CPU step that is
worth it splits its batch axis into S contiguous shards, runs ``fn(shard)`` for each (the
calling thread and S - 1 pool helpers pull the next untaken shard; a helper still queued
when the calling thread has taken them all is cancelled, so an operation never waits
behind a deferred task of :mod:`.overlap`) and either writes disjoint rows of one output
or, for a sum over the batch, computes the partial sums of fixed blocks (below)::

    rows   y[a_k:a_{k+1}] = f(x[a_k:a_{k+1}])                  (forward, input errors, ReLU)
    sums   g = sum_b g_b,  g_b = sum over rows in block b      (weight gradients, BN stats)

With T > 1 BLAS is set to one thread (threadpoolctl): the shards are the parallelism, and
T single-threaded GEMMs on disjoint rows do not wait on each other the way one multi-
threaded OpenBLAS call does for its spinning helpers (measured on this 2-core shared box:
a ResNet-20 BP step with 2 OpenBLAS threads took 1.7-22 s under load, 1.0 s with one).

Nor does BLAS get the T threads between regions, for the GEMMs no shard cuts (an MLP's, the
rules' feedback products), although it would be faster there: measured on the Intel Xeon VM
(2 threads, 4 interleaved rounds, one process per configuration), the MLP 784-512-512-10 BP
step at batch 64 took 5.5 ms that way, 6.4-6.7 ms on one thread and 4.4-4.8 ms in PyTorch.
OpenBLAS's threaded GEMM cuts the inner dimension K into other blocks than its one-thread
call: float32 products with K = 500, 513, 600, 700, 784, 1000 or 1500 differed from the
one-thread result in their last bits (K up to 400 and multiples of 256 did not), float64 ones
of 511 rows at any K. A run's numbers would then depend on ``--threads``, which they do not
(below). Switching the count costs 2 us a call, and OpenBLAS's helpers, which poll for a
while after a GEMM, delayed the pool's next hand-off by about 110 us.

Same numbers with any T. A row shard computes rows of the serial result. Sums are cut
into *blocks* whose bounds depend on the batch and the work alone, never on T (at most
:data:`MAX_BLOCKS`, :func:`num_blocks`, unless the caller needs more: conv's weight
gradient takes one block per im2col chunk, :func:`block_bounds`): every block's partial sum
is computed alone, whichever thread runs it, and the partials are added in block order on
the calling thread, serially too::

    blocks   B = min(MAX_BLOCKS, n // min_rows, E // min_elements)   (>= 1; T not involved)
    sums     g = (((g_0 + g_1) + g_2) + ... + g_{B-1}),   g_b = sum over the rows of block b

so a run gives the same bits with 1 thread or 16 (tests/test_cpu_parallel.py checks every
rule in float32 at 1 and 2 threads). Row shards need no such care as long as every piece
of a GEMM runs OpenBLAS's regular kernel, whose rounding of a row does not depend on the
other rows: measured, (M, K) @ (K, N) cut into row pieces equals the whole bit for bit
when each piece has >= 8 rows and is not "small" (OpenBLAS takes other kernels for a 1-7
row piece and for small problems, M*N*K up to about 10^6 on this SkylakeX build). Hence
row shards of a GEMM keep :data:`GEMM_MIN_ROWS` rows and :data:`MIN_ELEMENTS` of work
(4.2 M multiply-adds); tests that shrink ``min_elements`` to shard tiny models compare to
a tolerance instead.

Cost of a shard. Handing a shard to the pool and collecting it costs 25-55 us here
(median of an empty ``map_shards`` on 2 threads), and while two threads run NumPy calls
with Python in between they take turns for the GIL, each turn a wake-up of a sleeping
thread. A shard must carry more work than that: at least ``min_elements`` elements
(:data:`MIN_ELEMENTS`). ``python -m minigrad_pfa.bench.dispatch`` measures both: a ReLU
forward on 2 threads gains 1.39-1.45x from 524 288 elements up and loses below
(0.94x at 262 144, 0.50x at 131 072); a BatchNorm forward + backward (five regions with
serial steps between them) loses up to 524 288 elements at batch 32 (0.47-0.94x) and gains
only 1.01-1.10x from 524 288 to 2 097 152 at batch 128, so it passes a quarter of its
size. Measured on the MLP 784-512-512-10 at batch 64 before this rule: a ReLU of 64 x 512
took 217-258 us in two shards (about 10 us serially) and the optimizer's two groups
1.05 ms (0.41 ms serially): the step was slower on two threads than on one. (Figures of the
AMD EPYC VM this was tuned on.)

What threads cost beyond that (Intel Xeon VM, 2 cores; ``python -m
minigrad_pfa.bench.dispatch``, which prints all three): an empty region is cheap (5.4 us:
the calling thread takes every shard no helper has taken), but a region of two 286 us
shards takes 409 us back to back (123 us beyond one shard: the helper's wake-up at the
start and the caller's at the end) and 598 us after 1 ms of idling, when the helper's
virtual CPU has halted: the helper then ran 40% of the shards, not half; and a
one-thread ResNet-20 convolution forward (half a batch) takes 3.56 ms alone, 4.13 ms in
each of two threads of one process and 3.56 ms in each of two processes: the GIL hand-offs
between NumPy calls cost the threads 16%. These are why a 2-thread step gains 1.5-1.6x
on that machine where PyTorch, whose OpenMP workers spin instead of sleeping, gains 1.9x.

Why the helpers sleep. A prototype pool whose idle helpers poll for 2 ms
(:mod:`minigrad_pfa.bench.spinpool`) removes most of the cold region's wake-up (Intel Xeon
VM, 2 shards of 350 us: 645 us instead of 873 us after 1 ms idle; back to back 581 vs
601 us; ``python -m minigrad_pfa.bench.dispatch``), but it makes whole steps slower: the
polling helper takes the interpreter lock back after every poll, so the main thread's
NumPy calls wait for their turns (``minigrad-pfa bench --quick --proposals``, 2 threads:
ResNet-20 BP at batch 32 1.12x, PFA 1.13x, MLP BP 1.15x the engine's time, while the
unchanged engine measured 0.93-1.01x of itself; a full ``bench --proposals`` on a noisier
VM could not separate it from noise: 0.93 / 1.12 / 1.25x against 0.91 / 1.13 / 1.19x for the
unchanged engine). Spinning pays only where the wait runs without the lock, as in OpenMP's
C workers.

Nested use: an operation running inside a shard never shards again (a thread-local flag),
so the pool cannot deadlock on itself.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from .memory import keep_freed_memory

#: default smallest shard, in rows of the batch axis: a shard of fewer samples costs more
#: in dispatch (~20-50 us per task) than it saves. Tests pass min_rows=1.
MIN_ROWS = 2

#: default smallest shard, in elements of work (see "Cost of a shard"): 2**18 float32
#: elements are 1 MB, one pass over them ~0.1 ms on this machine. Tests pass 1.
MIN_ELEMENTS = 1 << 18

#: elements of work per GEMM multiply-add for ``elements=``: one core runs the engine's
#: float32 GEMMs at ~35 G multiply-adds/s and an elementwise pass at ~2-4 G elements/s
GEMM_MACS_PER_ELEMENT = 16

#: fewest rows of a GEMM result in one row shard: OpenBLAS computes a 1-7 row piece with
#: another kernel that rounds differently (see "Same numbers with any T")
GEMM_MIN_ROWS = 8

#: most blocks a sum over the batch is cut into (:func:`num_blocks`): the limit of a
#: reduction's parallelism, and what one thread pays for bits that do not depend on T
#: (up to this many partial sums instead of one accumulation)
MAX_BLOCKS = 16

#: the optimizer's per-parameter groups are a chain of small NumPy calls with Python in
#: between (GIL turns): a group needs this many times :data:`MIN_ELEMENTS` to be its own
GROUP_FACTOR = 4

_state = {"threads": 1, "pool": None, "min_rows": MIN_ROWS, "min_elements": MIN_ELEMENTS,
          "blas_limiter": None}
_local = threading.local()


def usable_cores() -> int:
    """CPUs this process may run on (``len(os.sched_getaffinity(0))``, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


#: environment variable with the default thread count of a run (``grid`` sets it per
#: child so that ``--jobs`` runs share the cores instead of each taking all of them)
THREADS_ENV = "MINIGRAD_PFA_THREADS"

#: launcher variables with the number of MPI ranks on this host (MPICH/Hydra, Open MPI)
_LOCAL_RANK_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_SIZE")


def default_threads(distributed: bool = False) -> int:
    """The thread count a run uses when ``--threads`` is not given.

    ``$MINIGRAD_PFA_THREADS`` if set, else the usable cores, divided among the MPI ranks
    on this host for a ``--distributed`` run (``mpiexec -n 2`` on 2 cores: 1 each).
    """
    env = os.environ.get(THREADS_ENV)
    if env:
        return check_threads(int(env) if env.strip().isdigit() else env, THREADS_ENV)
    ranks = 1
    if distributed:
        for var in _LOCAL_RANK_VARS:
            if os.environ.get(var, "").strip().isdigit():
                ranks = max(1, int(os.environ[var]))
                break
    return max(1, usable_cores() // ranks)


def check_threads(threads, what: str = "threads") -> int:
    """A thread count as a positive int, or a ValueError naming the setting."""
    try:
        t = int(threads)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive integer, got {threads!r}") from None
    if t < 1 or t != threads:
        raise ValueError(f"{what} must be a positive integer, got {threads!r}")
    return t


def _limit_blas(threads: int):
    """Set every loaded BLAS to ``threads`` threads (threadpoolctl); the limiter object."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError as exc:  # a core dependency (setup.cfg); be explicit if it is gone
        raise ImportError("threadpoolctl is required to set the engine's threads: "
                          "pip install threadpoolctl") from exc
    import numpy  # noqa: F401  (load NumPy's BLAS before limiting it)
    return threadpool_limits(limits=threads, user_api="blas")


def reapply_blas_limit() -> None:
    """Hold a BLAS loaded after :func:`set_threads` limited the others (SciPy's, which the
    compiled kernels of :mod:`minigrad_pfa.jit.conv` call) to one thread as well; nothing
    before the engine's threads are set. (:func:`using_threads` restores the limits of the
    libraries it found at its start, so such a late library keeps one thread.)"""
    if _state["blas_limiter"] is not None:
        _limit_blas(1)


def set_threads(threads: int, min_rows: int | None = None,
                min_elements: int | None = None) -> int:
    """Use ``threads`` CPU threads for the engine's steps; returns the previous count.

    The first call also keeps freed memory in the process (:mod:`.memory`, glibc).
    ``threads == 1``: every operation runs serially, BLAS on one thread. ``threads > 1``:
    a pool of that many workers (the caller included) shards each operation's batch and
    BLAS runs single-threaded inside each shard. ``min_rows`` sets the smallest shard
    (default :data:`MIN_ROWS`; 1 makes even 2-sample batches shard, for tests) and
    ``min_elements`` the smallest work per shard (default :data:`MIN_ELEMENTS`; tests pass 1).
    """
    t = check_threads(threads)
    prev = _state["threads"]
    if min_rows is not None:
        _state["min_rows"] = check_threads(min_rows, "min_rows")
    if min_elements is not None:
        _state["min_elements"] = check_threads(min_elements, "min_elements")
    if t != prev:  # the old pool's shutdown waits for its tasks (.overlap's included)
        pool = _state["pool"]
        _state["pool"] = ThreadPoolExecutor(max_workers=t - 1,
                                            thread_name_prefix="minigrad-cpu") if t > 1 else None
        _state["threads"] = t
        if pool is not None:
            pool.shutdown(wait=True)
    if _state["blas_limiter"] is None:  # once: it remembers the BLAS's original limits
        _state["blas_limiter"] = _limit_blas(1)
        keep_freed_memory()  # the step's large temporaries reuse their pages (.memory)
    return prev


def get_threads() -> int:
    """The engine's current thread count (1 until :func:`set_threads` is called)."""
    return _state["threads"]


@contextmanager
def using_threads(n: int, min_rows: int | None = None, min_elements: int | None = None):
    """``with using_threads(n):`` run the block with ``n`` engine threads, then restore the
    previous count and shard sizes (and BLAS's own thread limits if this block was the
    first to set them)."""
    prev_rows, prev_elems = _state["min_rows"], _state["min_elements"]
    limited = _state["blas_limiter"] is not None
    prev = set_threads(n, min_rows, min_elements)
    try:
        yield
    finally:
        set_threads(prev, prev_rows, prev_elems)
        if not limited:  # the BLAS threads as they were before the block
            _state["blas_limiter"].restore_original_limits()
            _state["blas_limiter"] = None


def num_shards(n: int, elements: int | None = None, gemm_rows: int | None = None,
               min_elements: int | None = None) -> int:
    """S = min(T, n // min_rows, elements // min_elements), or 1 inside a shard, with one
    thread, or for a small n or little work (``elements`` None: no work bound).

    ``gemm_rows``: the shards are the rows of a GEMM result, this many per batch row; each
    shard then also gets at least :data:`GEMM_MIN_ROWS` of them (see "Same numbers").
    ``min_elements``: a shard's smallest work for a cheaper hand-off than this pool's
    (:mod:`minigrad_pfa.jit.parallel`); None: the pool's (:func:`min_elements`).
    """
    if _state["threads"] == 1 or getattr(_local, "inside", False):
        return 1
    s = min(_state["threads"], n // _state["min_rows"])
    if elements is not None:
        s = min(s, int(elements) // (min_elements or _state["min_elements"]))
    if gemm_rows is not None:  # every shard, the smallest included, >= GEMM_MIN_ROWS rows
        s = min(s, n // -(-GEMM_MIN_ROWS // max(1, int(gemm_rows))))
    return max(1, s)


def shard_bounds(n: int, shards: int) -> list[slice]:
    """``shards`` contiguous slices covering range(n), sizes differing by at most one."""
    q, rem = divmod(n, shards)
    out, a = [], 0
    for k in range(shards):
        b = a + q + (k < rem)
        out.append(slice(a, b))
        a = b
    return out


def _inside(fn, sl):
    was = getattr(_local, "inside", False)  # restored: a nested block group runs here too
    _local.inside = True
    try:
        return fn(sl)
    finally:
        _local.inside = was


def map_shards(fn, n: int, xp=None, elements: int | None = None,
               gemm_rows: int | None = None) -> list:
    """``[fn(slice_k) for each shard k]`` with the shards run concurrently.

    ``fn`` gets a slice of the batch axis; results come back in shard order. Shard 0 runs
    on the calling thread. With one shard (one thread, a small ``n`` or ``elements``,
    inside a shard, or ``xp`` given and not NumPy) this is just ``[fn(slice(0, n))]``.
    ``gemm_rows``: see :func:`num_shards`.
    """
    s = num_shards(n, elements, gemm_rows) if xp is None or xp.__name__ == "numpy" else 1
    return _run(fn, shard_bounds(n, s))


def _run(fn, bounds: list, always_inside: bool = False) -> list:
    """``[fn(b) for b in bounds]``, bounds[1:] on the pool, bounds[0] here (``always_inside``:
    a single bound runs as a shard too, so that what ``fn`` calls never shards again)."""
    if len(bounds) <= 1:
        if not bounds:
            return []
        return [_inside(fn, bounds[0]) if always_inside else fn(bounds[0])]
    # Shards are pulled: this thread and len(bounds) - 1 helpers on the pool each take the
    # next untaken bound until none is left. A helper queued behind a deferred task
    # (.overlap) is cancelled once this thread has taken every bound itself, so an
    # operation never waits for a busy worker; one that frees up mid-way takes shards.
    results, taken, lock = [None] * len(bounds), [0], threading.Lock()

    def take():
        while True:
            with lock:
                k = taken[0]
                taken[0] += 1
            if k >= len(bounds):
                return
            results[k] = _inside(fn, bounds[k])

    helpers = [_state["pool"].submit(take) for _ in bounds[1:]]
    error = None
    try:
        take()
    except BaseException as exc:  # no shard is handed out any more
        error = exc
        with lock:
            taken[0] = len(bounds)
    for h in helpers:  # every helper that started has finished before anything is raised
        if not h.cancel():
            failed = h.exception()  # waits
            error = error or failed
    if error is not None:
        raise error
    return results


def in_shard() -> bool:
    """True on a thread that is running a shard or a task (its operations do not shard)."""
    return getattr(_local, "inside", False)


def min_elements() -> int:
    """The smallest work of a shard (:data:`MIN_ELEMENTS` unless a test changed it)."""
    return _state["min_elements"]


def submit_task(fn):
    """Run ``fn()`` on a pool worker as a shard would (it does not shard again); returns its
    future, which the submitter collects (:func:`wait_futures`; :mod:`.overlap` keeps them per
    Python thread). Needs T > 1."""
    if _state["pool"] is None:
        raise RuntimeError("submit_task needs more than one engine thread (set_threads)")
    return _state["pool"].submit(_inside, lambda _: fn(), None)


def wait_futures(futures: list) -> None:
    """Wait for every future of the list in order, removing each only once it has finished
    (an interrupt leaves the unfinished ones listed), then raise the first error raised."""
    first = None
    while futures:
        error = futures[0].exception()  # waits
        futures.pop(0)
        first = first or error
    if first is not None:
        raise first


def num_blocks(n: int, elements: int | None = None, xp=None) -> int:
    """B = min(MAX_BLOCKS, n // min_rows, elements // min_elements), at least 1; 1 for arrays
    that are not NumPy's. Independent of the thread count (and of being inside a shard), so
    a sum cut into these blocks has the same bits whoever computes it."""
    if xp is not None and xp.__name__ != "numpy":
        return 1
    b = min(MAX_BLOCKS, n // _state["min_rows"])
    if elements is not None:
        b = min(b, int(elements) // _state["min_elements"])
    return max(1, b)


def block_bounds(n: int, elements: int | None = None, xp=None,
                 at_least: int = 1) -> list[slice]:
    """The blocks of :func:`num_blocks` (or ``at_least`` of them, up to n) as contiguous slices
    of range(n), sizes differing by at most one."""
    return shard_bounds(n, max(1, min(n, max(num_blocks(n, elements, xp), at_least))))


def map_blocks(fn, bounds: list, xp=None) -> list:
    """``[g_b for every block b]`` in block order, the blocks shared among the threads.

    ``fn(blocks)`` gets a contiguous run of the blocks (a list of slices) and returns
    ``[g_b for b in blocks]``. The runs are min(T, B) contiguous groups on the pool (one
    here inside a shard, and for arrays ``xp`` that are not NumPy's).
    """
    serial = getattr(_local, "inside", False) or (xp is not None and xp.__name__ != "numpy")
    groups = shard_bounds(len(bounds), 1 if serial else min(_state["threads"], len(bounds)))
    return [p for run in _run(lambda gs: fn(bounds[gs]), groups, always_inside=True)
            for p in run]


def sum_blocks(fn, bounds: list, xp=None):
    """``((g_0 + g_1) + ...) + g_{B-1}`` over the blocks ``bounds`` (:func:`block_bounds`).

    ``fn(blocks)`` gets a contiguous run of the blocks (a list of slices) and returns their
    partial sums ``[g_b for b in blocks]``, each computed alone (so a caller can set up its
    scratch buffers once per run). The runs are min(T, B) contiguous groups on the pool
    (one here, and for arrays ``xp`` that are not NumPy's); the calling thread adds the
    partials in block order. A partial may be an array or a tuple of arrays (added element
    by element). Same bits for any T.
    """
    parts = map_blocks(fn, bounds, xp)
    total = parts[0]
    for p in parts[1:]:
        total = total + p if not isinstance(total, tuple) else \
            tuple(a + b for a, b in zip(total, p))
    return total


def is_blocked(xp, n: int, elements: int | None = None) -> bool:
    """True when a sum over a NumPy batch of ``n`` rows (``elements`` of work) is cut into
    blocks (:func:`num_blocks`; whatever the thread count)."""
    return num_blocks(n, elements, xp) > 1


def is_sharded(xp, n: int, elements: int | None = None, gemm_rows: int | None = None) -> bool:
    """True when an operation on NumPy arrays with batch ``n`` (and ``elements`` of work)
    would split into shards (``gemm_rows``: :func:`num_shards`)."""
    return xp.__name__ == "numpy" and num_shards(n, elements, gemm_rows) > 1


def for_each_balanced(items: list, size, fn, xp=None) -> None:
    """``fn(item)`` for every item, in T contiguous groups of about equal total ``size``.

    For independent per-item work (the optimizer's per-parameter updates): the groups run
    concurrently when T > 1, ``xp`` (if given) is NumPy and every group has at least
    ``GROUP_FACTOR * min_elements`` of ``size``; else in order here.
    """
    numpy_ok = xp is None or xp.__name__ == "numpy"
    total = float(sum(size(it) for it in items)) if items and numpy_ok else 0.0
    s = num_shards(len(items) * _state["min_rows"], int(total) // GROUP_FACTOR) \
        if items and numpy_ok else 1
    if s <= 1:
        for it in items:
            fn(it)
        return
    total = total or 1.0
    cuts, acc, k = [0], 0.0, 1
    for i, it in enumerate(items):  # cut where the running size passes k/s of the total
        acc += size(it)
        if k < s and acc >= total * k / s:
            cuts.append(i + 1)
            k += 1
    cuts.append(len(items))
    groups = [items[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]

    def run(grp):
        for it in grp:
            fn(it)

    _run(run, groups)

