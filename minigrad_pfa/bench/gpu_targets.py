"""The GPU targets (issue 11), checked by ``minigrad-pfa doctor --device cuda``.

Notation: t(impl, rule) the median training-step time of ResNet-20 at batch 128 on one
GPU, from one ``bench --device cuda`` run (CuPy engine vs PyTorch with cuDNN), so that the
ratios compare figures of the same run:

    pfa_vs_bp          t(engine, PFA r = 10) / t(engine, BP)               <= 1.3
    bp_vs_torch        t(engine, BP) / t(PyTorch cuDNN, BP)                <= 3
    torch_pfa_vs_pfa   t(PyTorch, published PFA) / t(engine, PFA r = 10)   >= 4

No GPU figure has been measured: the machines this engine was written on have none. The
section :func:`gpu_section` puts into docs/performance.md says so until a run on a GPU
fills the values in.
"""
from __future__ import annotations

from .targets import find

#: (key, description, numerator (impl, rule), denominator (impl, rule), op, threshold)
GPU_TARGETS = (
    ("gpu_pfa_vs_bp", "ResNet-20 b128 PFA (r = 10) step / engine BP step",
     ("minigrad", "pfa-r10"), ("minigrad", "bp"), "<=", 1.3),
    ("gpu_bp_vs_torch", "ResNet-20 b128 engine BP step / PyTorch (cuDNN) BP step",
     ("minigrad", "bp"), ("torch", "bp"), "<=", 3.0),
    ("gpu_torch_pfa_vs_pfa",
     "ResNet-20 b128 PyTorch published-PFA step / engine PFA (r = 10) step",
     ("torch", "pfa-r10"), ("minigrad", "pfa-r10"), ">=", 4.0),
)


def evaluate_gpu_targets(records, model: str = "resnet20", batch: int = 128) -> list[dict]:
    """Each GPU target from ``bench --device cuda`` records (``value`` None if missing)."""
    out = []
    for key, desc, num, den, op, thr in GPU_TARGETS:
        a = find(records, model, num[1], num[0], batch, "cuda")
        b = find(records, model, den[1], den[0], batch, "cuda")
        value = None if a is None or b is None else a["step_s"] / b["step_s"]
        met = None if value is None else (value <= thr if op == "<=" else value >= thr)
        detail = ("not measured" if value is None else
                  f"{a['step_s'] * 1e3:.2f} ms / {b['step_s'] * 1e3:.2f} ms")
        out.append({"key": key, "description": desc, "op": op, "target": thr,
                    "value": value, "met": met, "detail": detail})
    return out


def gpu_section(records=None) -> list[str]:
    """The "GPU" section of docs/performance.md (the targets, unmeasured without records)."""
    rows = evaluate_gpu_targets(records or [])
    measured = any(r["value"] is not None for r in rows)
    lines = ["## GPU (CuPy)", ""]
    if not measured:
        lines += ["**GPU figures are unmeasured**: no GPU was available where this engine "
                  "was developed. The `--device cuda` code paths run in the test suite on "
                  "a strict CPU stand-in of CuPy (`minigrad_pfa.standin`, which enforces "
                  "CuPy's host/device rules and counts host synchronisations), but no "
                  "timing below exists yet. On a GPU machine, one command checks the "
                  "path and these targets:", "", "```", "minigrad-pfa doctor --device cuda "
                  "--json doctor.json", "```", ""]
    lines += ["| target | measured | goal | met |", "|---|---|---|---|"]
    for r in rows:
        v = "unmeasured" if r["value"] is None else f"{r['value']:.2f} ({r['detail']})"
        met = {True: "yes", False: "**no**", None: "-"}[r["met"]]
        lines.append(f"| {r['description']} | {v} | {r['op']} {r['target']:g} | {met} |")
    lines += ["", "GPU defaults: float32 everywhere; TF32 tensor-core math stays off unless "
              "asked for (CuPy's `CUPY_TF32=1` environment variable), so float32 GEMMs keep "
              "their 24-bit mantissa and NumPy/CuPy parity holds to 1e-4; CuPy's default "
              "memory pool is reused across steps (`doctor` reports its size).", ""]
    return lines
