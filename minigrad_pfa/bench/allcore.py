"""Where an all-core training step goes: wall time by operation, and what the machine scales.

A cProfile (:mod:`.phases`) sees one thread, and its own-time split stops at the NumPy
calls. With T engine threads the question is different: which operations of the step
got T times faster, and which did not? Two measurements answer it.

Operations (worker kind ``ops``). The functional entry points the layers call are
wrapped with wall-clock timers (only the outermost call counts, so nested calls are
not counted twice), and the pool's parallel regions (:func:`minigrad_pfa.cpu.threads._run`
with more than one shard) are timed inside each operation::

    t_op        wall time of the operation per step
    t_par       wall time of its parallel regions           (t_op - t_par: serial part)
    busy        sum over the shards of their own wall time, over T * t_par
                (1: every thread busy for the whole region; the rest is waiting for the
                slowest shard and the pool's hand-off)
    other       step time - sum of t_op: Python between the operations, the loss,
                pooling, the shortcuts (the optimizer's step and the residual sums
                are operations; a BN -> residual sum -> ReLU tail of a ResNet block is
                one operation, "BN + ReLU forward")

Run at 1 thread and at T threads, ``t_op(1) / t_op(T)`` is the operation's speed-up.

PyTorch by the same operations (worker kind ``torch_ops``, :func:`run_torch_ops`): the
self time of every operator under torch.profiler, summed by :data:`TORCH_OPERATIONS`. The
profiler costs time of its own (measured on the Intel Xeon VM, ResNet-20 batch 128: a step
of 0.38-0.42 s unprofiled took 0.53-0.63 s under it on one thread; on two, 0.21-0.22 s
took 0.24-0.43 s, in four runs), so read these columns as the split of
PyTorch's step between the operations, not as its speed; *other* holds
the optimizer (on the CPU torch.optim.SGD is a loop of ``add_``/``mul_`` calls, which the
residual additions use too), the loss and the profiler's overhead.

Machine (worker kind ``scaling``). T Python threads each run independent NumPy work
that releases the GIL, timed against one thread doing the same: an in-cache float32 GEMM
(256 x 256, compute-bound) and a streaming copy of 32 MB arrays (memory-bound). Their
throughput ratios bound what a compute-bound and a memory-bound phase of the engine can
gain from T threads on this machine, whatever the code does.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict

#: operation name -> (module of minigrad_pfa.functional, function), the layers' entry points
OPERATIONS = {
    "conv forward": ("conv", "conv2d_forward"),
    "conv input error": ("conv", "conv2d_input_error"),
    "conv weight gradient": ("conv", "conv2d_weight_grad"),
    "PFA channel product": ("conv", "channel_matmul"),
    "BatchNorm forward": ("batchnorm", "batchnorm_forward"),
    "BatchNorm backward": ("batchnorm", "batchnorm_backward"),
    # a BN -> (residual sum) -> ReLU layer pair: one pass with the compiled kernels, else
    # the three operations (counted here, as the outermost call)
    "BN + ReLU forward": ("batchnorm", "batchnorm_relu_forward"),
    "ReLU + BN backward": ("batchnorm", "relu_batchnorm_backward"),
    "ReLU forward": ("activation", "relu_forward"),
    "ReLU backward": ("activation", "relu_backward"),
    "residual sum": ("elementwise", "add"),
    "linear": ("linear", "linear_forward"),
    "linear input error": ("linear", "linear_input_error"),
    "linear weight gradient": ("linear", "linear_weight_grad"),
}


class _OpClock:
    """Wall-clock totals per operation, with the pool's parallel regions inside each."""

    def __init__(self):
        self.op = defaultdict(float)         # t_op
        self.par = defaultdict(float)        # t_par
        self.shard_sum = defaultdict(float)  # sum over shards of their wall time
        self.current = None                  # the outermost operation running now
        self._restore = []

    def wrap(self, label, owner, name):
        """Time ``owner.name`` (a module's function or an object's method) as ``label``."""
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            if self.current is not None or threading.current_thread() is not \
                    threading.main_thread():
                return fn(*args, **kwargs)
            self.current = label
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.op[label] += time.perf_counter() - t0
                self.current = None

        setattr(owner, name, timed)
        self._restore.append((owner, name, fn))

    def _wrap_pool(self, threads_module):
        run = threads_module._run

        def timed_run(fn, bounds, **kw):
            if len(bounds) <= 1:
                return run(fn, bounds, **kw)
            lock, shard_total = threading.Lock(), [0.0]

            def shard(sl):
                t0 = time.perf_counter()
                try:
                    return fn(sl)
                finally:
                    dt = time.perf_counter() - t0
                    with lock:
                        shard_total[0] += dt

            t0 = time.perf_counter()
            try:
                return run(shard, bounds, **kw)
            finally:
                label = self.current or "other"
                self.par[label] += time.perf_counter() - t0
                self.shard_sum[label] += shard_total[0]

        threads_module._run = timed_run
        self._restore.append((threads_module, "_run", run))

    def install(self):
        import importlib

        from ..cpu import threads as threads_module
        for label, (mod, name) in OPERATIONS.items():
            self.wrap(label, importlib.import_module(f"minigrad_pfa.functional.{mod}"),
                          name)
        self._wrap_pool(threads_module)
        return self

    def uninstall(self):
        for module, name, fn in reversed(self._restore):
            setattr(module, name, fn)
        self._restore.clear()

    def reset(self):
        for totals in (self.op, self.par, self.shard_sum):
            totals.clear()


def fastest_run(results) -> dict:
    """Of several ``ops`` results of one configuration (interleaved rounds), the run with the
    shortest step, marked with the number of runs (``"rounds"``); errors are skipped, and an
    error is returned when every run failed.

    One whole run rather than each operation's minimum: an operation's time, its share in the
    parallel regions and its threads' busy fraction then come from the same steps, and the run
    the machine disturbed least is the one reported.
    """
    ok = [r for r in results if not r.get("error")]
    if not ok:
        return results[-1]
    return dict(min(ok, key=lambda r: r["step_s"]), rounds=len(results))


def run_ops(cfg) -> dict:
    """Worker kind ``ops``: wall time by operation of ``cfg['steps']`` engine steps.

    Returns ``{"step_s", "operations": {name: {"s", "parallel_s", "busy"}}, "other_s"}``
    per step, at ``cfg['threads']`` engine threads (set by the worker's setup)."""
    from ..train import train_step
    from .worker import _minigrad_setup, timed_steps

    from ..cpu.overlap import disabled

    model, layers, opt, x, y, sync, _ = _minigrad_setup(cfg)
    clock = _OpClock().install()
    clock.wrap("optimizer", opt, "step")
    # operations timed one by one on the main thread: parameter gradients must not move to
    # a worker (cpu.overlap), so this table is of the serial order; the step-time tables
    # of the benchmark measure the step as users run it
    try:
        with disabled():
            timed_steps(lambda: train_step(model, layers, opt, x, y), sync, cfg["warmup"], 0)
            clock.reset()
            timing = timed_steps(lambda: train_step(model, layers, opt, x, y), sync, 0,
                                 cfg["steps"])
    finally:
        clock.uninstall()
    n, T = cfg["steps"], int(cfg["threads"])
    step_s = sum(timing["wall"]) / n
    ops = {}
    for label in list(OPERATIONS) + ["optimizer"] + (["other"] if clock.par.get("other")
                                                    else []):
        t = clock.op.get(label, 0.0)
        par = clock.par.get(label, 0.0)
        if label != "other" and t == 0.0:
            continue
        ops[label] = {"s": t / n, "parallel_s": par / n,
                      "busy": clock.shard_sum[label] / (T * par) if par else None}
    return {"model": cfg["model"], "rule": cfg["rule"], "batch": cfg["batch"],
            "threads": T, "steps": n, "step_s": step_s, "operations": ops,
            "other_s": step_s - sum(v["s"] for k, v in ops.items() if k != "other"),
            "foreign_cores": timing.get("foreign_cores")}


def _throughput(work, threads: int, seconds: float) -> float:
    """Calls of ``work()`` per second summed over ``threads`` threads running it for about
    ``seconds`` (each thread its own data; NumPy releases the GIL inside the call)."""
    counts, barrier = [0] * threads, threading.Barrier(threads)

    def loop(k):
        w = work()
        w()  # warm
        barrier.wait()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            w()
            counts[k] += 1

    ts = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def run_scaling(cfg) -> dict:
    """Worker kind ``scaling``: throughput of T threads over one thread for an in-cache
    GEMM and a streaming copy (see the module docstring); BLAS on one thread per caller."""
    import numpy as np

    from ..cpu import using_threads

    def gemm():
        a = np.ones((256, 256), np.float32)
        b, c = a.copy(), np.empty_like(a)
        return lambda: np.matmul(a, b, out=c)

    def copy():
        a = np.ones(8 << 20, np.float32)  # 32 MB: far beyond the caches
        b = np.empty_like(a)
        return lambda: np.copyto(b, a)

    T, secs = int(cfg["threads"]), float(cfg.get("seconds", 1.0))
    out = {"threads": T}
    with using_threads(1):  # BLAS single-threaded inside each Python thread
        for name, work in (("gemm_in_cache", gemm), ("copy_32mb", copy)):
            rounds = []
            for _ in range(int(cfg.get("rounds", 3))):  # interleaved: 1, T, 1, T, ...
                one = _throughput(work, 1, secs)
                rounds.append(_throughput(work, T, secs) / one)
            rounds.sort()
            out[name] = {"speedup_median": rounds[len(rounds) // 2], "speedups": rounds}
    return out


#: PyTorch operator (aten name, as torch.profiler lists it) -> the engine's operation it
#: corresponds to; the first matching fragment wins (PyTorch's conv backward computes the
#: input error and the weight gradient in one operator)
TORCH_OPERATIONS = (
    ("convolution_backward", "conv input error + weight gradient"),
    ("convolution", "conv forward"),
    ("batch_norm_backward", "BatchNorm backward"),
    ("batch_norm", "BatchNorm forward"),
    ("threshold_backward", "ReLU backward"),
    ("relu", "ReLU forward"),
    ("clamp_min", "ReLU forward"),  # aten::relu hands its work to clamp_min
    ("addmm", "linear"),
    ("aten::mm", "linear input error + weight gradient"),
)


def torch_operation(name: str) -> str:
    """The engine operation a PyTorch operator belongs to (:data:`TORCH_OPERATIONS`), else
    ``"other"``."""
    for fragment, label in TORCH_OPERATIONS:
        if fragment in name:
            return label
    return "other"


def run_torch_ops(cfg) -> dict:
    """Worker kind ``torch_ops``: PyTorch's step by the engine's operations.

    torch.profiler's *self* CPU time of every operator (the operator's own wall time on the
    calling thread, its intra-op parallel region included, its children excluded), summed
    over ``cfg['steps']`` steps by :func:`torch_operation`; ``{"step_s", "operations":
    {name: {"s"}}}`` per step."""
    from .worker import _setup_torch, timed_steps, torch_step

    torch = _setup_torch(cfg)
    step, sync, _ = torch_step(cfg, torch)
    timed_steps(step, sync, cfg["warmup"], 0)
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(cfg["steps"]):
            step()
    wall = time.perf_counter() - t0
    ops = defaultdict(float)
    for ev in prof.key_averages():
        ops[torch_operation(ev.key)] += ev.self_cpu_time_total / 1e6  # microseconds
    n = cfg["steps"]
    return {"model": cfg["model"], "rule": cfg["rule"], "batch": cfg["batch"],
            "threads": int(cfg["threads"]), "steps": n, "step_s": wall / n,
            "operations": {k: {"s": v / n} for k, v in ops.items()}}


def main(argv=None) -> int:
    """``python -m minigrad_pfa.bench.allcore [--model M] [--rule R] [--batch N] [--threads T]
    [--rounds K]``: the operations table of one step at 1 and T threads (fresh processes,
    interleaved rounds, odd ones reversed, the run with the shortest step of each:
    :func:`fastest_run`), and the machine's scaling."""
    import argparse

    from ..cpu.threads import usable_cores
    from .regimes import round_order
    from .runner import run_worker, worker_env
    from .suite import step_config

    p = argparse.ArgumentParser(prog="python -m minigrad_pfa.bench.allcore",
                                description=main.__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20", choices=("resnet20", "mlp"))
    p.add_argument("--rule", default="bp")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=usable_cores())
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--no-torch", action="store_true",
                   help="skip PyTorch's step by operation (torch.profiler)")
    a = p.parse_args(argv)
    regimes = sorted({1, a.threads})
    try:
        import torch  # noqa: F401
        impls = ["minigrad"] + ([] if a.no_torch or a.rule != "bp" else ["torch"])
    except ImportError:
        impls = ["minigrad"]
    runs = {(impl, t): [] for impl in impls for t in regimes}
    for k in range(a.rounds):
        for impl, t in round_order(runs, k):
            cfg = dict(step_config(a.model, a.rule, impl, a.batch, "cpu", a.steps, 2,
                                   "allcore"), kind="ops" if impl == "minigrad" else
                       "torch_ops", threads=t, timer="wall")
            r = run_worker(cfg, worker_env(t), 1800)
            if r.get("error"):
                print(f"error ({impl}, {t} threads): {r['error']}")
                return 1
            runs[impl, t].append(r)
    chosen = {key: fastest_run(rs) for key, rs in runs.items()}  # as the bench's table
    best = {key: {name: v["s"] for name, v in r["operations"].items()}
            for key, r in chosen.items()}
    step = {key: r["step_s"] for key, r in chosen.items()}
    engine = best["minigrad", 1]
    for kind in ("conv", "linear"):  # PyTorch's backward operators compute both at once
        if f"{kind} weight gradient" in engine:
            for t in regimes:
                e = best["minigrad", t]
                e[f"{kind} input error + weight gradient"] = \
                    e.get(f"{kind} input error", 0.0) + e.get(f"{kind} weight gradient", 0.0)
    T = regimes[-1]
    print(f"{a.model} {a.rule} batch {a.batch}: wall ms per step, the run with the shortest "
          f"step of {a.rounds} round(s); engine with the overlap off; foreign cores "
          f"{max((r.get('foreign_cores') or 0.0) for rs in runs.values() for r in rs):.2f}")
    cols = [(impl, t) for impl in impls for t in regimes]
    print(f"{'operation':34s}" + "".join(f"{f'{i[:5]} {t}T':>11}" for i, t in cols) +
          f" {'engine speed-up':>15}")
    names = list(engine) + [n for key in cols for n in best[key] if n not in engine]
    for name in dict.fromkeys(names):
        vals = [best[key].get(name, 0.0) * 1e3 for key in cols]
        if any(vals):
            one, many = best["minigrad", 1].get(name, 0.0), best["minigrad", T].get(name, 0.0)
            print(f"{name:34s}" + "".join(f"{v:11.1f}" for v in vals) +
                  f" {one / many if many else 0:15.2f}")
    print(f"{'step':34s}" + "".join(f"{step[key] * 1e3:11.1f}" for key in cols) +
          f" {step['minigrad', 1] / step['minigrad', T]:15.2f}")
    if T > 1:
        s = run_worker({"kind": "scaling", "device": "cpu", "threads": T, "seconds": 0.5,
                        "rounds": 3}, worker_env(T), 600)
        if not s.get("error"):
            print(f"machine, {T} threads over 1: in-cache GEMM "
                  f"{s['gemm_in_cache']['speedup_median']:.2f}x, streaming copy "
                  f"{s['copy_32mb']['speedup_median']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
