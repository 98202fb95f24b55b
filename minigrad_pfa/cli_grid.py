"""``minigrad-pfa grid CONFIG... [--seeds ...] [--set K=V ...] [--jobs N] [--out DIR]``."""
from __future__ import annotations

import shlex


def add_parser(sub):
    p = sub.add_parser(
        "grid", help="run configs x seeds (skips finished runs, resumes interrupted ones)",
        description="Run every config with every seed, each in OUT/<config name>/seed<k> "
                    "with its output in log.txt. Runs with a results.json are skipped, runs "
                    "with a latest.npz are resumed; runs go in subprocesses, --jobs at a "
                    "time, each with max(1, cpus // jobs) threads unless "
                    "MINIGRAD_PFA_THREADS / OPENBLAS_NUM_THREADS / OMP_NUM_THREADS are set "
                    "or --threads is given. "
                    "Exit status 1 if any run failed.")
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML configs")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds for every config (default: each config's 'seeds' list)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a key of every config")
    p.add_argument("--jobs", "-j", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--out", default="runs", help="parent directory (default: runs)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="threads per run (the engine's and BLAS's; default: cpus // jobs, "
                        "or the environment's MINIGRAD_PFA_THREADS)")
    from .cli import add_cpu_kernels_argument
    add_cpu_kernels_argument(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and the commands, run nothing")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: subprocesses here (--jobs at a time); ray: one Ray task per "
                        "run, --threads CPUs each (default 1), on a local Ray instance or "
                        "the cluster of --address (docs/scaling.md)")
    p.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="--backend ray: join this Ray cluster (default: start a local one)")
    p.set_defaults(func=_cmd_grid)


def _cmd_grid(args):
    from .grid import plan_grid, run_grid, summary_table, train_command

    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.address and args.backend != "ray":
        raise ValueError("--address is for --backend ray")
    if args.backend == "ray" and args.jobs != 1:
        raise ValueError("--jobs is for the local backend; with --backend ray every run is "
                         "submitted at once and Ray places them by --threads (CPUs per run)")
    if args.cpu_kernels is not None:  # a missing Numba fails here, before any run starts
        from .jit import check_cpu_kernels
        check_cpu_kernels(args.cpu_kernels, "--cpu-kernels")
    runs = plan_grid(args.configs, args.seeds, args.overrides, args.out, args.device)
    if args.dry_run:
        for run in runs:
            what = ("skip (complete)" if run.state == "complete" else
                    f"NOT RUN: {run.message}" if run.state in ("changed", "mixed", "running") else
                    shlex.join(train_command(run, args.device)))
            print(f"{run.label:32s} {run.state:9s} {what}")
        return 0
    try:
        if args.backend == "ray":
            from .distributed.ray_grid import run_grid_ray
            run_grid_ray(runs, address=args.address, device=args.device, threads=args.threads,
                         cpu_kernels=args.cpu_kernels)
        else:
            run_grid(runs, jobs=args.jobs, device=args.device, threads=args.threads,
                     cpu_kernels=args.cpu_kernels)
    except KeyboardInterrupt:
        print(summary_table(runs))
        raise
    print(summary_table(runs))
    return 1 if any(r.failed for r in runs) else 0
