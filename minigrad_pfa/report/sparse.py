"""Sparse feedback across networks: F2 (ResNet-20 on Fashion-MNIST, F1's protocol at feedback
densities 0.3 and 0.1; density 1 is F1) beside E4 (the MNIST MLP, densities 1 to 0.05).

Accuracy and mean path angle (over the layers whose feedback is used) against density, one
table and one figure, plus the list of E4 / F2 points still pending.
"""
from __future__ import annotations

import os
from collections import OrderedDict

from .findings import PENDING
from .fmt import pm, table
from .runs import rule_label
from .sections import borrowed_dense_points
from .signfamily import mean_path_angle

#: the protocols' grids: rules (group labels without the density) x densities
F2_GRID = (("FA", "uSF", "PFA"), (1.0, 0.3, 0.1))
E4_GRID = (("FA", "DFA", "uSF", "PFA"), (1.0, 0.5, 0.3, 0.17, 0.1, 0.05))


def density_points(protocol, groups, summaries) -> "OrderedDict[str, dict]":
    """``{base rule: {density: (acc mean, acc std, mean path angle, source protocol)}}`` of
    ``protocol``, with density 1 borrowed from an identical-config protocol (E1 for E4, F1
    for F2; :func:`~minigrad_pfa.report.sections.borrowed_dense_points`)."""
    keys = [k for k in groups if k[0] == protocol]
    out: "OrderedDict[str, dict]" = OrderedDict()
    acc_pts: "OrderedDict[str, list]" = OrderedDict()
    for k in keys:
        base = rule_label(groups[k][0].cfg, drop=("feedback_density",))
        s = summaries[k]
        if s["measured"]["n"]:
            out.setdefault(base, {})[s["density"]] = (
                s["measured"]["mean"], s["measured"]["std"], mean_path_angle(s), protocol)
            acc_pts.setdefault(base, []).append((s["density"], s["measured"]["mean"], None))
    for base, (m, sd, source) in borrowed_dense_points(protocol, keys, groups, acc_pts).items():
        src = summaries.get((source, base))
        out[base][1.0] = (m, sd, mean_path_angle(src) if src else None, source)
    return out


def _pending(points, grid) -> list[str]:
    """The grid's missing points; a rule with no run in the protocol at all is one entry
    (its rho = 1 is borrowed only once a run of its own shows which config to match)."""
    rules, densities = grid
    out = []
    for r in rules:
        if r not in points:
            out.append(f"{r} (no run of this protocol yet: every rho)")
            continue
        out += [f"{r} at rho = {d:g}" for d in densities if d not in points[r]]
    return out


def sparse_section(groups, summaries, out, plots) -> list[str]:
    f2 = density_points("F2", groups, summaries)
    e4 = density_points("E4", groups, summaries)
    lines = ["## F2: sparse feedback in a deep convolutional network, beside E4", "",
             "F1's protocol (Fashion-MNIST, ResNet-20, 8 epochs, seed 0) with a fixed "
             "Bernoulli mask of density rho on each layer's feedback (`feedback_density`, "
             "no rescaling); rho = 1 is F1's runs of the same config (mean ± std where F1 "
             "has repeated seeds). The PFA paper examined "
             "sparse feedback only in the MNIST MLP (E4, right). Cells: test % of the "
             "best-validation checkpoint, and the mean final path angle over the layers "
             "whose feedback is used.", ""]
    rules, densities = F2_GRID
    rows = []
    for r in rules:
        row = [r]
        for d in densities:
            p = f2.get(r, {}).get(d)
            row.append(PENDING if p is None else
                       f"{pm(p[0], p[1])} / " + ("n/a" if p[2] is None else f"{p[2]:.1f}°")
                       + (f" ({p[3]})" if p[3] != "F2" else ""))
        rows.append(row)
    lines += table(["rule"] + [f"rho = {d:g}: acc % / angle" for d in densities], rows)
    for name, pts, grid in (("F2", f2, F2_GRID), ("E4", e4, E4_GRID)):
        pend = _pending(pts, grid)
        total = len(grid[0]) * len(grid[1])
        have = sum(d in pts.get(r, {}) for r in grid[0] for d in grid[1])
        lines += [f"{name}: {have} of {total} points measured"
                  + ("; pending (run not finished): " + ", ".join(pend) + "." if pend else ".")]
    lines.append("")
    if plots and (f2 or e4):
        from .figures import density_panels

        def series(pts, i):
            return OrderedDict((r, [(d, v[i], v[1] if i == 0 else None)
                                    for d, v in sorted(by_d.items())]) for r, by_d in pts.items())
        name = "density_F2_E4.png"
        density_panels([(series(f2, 0), "test accuracy (%)", "F2 (ResNet-20, Fashion-MNIST)"),
                        (series(f2, 2), "mean path angle (deg)", "F2: path alignment"),
                        (series(e4, 0), "test accuracy (%)", "E4 (MLP, MNIST)")],
                       os.path.join(out, name))
        lines += [f"![F2 and E4: accuracy and alignment against feedback density]({name})", ""]
    return lines
