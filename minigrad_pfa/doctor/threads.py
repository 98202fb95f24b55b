"""``doctor --check-threads``: does ``--threads N`` beat one thread on this machine?

Notation
--------
N : the thread count a run takes when ``--threads`` is not given
    (:func:`minigrad_pfa.cpu.threads.default_threads`: the usable cores),
t_1, t_N : median wall-clock time of one training step on 1 and on N engine threads,
s = t_1 / t_N : the speed-up; s_k the same ratio within round k alone.

    verdict  "faster"         if s_k > 1 + MARGIN for every round k
             "slower"         if s_k < 1 - MARGIN for every round k
             "no difference"  otherwise (the rounds disagree or stay within the margin)

Why. What a second core buys depends on the machine more than on the model: on one 2-vCPU
VM the ResNet-20 step gained 1.6x while, before the linear layers' shard rule was raised
(:data:`minigrad_pfa.functional.linear.WORK_DIVISOR`), the MLP's step took twice as long on
2 threads as on 1, because each hand-off to the pool woke a halted virtual CPU
(``python -m minigrad_pfa.bench.dispatch`` measures that cost). The full benchmark answers
this in 20 minutes; this probe in about 10-30 seconds, for the benchmark's two models.

Method. Per model (ResNet-20 at batch 32, the MLP 784-512-512-10 at batch 64; BP, SGD,
synthetic in-memory data, as in :mod:`minigrad_pfa.bench`) one model and optimizer are
built; the engine's thread count is switched in place (:func:`minigrad_pfa.cpu.set_threads`)
between ``rounds`` interleaved rounds, each timing ``steps`` steps after ``warmup`` at T = 1,
then at T = N (odd rounds N first: :func:`minigrad_pfa.bench.regimes.round_order`).
Interleaving puts a change of the machine's load into both sides of a round.
Cost: rounds x 2 x (warmup + steps) steps per model.
"""
from __future__ import annotations

import statistics

#: a round's speed-up must clear 1 by this much, in every round, for a verdict
MARGIN = 0.05

#: model key of :data:`minigrad_pfa.bench.suite.MODELS` -> (batch, timed steps per round)
PROBES = {"resnet20": (32, 3), "mlp": (64, 40)}


def verdict(round_speedups) -> str:
    """"faster", "slower" or "no difference" from the per-round speed-ups (module notation)."""
    s = list(round_speedups)
    if s and all(v > 1 + MARGIN for v in s):
        return "faster"
    if s and all(v < 1 - MARGIN for v in s):
        return "slower"
    return "no difference"


def probe_model(model: str, threads: int, batch: int, steps: int, rounds: int = 3,
                warmup: int = 1) -> dict:
    """t_1, t_N, s and the verdict of one model (module notation; ``threads`` is N).

    Returns
    -------
    dict with ``model``, ``batch``, ``threads``, ``t1_s``, ``tn_s`` (medians over the rounds'
    medians), ``speedup``, ``round_speedups`` and ``verdict``.
    """
    from ..bench.regimes import round_order
    from ..bench.worker import _minigrad_setup, timed_steps
    from ..cpu import set_threads, using_threads
    from ..train import train_step

    with using_threads(1):  # restores the caller's threads and BLAS limits afterwards
        net, layers, opt, x, y, _, _ = _minigrad_setup(
            {"model": model, "rule": "bp", "threads": 1, "device": "cpu", "batch": batch})

        def step():
            train_step(net, layers, opt, x, y)

        t1, tn = [], []
        for k in range(rounds):  # 1, T, then T, 1, ... (bench.regimes.round_order)
            for count, out in round_order(((1, t1), (threads, tn)), k):
                set_threads(count)
                out.append(statistics.median(
                    timed_steps(step, lambda: None, warmup, steps)["wall"]))
    ratios = [a / b for a, b in zip(t1, tn)]
    t1_s, tn_s = statistics.median(t1), statistics.median(tn)
    return {"model": model, "batch": batch, "threads": threads, "t1_s": t1_s, "tn_s": tn_s,
            "speedup": t1_s / tn_s, "round_speedups": ratios, "verdict": verdict(ratios)}


def check_threads(threads: int | None = None, rounds: int = 3, probes=None,
                  log=print) -> dict:
    """Run :func:`probe_model` for every probe and log one line each.

    ``threads`` None: the default of a run (:func:`minigrad_pfa.cpu.threads.default_threads`).
    With N = 1 nothing is compared (one usable core). Returns ``{"threads": N, "models":
    [probe results]}``.
    """
    from ..cpu.threads import THREADS_ENV, default_threads
    n = default_threads() if threads is None else int(threads)
    if n <= 1:
        log("threads: 1 usable core, nothing to compare")
        return {"threads": n, "models": []}
    results = []
    for model, (batch, steps) in (probes or PROBES).items():
        r = probe_model(model, n, batch, steps, rounds)
        results.append(r)
        lo, hi = min(r["round_speedups"]), max(r["round_speedups"])
        unit, scale = ("ms", 1e3) if r["tn_s"] < 0.1 else ("s", 1.0)
        line = (f"threads: {model} batch {batch} BP step on {n} threads {r['tn_s'] * scale:.3g} "
                f"{unit}, on 1 thread {r['t1_s'] * scale:.3g} {unit}: {r['speedup']:.2f}x "
                f"(rounds {lo:.2f}-{hi:.2f}), {r['verdict']}")
        if r["verdict"] == "slower":
            line += (f"; on this machine --threads 1 (or {THREADS_ENV}=1) runs such a model "
                     "faster")
        log(line)
    return {"threads": n, "models": results}
