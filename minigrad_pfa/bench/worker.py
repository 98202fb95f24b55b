"""One benchmark configuration in a fresh process.

``python -m minigrad_pfa.bench.worker '<config JSON>'`` runs one configuration
(:mod:`minigrad_pfa.bench.suite`) and prints one line ``BENCH_RESULT <JSON>`` on stdout.
A fresh process per configuration makes the peak resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``) that configuration's own, and keeps one
configuration's allocator state and caches from helping or hurting the next.

The thread count comes from the environment the parent sets before this process starts
(``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ... are read once when NumPy and PyTorch
load their BLAS); ``config["threads"]`` is also passed to ``torch.set_num_threads``.

Kinds
-----
step     train one model under one rule: warm-up, then ``steps`` timed steps
         (forward, loss, backward, optimizer, rule hooks); median step time, peak RSS,
         GEMM FLOPs per step (:mod:`minigrad_pfa.bench.flops`), load average
gemm     float32 GEMM throughput (size x size, NumPy / CuPy / PyTorch): the peak that the
         step's GFLOP/s are compared with
loader   :func:`minigrad_pfa.bench.loader.run_loader_bench` (quick)
profile  cProfile of a few engine steps: the functions with the largest own time
ops      wall time by operation of a few engine steps, parallel regions inside them
         (:mod:`minigrad_pfa.bench.allcore`)
scaling  what T threads gain on this machine for in-cache GEMMs and streaming copies
torch_ops PyTorch's step by the same operations (torch.profiler; :mod:`.allcore`)
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

MARK = "BENCH_RESULT "

#: SGD as in the published CIFAR protocols (the optimizer's cost is part of the step)
OPTIM = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}


def peak_rss_mb() -> float:
    """This process's maximum resident set size so far, MB (2**20 bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)  # bytes on macOS, KiB on Linux


def current_rss_mb() -> float | None:
    """Current resident set size, MB (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None


def load1() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def blas_threads() -> int | None:
    """Threads of the OpenBLAS that NumPy loaded (asked through ctypes), or None.

    Confirms that the thread environment reached the BLAS, which reads it once at load.
    """
    import ctypes

    import numpy  # noqa: F401  (loads the BLAS)
    try:
        with open("/proc/self/maps") as fh:
            libs = {ln.split()[-1] for ln in fh if "openblas" in ln.lower() and ".so" in ln}
    except OSError:
        return None
    for lib in sorted(libs):
        try:
            handle = ctypes.CDLL(lib)
        except OSError:
            continue
        for sym in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                    "scipy_openblas_get_num_threads", "openblas_get_num_threads"):
            fn = getattr(handle, sym, None)
            if fn is not None:
                fn.restype = ctypes.c_int
                return int(fn())
    return None


def blas_info() -> str | None:
    """NumPy's BLAS as 'name version' (from numpy.show_config)."""
    import numpy as np
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:
        return None


def _setup_torch(cfg):
    import torch
    torch.set_num_threads(int(cfg["threads"]))
    if cfg.get("device") == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"PyTorch {torch.__version__} sees no CUDA device; install a CUDA "
                           "build of torch to compare on the GPU")
    return torch


def timed_steps(step, sync, warmup: int, steps: int, timer: str = "wall") -> dict:
    """Run ``warmup`` untimed then ``steps`` timed calls of ``step``.

    Returns ``{"wall": [...], "cpu": [...], "times": [...]}``: seconds per step by the
    wall clock and by this process's CPU time (all its threads), and the list of the
    chosen ``timer``. With one thread, CPU time is the step's own work, insensitive to
    other processes taking turns on the cores (not to their cache and memory traffic).
    """
    for _ in range(warmup):
        step()
        sync()
    wall, cpu = [], []
    busy0 = machine_busy_s()
    for _ in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        step()
        sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    busy1 = machine_busy_s()
    return {"wall": wall, "cpu": cpu, "times": cpu if timer == "cpu" else wall,
            "foreign_cores": foreign_cores(busy0, busy1, sum(cpu), sum(wall))}


def foreign_cores(busy0, busy1, cpu_s: float, wall_s: float) -> float | None:
    """Cores that other processes kept busy, on average, over ``wall_s`` seconds in which
    the machine's busy time (:func:`machine_busy_s`) went from ``busy0`` to ``busy1`` and
    this process used ``cpu_s`` of it; None without the readings.

    /proc/stat counts whole clock ticks per CPU, so the difference of two readings is
    uncertain by up to one tick per CPU: that much is not evidence of another process (a
    30-step MLP window of ~0.09 s on 2 CPUs would otherwise read up to 0.2 cores of "other
    processes" from rounding alone)."""
    if busy0 is None or busy1 is None or not wall_s:
        return None
    return max(0.0, (busy1 - busy0 - cpu_s - _busy_resolution_s()) / wall_s)


def _busy_resolution_s() -> float:
    """The uncertainty of a difference of two :func:`machine_busy_s` readings: one clock
    tick per CPU (0 where /proc/stat or the tick length is unknown)."""
    try:
        return (os.cpu_count() or 1) / os.sysconf("SC_CLK_TCK")
    except (ValueError, AttributeError, OSError):
        return 0.0


def machine_busy_s() -> float | None:
    """CPU seconds all processes have spent on this machine (``/proc/stat``), or None.

    Busy = user + nice + system + irq + softirq + steal, over every CPU."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()[1:]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / ticks


# ------------------------------------------------------------------------ engine side
def _minigrad_setup(cfg):
    """(model, layers, optimizer, x, y, sync, geometry) for an engine step configuration.

    Sets the engine's threads to ``cfg["threads"]`` (:func:`minigrad_pfa.cpu.set_threads`:
    batch shards on that many threads, BLAS single-threaded inside them)."""
    import numpy as np

    from ..cpu import set_threads
    set_threads(int(cfg["threads"]))

    from ..backend import synchronize, to_device
    from ..nn.models import build_model, weight_layers
    from ..optim import build_optimizer
    from ..rules import attach_rules
    from .flops import model_geometry
    from .suite import MODELS, NUM_CLASSES, rule_spec

    spec = MODELS[cfg["model"]]
    model = build_model(spec["name"], seed=0, dtype="float32", num_classes=NUM_CLASSES,
                        **spec["kwargs"])
    attach_rules(model, rule_spec(cfg["rule"]), seed=0, input_shape=spec["input"])
    geoms = model_geometry(model, spec["input"])
    model.to(cfg["device"])
    layers = list(weight_layers(model).values())
    opt = build_optimizer("sgd", list(model.named_parameters(trainable_only=True)), **OPTIM)
    rng = np.random.default_rng(0)
    n = cfg["batch"]
    x = to_device(rng.standard_normal((n,) + tuple(spec["input"]), dtype=np.float32),
                  cfg["device"])
    y = to_device(rng.integers(0, NUM_CLASSES, size=n).astype(np.int64), cfg["device"])
    return model, layers, opt, x, y, synchronize, geoms


def _pfa_orders(layers) -> dict:
    """Layer name -> the PFA order the engine resolved (after the first backward)."""
    return {l.qualname: l.rule.resolved_order for l in layers
            if getattr(l.rule, "name", None) == "pfa" and l.rule.resolved_order}


def _gpu_peak_mb_cupy():
    from ..backend import device_module  # the CuPy stand-in in tests (reports 0)
    return device_module().get_default_memory_pool().total_bytes() / 2 ** 20


def torch_step(cfg, torch):
    """(step, sync, geometry) of a PyTorch configuration: the same model, optimizer and
    synthetic batch as the engine's, ``step()`` one autograd training step."""
    from ..nn.models import build_model
    from .flops import model_geometry
    from .suite import MODELS, NUM_CLASSES
    from .torch_models import build_torch_model

    spec = MODELS[cfg["model"]]
    geoms = model_geometry(build_model(spec["name"], num_classes=NUM_CLASSES,
                                       **spec["kwargs"]), spec["input"])
    dev = torch.device(cfg["device"])
    torch.manual_seed(0)
    model = build_torch_model(spec, cfg["rule"], NUM_CLASSES).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), **OPTIM)
    n = cfg["batch"]
    x = torch.randn((n,) + tuple(spec["input"]), device=dev)
    y = torch.randint(0, NUM_CLASSES, (n,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if cfg["device"] == "cuda" else (lambda: None)
    return step, sync, geoms


def run_step(cfg) -> dict:
    from ..train import train_step
    from .flops import step_flops
    from .suite import NUM_CLASSES

    if cfg.get("variants"):
        from .proto import apply_variants
        apply_variants(cfg["variants"])
    if cfg["impl"] == "torch":
        torch = _setup_torch(cfg)
    # resident size with every library loaded, before the model and data exist
    base_mb = current_rss_mb()
    if cfg["impl"] == "minigrad":
        model, layers, opt, x, y, sync, geoms = _minigrad_setup(cfg)
        setup_mb = current_rss_mb()
        timing = timed_steps(lambda: train_step(model, layers, opt, x, y), sync,
                             cfg["warmup"], cfg["steps"], cfg.get("timer", "wall"))
        orders = _pfa_orders(layers)
        gpu_mb = _gpu_peak_mb_cupy() if cfg["device"] == "cuda" else None
        extra = {}
        if orders:
            extra["pfa_orders"] = {o: sum(v == o for v in orders.values())
                                   for o in ("fast", "literal")}
    elif cfg["impl"] == "torch":
        step, sync, geoms = torch_step(cfg, torch)
        setup_mb = current_rss_mb()
        timing = timed_steps(step, sync, cfg["warmup"], cfg["steps"], cfg.get("timer", "wall"))
        orders = None
        gpu_mb = (torch.cuda.max_memory_reserved() / 2 ** 20 if cfg["device"] == "cuda"
                  else None)
        extra = {"torch": torch.__version__,
                 "formulation": "autograd" if cfg["rule"] == "bp" else "published"}
    else:
        raise ValueError(f"unknown impl {cfg['impl']!r}")
    flops = step_flops(geoms, cfg["rule"], cfg["batch"], NUM_CLASSES, orders=orders,
                       impl=cfg["impl"])
    times = timing["times"]
    step_s = statistics.median(times)
    host_mb = peak_rss_mb()
    rec = {"model": cfg["model"], "rule": cfg["rule"], "impl": cfg["impl"],
           "device": cfg["device"], "batch": cfg["batch"], "group": cfg.get("group"),
           "step_s": step_s, "step_min_s": min(times), "step_times_s": times,
           "timer": cfg.get("timer", "wall"), "step_wall_s": statistics.median(timing["wall"]),
           "step_cpu_s": statistics.median(timing["cpu"]),
           "warmup": cfg["warmup"],
           "peak_mb": gpu_mb if gpu_mb is not None else host_mb,
           "host_peak_mb": host_mb, "base_mb": base_mb, "setup_mb": setup_mb,
           "flops": flops["total"], "flops_terms": {k: flops[k] for k in
                                                    ("forward", "weight_grad", "input_error",
                                                     "feedback")},
           "gflops": flops["total"] / step_s / 1e9, "threads": cfg["threads"],
           "load1": load1(), "foreign_cores": timing["foreign_cores"]}
    if cfg.get("variants"):
        rec["variants"] = list(cfg["variants"])
    rec.update(extra)
    return rec


# ------------------------------------------------------------------------ other kinds
#: timed calls of the GEMM-peak measurement (after 2 untimed), wherever it is measured: the
#: best of more calls reads higher, so the peaks a GEMM fraction divides by all take this many
GEMM_REPEATS = 7


def run_gemm(cfg) -> dict:
    """float32 (size, size) @ (size, size): best and median GFLOP/s over ``repeats``."""
    size, reps = int(cfg["size"]), int(cfg.get("repeats", GEMM_REPEATS))
    dev, impl = cfg["device"], cfg.get("impl", "numpy")
    if impl == "torch":
        torch = _setup_torch(cfg)
        d = torch.device(dev)
        a, b = torch.randn(size, size, device=d), torch.randn(size, size, device=d)
        out = torch.empty(size, size, device=d)
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        call = lambda: torch.matmul(a, b, out=out)  # noqa: E731
        version = torch.__version__
    else:
        import numpy as np

        from ..backend import get_array_module, synchronize, to_device
        rng = np.random.default_rng(0)
        a = to_device(rng.standard_normal((size, size), dtype=np.float32), dev)
        b = to_device(rng.standard_normal((size, size), dtype=np.float32), dev)
        xp = get_array_module(a)
        out = xp.empty_like(a)
        sync = synchronize
        call = lambda: xp.matmul(a, b, out=out)  # noqa: E731
        version = np.__version__
    timing = timed_steps(call, sync, 2, reps, cfg.get("timer", "wall"))
    times = timing["times"]
    flop = 2.0 * size ** 3
    res = {"impl": impl, "device": dev, "size": size, "repeats": reps, "times_s": times,
           "timer": cfg.get("timer", "wall"),
           "gflops_max_wall": flop / min(timing["wall"]) / 1e9,
           "gflops_max": flop / min(times) / 1e9,
           "gflops_median": flop / statistics.median(times) / 1e9,
           "threads": cfg["threads"], "version": version, "load1": load1()}
    if impl == "numpy":
        res["blas"] = blas_info()
        res["blas_threads"] = blas_threads()
        res["blas_pools"] = blas_pools()
    return res


def blas_pools() -> list | None:
    """threadpoolctl's view of the loaded BLAS / OpenMP pools: library, version, threads
    and the kernel OpenBLAS chose (``architecture``: e.g. Haswell, SkylakeX, Zen), which
    ``OPENBLAS_CORETYPE`` overrides; None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    keys = ("user_api", "internal_api", "version", "num_threads", "architecture",
            "threading_layer")
    return [{k: p.get(k) for k in keys} for p in threadpool_info()]


def run_loader(cfg) -> dict:
    from .loader import run_loader_bench
    return run_loader_bench(quick=True, log=lambda s: print(s, file=sys.stderr))


def run_profile(cfg) -> dict:
    """cProfile of ``steps`` engine steps after warm-up: top functions by own time."""
    import cProfile
    import pstats

    from ..train import train_step
    model, layers, opt, x, y, sync, _ = _minigrad_setup(cfg)
    timed_steps(lambda: train_step(model, layers, opt, x, y), sync, cfg["warmup"], 0)
    # with the CPU timer, cProfile charges CPU time too (one thread: the function's own work)
    clock = time.process_time if cfg.get("timer") == "cpu" else time.perf_counter
    prof = cProfile.Profile(clock)
    t0 = clock()
    prof.enable()
    for _ in range(cfg["steps"]):
        train_step(model, layers, opt, x, y)
    sync()
    prof.disable()
    per_step = (clock() - t0) / cfg["steps"]
    stats = pstats.Stats(prof)
    rows = []
    for (path, line, func), (cc, nc, tt, ct, _) in stats.stats.items():
        rows.append({"function": func, "where": f"{_short(path)}:{line}", "ncalls": nc,
                     "tottime_s": tt / cfg["steps"], "cumtime_s": ct / cfg["steps"]})
    rows.sort(key=lambda r: -r["tottime_s"])
    from .phases import phase_totals
    return {"model": cfg["model"], "rule": cfg["rule"], "batch": cfg["batch"],
            "device": cfg["device"], "steps": cfg["steps"], "step_s_profiled": per_step,
            "timer": cfg.get("timer", "wall"), "phases": phase_totals(rows),
            "threads": cfg["threads"], "top": rows[:int(cfg.get("top", 20))],
            "load1": load1()}


def _short(path: str) -> str:
    """A source path relative to the package's parent (or the bare name of builtins)."""
    marker = os.sep + "minigrad_pfa" + os.sep
    if marker in path:
        return "minigrad_pfa" + os.sep + path.split(marker, 1)[1]
    return os.path.basename(path) if os.sep in path else path


def run_ops(cfg) -> dict:
    from .allcore import run_ops as ops
    return ops(cfg)


def run_scaling(cfg) -> dict:
    from .allcore import run_scaling as scaling
    return scaling(cfg)


def run_samestep(cfg) -> dict:
    from .samestep import run_samestep as samestep
    return samestep(cfg)


def run_torch_ops(cfg) -> dict:
    from .allcore import run_torch_ops as torch_ops
    return torch_ops(cfg)


KINDS = {"step": run_step, "gemm": run_gemm, "loader": run_loader, "profile": run_profile,
         "ops": run_ops, "scaling": run_scaling, "torch_ops": run_torch_ops,
         "samestep": run_samestep}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m minigrad_pfa.bench.worker '<config JSON>'", file=sys.stderr)
        return 2
    cfg = json.loads(argv[0])
    cfg.setdefault("threads", int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    if cfg.get("kind") not in KINDS:
        print(f"unknown kind {cfg.get('kind')!r}; expected one of {list(KINDS)}",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    res = KINDS[cfg["kind"]](cfg)
    res["wall_s"] = time.perf_counter() - t0
    print(MARK + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
