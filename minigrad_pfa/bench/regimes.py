"""Thread regimes and interleaved rounds of one benchmark run.

Notation
--------
T : a regime's thread count (engine threads, BLAS/OpenMP threads, torch.set_num_threads),
K : rounds, c : a step configuration, t_{c,T,k,j} : step j of round k of c under T.

A run measures each regime: all usable cores (T = the user's ``--threads``, the default
view) and, on the CPU when T > 1, one thread (the per-core efficiency). The K rounds are
*interleaved*: round k runs every configuration under every regime back to back before
round k+1 starts, so a burst of load from other processes hits the engine and PyTorch,
and both regimes, alike instead of one block of the suite::

    for k in 1..K:  for c in suite:  for T in regimes:  run c under T (fresh process)

Every second round runs the suite and the regimes in reverse order, so that a
configuration's place in a round (what ran just before it, how long the machine has been
busy) falls on both sides of its neighbours and does not bias their ratios: with one fixed
order, the engine's BP step always ran first in its block and PFA's after PyTorch's, and
PFA (r = 10), which does strictly more work, measured faster than BP in most rounds of one
run (PFA / BP per round: 2 threads 0.88-1.10, 1 thread 0.79-1.02; docs/performance-numba.md
of 9e33173) and slower in those of another (1 thread 1.15-1.31, d331a0e).

A record pools the steps of all its rounds: ``step_s`` = median_j,k t_{c,T,k,j}, with the
interquartile range (q1, q3) and the extremes as its spread, and the per-round medians.
Configurations marked ``once`` (the rules outside the targets) run in the first round.
"""
from __future__ import annotations

import statistics

from .samestep import samestep_records

#: default rounds per mode: more rounds, more pooled steps, a steadier median
ROUNDS = {"full": 3, "quick": 2, "tiny": 1}


def regime_threads(threads: int, device: str, one_thread: bool = True) -> list[int]:
    """The regimes of a run: ``[threads]``, plus ``1`` on the CPU when threads > 1."""
    out = [int(threads)]
    if one_thread and device == "cpu" and threads > 1:
        out.append(1)
    return out


def regime_timer(timer: str, threads: int, device: str) -> str:
    """``auto``: the worker's CPU time with one CPU thread (robust to other processes),
    else the wall clock (CPU time sums over threads and does not see GPU work)."""
    if timer == "auto":
        return "cpu" if threads == 1 and device == "cpu" else "wall"
    return timer


def quartiles(xs) -> tuple[float, float]:
    """(q1, q3) of a sample (inclusive method; the sample itself when it has < 2 values)."""
    xs = sorted(xs)
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def pool_rounds(results: list[dict]) -> dict:
    """The rounds of one configuration under one regime -> one record with pooled steps.

    ``step_s`` is the median of every timed step of every successful round, ``step_q1_s``
    / ``step_q3_s`` its quartiles, ``step_min_s`` / ``step_max_s`` the extremes,
    ``round_step_s`` each round's own median (None for a failed round), ``peak_mb`` the
    largest of the rounds, ``round_errors`` the failed rounds' errors (the run then exits
    with a failure: its figures stand on fewer rounds than it was asked for).
    """
    ok = [r for r in results if not r.get("error")]
    if not ok:
        return results[-1]
    rec = dict(ok[0])
    times = [t for r in ok for t in r["step_times_s"]]
    rec["step_times_s"] = times
    rec["step_s"] = statistics.median(times)
    rec["step_q1_s"], rec["step_q3_s"] = quartiles(times)
    rec["step_min_s"], rec["step_max_s"] = min(times), max(times)
    for other in ("wall", "cpu"):
        rec[f"step_{other}_s"] = statistics.median(r[f"step_{other}_s"] for r in ok)
    foreign = [r["foreign_cores"] for r in ok if r.get("foreign_cores") is not None]
    rec["foreign_cores"] = max(foreign) if foreign else None
    rec["round_step_s"] = [r.get("step_s") for r in results]
    rec["rounds"] = len(ok)
    errors = [r["error"] for r in results if r.get("error")]
    if errors:
        rec["round_errors"] = errors
    rec["peak_mb"] = max(r["peak_mb"] for r in ok)
    rec["gflops"] = rec["flops"] / rec["step_s"] / 1e9
    return rec


def round_order(items, k: int) -> list:
    """``items`` in the order of round ``k`` (from 0): as given in even rounds, reversed in
    odd ones, so that each item's place in a round falls on both sides of its neighbours.
    Every interleaved measurement of the project takes its order from here."""
    items = list(items)
    return items[::-1] if k % 2 else items


def run_interleaved(steps: list[dict], regimes: list[int], rounds: int, run, log,
                    describe) -> dict:
    """Run ``steps`` under every regime for ``rounds`` interleaved rounds.

    ``run(cfg, threads)`` runs one configuration in a fresh process and returns its
    result; returns ``{threads: [pooled record per step configuration]}`` (in the order of
    ``steps``, whatever order a round ran them in).
    """
    results = {t: [[] for _ in steps] for t in regimes}
    for k in range(int(rounds)):
        if rounds > 1:
            log(f"round {k + 1}/{rounds}" + (" (reverse order)" if k % 2 else ""))
        for i, cfg in round_order(enumerate(steps), k):
            if cfg.get("once") and k > 0:
                continue
            for t in round_order(regimes, k):
                res = run(cfg, t)
                if res.get("error"):
                    res.update({key: cfg[key] for key in ("model", "rule", "impl", "batch",
                                                         "device", "group")})
                    if cfg.get("variants"):
                        res["variants"] = cfg["variants"]
                    res["threads"] = t
                results[t][i].append(res)
                log(f"  [{t} thread{'s' if t > 1 else ''}] " + describe(res))
    return {t: [pool_rounds(r) for r in results[t]] for t in regimes}


def regime_view(data: dict, block: dict) -> dict:
    """``data`` as one regime sees it (its records, GEMM peak and per-round peaks, threads,
    timer and same-process comparisons ``samesteps``, :mod:`.samestep`): what
    :func:`.targets.evaluate_targets` and the report's per-regime sections read."""
    machine = dict(data["machine"], threads=block["threads"], timer=block["timer"])
    if "blas_threads_observed" in block:
        machine["blas_threads_observed"] = block["blas_threads_observed"]
    return dict(data, machine=machine, records=block["records"], gemm=block["gemm"],
                gemm_peak_gflops=block["gemm_peak_gflops"],
                samesteps=samestep_records(block), samestep=None,
                gemm_round_gflops=block.get("gemm_round_gflops"))
