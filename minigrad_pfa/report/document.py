"""``write_report``: the whole Markdown document and summary.json."""
from __future__ import annotations

import json
import os
import re
import time
from collections import OrderedDict

from .fmt import DASH
from .runs import find_run_dirs, group_runs, group_summary, load_run
from .sections import (alignment_table, curve_figures, density_section, e5_section,
                       main_table, ordering_section, protocol_title, runs_section,
                       ORDERING_REFERENCE)


def write_report(paths, out: str = "report", e5: bool = False, e5_reps: int = 10,
                 plots: bool = True, command: str | None = None,
                 markdown: str | None = None) -> str:
    """Write ``out/report.md`` (+ PNGs and summary.json) for the runs under ``paths``.

    Parameters
    ----------
    paths : sequence of str
        Run directories, or folders searched recursively for them.
    out : str
        Output directory (created).
    e5 : bool
        Add the E5 expansion-ratio analysis (``e5_reps`` draws per ratio; published: 100).
    plots : bool
        Draw the PNG figures (False: tables only).
    command : str, optional
        The command line, quoted in the report.
    markdown : str, optional
        Write the Markdown here instead of ``out/report.md`` (e.g. the repository's
        RESULTS.md); its figure links then point into ``out``.

    Returns
    -------
    str
        Path of report.md.
    """
    from .. import plots as P

    os.makedirs(out, exist_ok=True)
    runs = [load_run(p) for p in find_run_dirs(paths)] if paths else []
    groups = group_runs(runs)
    by_protocol: "OrderedDict[str, list]" = OrderedDict()
    for key in groups:
        by_protocol.setdefault(key[0], []).append(key)
    summaries = OrderedDict((key, group_summary(key, g)) for key, g in groups.items())
    n_done = sum(r.complete for r in runs)

    md = ["# Results report", "",
          f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {len(runs)} run directories "
          f"({n_done} complete)" + (f" by `{command}`" if command else "") + ".", "",
          "Numbers are mean ± std over the complete seeds of each rule (sample std, n − 1; "
          f"{DASH} for a single seed). Published numbers: Li & Benna 2024, arXiv:2405.20594 "
          "(each config's `published` field). Δ = measured − published.", ""]

    for protocol, keys in by_protocol.items():
        gruns = [r for k in keys for r in groups[k]]
        md += [f"## {protocol}: {protocol_title(gruns)}", ""]
        md += main_table(keys, groups, summaries)
        md += alignment_table(keys, summaries)
        if protocol in ORDERING_REFERENCE:
            md += ordering_section(protocol, keys, summaries)
        if protocol == "E4" or len({summaries[k]["density"] for k in keys}) > 1:
            md += density_section(protocol, keys, groups, summaries, runs, out, plots, P)
        if plots:
            md += curve_figures(protocol, keys, groups, out, P)

    md += cross_protocol_sections(groups, summaries, out, plots)
    if e5:
        md += e5_section(out, e5_reps, plots, P)
    if runs:
        md += runs_section(groups)

    path = markdown or os.path.join(out, "report.md")
    text = "\n".join(md).rstrip() + "\n"
    rel = os.path.relpath(out, os.path.dirname(os.path.abspath(path)))
    if rel != ".":  # figure links are relative to ``out``
        text = re.sub(r"(!\[[^\]]*\]\()([^)/]+\.png\))", lambda m: f"{m.group(1)}{rel}/{m.group(2)}",
                      text)
    with open(path, "w") as fh:
        fh.write(text)
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump([dict(v) for v in summaries.values()], fh, indent=1)
    return path


def cross_protocol_sections(groups, summaries, out, plots) -> list[str]:
    """The findings that span protocols, each where one of its protocols has runs: the
    sign-concordant family (F1, F1-SF), sparse feedback (E4, F1, F2), KP beside PFA and the
    decay laws (E1, F1), seeds of F1's close ordering (F1). Missing runs read "pending"."""
    from .comparisons import kp_section, seeds_section
    from .decay import decay_section
    from .signfamily import sign_family_section
    from .sparse import sparse_section

    present = {k[0] for k in groups}
    md = []
    if present & {"F1", "F1-SF"}:
        md += sign_family_section(groups, summaries)
    if present & {"F1", "F2", "E4"}:
        md += sparse_section(groups, summaries, out, plots)
    if present & {"E1", "F1"}:
        md += kp_section(groups, summaries)
    if "F1" in present:
        md += seeds_section(groups, summaries)
    if present & {"E1", "F1"}:
        md += decay_section(groups, out, plots)
    return md
