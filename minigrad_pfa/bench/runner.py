"""``minigrad-pfa bench``: training-step time, peak memory and GFLOP/s of this engine
against PyTorch, side by side in one run.

Every configuration (:func:`minigrad_pfa.bench.suite.build_suite`) runs in a fresh
subprocess (:mod:`minigrad_pfa.bench.worker`) with the same thread environment, set
*before* NumPy / PyTorch load their BLAS. One run also measures a float32 GEMM peak and
the data loader's throughput, and records the machine (CPU, BLAS and its observed thread
count, load average at the start and the end). Figures from one run are compared as
ratios: on a shared machine absolute times drift with the load, ratios much less.

JSON written by ``--json FILE``::

    {"machine": {...}, "gemm_peak_gflops": float, "gemm": {...}, "loader": {...},
     "records": [{"model", "rule", "impl", "device", "batch", "step_s", "peak_mb",
                  "gflops", ...}, ...], "profiles": [...], "targets": [...]}
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ..cpu.machine import cpu_model
from .regimes import ROUNDS, regime_threads, regime_timer, regime_view, run_interleaved
from .samestep import label, samestep_records
from .suite import GEMM_SIZE, build_suite
from .targets import evaluate_targets, format_targets
from .worker import MARK

#: environment variables through which BLAS / OpenMP runtimes read their thread count
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

#: environment variables that choose OpenBLAS's kernel / cache model (recorded per run:
#: set on some machines for old OpenBLAS builds, they can slow a current one)
BLAS_KERNEL_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")



def worker_env(threads: int, cpu_kernels: str | None = None) -> dict:
    """The subprocess environment: threads pinned, the CPU kernels chosen (``None``: as
    this process's environment says), this package importable."""
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(int(threads))
    if cpu_kernels is not None:
        from ..jit import CPU_KERNELS_ENV
        env[CPU_KERNELS_ENV] = cpu_kernels
    root = str(Path(__file__).resolve().parents[2])  # the directory holding minigrad_pfa/
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                else "")
    return env


def run_worker(cfg: dict, env: dict, timeout_s: float) -> dict:
    """Run one configuration in a fresh process; its result, or ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "minigrad_pfa.bench.worker", json.dumps(cfg)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
    return {"error": f"worker exited with status {proc.returncode} after "
                     f"{time.perf_counter() - t0:.1f} s: " + " | ".join(tail)}


def _memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        return None


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10)
        if out.returncode == 0:
            return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def _loadavg():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_block(mode: str, device: str, threads: int) -> dict:
    import numpy as np
    torch_spec = importlib.util.find_spec("torch")
    block = {"node": platform.node(), "processor": cpu_model(), "cpus": os.cpu_count(),
             "cpus_usable": (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else os.cpu_count()),
             "memory_gb": _memory_gb(), "os": platform.platform(),
             "python": platform.python_version(), "numpy": np.__version__,
             "torch_installed": torch_spec is not None, "threads": int(threads),
             "thread_env": {v: str(int(threads)) for v in THREAD_VARS},
             "device_kind": device, "mode": mode,
             "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
             "git_commit": _git_commit(), "load_average_start": _loadavg()}
    if device == "cuda":
        from ..backend import device_module  # the CuPy stand-in in tests
        cp = device_module()
        props = cp.cuda.runtime.getDeviceProperties(0)
        block["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) \
            else str(props["name"])
        block["cupy"] = cp.__version__
    return block


def _kernel(pools) -> str:
    """The OpenBLAS kernel (threadpoolctl's architecture) in a short phrase."""
    arch = [p.get("architecture") for p in pools or [] if p.get("internal_api") == "openblas"]
    return f"kernel {arch[0]}" if arch and arch[0] else "kernel unknown"




def _describe(rec: dict) -> str:
    head = f"{rec.get('model')} {rec.get('rule')} [{rec.get('impl')}] batch {rec.get('batch')}"
    if rec.get("variants"):
        head += " + " + "+".join(rec["variants"])
    if rec.get("error"):
        return f"{head}: ERROR {rec['error']}"
    t = rec["step_s"]
    ts = f"{t * 1e3:.2f} ms" if t < 0.1 else f"{t:.3f} s"
    other = "wall" if rec["timer"] == "cpu" else "cpu"
    o = rec[f"step_{other}_s"]
    return (f"{head}: {ts}/step ({rec['timer']}, median of {len(rec['step_times_s'])}; "
            f"{other} {o * 1e3:.2f} ms), peak "
            f"{rec['peak_mb']:.0f} MB, {rec['gflops']:.1f} GFLOP/s, load {rec['load1']:.1f}")


def run_bench(quick: bool = False, device: str = "cpu", threads: int | None = None,
              json_path=None, markdown_path=None, rounds: int | None = None,
              profile: bool = False, proposals: bool = False, loader: bool = True,
              mode: str | None = None, timer: str = "auto", timeout_s: float = 1800.0,
              log=print, host_syncs: bool = True, one_thread: bool = True,
              cpu_kernels: str | None = None) -> dict:
    """Run the benchmark and return its JSON-able result.

    Parameters
    ----------
    quick : bool
        The ``--quick`` suite (about 3 minutes on one thread).
    device : {"cpu", "cuda"}
        ``cuda``: the engine on CuPy against PyTorch on the GPU.
    threads : int, optional
        BLAS / OpenMP / PyTorch threads of every worker (default: all usable CPUs).
    json_path, markdown_path : path, optional
        Where to write the JSON and the Markdown report (:mod:`.report_md`).
    rounds : int, optional
        Run the whole suite this many interleaved rounds and pool each configuration's
        steps over them (default :data:`.regimes.ROUNDS` of the mode).
    profile : bool
        Add cProfile runs of the engine's ResNet-20 BP and PFA (r = 10) steps.
    proposals : bool
        Add the same steps under the prototype speed-ups of :mod:`.proto` (CPU).
    loader : bool
        Include the data-loader benchmark.
    host_syncs : bool
        Count host synchronisations per training step of every rule on the CuPy stand-in
        (:mod:`.host_syncs`; in this process, seconds).
    mode : {"full", "quick", "tiny"}, optional
        Overrides ``quick``; ``tiny`` is the test suite's seconds-long smoke run.
    timer : {"auto", "wall", "cpu"}
        What ``step_s`` (and the GEMM peak) measure: wall-clock time, or the worker's CPU
        time (``time.process_time``; needs ``threads=1`` on the CPU, where it is the
        step's own work whatever other processes do). Both are always recorded
        (``step_wall_s``, ``step_cpu_s``). ``auto``: CPU time for the one-thread regime,
        wall clock for the all-core one (:func:`.regimes.regime_timer`).
    one_thread : bool
        With ``threads > 1`` on the CPU, also measure every configuration with one thread
        (the second regime, interleaved with the first: :mod:`.regimes`).
    cpu_kernels : {"numpy", "numba"}, optional
        The engine's CPU kernels in every worker (:mod:`minigrad_pfa.jit`; default:
        ``$MINIGRAD_PFA_CPU_KERNELS``, else numpy). PyTorch's side is the same either way.
    timeout_s : float
        Per-worker time limit.
    """
    mode = mode or ("quick" if quick else "full")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        from ..backend import check_device
        check_device("cuda")  # a clear DeviceError without CuPy or a GPU
    if threads is None:
        threads = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count()) or 1
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    rounds = ROUNDS[mode] if rounds is None else rounds
    if int(rounds) < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    threads, rounds = int(threads), int(rounds)
    if timer not in ("auto", "wall", "cpu"):
        raise ValueError(f"timer must be 'auto', 'wall' or 'cpu', got {timer!r}")
    if timer == "cpu" and (threads != 1 or device != "cpu"):
        raise ValueError("timer 'cpu' needs --threads 1 on --device cpu: CPU time sums over "
                         f"threads and does not see GPU work (got {threads} threads, "
                         f"device {device})")
    regimes = regime_threads(threads, device, one_thread)
    timers = {t: regime_timer(timer, t, device) for t in regimes}
    if timers[threads] == "cpu" and (threads != 1 or device != "cpu"):
        raise ValueError("timer 'cpu' needs --threads 1 on --device cpu: CPU time sums over "
                         f"threads and does not see GPU work (got {threads} threads, "
                         f"device {device})")
    from ..jit import CPU_KERNELS_ENV, check_cpu_kernels
    cpu_kernels = check_cpu_kernels(cpu_kernels or os.environ.get(CPU_KERNELS_ENV, "").strip()
                                    or "numpy", "--cpu-kernels")
    t_start = time.perf_counter()
    machine = machine_block(mode, device, threads)
    machine["cpu_kernels"] = cpu_kernels
    machine["round_order"] = "alternating"  # regimes.run_interleaved: odd rounds reversed
    machine["rounds"] = rounds
    machine["timer"] = timers[threads]
    machine["blas_env"] = {v: os.environ.get(v) for v in BLAS_KERNEL_VARS}
    parts = ["minigrad-pfa bench", {"full": "", "quick": "--quick", "tiny": "--tiny"}[mode],
             f"--device {device} --threads {threads}",
             f"--timer {timer}" if timer != "auto" else "",
             f"--rounds {rounds}" if rounds != ROUNDS[mode] else "",
             "--profile" if profile else "", "--proposals" if proposals else "",
             "" if loader else "--no-loader", "" if one_thread else "--no-one-thread",
             f"--cpu-kernels {cpu_kernels}" if cpu_kernels != "numpy" else ""]
    machine["command"] = " ".join(p for p in parts if p)  # to reproduce this run
    torch_ok = machine["torch_installed"]
    log(f"minigrad-pfa bench ({mode}, {device}, regimes {regimes} thread(s), {rounds} "
        f"interleaved round(s)) on {machine['processor']}"
        f", {machine['cpus']} CPUs, load average {machine['load_average_start']}")
    if not torch_ok:
        log("PyTorch is not installed: the PyTorch comparisons are skipped "
            "(pip install torch==2.13.0)")
    envs = {t: worker_env(t, cpu_kernels) for t in regimes}

    def run(cfg, t=threads):
        return run_worker(dict(cfg, threads=t, timer=timers[t]), envs[t], timeout_s)

    def gemm_cfg(impl):  # "numpy": the engine's array library (CuPy on --device cuda)
        return {"kind": "gemm", "impl": impl, "size": GEMM_SIZE[mode], "device": device}

    # the GEMM peak of each regime, in the same thread environment as its steps (measured
    # again in every round, below; this first one is the machine's record)
    blocks = {}
    for t in regimes:
        gemm = {"numpy" if device == "cpu" else "cupy": run(gemm_cfg("numpy"), t)}
        if torch_ok:
            gemm["torch"] = run(gemm_cfg("torch"), t)
        engine_gemm = next(iter(gemm.values()))
        blocks[t] = {"threads": t, "timer": timers[t], "gemm": gemm,
                     "gemm_peak_gflops": engine_gemm.get("gflops_max"),
                     "blas": engine_gemm.get("blas"),
                     "blas_threads_observed": engine_gemm.get("blas_threads"),
                     "blas_pools": engine_gemm.get("blas_pools")}
        if engine_gemm.get("error"):
            log(f"GEMM peak ({t} threads): ERROR {engine_gemm['error']}")
        else:
            log(f"float32 GEMM {GEMM_SIZE[mode]}, {t} thread(s): "
                f"{engine_gemm['gflops_max']:.1f} GFLOP/s (best of {engine_gemm['repeats']}; "
                f"{engine_gemm.get('blas')}, BLAS threads {engine_gemm.get('blas_threads')}, "
                f"{_kernel(engine_gemm.get('blas_pools'))})" + (
                    f"; PyTorch {gemm['torch'].get('gflops_max', float('nan')):.1f} GFLOP/s"
                    if "torch" in gemm else ""))
    for key in ("blas", "blas_threads_observed", "blas_pools"):
        machine[key] = blocks[threads][key]

    suite = build_suite(mode, device, torch_ok, profile=profile, proposals=proposals)
    steps = [c for c in suite if c["kind"] == "step"]
    # the GEMM peak once per round and regime, right before the reference ResNet-20 BP step:
    # a peak measured once, minutes from the steps, can fall into another phase of a shared
    # VM (run G: NumPy's 2-thread peak read 150.9 GFLOP/s at the start and PyTorch's 224.6
    # seconds later; run H: 178.0 at the start, 244.4 after the steps), so the GEMM fraction
    # compares each round's step with that round's peak (.targets.round_values) and the
    # pooled figure uses the median of the rounds' peaks. The GEMM precedes the engine's
    # step, not PyTorch's: if a full-load GEMM slows the process after it, the engine's
    # figures (its BP / PyTorch ratio, its GEMM fraction) carry that cost, not PyTorch's
    round_peaks = {t: [] for t in regimes}

    def run_round(cfg, t):
        if cfg.get("gemm_before"):  # the step the GEMM-fraction target reads (.suite)
            g = run(gemm_cfg("numpy"), t)
            round_peaks[t].append(g.get("gflops_max"))
            log(f"  [{t} thread{'s' if t > 1 else ''}] float32 GEMM peak: " + (
                g["error"] if g.get("error") else f"{g['gflops_max']:.1f} GFLOP/s"))
        return run(cfg, t)

    pooled = run_interleaved(steps, regimes, rounds, run_round, log, _describe)
    # the rounds' peaks (run_round): their median is the regime's peak
    for t in regimes:
        peaks = [p for p in round_peaks[t] if p]
        blocks[t]["gemm_round_gflops"] = round_peaks[t]
        if peaks:
            blocks[t]["gemm_peak_gflops"] = statistics.median(peaks)
    for t in regimes:
        peak = blocks[t]["gemm_peak_gflops"]
        for r in pooled[t]:
            if not r.get("error") and peak:
                r["gemm_fraction"] = r["gflops"] / peak
        blocks[t]["records"] = pooled[t]
    records = pooled[threads]
    peak, gemm = blocks[threads]["gemm_peak_gflops"], blocks[threads]["gemm"]

    # steps compared in one process, each comparison once per regime (.samestep): what the
    # ratio targets read (PFA / BP, the spread over r, BP / PyTorch's BP)
    for t in regimes:
        blocks[t]["samesteps"] = []
    for cfg in (c for c in suite if c["kind"] == "samestep"):
        for t in regimes:
            res = run(cfg, t)
            if res.get("error"):  # which comparison failed, for the report and the targets
                res = dict({k: cfg[k] for k in ("kind", "model", "batch", "rules")}, **res)
            blocks[t]["samesteps"].append(res)
            log(f"  {cfg['model']} batch {cfg['batch']} in one process, {t} thread(s): " + (
                res["error"] if res.get("error") else ", ".join(
                    f"{label(r)} {v['step_s']:.4g} s" for r, v in res["rules"].items())
                + (f"; PFA spread {res['spread']:.3f}" if res.get("spread") is not None
                   else "")))

    # profiles with one thread (the per-core work, by phase), else the only regime
    t_prof = regimes[-1]
    profiles = []
    for cfg in (c for c in suite if c["kind"] == "profile"):
        res = run(cfg, t_prof)
        profiles.append(res)
        log(f"  profiled {cfg['model']} {cfg['rule']}: " + (
            res["error"] if res.get("error") else f"{res['step_s_profiled']:.3f} s/step"))

    # the all-core breakdown (.allcore): operations in every regime, the machine at T
    allcore = None
    ops_cfgs = [c for c in suite if c["kind"] == "ops"]
    if ops_cfgs:
        # as many rounds as the suite, regimes alternating, the least disturbed run of each
        # (one run each read 1.19x for 2 threads over 1 on a loaded VM where 1.72x was
        # measured minutes before and after: run E, commit 004216e, in the README)
        from .allcore import fastest_run
        from .regimes import round_order
        ops_runs = {t: [] for t in regimes}
        for k in range(rounds):
            for t in round_order(regimes, k):
                ops_runs[t].append(run(ops_cfgs[0], t))
        allcore = {"ops": {str(t): fastest_run(rs) for t, rs in ops_runs.items()}}
        for c in (c for c in suite if c["kind"] == "scaling"):
            allcore["scaling"] = run(c, threads)
        for t, r in allcore["ops"].items():
            log(f"  operations at {t} thread(s): " + (
                r["error"] if r.get("error") else f"{r['step_s']:.3f} s/step"))

    loader_res = None
    if loader and mode != "tiny":
        loader_res = run({"kind": "loader", "device": "cpu"})
        if loader_res.get("error"):
            log(f"loader: ERROR {loader_res['error']}")
        else:
            log(f"loader: CIFAR augmentation "
                f"{loader_res['cifar_augment']['images_per_s']:,.0f} images/s")

    sync_rows = None
    if host_syncs:
        from .host_syncs import measure_all
        log("host synchronisations per training step (CuPy stand-in):")
        sync_rows = measure_all(mode, log=log)

    machine["load_average_end"] = _loadavg()
    machine["wall_s"] = time.perf_counter() - t_start
    data = {"machine": machine, "gemm_peak_gflops": peak, "gemm": gemm,
            "records": records, "profiles": profiles, "loader": loader_res,
            "host_syncs": sync_rows, "regimes": [blocks[t] for t in regimes],
            "allcore": allcore}
    for t in regimes:
        blocks[t]["targets"] = evaluate_targets(regime_view(data, blocks[t]))
        log(f"targets ({t} thread{'s' if t > 1 else ''}):")
        for line in format_targets(blocks[t]["targets"]):
            log("  " + line)
    data["targets"] = blocks[threads]["targets"]
    log(f"load average at the end {machine['load_average_end']}; "
        f"{machine['wall_s']:.0f} s in all")
    if json_path:
        Path(json_path).write_text(json.dumps(data, indent=1) + "\n")
        log(f"wrote {json_path}")
    if markdown_path:
        from .report_md import render
        Path(markdown_path).write_text(render(data, json_name=str(json_path or "")))
        log(f"wrote {markdown_path}")
    return data


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="a short suite (a few minutes on one thread): ResNet-20 at batch 32 "
                        "(bp, PFA r = 1/10/30 and literal, PyTorch bp and published PFA) "
                        "and the MLP (bp, pfa-r10, PyTorch bp)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: NumPy vs PyTorch on the CPU; cuda: CuPy vs PyTorch on the GPU")
    p.add_argument("--json", metavar="FILE", default=None, help="write the results as JSON")
    p.add_argument("--markdown", metavar="FILE", default=None,
                   help="write the Markdown report (docs/performance.md)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads of the all-core regime: the engine's (minigrad_pfa.cpu), "
                        "BLAS/OpenMP's and torch.set_num_threads (default: all usable "
                        "CPUs); a one-thread regime runs too unless --no-one-thread")
    p.add_argument("--no-one-thread", action="store_true",
                   help="skip the one-thread regime (measure only --threads)")
    p.add_argument("--rounds", type=int, default=None, metavar="K",
                   help="interleaved rounds through the suite, steps pooled over them "
                        "(default: 3 full, 2 --quick)")
    p.add_argument("--profile", action="store_true",
                   help="also cProfile the engine's ResNet-20 BP and PFA (r = 10) steps")
    p.add_argument("--proposals", action="store_true",
                   help="also measure the ResNet-20 BP and PFA steps and the MLP BP step "
                        "under the prototype engine speed-ups of minigrad_pfa.bench.proto "
                        "(CPU)")
    p.add_argument("--no-loader", action="store_true", help="skip the data-loader benchmark")
    p.add_argument("--no-host-syncs", action="store_true",
                   help="skip counting host syncs per step on the CuPy stand-in")
    p.add_argument("--timer", choices=("auto", "wall", "cpu"), default="auto",
                   help="what the step times measure: wall-clock time, or the worker's CPU "
                        "time, which needs one thread and is robust to other processes "
                        "sharing the cores (both are recorded either way); auto (default): "
                        "CPU time in the one-thread regime, wall clock otherwise")
    from ..cli import add_cpu_kernels_argument
    add_cpu_kernels_argument(p)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests only


def run_from_args(args) -> int:
    data = run_bench(quick=args.quick, device=args.device, threads=args.threads,
                     json_path=args.json, markdown_path=args.markdown, rounds=args.rounds,
                     profile=args.profile, proposals=args.proposals,
                     loader=not args.no_loader,
                     mode="tiny" if args.tiny else None, timer=args.timer,
                     host_syncs=not args.no_host_syncs,
                     one_thread=not args.no_one_thread, cpu_kernels=args.cpu_kernels)
    return 1 if failed_records(data) else 0


def failed_records(data: dict) -> list:
    """The records of a benchmark run that failed, wholly (``error``) or in some of their
    interleaved rounds (``round_errors``, :func:`.regimes.pool_rounds`): any makes the run's
    exit status a failure."""
    return [r for r in sum((b["records"] for b in data["regimes"]), []) +
            sum((samestep_records(b) for b in data["regimes"]), []) +
            data["profiles"] + (data["host_syncs"] or [])
            if r.get("error") or r.get("round_errors")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minigrad_pfa.bench.runner",
                                description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
