"""The CPU pool's own cost, and from what size a memory-bound operation gains from shards.

``python -m minigrad_pfa.bench.dispatch [THREADS]`` prints

* the median and quartiles of :func:`dispatch_cost`: one empty
  ``map_shards`` hand-off and collection (default: all usable cores); an empty region
  never waits for a helper (the calling thread takes every shard a sleeping helper has
  not taken), so this is the hot path;
* :func:`region_cost`: what a region with work costs beyond one shard, back to back and
  after 1 ms of idling (a sleeping helper must be woken), on the engine's pool and on the
  prototype pool whose helpers spin (:mod:`.spinpool`); :func:`numba_region_cost`: the
  same for a compiled region on Numba's threads (:mod:`minigrad_pfa.jit.parallel`);
* :func:`threads_vs_processes`: T threads of one process each running a one-thread
  ResNet-20 first-stage convolution forward (half a batch of 128) against T processes
  doing the same: what sharing the interpreter lock costs a sharded step;
* for ResNet-20's activation shapes at batch 32 and 128 (float32, channels-last), the
  time of a ReLU forward and of a BatchNorm forward + backward on one thread and sharded
  over THREADS (forced: ``min_elements=1``), and the speed-up: the calibration of the
  pool's smallest shard (``MIN_ELEMENTS``). Times are the fastest fifth of the calls,
  the two settings interleaved in rounds.
"""
from __future__ import annotations

import statistics
import sys
import time
from contextlib import nullcontext

import numpy as np

from ..cpu.threads import map_shards, usable_cores, using_threads
from ..functional import activation as F_act
from ..functional import batchnorm as F_bn
from .spinpool import spinning_pools

#: (batch, channels, side) of the activations measured
SHAPES = [(b, c, s) for b in (32, 128) for c, s in ((16, 32), (32, 16), (64, 8))]


def dispatch_cost(threads: int | None = None, calls: int = 2000) -> dict:
    """Seconds for one empty :func:`map_shards` over ``threads`` shards (the pool's own
    hand-off and collection, no work): quartiles of ``calls`` timed calls."""
    t = threads or usable_cores()
    times = []
    with using_threads(t, min_rows=1, min_elements=1):
        for k in range(calls + 100):  # the first 100: warm-up
            a = time.perf_counter()
            map_shards(lambda sl: None, t)
            if k >= 100:
                times.append(time.perf_counter() - a)
    q1, med, q3 = statistics.quantiles(times, n=4)
    return {"threads": t, "calls": calls, "q1_s": q1, "median_s": med, "q3_s": q3}


def region_cost(threads: int | None = None, calls: int = 200, work_s: float = 2e-4,
                spinning: bool = False) -> dict:
    """What a parallel region with work costs beyond one shard, with the helpers hot (the
    regions back to back) and cold (a 1 ms pause before each: the helpers sleep).
    ``spinning``: on the prototype pool whose helpers poll for 2 ms before they sleep
    (:mod:`.spinpool`) instead of the engine's.

    Each of the T shards runs the same NumPy work (a multiply sized to about ``work_s`` on
    one thread). Per setting: the median region time, minus the median time of one shard
    alone (the ideal), and the fraction of shards the helpers ran (the calling thread takes
    the shards no helper has taken yet, so a helper that wakes late leaves it all the work).
    """
    import threading

    t = threads or usable_cores()
    arrays, shard_s = _sized_work(
        lambda n: [(np.ones(n, np.float32), np.empty(n, np.float32)) for _ in range(t)],
        lambda arrs: np.multiply(arrs[0][0], 1.0001, out=arrs[0][1]), work_s)
    caller, helped, lock = threading.get_ident(), [0], threading.Lock()

    def shard(sl):
        np.multiply(arrays[sl.start][0], 1.0001, out=arrays[sl.start][1])
        if threading.get_ident() != caller:
            with lock:
                helped[0] += 1

    out = {"threads": t, "shard_s": shard_s, "spinning": spinning}
    with (spinning_pools() if spinning else nullcontext()), \
            using_threads(t, min_rows=1, min_elements=1):
        for name, med in _hot_cold(lambda: map_shards(shard, t), calls,
                                   lambda: helped.__setitem__(0, 0)):
            out[name] = {"region_s": med, "overhead_s": med - shard_s,
                         "helper_share": helped[0] / (calls * t)}
    return out


def _sized_work(make, one, work_s: float):
    """(``make(n)``, one call's time) for the smallest n = 2^14 .. 2^26 whose ``one(make(n))``
    (the work of one shard, on this thread) takes about ``work_s``."""
    n = 1 << 14
    while True:
        data = make(n)
        if _fifth(lambda: one(data), 50) >= work_s or n >= 1 << 26:
            break
        n *= 2
    return data, statistics.median([_fifth(lambda: one(data), 20) for _ in range(5)])


def _hot_cold(region, calls: int, reset=lambda: None):
    """[("hot", median s), ("cold", median s)] of ``calls`` calls of ``region``, back to back
    and after 1 ms idle each; ``reset()`` runs before each setting (counters), and the
    caller reads them before the next setting starts (a generator)."""
    for name, pause in (("hot", 0.0), ("cold", 1e-3)):
        reset()
        times = []
        for _ in range(calls):
            if pause:
                time.sleep(pause)
            a0 = time.perf_counter()
            region()
            times.append(time.perf_counter() - a0)
        yield name, statistics.median(times)


def numba_region_cost(threads: int | None = None, calls: int = 200,
                      work_s: float = 2e-4) -> dict | None:
    """:func:`region_cost` for a compiled region on Numba's own threads (the OpenMP workers
    of :mod:`minigrad_pfa.jit.parallel`, which spin a while after a region): T shards of a
    compiled multiply of about ``work_s`` each, hot and cold. None without Numba or without
    a thread-safe threading layer."""
    try:
        import numba
    except ImportError:
        return None
    from ..jit import parallel
    t = min(threads or usable_cores(), parallel.max_threads())
    if t < 2:
        return None

    @numba.njit(nogil=True)
    def one(a, out):
        for i in range(a.shape[0]):
            out[i] = a[i] * np.float32(1.0001)

    @numba.njit(nogil=True, parallel=True)
    def region(a, out):
        for k in numba.prange(a.shape[0]):
            one(a[k], out[k])

    (a, out), shard_s = _sized_work(
        lambda n: (np.ones((t, n), np.float32), np.empty((t, n), np.float32)),
        lambda ao: one(ao[0][0], ao[1][0]), work_s)
    parallel.use_threads(t)
    region(a, out)  # compiles
    return {"threads": t, "shard_s": shard_s,
            **{name: {"region_s": med, "overhead_s": med - shard_s}
               for name, med in _hot_cold(lambda: region(a, out), calls)}}


def _conv_forward_times(seconds: float) -> list[float]:
    """One-thread row-tap convolution forwards of a (64, 16, 32, 32) float32 input (3x3,
    padding 1) for about ``seconds``: their times."""
    from ..functional import conv as F_conv
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32, 32, 16), dtype=np.float32).transpose(0, 3, 1, 2)
    W = rng.standard_normal((16, 16, 3, 3), dtype=np.float32)
    F_conv.conv2d_forward(x, W, None, (1, 1), (1, 1))
    ts, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        F_conv.conv2d_forward(x, W, None, (1, 1), (1, 1))
        ts.append(time.perf_counter() - t0)
    return ts


def _process_worker(seconds: float) -> float:
    """In a fresh process: the median of :func:`_conv_forward_times` on one engine thread."""
    from ..cpu.threads import set_threads
    set_threads(1)
    return statistics.median(_conv_forward_times(seconds))


def threads_vs_processes(threads: int | None = None, seconds: float = 3.0) -> dict:
    """Median seconds of the one-thread convolution forward of :func:`_conv_forward_times`:
    alone, in each of T threads of this process at once, and in each of T processes."""
    import threading
    from concurrent.futures import ProcessPoolExecutor

    t = threads or usable_cores()
    with using_threads(1):  # BLAS on one thread; the engine's own shards off
        alone = statistics.median(_conv_forward_times(seconds))
        results = [None] * t

        def run(k):
            results[k] = statistics.median(_conv_forward_times(seconds))

        workers = [threading.Thread(target=run, args=(k,)) for k in range(t)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    with ProcessPoolExecutor(t) as pool:
        procs = list(pool.map(_process_worker, [seconds] * t))
    return {"threads": t, "alone_s": alone, "threads_s": statistics.median(results),
            "processes_s": statistics.median(procs)}


def _fifth(f, calls: int) -> float:
    f()
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.percentile(ts, 20))


def op_scaling(threads: int, rounds: int = 3, calls: int = 20) -> list[dict]:
    """Per shape: elements and the (1 thread, ``threads``) seconds of ReLU and of BN."""
    rng = np.random.default_rng(0)
    out = []
    for n, c, s in SHAPES:
        x = rng.standard_normal((n, s, s, c), dtype=np.float32).transpose(0, 3, 1, 2)
        d = rng.standard_normal((n, s, s, c), dtype=np.float32).transpose(0, 3, 1, 2)
        g, b = np.ones(c, np.float32), np.zeros(c, np.float32)

        def bn():
            _, cache = F_bn.batchnorm_forward(x, g, b, None, None, training=True,
                                              update_stats=False)
            F_bn.batchnorm_backward(d, cache)

        best = {}
        for _ in range(rounds):
            for t in (1, threads):
                with using_threads(t, min_rows=1, min_elements=1):
                    for name, f in (("relu", lambda: F_act.relu_forward(x)), ("bn", bn)):
                        v = _fifth(f, calls)
                        best[name, t] = min(best.get((name, t), v), v)
        out.append({"shape": (n, c, s, s), "elements": x.size,
                    **{f"{k}_{t}": v for (k, t), v in best.items()}})
    return out


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    T = int(args[0]) if args else usable_cores()
    r = dispatch_cost(T)
    print(f"empty map_shards on {r['threads']} threads, {r['calls']} calls: median "
          f"{r['median_s'] * 1e6:.1f} us (quartiles {r['q1_s'] * 1e6:.1f}-"
          f"{r['q3_s'] * 1e6:.1f} us)")
    if T < 2:
        return 0
    for spinning in (False, True):
        r = region_cost(T, spinning=spinning)
        pool = "spinning prototype pool (bench.spinpool)" if spinning else "engine's pool"
        for name, what in (("hot", "back to back"), ("cold", "after 1 ms idle")):
            v = r[name]
            print(f"{pool}: a region of {T} shards of {r['shard_s'] * 1e6:.0f} us each, "
                  f"{what}: {v['region_s'] * 1e6:.0f} us ({v['overhead_s'] * 1e6:.0f} us "
                  f"beyond one shard), helpers ran {100 * v['helper_share']:.0f}% of the "
                  f"shards")
    r = numba_region_cost(T)
    for name, what in (("hot", "back to back"), ("cold", "after 1 ms idle")):
        if r is None:
            print("Numba's threads: not measured (Numba, or a thread-safe threading layer, "
                  "is missing)")
            break
        v = r[name]
        print(f"Numba's threads (jit.parallel): a compiled region of {r['threads']} shards "
              f"of {r['shard_s'] * 1e6:.0f} us each, {what}: {v['region_s'] * 1e6:.0f} us "
              f"({v['overhead_s'] * 1e6:.0f} us beyond one shard)")
    r = threads_vs_processes(T)
    print(f"a one-thread conv forward (64 x 16 x 32 x 32, 3x3): alone "
          f"{r['alone_s'] * 1e3:.2f} ms, in each of {T} threads "
          f"{r['threads_s'] * 1e3:.2f} ms, in each of {T} processes "
          f"{r['processes_s'] * 1e3:.2f} ms")
    print(f"\nmemory-bound operations, 1 thread vs {T} (forced shards), ms:")
    print(f"{'shape (n, c, h, w)':>22} {'elements':>9} | {'ReLU fwd':>17} {'speed-up':>8} | "
          f"{'BN fwd+bwd':>17} {'speed-up':>8}")
    for row in op_scaling(T):
        relu1, reluT, bn1, bnT = (row[k] * 1e3 for k in ("relu_1", f"relu_{T}", "bn_1",
                                                          f"bn_{T}"))
        print(f"{str(row['shape']):>22} {row['elements']:>9} | {relu1:7.3f} {reluT:9.3f} "
              f"{relu1 / reluT:8.2f} | {bn1:7.3f} {bnT:9.3f} {bn1 / bnT:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
