"""``doctor --device cuda``: the GPU path proved in a few minutes.

Notation: ``host`` the NumPy engine, ``dev`` the same engine on ``--device cuda`` (CuPy, or
the CPU stand-in in tests); rel(a, b) = ||a - b|| / ||b|| over all values.

    parity   ResNet-20 forward + backward, every rule, same seed and batch on both:
             rel(logits), rel(loss) and rel(gradient) of every parameter (feedback ones
             included) <= 1e-10 in float64, <= 1e-4 in float32 (TF32 off)
    steps    10 SGD training steps per rule on host and dev: float64 final parameters
             within rel 1e-8; float32 losses finite, first loss within rel 1e-4
    syncs    host synchronisations per step per rule, counted on the stand-in
             (:mod:`minigrad_pfa.bench.host_syncs`), <= 1
    bench    real GPU with PyTorch only: ResNet-20 batch 128 BP and PFA (r = 10), engine and
             PyTorch, one fresh process each (:mod:`minigrad_pfa.bench.worker`), and the GPU
             targets (:mod:`minigrad_pfa.bench.gpu_targets`)

Each check is a dict ``{"check", "rule", "ok", "detail", ...}``; any ``ok == False`` makes
``doctor`` exit non-zero.
"""
from __future__ import annotations

import math

import numpy as np

from ..bench.host_syncs import RULES

TOLERANCE = {"float64": 1e-10, "float32": 1e-4}
STEP_TOLERANCE = {"float64": 1e-8, "float32": 1e-4}


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _model(rule: str, dtype: str, image: int, device: str):
    from ..nn.models import build_model
    from ..rules import attach_rules
    m = build_model("resnet20", seed=0, dtype=dtype)
    attach_rules(m, rule, seed=0, input_shape=(3, image, image))
    return m.to(device)


def _forward_backward(model, x, y):
    from ..backend import to_numpy
    from ..functional.loss import softmax_cross_entropy
    from ..nn.module import BackwardContext
    for layer in _weight_layers(model):
        layer.rule.before_step(layer)
    logits = model.forward(x)
    loss, e = softmax_cross_entropy(logits, y)
    model.backward(e, BackwardContext(output_error=e))
    grads = {n: to_numpy(p.grad) for n, p in model.named_parameters() if p.grad is not None}
    model.clear_cache()
    return to_numpy(logits), float(loss), grads


def _weight_layers(model):
    from ..nn.models import weight_layers
    return list(weight_layers(model).values())


def parity(rule: str, dtype: str, batch: int = 4, image: int = 16) -> dict:
    """ResNet-20 forward/backward on host and device: the largest relative difference."""
    from ..backend import to_device
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, image, image)).astype(dtype)
    y = rng.integers(0, 10, batch)
    l1, loss1, g1 = _forward_backward(_model(rule, dtype, image, "cpu"), x, y)
    l2, loss2, g2 = _forward_backward(_model(rule, dtype, image, "cuda"),
                                      to_device(x, "cuda"), to_device(y, "cuda"))
    errs = {"logits": _rel(l2, l1), "loss": abs(loss2 - loss1) / max(abs(loss1), 1e-300)}
    missing = sorted(set(g1) ^ set(g2))
    errs.update({f"grad {n}": _rel(g2[n], g1[n]) for n in g1 if n in g2})
    worst = max(errs, key=errs.get)
    ok = not missing and errs[worst] <= TOLERANCE[dtype]
    detail = (f"gradients missing on one side: {missing}" if missing else
              f"max rel diff {errs[worst]:.2e} ({worst}), tolerance {TOLERANCE[dtype]:g}")
    return {"check": f"parity {dtype}", "rule": rule, "ok": ok, "detail": detail,
            "max_rel": errs[worst]}


def train_steps(rule: str, dtype: str = "float64", steps: int = 10, batch: int = 8,
                image: int = 32) -> dict:
    """``steps`` SGD steps on host and device from one seed.

    float64: the final parameters agree to ``STEP_TOLERANCE["float64"]`` (the algorithms
    are the same; rounding differences of 1e-16 grow only mildly in 10 steps). float32:
    the losses stay finite and the first step's loss agrees to 1e-4 (after that, float32
    rounding is amplified by training on random data: ~0.1 relative in some BN biases
    after 10 steps between the CPU's chunked and the device's whole-batch conv; a
    comparison of the parameters would test chaos, not the engine)."""
    from ..backend import to_device, to_numpy
    from ..optim import build_optimizer
    from ..train import train_step
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((steps, batch, 3, image, image)).astype(dtype)
    ys = rng.integers(0, 10, (steps, batch))
    runs = []
    for device in ("cpu", "cuda"):
        m = _model(rule, dtype, image, device)
        opt = build_optimizer("sgd", list(m.named_parameters(trainable_only=True)), lr=0.01,
                              momentum=0.9, weight_decay=5e-4)
        losses = [float(train_step(m, _weight_layers(m), opt, to_device(x, device),
                                   to_device(y, device))[0]) for x, y in zip(xs, ys)]
        runs.append((losses, {n: to_numpy(p.data) for n, p in m.named_parameters()}))
    (l_host, p_host), (losses, p_dev) = runs
    finite = all(math.isfinite(v) for v in losses)
    first = abs(losses[0] - l_host[0]) / max(abs(l_host[0]), 1e-300)
    worst = max(_rel(p_dev[n], p_host[n]) for n in p_host)
    tol = STEP_TOLERANCE[dtype]
    ok = finite and (worst <= tol if dtype == "float64" else first <= tol)
    what = (f"parameters max rel diff to NumPy {worst:.2e} (<= {tol:g})" if dtype == "float64"
            else f"first loss rel diff {first:.2e} (<= {tol:g}); parameters {worst:.2e} "
                 "(not checked: float32 chaos)")
    return {"check": f"{steps} steps {dtype}", "rule": rule, "ok": ok,
            "detail": (f"losses {losses[0]:.4f} -> {losses[-1]:.4f}; " if finite else
                       f"non-finite loss: {losses}; ") + what,
            "losses": losses, "max_rel": worst}


def host_sync_checks(rules=RULES, mode: str = "tiny") -> list[dict]:
    from ..bench.host_syncs import TARGET, measure_all
    out = []
    for r in measure_all(mode, rules, log=lambda *a: None):
        if "error" in r:
            out.append({"check": "host syncs", "rule": r["rule"], "ok": False,
                        "detail": r["error"]})
            continue
        v = r["host_syncs_per_step"]
        out.append({"check": "host syncs", "rule": r["rule"], "ok": v <= TARGET,
                    "detail": f"{v:.3f} per step (<= {TARGET:g}; {r['steps']} steps of "
                              f"{r['model']} on the stand-in)",
                    "host_syncs_per_step": v})
    return out


def gpu_bench(log=print, timeout_s: float = 240.0) -> tuple[list[dict], list[dict]]:
    """ResNet-20 b128 BP and PFA (r = 10), engine and PyTorch, on the GPU; the targets.

    Returns (records, checks). PyTorch configurations are skipped when PyTorch has no
    CUDA (said in the check's detail; not a failure)."""
    from ..bench.gpu_targets import evaluate_gpu_targets
    from ..bench.runner import run_worker, worker_env
    from ..bench.suite import step_config
    try:
        import torch
        torch_cuda = bool(torch.cuda.is_available())
    except ImportError:
        torch_cuda = False
    impls = ("minigrad", "torch") if torch_cuda else ("minigrad",)
    env = worker_env(1)
    records, checks = [], []
    for impl in impls:
        for rule in ("bp", "pfa-r10"):
            cfg = dict(step_config("resnet20", rule, impl, 128, "cuda", 10, 3, "doctor"),
                       threads=1, timer="wall")
            rec = run_worker(cfg, env, timeout_s)
            rec.update({k: cfg[k] for k in ("model", "rule", "impl", "batch", "device")})
            records.append(rec)
            ok = not rec.get("error")
            log(f"  bench {impl} {rule}: " + (f"{rec['step_s'] * 1e3:.1f} ms/step" if ok
                                               else f"ERROR {rec['error']}"))
            checks.append({"check": "bench", "rule": f"{impl} {rule}", "ok": ok,
                           "detail": rec.get("error") or f"{rec['step_s'] * 1e3:.2f} ms/step"})
    for t in evaluate_gpu_targets(records):
        checks.append({"check": "GPU target", "rule": t["description"],
                       "ok": t["met"] is not False,
                       "detail": ("not measured (PyTorch without CUDA)" if t["value"] is None
                                  else f"{t['value']:.2f} {t['op']} {t['target']:g} "
                                       f"({t['detail']})")})
    return records, checks


def run_gpu_checks(rules=RULES, log=print, bench: bool = True, image: int = 16,
                   steps_image: int = 32) -> dict:
    """Every check above on the device ``"cuda"`` resolves to now; logs one line each."""
    from ..backend import standin_active
    checks = []

    def record(c):
        checks.append(c)
        log(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['check']} {c['rule']}: {c['detail']}")

    for rule in rules:
        for dtype in ("float64", "float32"):
            record(_guard(lambda: parity(rule, dtype, image=image), f"parity {dtype}", rule))
        for dtype in ("float64", "float32"):
            record(_guard(lambda: train_steps(rule, dtype, image=steps_image),
                          f"10 steps {dtype}", rule))
    for c in host_sync_checks(rules):
        record(c)
    if standin_active():
        log("  nccl all-reduce: skipped on the CuPy stand-in (NCCL needs a real GPU)")
    else:
        # data-parallel training's GPU collective (docs/scaling.md); never raises
        from ..distributed.nccl import check_nccl
        record(check_nccl())
    records = []
    if bench and not standin_active():
        records, bench_checks = gpu_bench(log)
        for c in bench_checks:
            record(c)
    elif bench:
        log("  bench: skipped on the CuPy stand-in (CPU timings say nothing about a GPU)")
    # CuPy keeps freed blocks in its pool and hands them out again at the next step
    from ..backend import device_module
    pool = device_module().get_default_memory_pool()
    pool_mb = pool.total_bytes() / 2 ** 20
    log(f"  device memory pool: {pool_mb:.0f} MB held ({pool.used_bytes() / 2 ** 20:.0f} MB "
        "in use), reused across steps")
    return {"checks": checks, "bench_records": records, "memory_pool_mb": pool_mb,
            "ok": all(c["ok"] for c in checks)}


def _guard(fn, check, rule):
    """A check that raised is a failed check naming the exception (doctor continues)."""
    try:
        return fn()
    except Exception as exc:
        return {"check": check, "rule": rule, "ok": False,
                "detail": f"{type(exc).__name__}: {exc}"}
