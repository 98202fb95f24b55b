"""Measure the two weight-mirror variants side by side (docs/rules.md, "WM: the engine's
variant and Akrout et al.'s").

Setup: one Linear layer (``out x in``) whose ``W`` and ``b`` are held fixed (no training),
``W`` and ``b`` drawn as in Akrout et al.'s code (``N(0, 1/(in + out))``), and two copies
of its feedback: ``wm`` (variant "ema", engine defaults) and ``wm:variant=akrout`` (their
defaults, pre-training phase included in the step count). After ``T`` mirror steps it
reports, per variant::

    angle(B, W)                  the alignment the metrics report
    angle(B, T_s)                T_s = diag(s'(b)) @ W, akrout's first-order target
    ||B|| / ||W||                bounded for "ema", growing for "akrout"
    rank1                        share of ||B_T - B_0 - drift||^2 in its top singular
                                 direction, drift = eta * T * n * (a^2 / 12) * T_s (akrout's
                                 expected accumulated update): the rank-one noise
                                 term s(b) (sum of all noise)^T

and "ema"'s predicted angle floor ``atan(sqrt(eta*lam*K / (2*N)))`` (K = in, N = the
mirror batch). Run ``OPENBLAS_NUM_THREADS=1 python -m minigrad_pfa.rules.wm_compare`` for
the table quoted in docs/rules.md (about a minute).
"""
from __future__ import annotations

import argparse
import math

import numpy as np

from ..metrics.measures import angle
from ..nn.layers import Linear
from .registry import make_rule


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _layer(W, b, spec: dict, seed: int, batch: int) -> tuple[Linear, np.ndarray]:
    """A float64 Linear with ``W``, ``b`` and the rule ``spec`` attached, and ``B_0``; its
    mirror is primed with the input shape (``batch``, in) by one forward/backward pass
    (which runs the pre-training phase, if any)."""
    out, inp = W.shape
    layer = Linear(inp, out, dtype="float64")
    layer.weight.data[...] = W
    layer.bias.data[...] = b
    spec = dict(spec)
    layer.rule = make_rule(spec.pop("name"), **spec)
    layer.rule.attach(layer, np.random.default_rng([seed, 1, 0]))
    B0 = layer.feedback_B.copy()
    layer.forward(np.zeros((batch, inp)))
    layer.backward(np.zeros((batch, out)))
    return layer, B0


def compare_mirrors(out: int = 50, inp: int = 100, batch: int = 128,
                    checkpoints=(468, 2000, 8000, 20000), seed: int = 0,
                    bias_std: float | None = None) -> dict:
    """Both variants on one fixed layer; measurements after each checkpoint's step count.

    ``bias_std`` (default their init's ``sqrt(1/(in + out))``) sets the spread of ``b``: a
    large one separates akrout's target ``diag(s'(b)) @ W`` from ``W``.

    Returns
    -------
    dict with ``"floor_deg"`` ("ema"'s predicted angle floor) and, per variant name,
    a list of dicts ``{"steps", "angle_W", "angle_target", "norm_ratio", "rank1"}``.
    """
    rng = np.random.default_rng([seed, 7])
    std = math.sqrt(1.0 / (inp + out))
    W = rng.standard_normal((out, inp)) * std
    b = rng.standard_normal(out) * (std if bias_std is None else bias_std)
    s = _sigmoid(b)
    target = (s * (1.0 - s))[:, None] * W                   # diag(s'(b)) @ W
    specs = {"ema": {"name": "wm"},
             "akrout": {"name": "wm", "variant": "akrout"}}
    result = {}
    for variant, spec in specs.items():
        layer, B0 = _layer(W, b, spec, seed, batch)
        opts = layer.rule.options
        rows = []
        for T in checkpoints:
            while int(layer.feedback_mirror_count) < T:
                layer.rule.mirror_step(layer)
            B = layer.feedback_B
            row = {"steps": int(T), "angle_W": angle(B, W), "angle_target": angle(B, target),
                   "norm_ratio": float(np.linalg.norm(B) / np.linalg.norm(W))}
            if variant == "akrout":
                a = opts["noise_amplitude"]
                drift = opts["mirror_lr"] * T * batch * (a * a / 12.0) * target
                sv = np.linalg.svd(B - B0 - drift, compute_uv=False)
                row["rank1"] = float(sv[0] ** 2 / np.sum(sv ** 2))
            rows.append(row)
        result[variant] = rows
    eta, lam = 0.05, 1.0
    result["floor_deg"] = math.degrees(math.atan(math.sqrt(eta * lam * inp / (2.0 * batch))))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minigrad_pfa.rules.wm_compare",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", type=int, default=50)
    p.add_argument("--in", dest="inp", type=int, default=100)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bias-std", type=float, default=None,
                   help="spread of b (default: their init, sqrt(1/(in+out)))")
    args = p.parse_args(argv)
    r = compare_mirrors(args.out, args.inp, args.batch, seed=args.seed,
                        bias_std=args.bias_std)
    print(f"layer {args.out}x{args.inp}, mirror batch {args.batch}, W and b fixed; "
          f"ema predicted angle floor {r['floor_deg']:.1f} deg")
    print(f"{'variant':8s} {'steps':>6s} {'angle(B,W)':>11s} {'angle(B,Ts)':>12s} "
          f"{'|B|/|W|':>8s} {'rank1':>6s}")
    for variant in ("ema", "akrout"):
        for row in r[variant]:
            rank1 = f"{row['rank1']:6.3f}" if "rank1" in row else f"{'-':>6s}"
            print(f"{variant:8s} {row['steps']:6d} {row['angle_W']:11.1f} "
                  f"{row['angle_target']:12.1f} {row['norm_ratio']:8.2f} {rank1}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
