"""The report's per-protocol sections: tables, ordering, density, curves, E5 and the run list."""
from __future__ import annotations

import os
from collections import OrderedDict

from .findings import diff_se
from .fmt import DASH, FROM_HOSTS, hms, machine_label, pm, slug, table
from .runs import (FINAL_VAL_PROTOCOLS, epoch_series, layer_names, mean_std, measured,
                   rule_label, training_config)

#: E4's published BP reference band for the MNIST network (accuracy %, Li & Benna 2024)
E4_BP_BAND = (98.36, 98.45)
#: Reference orderings for protocols without published numbers of their own: F1 (ResNet-20
#: on Fashion-MNIST, this project's check) is compared with the ordering published for the
#: same network on CIFAR-10 (E2, final-epoch validation accuracy %, mean, std; Li & Benna
#: 2024). The published "SF" is the uniform sign-concordant rule, uSF here.
ORDERING_REFERENCE = {
    "F1": ("E2 (CIFAR-10 ResNet-20, published)",
           OrderedDict([("PFA-o", (91.31, 0.18)), ("BP", (91.42, 0.19)), ("PFA", (90.70, 0.43)),
                        ("uSF", (89.97, 0.22)), ("FA", (64.70, 1.78)), ("DFA", (30.67, 1.23))])),
}
#: E5's published points (Li & Benna 2024, Figure 3): r, angle (deg), norm ratio
E5_PUBLISHED = [(1.0, 45.0, 1.41), (10 ** 0.6, 26.6, 1.12), (10.0, 17.5, 1.05),
                (10 ** 1.4, 11.3, 1.02), (100.0, 5.7, 1.005)]


def protocol_title(runs) -> str:
    cfg = runs[0].cfg
    model = cfg.get("model", {})
    arch = model.get("name", "?")
    if model.get("hidden"):
        arch += " " + "-".join(str(h) for h in model["hidden"])
    data = (cfg.get("data") or {}).get("name", "?")
    return f"{data}, {arch}, {cfg.get('epochs', '?')} epochs"




def main_table(keys, groups, summaries) -> list[str]:
    first = summaries[keys[0]]
    what = first["measured"]["what"]
    pub_what = next((summaries[k]["published"]["what"] for k in keys
                     if summaries[k]["published"]), None)
    final_val = groups[keys[0]][0].cfg.get("protocol") in FINAL_VAL_PROTOCOLS
    lines = [f"Measured: **{what}** (%)."
             + (f" Published: {pub_what}." if pub_what else " No published numbers.")]
    if final_val:
        lines[-1] += (" The test accuracy of the best-validation checkpoint (results.json; "
                      "the 10k test set used once) is shown beside it; it is not the "
                      "published metric.")
    lines.append("")
    header = ["rule", "config", "seeds", "measured %", "published %", "Δ"]
    if final_val:
        header.insert(4, "test % (best-val ckpt)")
    header += ["wall / seed", "machine"]
    rows = []
    for k in keys:
        s = summaries[k]
        pub = s["published"]
        n = f"{s['measured']['n']}" + (f" (+{len(s['incomplete'])} unfinished)"
                                         if s["incomplete"] else "")
        row = [s["rule"], ", ".join(s["configs"]), n,
               pm(s["measured"]["mean"], s["measured"]["std"]),
               pm(pub["mean"], pub["std"]) if pub else DASH,
               DASH if s["difference"] is None else f"{s['difference']:+.2f}"]
        if final_val:
            row.insert(4, pm(s["test_acc"]["mean"], s["test_acc"]["std"]))
        row += [hms(s["wall_s_per_seed"]), "; ".join(s["machines"]) or DASH]
        rows.append(row)
    return lines + table(header, rows)


def alignment_table(keys, summaries) -> list[str]:
    layers = []
    for k in keys:
        for layer in summaries[k]["final_alignment"]:
            if layer not in layers:
                layers.append(layer)
    if not layers:
        return []
    lines = ["Per-layer path alignment at the last epoch, mean over the complete seeds: angle "
             "between the matrix M the rule propagates with and W (degrees), and the norm "
             "ratio ||M|| / ||W|| in parentheses; n/a where undefined (DFA). The first "
             "layer's feedback is never used (marked).", ""]
    rows = []
    for layer in layers:
        unused = any(summaries[k]["final_alignment"].get(layer, {}).get("unused") for k in keys)
        row = [layer + (" (unused)" if unused else "")]
        for k in keys:
            a = summaries[k]["final_alignment"].get(layer)
            if a is None:
                row.append(DASH)
            elif a["angle"] is None:
                row.append("n/a")
            else:
                ratio = "n/a" if a["ratio"] is None else f"{a['ratio']:.2f}"
                row.append(f"{a['angle']:.1f}° ({ratio})")
        rows.append(row)
    return lines + table(["layer"] + [summaries[k]["rule"] for k in keys], rows)


def density_section(protocol, keys, groups, summaries, runs, out, plots, P) -> list[str]:
    points: "OrderedDict[str, list]" = OrderedDict()
    for k in keys:
        base = rule_label(groups[k][0].cfg, drop=("feedback_density",))
        s = summaries[k]["measured"]
        if s["n"]:
            points.setdefault(base, []).append((summaries[k]["density"], s["mean"], s["std"]))
    if not points:
        return []
    borrowed = borrowed_dense_points(protocol, keys, groups, points)
    for base, (m, sd, _) in borrowed.items():
        points[base].append((1.0, m, sd))
    densities = sorted({d for pts in points.values() for d, _, _ in pts}, reverse=True)
    rows = []
    for base, pts in points.items():
        cell = {d: pm(m, sd) for d, m, sd in pts}
        if base in borrowed:
            cell[1.0] += " †"
        rows.append([base] + [cell.get(d, DASH) for d in densities])
    lines = [f"Accuracy (%) against feedback density rho ({protocol}):", ""]
    lines += table(["rule"] + [f"rho = {d:g}" for d in densities], rows)
    lines += density_drops(points)
    for base, (_, _, source) in borrowed.items():
        lines += [f"† {base} at rho = 1: the {source} runs, whose resolved configs equal "
                  f"this protocol's at density 1 apart from name, protocol, published "
                  f"numbers and seed (`report.training_config`), so they are the same "
                  f"computation; not rerun.", ""]
    if plots:
        bands = [(E4_BP_BAND[0], E4_BP_BAND[1], "BP, published band")] \
            if protocol == "E4" else []
        bp = [summaries[k] for k in summaries if k[1] == "BP" and k[0] in ("E1", protocol)]
        if bp and bp[0]["measured"]["n"]:
            m, sd = bp[0]["measured"]["mean"], bp[0]["measured"]["std"] or 0.0
            bands.append((m - sd, m + sd, f"BP measured ({bp[0]['protocol']})"))
        name = f"density_{slug(protocol)}.png"
        P.accuracy_vs_density(points, os.path.join(out, name),
                              f"{protocol}: accuracy vs feedback density", bands)
        lines += [f"![accuracy vs feedback density]({name})", ""]
    return lines


def density_drops(points) -> list[str]:
    """One sentence: each rule's accuracy at its sparsest measured density minus its accuracy
    at rho = 1, in points (rules measured at rho = 1 and at least one other density)."""
    parts = []
    for base, pts in points.items():
        by_d = {d: m for d, m, _ in pts}
        if 1.0 not in by_d or len(by_d) < 2:
            continue
        lo = min(by_d)
        parts.append(f"{base} {by_d[lo] - by_d[1.0]:+.2f} (rho = {lo:g})")
    if not parts:
        return []
    return ["Change from rho = 1 to the sparsest density measured, in points (means over the "
            "seeds run, not tested against seed-to-seed noise): " + ", ".join(parts) + ".",
            ""]


def ordering_agreement(measured: dict, reference: dict, spread: dict | None = None) -> tuple:
    """Pairwise agreement of a measured ranking with a reference one.

    Parameters
    ----------
    measured : dict
        ``{rule: mean accuracy}``.
    reference : dict
        ``{rule: (mean, std)}``.
    spread : dict, optional
        ``{rule: (std, n)}`` of the measured means (sample std over n seeds).

    Returns
    -------
    (agree, total, reversed, tied)
        Over the pairs of rules present in both, with ``a`` the reference's higher rule:
        a pair *agrees* when the reference means differ by no more than the sum of their
        stds (a published tie, e.g. "PFA-o ≳ BP", where either order agrees) or the
        measurement puts ``a`` above ``b`` beyond the measured noise; it is *tied* when
        the measured means are equal at the reported precision (0.01 points) or, both
        having two or more seeds, differ by no more than twice their standard error
        ``sqrt(s_a^2/n_a + s_b^2/n_b)`` (the measurement does not order them); else
        *reversed*. ``reversed`` and ``tied`` list the pairs ``(a, b)``.
    """
    spread = spread or {}

    def within_noise(a, b):
        d = abs(measured[a] - measured[b])
        if d < 0.005:
            return True
        (sa, na), (sb, nb) = spread.get(a, (None, 1)), spread.get(b, (None, 1))
        if sa is None or sb is None or na < 2 or nb < 2:
            return False
        return d <= 2 * diff_se(sa, na, sb, nb)

    rules = [r for r in reference if r in measured]
    agree, total, bad, tied = 0, 0, [], []
    for i, a in enumerate(rules):
        for b in rules[i + 1:]:
            (ma, sa), (mb, sb) = reference[a], reference[b]
            hi, lo = (a, b) if ma >= mb else (b, a)
            total += 1
            if abs(ma - mb) <= sa + sb:
                agree += 1
            elif within_noise(hi, lo):
                tied.append((hi, lo))
            elif measured[hi] > measured[lo]:
                agree += 1
            else:
                bad.append((hi, lo))
    return agree, total, bad, tied


def ordering_section(protocol, keys, summaries) -> list[str]:
    source, ref = ORDERING_REFERENCE[protocol]
    done = [k for k in keys if summaries[k]["measured"]["n"]]
    meas = {summaries[k]["rule"]: summaries[k]["measured"]["mean"] for k in done}
    spread = {summaries[k]["rule"]: (summaries[k]["measured"]["std"],
                                     summaries[k]["measured"]["n"]) for k in done}
    if not meas:
        return []
    ranked = sorted(meas, key=lambda r: -meas[r])
    ref_ranked = sorted(ref, key=lambda r: -ref[r][0])
    # equal means at the printed precision are printed as equal, not as an order
    order = f"{ranked[0]} {meas[ranked[0]]:.2f}" + "".join(
        f" {'=' if f'{meas[p]:.2f}' == f'{meas[r]:.2f}' else '>'} {r} {meas[r]:.2f}"
        for p, r in zip(ranked, ranked[1:]))
    lines = [f"Ordering: measured here, best first (mean over the complete seeds): {order}. "
             f"Reference, {source}: "
             + " > ".join(f"{r} {ref[r][0]:.2f}" for r in ref_ranked) + "."]
    agree, total, bad, tied = ordering_agreement(meas, ref, spread)
    if total:
        lines[-1] += (f" Pairs in the reference order: {agree} of {total} (a pair whose "
                      f"reference means lie within the sum of their stds counts either way)")
        if tied:
            lines[-1] += ("; not ordered by the measurement (equal means, or within twice "
                          "their standard error over seeds), reference order: "
                          + ", ".join(f"{a} > {b}" for a, b in tied))
        lines[-1] += ("; measured in the opposite order (reference order given): "
                      + ", ".join(f"{a} > {b}" for a, b in bad) + "." if bad else ".")
    missing = [r for r in ref if r not in meas]
    if missing:
        lines[-1] += " Not yet measured: " + ", ".join(missing) + "."
    return lines + [""]


def borrowed_dense_points(protocol, keys, groups, points) -> dict:
    """``{base rule: (mean, std, source protocol)}`` for the base rules of ``protocol``
    that have no density-1 run of their own but whose density-1 computation was run under
    another protocol (e.g. E4's rho = 1 is E1): mean ± std over those complete runs."""
    found = {}
    for base in points:
        if any(d == 1.0 for d, _, _ in points[base]):
            continue
        template = next(r for k in keys for r in groups[k]
                        if rule_label(r.cfg, drop=("feedback_density",)) == base)
        want = training_config(template.cfg, density=1.0)
        for k, g in groups.items():
            if k[0] == protocol:
                continue
            same = [r for r in g if r.complete and training_config(r.cfg) == want]
            m, sd, n = mean_std(measured(r) for r in same)
            if n:
                found[base] = (m, sd, k[0])
                break
    return found


def curve_figures(protocol, keys, groups, out, P) -> list[str]:
    curves, eval_labels = OrderedDict(), set()
    for k in keys:
        g = groups[k]
        ev = "val_acc" if any("val_acc" in rec for r in g for rec in r.metrics) \
            else "test_acc_unselected"
        eval_labels.add("validation" if ev == "val_acc" else "test (unselected curve)")
        curves[k[1]] = {"train": epoch_series(g, "train_acc"), "eval": epoch_series(g, ev)}
    name = f"acc_{slug(protocol)}.png"
    P.accuracy_curves(curves, os.path.join(out, name), f"{protocol}: accuracy per epoch",
                      " / ".join(sorted(eval_labels)))
    lines = ["Figures:", "", f"![{protocol} accuracy per epoch]({name})", ""]
    for k in keys:
        g = groups[k]
        layers = layer_names(g)
        series = OrderedDict(
            (layer, {"angle": epoch_series(g, f"{layer}/path_angle"),
                     "ratio": epoch_series(g, f"{layer}/path_norm_ratio")})
            for layer in layers)
        if not any(s["angle"]["epoch"] for s in series.values()):
            continue        # DFA: path alignment undefined
        unused = {layer for layer in layers
                  if any(rec.get(f"{layer}/feedback_unused") for r in g for rec in r.metrics)}
        name = f"align_{slug(protocol)}_{slug(k[1])}.png"
        P.layer_alignment(series, os.path.join(out, name),
                          f"{protocol}, {k[1]}: per-layer path alignment "
                          f"(mean over {len(g)} seed(s))", unused)
        lines += [f"![{protocol} {k[1]} alignment]({name})", ""]
    return lines


def e5_section(out, reps, plots, P) -> list[str]:
    from ..analysis import expansion_ratio_analysis

    rows = expansion_ratio_analysis(reps=reps)
    lines = ["## E5: path alignment against the expansion ratio (analysis, no training)", "",
             f"W (100, 256) and B (100, r·100) Xavier-uniform, R = B^T W (converged), "
             f"{reps} draws per ratio (published: 100). Published: Li & Benna 2024, Fig. 3.",
             ""]
    e5_rows = []
    for x in rows:
        pub = next((p for p in E5_PUBLISHED
                    if x["variant"] == "pfa" and abs(p[0] - x["r"]) / p[0] < 0.01), None)
        e5_rows.append([x["variant"], f"{x['r']:.3g}", x["mid"],
                      pm(x["angle_mean"], x["angle_std"]),
                      DASH if pub is None else f"{pub[1]:.1f}",
                      pm(x["norm_ratio_mean"], x["norm_ratio_std"], 3),
                      DASH if pub is None else f"{pub[2]:g}",
                      f"{x['eig_min_mean']:.3f} / {x['eig_max_mean']:.3f}",
                      f"{x['mp_lower']:.3f} / {x['mp_upper']:.3f}"])
    lines += table(["variant", "r", "mid", "angle °", "published °", "norm ratio",
                     "published", "eig(B B^T) min / max", "Marchenko–Pastur edges"], e5_rows)
    if plots:
        P.expansion_ratio(rows, E5_PUBLISHED, os.path.join(out, "e5_expansion_ratio.png"))
        lines += ["![E5 expansion ratio](e5_expansion_ratio.png)", ""]
    return lines


def runs_section(groups) -> list[str]:
    rows = []
    for (protocol, label), g in groups.items():
        for r in g:
            total = r.cfg.get("epochs", "?")
            acc = f"{r.results['test_acc']:.2f}" if r.complete else "unfinished"
            cmds = r.commands()
            cmd = f"`{cmds[0]}`" + (f" (+{len(cmds) - 1} resume)" if len(cmds) > 1 else "")
            rows.append([r.path, protocol, label, r.seed, f"{len(r.metrics)}/{total}", acc,
                         hms(r.wall_s), machine_label(r), cmd])
    lines = ["## Runs", "", "Test accuracy as recorded in results.json (its checkpoint "
             "selection as in the protocol); commands as recorded by the trainer.", ""]
    if any(FROM_HOSTS in row[7] for row in rows):
        lines += [f"{FROM_HOSTS}: the run's results.json names only the architecture (it "
                  "finished before the trainer recorded the CPU model); the model is the "
                  "project's record of its hosts by the run's creation time (a hosts.json "
                  "in a directory above the run). Wall times on different models are not comparable.", ""]
    return lines + table(["run", "protocol", "rule", "seed", "epochs", "test %", "wall",
                          "machine", "command"], rows)
