"""The CPU pool's own cost, and from what size a memory-bound operation gains from shards.

``python -m minigrad_pfa.bench.dispatch [THREADS]`` prints

* the median and quartiles of :func:`dispatch_cost`: one empty
  ``map_shards`` hand-off and collection (default: all usable cores);
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

import numpy as np

from ..cpu.threads import map_shards, usable_cores, using_threads
from ..functional import activation as F_act
from ..functional import batchnorm as F_bn

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
