"""Scaling benchmark: ResNet-20, batch 128, data-parallel ranks against one process.

    python -m minigrad_pfa.distributed.bench [--rounds 3] [--steps 6] [--rule bp] [--sync-bn]

Configurations, each a fresh process (BLAS threads are fixed when NumPy loads):

    1x1      one process, one thread                 (OPENBLAS_NUM_THREADS=1)
    1x2      one process, two BLAS threads           (OPENBLAS_NUM_THREADS=2)
    1x2eng   one process, two engine threads         (minigrad_pfa.cpu.threads, if present)
    2x1      mpiexec -n 2, one thread per rank       (global batch 128 = 2 x 64)

They run *interleaved*, round after round in a rotating order, so a shared machine's load
drifts over all of them alike; the figures are per-round ratios (their median over the
rounds) besides the median times. Each process builds the model on synthetic images
(3x32x32, float32), runs 2 warm-up steps, then times ``--steps`` steps (the median step
time is reported). The 2-rank run also reports

* all-reduce share: the time in the step's gradient all-reduce (packing included) over the
  step time, on rank 0; it includes waiting for the slower rank;
* pure all-reduce: the same buffer (0.27 M floats + 2) all-reduced 20 times right after a
  barrier, i.e. the communication alone.

Run time: about 2-4 minutes on an idle 2-core machine with the defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

BATCH = 128


# ---------------------------------------------------------------------- worker
def _worker(args) -> None:
    from ..nn.models import build_model, weight_layers
    from ..optim import build_optimizer
    from ..rules import attach_rules
    from ..train import train_step

    if args.engine_threads > 1:
        from ..cpu.threads import set_threads
        set_threads(args.engine_threads)
    group = None
    if args.distributed:
        from .comm import MPICommunicator
        from .parallel import DataParallel, shard_bounds
        group = DataParallel(MPICommunicator(timeout_s=600), sync_bn=args.sync_bn)
    model = build_model("resnet20", seed=0, dtype="float32")
    attach_rules(model, args.rule, seed=0, input_shape=(3, 32, 32))
    opt = build_optimizer("sgd", list(model.named_parameters(trainable_only=True)), lr=0.05,
                          momentum=0.9, weight_decay=5e-4)
    layers = list(weight_layers(model).values())
    model.train()
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(2):
        # channels-last memory, as the data loader yields
        x = rng.standard_normal((BATCH, 32, 32, 3), dtype=np.float32).transpose(0, 3, 1, 2)
        batches.append((x, rng.integers(0, 10, BATCH)))
    if group is not None:
        lo, hi = shard_bounds(BATCH, group.rank, group.size)
        batches = [(x[lo:hi], y[lo:hi]) for x, y in batches]
    times = []
    for i in range(2 + args.steps):
        x, y = batches[i % 2]
        if i == 2 and group is not None:
            group.comm.barrier()
            group.allreduce_s = 0.0
        t0 = time.perf_counter()
        if group is None:
            train_step(model, layers, opt, x, y)
        else:
            with group.active():
                train_step(model, layers, opt, x, y, group)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    out = {"step_s": statistics.median(times), "steps": len(times)}
    if group is not None:
        out["allreduce_s"] = group.allreduce_s / len(times)
        size = sum(int(p.data.size) for p in opt.named_params.values()) + 2
        buf = np.zeros(size, dtype=np.float32)
        pure = []
        for _ in range(20):
            group.comm.barrier()
            t0 = time.perf_counter()
            group.comm.allreduce_sum(buf)
            pure.append(time.perf_counter() - t0)
        out["pure_allreduce_s"] = statistics.median(pure)
        out["buffer_floats"] = size
        if group.rank != 0:
            return
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------- driver
def _configs(engine_threads_available: bool):
    cfgs = {"1x1": (1, 1, 1), "1x2": (1, 2, 1), "2x1": (2, 1, 1)}
    if engine_threads_available:
        cfgs["1x2eng"] = (1, 1, 2)
    return cfgs


def _run_one(name, ranks, blas, engine, args):
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(blas)
    cmd = [sys.executable, "-m", "minigrad_pfa.distributed.bench", "--worker",
           "--steps", str(args.steps), "--rule", args.rule,
           "--engine-threads", str(engine)]
    if args.sync_bn:
        cmd.append("--sync-bn")
    if ranks > 1:
        cmd = ["mpiexec", "-n", str(ranks)] + cmd + ["--distributed"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark {name} failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout)[-2000:]}")
    return json.loads(lines[-1][7:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minigrad_pfa.distributed.bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="timed steps per process")
    p.add_argument("--rule", default="bp")
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    if shutil.which("mpiexec") is None:
        raise SystemExit("no mpiexec on PATH: pip install 'minigrad_pfa[mpi]'")
    try:
        import minigrad_pfa.cpu.threads  # noqa: F401
        engine = True
    except ImportError:
        engine = False
    cfgs = _configs(engine)
    names = list(cfgs)
    rows = {n: [] for n in names}
    t_start = time.time()
    print(f"ResNet-20, batch {BATCH}, rule {args.rule}, sync_bn {args.sync_bn}: "
          f"{args.rounds} rounds x {len(names)} configurations, {args.steps} timed steps each")
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            res = _run_one(name, *cfgs[name], args)
            rows[name].append(res)
            extra = (f"  all-reduce {res['allreduce_s'] * 1e3:.1f} ms/step, pure "
                     f"{res['pure_allreduce_s'] * 1e3:.2f} ms" if "allreduce_s" in res else "")
            print(f"round {r + 1} {name:7s} {res['step_s']:.3f} s/step{extra}", flush=True)
    med = {n: statistics.median(x["step_s"] for x in rows[n]) for n in names}
    ratio = {n: statistics.median(a["step_s"] / b["step_s"] for a, b in zip(rows[n], rows["2x1"]))
             for n in names if n != "2x1"}
    two = rows["2x1"]
    share = statistics.median(x["allreduce_s"] / x["step_s"] for x in two)
    pure = statistics.median(x["pure_allreduce_s"] for x in two)
    print("\nmedian step time: " + ", ".join(f"{n} {med[n]:.3f} s" for n in names))
    for n, v in ratio.items():
        print(f"speed-up of 2 ranks x 1 thread over {n}: {v:.2f}x (median of per-round ratios)")
    print(f"all-reduce share of the 2-rank step: {100 * share:.1f}% (incl. waiting for the "
          f"other rank); pure all-reduce of {two[0]['buffer_floats']} floats: "
          f"{pure * 1e3:.2f} ms = {100 * pure / med['2x1']:.1f}% of the step")
    print(f"benchmark wall time {time.time() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "median_step_s": med, "speedup_of_2x1": ratio,
                       "allreduce_share": share, "pure_allreduce_s": pure}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
