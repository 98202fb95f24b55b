"""Grids: run a set of configs x seeds, skipping finished runs and resuming interrupted ones.

Layout: the run of config ``C`` (its ``name``) with seed ``k`` lives in ``OUT/<name>/seed<k>``
(different rules have different config names, so they never collide), with the usual run
files (:mod:`minigrad_pfa.train`) plus ``log.txt``, the run's stdout and stderr, appended to
on every attempt.

State of a run directory before the grid starts it (:func:`run_state`):

* ``complete``: it has results.json -- skipped;
* ``partial``: latest.npz but no results.json -- continued with ``train --resume``;
* ``new``: nothing usable -- started from scratch (with ``--overwrite`` when a run
  killed in its first epoch left files but no checkpoint: nothing of it can be continued);
* ``mixed``: its files carry more than one run id (:func:`minigrad_pfa.rundir.mixed_runs`,
  e.g. a checkpoint copied in from another run) -- never resumed or overwritten: reported
  as a failure, so the user looks at it;
* ``changed``: its saved config.yaml differs from what the grid would run now (another
  ``--set``, an edited config); never overwritten or mixed: reported as a failure, so the
  user deletes the directory or picks another ``--out``. The ``device`` key is ignored
  (a run may be confirmed on another device);
* ``running``: another live process holds its ``run.lock`` (:mod:`minigrad_pfa.runlock`:
  another grid, a manual ``train``) -- left alone, reported as ``busy``, not a failure.

Every run is a subprocess ``python -m minigrad_pfa.cli train ...`` (``--jobs N`` of them at
a time; ``--jobs 1`` is sequential): a crash or a divergence ends one run, not the grid;
each run gets its own log; and the thread count is set per child: ``MINIGRAD_PFA_THREADS``
(the engine's threads, ``train --threads``' default, :mod:`minigrad_pfa.cpu`) and, for
BLAS libraries that read them at load, ``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS`` and
``MKL_NUM_THREADS`` = ``max(1, cpus // jobs)``, unless the variable is already set in the
grid's environment (the user's explicit choice wins) or ``--threads`` is given (it wins
over both). Oversubscribing the cores (N processes x all-core threads) makes the runs many
times slower (``--jobs 2`` on 2 cores: one thread each), hence the default.
"""
from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

from .config import ConfigError, load_config
from .rundir import RunDirError, config_diff, mixed_runs, run_files
from .runlock import lock_owner

THREAD_VARS = ("MINIGRAD_PFA_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
               "MKL_NUM_THREADS")
#: config keys that may differ between a saved run and the grid's plan
IGNORED_KEYS = ("device",)


@dataclass
class GridRun:
    """One (config, seed) of a grid and what happened to it."""
    config: str
    seed: int
    name: str
    run_dir: str
    cfg: dict = field(repr=False)
    overrides: list = field(default_factory=list)
    state: str = "new"            # before: new / partial / complete / changed / running
    status: str = "pending"       # after: skipped / busy / done / resumed / failed / ...
    returncode: int | None = None
    message: str = ""
    started: float | None = None
    elapsed: float | None = None

    @property
    def label(self) -> str:
        return f"{self.name}/seed{self.seed}"

    @property
    def log(self) -> str:
        return os.path.join(self.run_dir, "log.txt")

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "changed", "mixed", "interrupted")


def cpu_count() -> int:
    """CPUs this process may use (affinity / cgroup aware where the OS says so)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_env(jobs: int, threads: int | None = None, base: dict | None = None,
               cpus: int | None = None, cpu_kernels: str | None = None) -> dict:
    """Environment of a child run: BLAS threads and an importable package.

    Parameters
    ----------
    jobs : int
        Runs at a time.
    threads : int, optional
        Force this many threads per run (overrides the environment).
    base : dict, optional
        Starting environment (default ``os.environ``).
    cpus : int, optional
        CPU count (default :func:`cpu_count`).
    cpu_kernels : str, optional
        ``$MINIGRAD_PFA_CPU_KERNELS`` of every run (``--cpu-kernels``, :mod:`minigrad_pfa.jit`).
    """
    env = dict(os.environ if base is None else base)
    n = int(threads) if threads else max(1, (cpus or cpu_count()) // max(1, int(jobs)))
    for var in THREAD_VARS:
        if threads or not env.get(var):
            env[var] = str(n)
    if cpu_kernels is not None:
        from .jit import CPU_KERNELS_ENV
        env[CPU_KERNELS_ENV] = cpu_kernels
    # the child runs `python -m minigrad_pfa.cli` from the grid's working directory:
    # make this package importable there even when it is not installed
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([root] + paths)
    return env


def _check_buildable(cfg: dict) -> None:
    """Validate what load_config leaves to run time (rule options, schedules, model name),
    so a typo fails the whole grid before any run starts."""
    from .nn.models import MODELS
    from .rules import parse_rule
    from .rules.registry import make_rule
    from .train import schedules_from_config

    spec = cfg["rule"]
    spec = dict(spec) if isinstance(spec, dict) else parse_rule(spec)
    spec.pop("layers", None)
    spec.pop("shallow", None)
    make_rule(spec.pop("name"), **spec)
    schedules_from_config(cfg)
    if cfg["model"]["name"] not in MODELS:
        raise ValueError(f"model.name {cfg['model']['name']!r} is not one of {sorted(MODELS)}")


def _same_config(a: dict, b: dict) -> list[str]:
    """Top-level keys (dotted one level down) where two resolved configs differ."""
    return config_diff(a, b, ignore=IGNORED_KEYS)


def run_state(run: GridRun) -> str:
    """``complete``, ``partial``, ``new``, ``changed``, ``mixed`` or ``running`` (module
    docstring); sets ``run.message`` for ``changed``, ``mixed`` and ``running``."""
    d = run.run_dir
    owner = lock_owner(d)
    if owner is not None:
        run.message = (f"{d} is being trained by process {owner.get('pid')} on "
                       f"{owner.get('host')} since {owner.get('since')}; left alone")
        return "running"
    try:
        mixed = mixed_runs(d) if os.path.isdir(d) else None
    except RunDirError as exc:
        mixed = str(exc)
    if mixed:
        run.message = (f"{d} holds files of different runs ({mixed}); not resumed: delete "
                       "it or use another --out")
        return "mixed"
    has_results = os.path.exists(os.path.join(d, "results.json"))
    has_latest = os.path.exists(os.path.join(d, "latest.npz"))
    saved = os.path.join(d, "config.yaml")
    if os.path.exists(saved):
        try:
            diff = _same_config(load_config(saved), run.cfg)
        except ConfigError as exc:
            diff = [f"(unreadable saved config: {exc})"]
        if diff:
            run.message = (f"{d} holds a run of a different config (differs in "
                           f"{', '.join(diff)}); delete it or use another --out")
            return "changed"
    if has_results:
        return "complete"
    return "partial" if has_latest else "new"


def plan_grid(configs, seeds=None, overrides=(), out: str = "runs",
              device: str | None = None) -> list[GridRun]:
    """Expand configs x seeds into runs (nothing is executed).

    Parameters
    ----------
    configs : sequence of str
        YAML config files.
    seeds : sequence of int, optional
        Seeds for every config; default each config's ``seeds`` list (or its ``seed``).
    overrides : sequence of str
        ``KEY=VALUE`` applied to every config (before the seed).
    out : str
        Parent directory: runs go to ``out/<name>/seed<k>``.
    device : {"cpu", "cuda"}, optional
        Overrides the configs' device.

    Raises
    ------
    ConfigError
        An invalid config (the message names the file and the key), or two configs with the
        same name (their runs would share directories).
    """
    extra = list(overrides) + ([f"device={device}"] if device else [])
    runs, owner = [], {}
    for path in configs:
        try:
            base = load_config(path, extra)
            _check_buildable(base)
        except (ConfigError, ValueError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        for seed in (list(seeds) if seeds else base["seeds"] or [base["seed"]]):
            sets = list(overrides) + [f"seed={int(seed)}"]
            cfg = load_config(path, sets + ([f"device={device}"] if device else []))
            run_dir = os.path.join(out, cfg["name"], f"seed{int(seed)}")
            if run_dir in owner:
                raise ConfigError(
                    f"{owner[run_dir]} and {path} both write {run_dir} (same name "
                    f"{cfg['name']!r} and seed); give the configs different names")
            owner[run_dir] = path
            run = GridRun(path, int(seed), cfg["name"], run_dir, cfg, sets)
            run.state = run_state(run)
            runs.append(run)
    return runs


def train_command(run: GridRun, device: str | None = None,
                  python: str = sys.executable) -> list[str]:
    """The child's command line: a fresh ``train`` or a ``train --resume``."""
    head = [python, "-m", "minigrad_pfa.cli", "train"]
    if run.state == "partial":
        # the saved config is the planned one (run_state checked it, device aside)
        return head + ["--resume", run.run_dir, "--no-progress"] + \
            (["--device", device] if device else [])
    cmd = head + [run.config, "--run-dir", run.run_dir, "--no-progress"]
    if run_files(run.run_dir):
        # "new" with files: started, killed before its first checkpoint (run_state checked
        # its config and identity), so nothing of it can be continued
        cmd.append("--overwrite")
    for s in run.overrides:
        cmd += ["--set", s]
    if device:
        cmd += ["--device", device]
    return cmd


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 4096))
            lines = [ln for ln in fh.read().decode("utf-8", "replace").splitlines()
                     if ln.strip()]
        return lines[-1].strip() if lines else ""
    except OSError:
        return ""


def _read_results(run: GridRun) -> dict | None:
    import json
    try:
        with open(os.path.join(run.run_dir, "results.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def run_grid(runs: list[GridRun], jobs: int = 1, device: str | None = None,
             threads: int | None = None, echo=print, poll_s: float = 0.2,
             launcher=None, cpu_kernels: str | None = None) -> list[GridRun]:
    """Execute the runs that need it (``jobs`` subprocesses at a time) and set their status.

    ``launcher(run, cmd, env)``, when given, starts a run elsewhere and returns an object
    with Popen's ``poll``, ``wait``, ``send_signal`` and ``returncode`` (the Ray backend,
    :mod:`minigrad_pfa.distributed.ray_grid`); default: a local subprocess.

    Runs already ``complete`` are skipped; ``changed`` ones fail without running. A
    KeyboardInterrupt waits for the children (which checkpoint and exit on the same
    Ctrl-C), marks unfinished runs ``interrupted`` and is re-raised.
    """
    env = thread_env(jobs, threads, cpu_kernels=cpu_kernels)
    todo = []
    for run in runs:
        if run.state == "complete":
            run.status = "skipped"
        elif run.state == "running":
            run.status = "busy"
        elif run.state in ("changed", "mixed"):
            run.status = run.state
        else:
            todo.append(run)
    total, active, counter = len(todo), {}, 0
    echo(f"grid: {len(runs)} runs, {len(runs) - total} need nothing, {total} to run, "
         f"{jobs} at a time, {env['MINIGRAD_PFA_THREADS']} engine thread(s) each")
    for run in runs:
        if run.status in ("changed", "mixed", "busy"):
            echo(f"  {run.label}: NOT RUN: {run.message}")
    queue = list(todo)
    try:
        while queue or active:
            while queue and len(active) < max(1, jobs):
                run = queue.pop(0)
                counter += 1
                active[run.label] = (run, _start(run, device, env, counter, total, echo,
                                                     launcher))
            _pause(poll_s)
            for label, (run, proc) in list(active.items()):
                if proc.poll() is None:
                    continue
                del active[label]
                _finish(run, proc, echo)
    except KeyboardInterrupt:
        for run, proc in active.values():
            _stop(proc)
            run.status, run.returncode = "interrupted", proc.returncode
            run.message = "interrupted; run the grid again to resume"
        for run in queue:
            run.status, run.message = "interrupted", "not started"
        raise
    return runs


def _pause(seconds: float) -> None:
    """Wait between polls of the children (where a Ctrl-C usually lands)."""
    time.sleep(seconds)


def _stop(proc) -> None:
    """End a child after the grid was interrupted. A Ctrl-C in a terminal reaches the
    children too (same process group) and they exit on their own, keeping their last
    finished epoch; a child still running after a grace period gets SIGINT itself, then,
    if it still does not exit, SIGTERM (checkpoints are written atomically, so no stop
    can corrupt one)."""
    import signal

    for sig, grace in ((None, 10), (signal.SIGINT, 60), (signal.SIGTERM, None)):
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _start(run: GridRun, device, env, k: int, total: int, echo, launcher=None):
    os.makedirs(run.run_dir, exist_ok=True)
    cmd = train_command(run, device)
    with open(run.log, "a") as log:
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} grid: {shlex.join(cmd)}\n")
    what = "resume" if run.state == "partial" else "start"
    echo(f"[{k}/{total}] {what} {run.label}  (log: {run.log})")
    run.started = time.time()
    if launcher is not None:
        return launcher(run, cmd, env)
    log = open(run.log, "a")
    try:
        # stdin closed: a run never waits for input
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
    finally:
        log.close()        # the child holds its own descriptor


def _finish(run: GridRun, proc, echo) -> None:
    run.returncode = proc.returncode
    run.elapsed = time.time() - run.started
    res = _read_results(run)
    if proc.returncode == 0 and res is not None:
        run.status = "resumed" if run.state == "partial" else "done"
        echo(f"  {run.label}: {run.status}, test acc {res.get('test_acc', math.nan):.2f}% "
             f"({run.elapsed:.0f} s)")
    else:
        run.status = "failed"
        run.message = _last_line(run.log) or f"exit status {proc.returncode}"
        echo(f"  {run.label}: FAILED (exit {proc.returncode}): {run.message}")


def summary_table(runs: list[GridRun]) -> str:
    """Plain-text table: run, state before, status, test accuracy, wall time, log."""
    rows = [("run", "before", "status", "test acc %", "wall", "note")]
    for r in runs:
        res = _read_results(r)
        acc = f"{res['test_acc']:.2f}" if res and "test_acc" in res else "-"
        wall = _hms(res["wall_s"]) if res and res.get("wall_s") is not None else "-"
        note = r.message if (r.failed or r.status == "busy") else \
            ("" if r.status == "skipped" else r.log)
        rows.append((r.label, r.state, r.status, acc, wall, note))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:5], widths)) + "  " + row[5]
             for row in rows]
    lines.insert(1, "-" * (sum(widths) + 2 * 5 + 4))
    counts = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items()))
    return "\n".join(line.rstrip() for line in lines)


def _hms(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
