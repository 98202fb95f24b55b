"""Several steps in one process, interleaved step by step: ratios the VM cannot bias.

Notation
--------
R : the participants compared, the first the reference (the engine's BP by default): the
engine's rules (``"bp"``, ``"pfa-r10"``, ... of :func:`minigrad_pfa.bench.suite.rule_spec`)
and PyTorch's steps (``"torch:bp"``, autograd BP, as in the benchmark's PyTorch records),
T : threads, t_{r,k} : the median of ``steps`` consecutive steps of participant r in round k::

    ratio_{r,k} = t_{r,k} / t_{ref,k}        ratio_r = median_j t_{r,j} / median_j t_{ref,j}
    spread      = max_r median_j t_{r,j} / min_r median_j t_{r,j} - 1    (over the PFA rules)

Why. ``minigrad-pfa bench`` runs every configuration in its own process (its peak RSS must
be its own), so two configurations compared there ran seconds to minutes apart, and on a
shared VM the machine's state moves in between: the same engine code measured PFA (r = 10)
at 0.92x, 1.06x and 1.26x BP, and PFA at r = 1 at 0.80x r = 10 in one run's later rounds
(three earlier runs of docs/performance-numba.md, 2026-12-03; in run G, 1.23x across
processes against 1.06x in one). The hypervisor's steal time on this VM moved from 0 to 40 %
of the two vCPUs within seconds (``/proc/stat``, 2026-12-03), and the same engine step from
0.44 s to 0.73 s with it. Here every model is built once in one process and their steps
alternate in rounds (even rounds in the given order, odd rounds reversed:
:func:`minigrad_pfa.bench.regimes.round_order`), so a change of the machine falls into both
sides of every ratio.

PyTorch in the same process. Its threads (OpenMP) and the engine's (its pool, BLAS held to
one thread) sit idle while the other framework steps; measured on 2 threads (ResNet-20, batch
128, 8 rounds of 3 steps, 2026-12-03): the engine's BP step right after PyTorch's took
0.454 s, right after another engine model's 0.452 s, so neither framework's idle threads
slow the other.

In the benchmark. ``minigrad-pfa bench`` runs these comparisons once per thread regime, each
in a fresh worker (kind ``samestep``, :func:`run_samestep`, with the cores other processes
kept busy meanwhile): BP, PFA at r = 1, 10, 30 and PyTorch's BP at the reference batch, BP
and PyTorch's BP at batches 32 and 256 and on the MLP. The targets that are ratios of
two steps of one model and batch -- PFA (r = 10) / BP, the PFA spread over r, BP / PyTorch's
BP -- read them (:func:`minigrad_pfa.bench.targets.evaluate_targets`); the per-process
figures stay in the tables and next to the target. Clock: wall time, or with one thread the
process's CPU time (the regime's timer: the step's own work, whatever other processes do).

    python -m minigrad_pfa.bench.samestep [--rules bp,pfa-r1,pfa-r10,pfa-r30,torch:bp]
        [--model resnet20] [--batch 128] [--threads T] [--rounds 6] [--steps 3]
        [--cpu-kernels numpy|numba]
"""
from __future__ import annotations

import statistics
import time


#: the clocks a comparison can read: wall time, or this process's CPU time (one thread)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

#: a participant that is PyTorch's step: ``"torch:" + rule`` (``bp``: autograd BP;
#: another rule: the published formulation of :mod:`.torch_models`)
TORCH_PREFIX = "torch:"


def participant(name: str) -> tuple[str, str]:
    """(rule, impl) of a participant: ``"torch:bp"`` -> ``("bp", "torch")``, ``"pfa-r10"``
    -> ``("pfa-r10", "minigrad")`` (the fields of the benchmark's per-process records)."""
    if name.startswith(TORCH_PREFIX):
        return name[len(TORCH_PREFIX):], "torch"
    return name, "minigrad"


def label(name: str) -> str:
    """A participant as the report names it: ``"torch:bp"`` -> ``"bp (PyTorch autograd)"``."""
    rule, impl = participant(name)
    if impl == "minigrad":
        return rule
    return f"{rule} (PyTorch {'autograd' if rule == 'bp' else 'published'})"


def _stepper(name: str, cfg: dict):
    """A function running one synchronised training step of participant ``name``."""
    rule, impl = participant(name)
    if impl == "torch":
        from .worker import _setup_torch, torch_step
        tcfg = dict(cfg, rule=rule, impl="torch")
        try:
            torch = _setup_torch(tcfg)
        except ImportError as exc:
            raise ImportError(f"samestep: {name!r} needs PyTorch, which is not installed: "
                              "pip install torch==2.13.0 (a CPU wheel)") from exc
        step, sync, _ = torch_step(tcfg, torch)
    else:
        from ..train import train_step
        from .worker import _minigrad_setup
        net, layers, opt, x, y, sync = _minigrad_setup(dict(cfg, rule=rule))[:6]

        def step():
            train_step(net, layers, opt, x, y)

    def run():
        step()
        sync()
    return run


def gemm_peak(size: int, threads: int, clock: str = "wall", settle_s: float = 0.2):
    """A function returning the float32 ``(size, size)`` GEMM's peak GFLOP/s in this process
    (the benchmark's ``gemm`` kind, :func:`minigrad_pfa.bench.worker.run_gemm`: the best of
    as many calls after warm-up as the per-process peak,
    :data:`~minigrad_pfa.bench.worker.GEMM_REPEATS`, so that neither is the best of fewer
    tries; on ``clock``), with NumPy's BLAS raised to ``threads``
    threads for the measurement (the engine holds it to one thread otherwise); then
    ``settle_s`` idle seconds, so that the BLAS's threads, which poll for work a while after
    a GEMM, are asleep again before the next step starts: on 2 threads (ResNet-20 BP, batch
    128, 16 interleaved rounds, 2026-12-03) the step right after the GEMM took 0.559 s
    without the pause, 0.508 s with it, 0.503 s with no GEMM before."""
    from threadpoolctl import threadpool_limits

    from .worker import run_gemm

    cfg = {"size": size, "device": "cpu", "impl": "numpy", "threads": threads,
           "timer": clock}

    def measure() -> float:
        with threadpool_limits(limits=int(threads), user_api="blas"):
            peak = run_gemm(cfg)["gflops_max"]
        time.sleep(settle_s)
        return peak
    return measure


def compare(rules, model: str = "resnet20", batch: int = 128, threads: int = 1,
            rounds: int = 6, steps: int = 3, warmup: int = 2, clock: str = "wall",
            device: str = "cpu", before_ref=None, at_round=None) -> dict:
    """Interleaved step times of ``rules``: the engine's (names of
    :func:`minigrad_pfa.bench.suite.rule_spec`) and PyTorch's (``"torch:bp"``).

    ``clock``: "wall", or "cpu" (the process's CPU time, only with ``threads == 1``, where
    it is the step's own work). ``before_ref``: called right before the first rule's steps
    in every round (untimed; the benchmark measures the GEMM peak there, :func:`gemm_peak`).
    ``at_round``: called with k at the start of round k and with ``rounds`` after the last
    (:func:`run_samestep` reads the machine's busy time there, round by round).

    Returns
    -------
    dict rule -> {"step_s": median over all timed steps, "round_s": [median per round],
    "ratio": step_s / the first rule's, "round_ratios": [per-round ratio]}.
    """
    from .regimes import round_order

    rules = list(rules)
    if len(rules) < 2:
        raise ValueError(f"samestep: compare at least two rules, got {rules!r}")
    if len(set(rules)) != len(rules):
        raise ValueError(f"samestep: a rule given twice in {rules!r}")
    if clock not in CLOCKS:
        raise ValueError(f"samestep: clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    if clock == "cpu" and (int(threads) != 1 or device != "cpu"):
        raise ValueError("samestep: the cpu clock needs one thread on the CPU (CPU time sums "
                         f"over threads), got {threads} thread(s) on {device}")
    now = CLOCKS[clock]
    cfg = {"model": model, "threads": threads, "device": device, "batch": batch}
    steppers = {r: _stepper(r, cfg) for r in rules}
    for r in rules:
        for _ in range(warmup):
            steppers[r]()
    times = {r: [] for r in rules}
    for k in range(rounds):
        if at_round is not None:
            at_round(k)
        for r in round_order(rules, k):
            if before_ref is not None and r == rules[0]:
                before_ref()
            ts = []
            for _ in range(steps):
                t0 = now()
                steppers[r]()
                ts.append(now() - t0)
            times[r].append(ts)
    if at_round is not None:
        at_round(rounds)
    ref = rules[0]
    med = {r: statistics.median(t for ts in times[r] for t in ts) for r in rules}
    per_round = {r: [statistics.median(ts) for ts in times[r]] for r in rules}
    return {r: {"step_s": med[r], "round_s": per_round[r], "ratio": med[r] / med[ref],
                "round_ratios": [a / b for a, b in zip(per_round[r], per_round[ref])]}
            for r in rules}


def samestep_records(block: dict) -> list:
    """The same-process comparisons of a benchmark regime block (or a regime's view of the
    run): ``block["samesteps"]``, or the one ``block["samestep"]`` of runs from before
    PyTorch's BP and the other batches were compared in one process."""
    if block.get("samesteps") is not None:
        return list(block["samesteps"])
    return [block["samestep"]] if block.get("samestep") else []


def spread(result: dict) -> float | None:
    """max / min - 1 of the PFA rules' median steps (None with fewer than two)."""
    pfa = [v["step_s"] for r, v in result.items() if r.startswith("pfa-r")]  # the engine's
    return max(pfa) / min(pfa) - 1 if len(pfa) >= 2 else None


def run_samestep(cfg: dict) -> dict:
    """The benchmark worker's kind ``samestep``: :func:`compare` of ``cfg["rules"]`` with the
    cores other processes kept busy meanwhile (``round_foreign_cores``, round by round: the
    machine's busy time from /proc/stat minus this process's CPU time, per wall second;
    ``foreign_cores`` the largest, as a step's record keeps its worst round).

    ``cfg``: rules, model, batch, threads, rounds, steps, warmup, timer ("wall" / "cpu"),
    device, and optionally ``gemm_size``: the GEMM peak (:func:`gemm_peak`) measured right
    before the first rule's steps in every round, so that the fraction of the peak that
    rule's step reaches is a ratio of two measurements a fraction of a second apart.
    Returns the configuration's fields with ``rules`` (:func:`compare`'s result),
    ``spread``, ``foreign_cores``, ``round_foreign_cores`` and, with ``gemm_size``,
    ``gemm_round_gflops`` (one peak per round) and ``gemm_repeats``.
    """
    from .worker import GEMM_REPEATS, foreign_cores, machine_busy_s

    timer, size = cfg.get("timer", "wall"), cfg.get("gemm_size")
    peaks, before = [], None
    if size:
        measure = gemm_peak(int(size), int(cfg["threads"]), timer)

        def before():
            peaks.append(measure())

    marks = []  # (machine busy s, this process's CPU s, wall s) at every round's edges

    def at_round(k):
        marks.append((machine_busy_s(), time.process_time(), time.perf_counter()))

    res = compare(cfg["rules"], cfg["model"], int(cfg["batch"]), int(cfg["threads"]),
                  int(cfg["rounds"]), int(cfg["steps"]), int(cfg.get("warmup", 2)),
                  timer, cfg.get("device", "cpu"), before, at_round)
    # the cores other processes kept busy in each round; the worst round counts, as for the
    # per-process records (one busy stretch averaged over the whole comparison would hide)
    per_round = [foreign_cores(a[0], b[0], b[1] - a[1], b[2] - a[2])
                 for a, b in zip(marks, marks[1:])]
    foreign = None if not per_round or None in per_round else max(per_round)
    keys = ("kind", "model", "batch", "threads", "rounds", "steps", "timer", "device")
    out = dict({k: cfg.get(k) for k in keys}, rules=res, spread=spread(res),
               foreign_cores=foreign, round_foreign_cores=per_round)
    if size:
        out.update(gemm_size=int(size), gemm_round_gflops=peaks, gemm_repeats=GEMM_REPEATS)
    return out


def main(argv=None) -> int:
    import argparse

    from ..cli import add_cpu_kernels_argument
    from ..cpu.threads import usable_cores
    from ..jit import set_cpu_kernels

    p = argparse.ArgumentParser(prog="python -m minigrad_pfa.bench.samestep",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", default="bp,pfa-r1,pfa-r10,pfa-r30",
                   help="comma-separated; the first is the reference; torch:bp is PyTorch's "
                        "autograd BP step")
    p.add_argument("--model", default="resnet20", choices=("resnet20", "mlp"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=usable_cores())
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=3, help="timed steps per rule and round")
    add_cpu_kernels_argument(p)
    a = p.parse_args(argv)
    if a.cpu_kernels:
        set_cpu_kernels(a.cpu_kernels)
    rules = [r.strip() for r in a.rules.split(",") if r.strip()]
    res = compare(rules, a.model, a.batch, a.threads, a.rounds, a.steps)
    print(f"{a.model} batch {a.batch}, {a.threads} thread(s), {a.rounds} interleaved rounds of "
          f"{a.steps} steps per rule, one process (wall clock)")
    for r, v in res.items():
        print(f"{label(r):22s} {v['step_s'] * 1e3:9.1f} ms  x {label(rules[0])} "
              f"{v['ratio']:.3f}  rounds " + " ".join(f"{x:.2f}" for x in v["round_ratios"]))
    s = spread(res)
    if s is not None:
        print(f"PFA spread over the r given: {s:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
