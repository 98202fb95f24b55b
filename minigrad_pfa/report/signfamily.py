"""The sign-concordant family on F1 (protocol F1-SF) beside F1's BP, FA, DFA and uSF, and
how it compares with Moskovitz, Litwin-Kumar & Abbott (2018, arXiv:1812.06488).

Their qualitative findings, each checked here with a criterion printed in the report:

1. normalised sign-concordant feedback (SN, Init) closes most of the gap to BP: the better
   of uSF+SN / uSF+Init closes more than half of plain uSF's gap to BP (with seed noise:
   by more than twice the standard error of that comparison);
2. Const helps: uSF+Const above uSF;
3. E/I (fixed-sign forward weights) hurts: uSF+E/I below uSF;
4. DenseFA is competitive only in limited settings: here "competitive" means a gap to BP no
   larger than plain uSF's.

Single-seed differences are judged against F1's seed-to-seed noise when F1 has repeated
seeds (:func:`~minigrad_pfa.report.findings.seed_noise`).
"""
from __future__ import annotations

from .findings import PENDING, acc, contrast_se, noise_text, seed_noise, verdict
from .fmt import DASH, pm, table
from .sections import alignment_table

BASE, FAMILY = "F1", "F1-SF"
#: (display name, protocol, group label) in table order
ROWS = (("BP", BASE, "BP"), ("FA", BASE, "FA"), ("DFA (conv)", BASE, "DFA"),
        ("uSF", BASE, "uSF"),
        ("uSF + SN", FAMILY, "uSF(norm=sn)"), ("uSF + Init", FAMILY, "uSF(norm=init)"),
        ("uSF + Const", FAMILY, "uSF(const=True)"), ("frSF", FAMILY, "frSF"),
        ("brSF", FAMILY, "brSF"), ("uSF + E/I", FAMILY, "uSF(fixed_sign=True)"),
        ("uSF + Batch Manhattan", FAMILY, "uSF(batch_manhattan=True)"),
        ("DenseFA", FAMILY, "DFA(conv=dense)"))


def mean_path_angle(summary) -> float | None:
    """Mean over the layers whose feedback is used of the final path angle (None: undefined)."""
    vals = [a["angle"] for a in summary["final_alignment"].values()
            if not a["unused"] and a["angle"] is not None]
    return sum(vals) / len(vals) if vals else None


def _get_n(summaries, name):
    """``(mean accuracy, seeds)`` of a row of :data:`ROWS` (``(None, 0)`` if absent)."""
    row = next(r for r in ROWS if r[0] == name)
    m, _, n = acc(summaries, row[1], row[2])
    return m, n


def _get(summaries, name):
    return _get_n(summaries, name)[0]


def findings(summaries, noise) -> list[tuple]:
    """``(finding, measured, verdict)`` for the four findings of the module docstring."""
    (bp, n_bp), (usf, n_usf) = _get_n(summaries, "BP"), _get_n(summaries, "uSF")
    out = []
    # 1. normalisation closes most of uSF's gap to BP: the better normalised accuracy b
    # closes more than half of it iff d = b - (uSF + BP) / 2 > 0; with seed noise sigma,
    # d's standard error is sigma * sqrt(1/n_b + 1/(4 n_uSF) + 1/(4 n_BP))
    norm = [(v, n) for v, n in (_get_n(summaries, "uSF + SN"), _get_n(summaries, "uSF + Init"))
            if v is not None]
    if bp is None or usf is None or not norm:
        out.append(("normalised SF (SN, Init) closes most of the gap to BP", PENDING, PENDING))
    else:
        (best, n_best), gap = max(norm), bp - usf
        frac = (best - usf) / gap if gap > 0 else None
        meas = (f"best normalised {best:.2f} vs uSF {usf:.2f}, BP {bp:.2f}: "
                + (f"closes {100 * frac:.0f}% of uSF's {gap:.2f}-point gap" if frac is not None
                   else f"uSF is not below BP (gap {gap:.2f})"))
        d = best - 0.5 * (usf + bp)
        se = None if noise is None else contrast_se(
            noise, [(1, n_best), (-0.5, n_usf), (-0.5, n_bp)])
        if frac is None:
            v = "not testable here (no gap to close)"
        elif noise is not None and gap <= 2 * contrast_se(noise, [(1, n_bp), (-1, n_usf)]):
            v = "within noise (uSF's gap to BP is itself within seed noise)"
        elif se is not None and abs(d) <= 2 * se:
            v = (f"within noise (half the gap is {abs(d):.2f} points away, within twice its "
                 f"standard error {se:.2f}; the better of two runs also leans upward)")
        else:
            v = "agrees" if frac > 0.5 else "deviates"
        if len(norm) < 2:       # the finding is about the better of the two
            meas += " (one of SN / Init still pending)"
            v = f"{PENDING}; so far {v}"
        out.append(("normalised SF (SN, Init) closes most of the gap to BP", meas, v))
    # 2. Const helps, 3. E/I hurts (against plain uSF)
    for name, claim, sign in (("uSF + Const", "Const helps", +1),
                              ("uSF + E/I", "E/I (fixed signs) hurts", -1)):
        x, n_x = _get_n(summaries, name)
        diff = None if x is None or usf is None else x - usf
        meas = PENDING if diff is None else f"{name} {x:.2f} vs uSF {usf:.2f} ({diff:+.2f})"
        out.append((claim, meas, verdict(diff, noise, sign, n=(n_x, n_usf))))
    # 4. DenseFA competitive only in limited settings
    dense, dfa = _get(summaries, "DenseFA"), _get(summaries, "DFA (conv)")
    if dense is None or bp is None or usf is None:
        out.append(("DenseFA is competitive only in limited settings", PENDING, PENDING))
    else:
        gap, ref = bp - dense, bp - usf
        meas = (f"DenseFA {dense:.2f}, {gap:.2f} below BP (uSF: {ref:.2f} below)"
                + (f"; DFA (conv) {dfa:.2f}" if dfa is not None else ""))
        v = ("agrees (not competitive in this deep convolutional setting)" if gap > ref
             else "deviates (competitive here)")
        out.append(("DenseFA is competitive only in limited settings", meas, v))
    return out


def sign_family_section(groups, summaries) -> list[str]:
    noise, used = seed_noise(groups, BASE, summaries)
    lines = ["## F1-SF: the sign-concordant family on F1 (Moskovitz et al. 2018)", "",
             "F1's protocol (Fashion-MNIST, ResNet-20, 8 epochs, seed 0; F1's rules with "
             "repeated seeds show their mean ± std) with the conditions "
             "of Moskovitz, Litwin-Kumar & Abbott (2018): SN and Init scale the feedback "
             "to the norm ||W_t|| (SN) or ||W_0|| (Init), Const keeps ||W|| = ||W_0||, E/I keeps every weight's "
             "initial sign (`fixed_sign`), Batch Manhattan (Liao et al. 2016) updates with "
             "sign(gW) (its lr: experiments/README.md), DenseFA is DFA with a dense projection per conv layer; "
             "all reconstructions (docs/rules.md). BP, FA, DFA (conv) and uSF are F1's runs.",
             ""]
    rows = []
    bp, usf = _get(summaries, "BP"), _get(summaries, "uSF")
    for name, protocol, label in ROWS:
        m, s, n = acc(summaries, protocol, label)
        summ = summaries.get((protocol, label))
        angle = mean_path_angle(summ) if summ and n else None
        rows.append([name, f"{protocol}: {label}", PENDING if m is None else pm(m, s),
                     DASH if m is None or bp is None else f"{m - bp:+.2f}",
                     DASH if m is None or usf is None else f"{m - usf:+.2f}",
                     DASH if m is None else ("n/a" if angle is None else f"{angle:.1f}°")])
    lines += table(["rule", "group", "test % (best-val ckpt)", "Δ vs BP", "Δ vs uSF",
                    "mean path angle"], rows)
    lines += ["Findings of Moskovitz et al. against these runs (" + noise_text(noise, used)
              + "):", ""]
    lines += table(["published finding", "measured here", "verdict"], findings(summaries, noise))
    keys = [(p, lab) for _, p, lab in ROWS if (p, lab) in summaries]
    if keys:
        lines += ["Per-layer path alignment of the family:", ""]
        lines += alignment_table(keys, summaries)
    return lines
