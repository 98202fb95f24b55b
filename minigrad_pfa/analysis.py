"""E5: path alignment of product feedback alignment versus the expansion ratio (no training).

Setup of Li & Benna 2024 (arXiv:2405.20594), Figure 3: a layer ``W`` (out, in) and PFA's
feedback ``B`` (out, mid), ``mid = round(r * out)``, with ``R`` already converged to its
fixed point ``R = B.T @ W`` (see the decay laws in ``docs/metrics.md``). The path the rule
propagates with is then

    M = B @ R = B @ B.T @ W,

so how well PFA can align is decided by how close ``B @ B.T`` is to the identity.

Initialisation (as published, with the engine's own host draws of
:mod:`minigrad_pfa.rules.draw`): ``W`` Xavier-uniform with gain 1; ``B`` Xavier-uniform
with gain ``sqrt((1 + 1/r) / 2)``, i.e. ``Var(B) = 1 / mid`` and ``E[B @ B.T] = I``. Here
``r`` is the realised ratio ``mid / out`` so that the identity holds exactly for
non-integer ``r``.

What to expect (derivation, checked numerically by the tests): with ``E[B B.T] = I`` and
``E[(B B.T)^2] = (1 + 1/r) I`` (the first two moments of the Marchenko-Pastur law),

    cos angle(W, B B.T W)  ~= 1 / sqrt(1 + 1/r)     ->  angle ~= arctan(r ** -0.5)
    ||B B.T W|| / ||W||    ~= sqrt(1 + 1/r)

i.e. 45.0 deg / 1.41 at r = 1, 17.5 deg / 1.05 at r = 10, 5.7 deg / 1.005 at r = 100. The
eigenvalues of ``B B.T`` fill the Marchenko-Pastur support ``[(1 - r^-1/2)^2, (1 + r^-1/2)^2]``.
PFA-o replaces ``B`` by a Haar-random orthogonal (out, out) matrix: ``B B.T = I`` and the
angle is 0 to rounding.

Run it: ``python -m minigrad_pfa.analysis [--reps 100] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from .metrics.measures import angle_from, inner_products, ratio_from
from .rules.draw import haar_orthogonal, xavier


def marchenko_pastur_edges(r: float) -> tuple[float, float]:
    """Marchenko-Pastur edges ``(1 -+ r^-1/2)^2`` of the spectrum of ``B @ B.T``.

    For ``B`` (out, mid) with ``Var(B) = 1/mid`` and ``r = mid/out``.

    For ``r < 1`` the same interval holds for the non-zero eigenvalues (``B @ B.T`` then has
    ``out - mid`` zero eigenvalues).
    """
    s = 1.0 / math.sqrt(r)
    return (1.0 - s) ** 2, (1.0 + s) ** 2


def _path_stats(W: np.ndarray, BBt: np.ndarray) -> tuple[float, float]:
    """Angle (deg) between ``W`` and ``P = BBt @ W`` and ``||P|| / ||W||`` (metrics measures)."""
    wp, ww, pp = inner_products(W, BBt @ W)
    return angle_from(wp, ww, pp), ratio_from(pp, ww)


def _summary(r: float, mid: int, stats: list, eigs: list, variant: str) -> dict:
    a = np.asarray(stats, dtype=np.float64)
    e = np.asarray(eigs, dtype=np.float64)
    lo, hi = marchenko_pastur_edges(r) if variant == "pfa" else (1.0, 1.0)
    return {
        "variant": variant, "r": float(r), "mid": int(mid), "reps": int(a.shape[0]),
        "angle_mean": float(a[:, 0].mean()), "angle_std": float(a[:, 0].std()),
        "norm_ratio_mean": float(a[:, 1].mean()), "norm_ratio_std": float(a[:, 1].std()),
        "eig_min_mean": float(e[:, 0].mean()), "eig_max_mean": float(e[:, 1].mean()),
        "eig_mean": float(e[:, 2].mean()),
        "mp_lower": lo, "mp_upper": hi,
        # the moment approximation above, for reading the table (not used by the tests)
        "angle_approx": math.degrees(math.atan(1.0 / math.sqrt(r))) if variant == "pfa" else 0.0,
        "norm_ratio_approx": math.sqrt(1.0 + 1.0 / r) if variant == "pfa" else 1.0,
    }


def _eig_stats(BBt: np.ndarray) -> tuple[float, float, float]:
    ev = np.linalg.eigvalsh(BBt)
    return float(ev[0]), float(ev[-1]), float(ev.mean())


def expansion_ratio_analysis(out: int = 100, inp: int = 256, ratios=None, reps: int = 100,
                             seed: int = 0, include_orthogonal: bool = True) -> list[dict]:
    """Angle and norm ratio of PFA's converged path ``B @ B.T @ W`` against ``W``, per ratio ``r``.

    Parameters
    ----------
    out, inp : int
        Shape (out, inp) of ``W`` (published: 100, 256).
    ratios : sequence of float, optional
        Expansion ratios ``r``; default ``np.logspace(0, 2, 11)`` (published);
        ``mid = round(r * out)``.
    reps : int
        Independent draws of (W, B) per ratio (published: 100).
    seed : int
        The draws for a ratio come from ``np.random.default_rng([seed, mid])`` (PFA-o:
        ``[seed, 0]``), so a row does not depend on which other ratios are computed.
    include_orthogonal : bool
        Append one PFA-o row (``mid = out``, ``B`` Haar orthogonal): angle 0, norm ratio 1.

    Returns
    -------
    list of dict
        One row per ratio (``variant`` "pfa") then optionally "pfa-o", with ``r`` (realised
        ``mid/out``), ``mid``, ``reps``, ``angle_mean``/``angle_std`` (degrees),
        ``norm_ratio_mean``/``norm_ratio_std``, ``eig_min_mean``/``eig_max_mean``/``eig_mean``
        (spectrum of ``B @ B.T``), ``mp_lower``/``mp_upper`` (Marchenko-Pastur edges) and
        the moment approximations ``angle_approx``/``norm_ratio_approx``.
    """
    if ratios is None:
        ratios = np.logspace(0, 2, 11)
    out, inp, reps = int(out), int(inp), int(reps)
    if out < 1 or inp < 1 or reps < 1:
        raise ValueError(f"out, inp and reps must be positive, got {out}, {inp}, {reps}")
    rows = []
    for r_nominal in ratios:
        mid = int(round(float(r_nominal) * out))
        if not r_nominal > 0 or mid < 1:
            raise ValueError(f"expansion ratio {r_nominal!r} gives mid = {mid}; need r > 0 "
                             f"and round(r * out) >= 1")
        r = mid / out
        gain = math.sqrt((1.0 + 1.0 / r) / 2.0)
        rng = np.random.default_rng([int(seed), mid])
        stats, eigs = [], []
        for _ in range(reps):
            # W first, then B, from the same per-ratio stream
            W = xavier(rng, (out, inp), inp, out)
            B = xavier(rng, (out, mid), mid, out, gain=gain)
            BBt = B @ B.T
            stats.append(_path_stats(W, BBt))
            eigs.append(_eig_stats(BBt))
        rows.append(_summary(r, mid, stats, eigs, "pfa"))
    if include_orthogonal:
        rng = np.random.default_rng([int(seed), 0])
        stats, eigs = [], []
        for _ in range(reps):
            W = xavier(rng, (out, inp), inp, out)
            Q = haar_orthogonal(rng, out)
            BBt = Q @ Q.T
            stats.append(_path_stats(W, BBt))
            eigs.append(_eig_stats(BBt))
        rows.append(_summary(1.0, out, stats, eigs, "pfa-o"))
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain-text table of :func:`expansion_ratio_analysis` rows."""
    head = (f"{'variant':>7} {'r':>7} {'mid':>6} {'angle':>13} {'approx':>7} "
            f"{'norm ratio':>15} {'eig min/max':>15} {'MP edges':>15}")
    lines = [head, "-" * len(head)]
    for x in rows:
        lines.append(
            f"{x['variant']:>7} {x['r']:7.3f} {x['mid']:6d} "
            f"{x['angle_mean']:6.2f}+-{x['angle_std']:4.2f} {x['angle_approx']:7.2f} "
            f"{x['norm_ratio_mean']:7.4f}+-{x['norm_ratio_std']:6.4f} "
            f"{x['eig_min_mean']:7.3f}/{x['eig_max_mean']:<7.3f} "
            f"{x['mp_lower']:7.3f}/{x['mp_upper']:<7.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minigrad_pfa.analysis",
                                description="E5: PFA path alignment versus expansion ratio.")
    p.add_argument("--out", type=int, default=100)
    p.add_argument("--inp", type=int, default=256)
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ratios", type=float, nargs="*", default=None,
                   help="expansion ratios (default: numpy.logspace(0, 2, 11))")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = p.parse_args(argv)
    rows = expansion_ratio_analysis(a.out, a.inp, a.ratios, a.reps, a.seed)
    print(format_table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
