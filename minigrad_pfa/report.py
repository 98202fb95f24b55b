"""``minigrad-pfa report``: a Markdown report of finished runs beside the published numbers.

Input: run directories made by ``minigrad-pfa train`` / ``grid`` (config.yaml,
metrics.jsonl, results.json), or folders holding them (searched recursively). Output, in
``--out``: ``report.md`` with the PNG figures beside it (relative links) and
``summary.json`` (the same numbers, machine-readable).

Grouping: runs are grouped by (protocol, rule with its options), e.g. (E1, PFA-o) or
(E4, FA(feedback_density=0.1)); a group's seeds are its runs. Per group the report gives

* the *measured* number comparable to the published one, mean ± std over the complete
  seeds (sample std, n - 1; "—" for one seed): for E2 the published number is the
  final-epoch accuracy on the 5k validation split, so that is what is compared, and the
  test accuracy of the best-validation checkpoint (results.json) is shown beside it,
  labelled; elsewhere it is results.json's test accuracy, labelled by how its checkpoint
  was selected (final epoch, or best validation);
* the published mean ± std (the config's ``published`` field) and the difference;
* the final per-layer path alignment (angle between the matrix the rule propagates with
  and W) and norm ratio, mean over seeds;
* wall-clock time per seed, the machine, and per run the exact command line(s).

Figures: accuracy per epoch (training and validation / unselected test curve) per
protocol; per-layer path angle and norm ratio per epoch for each rule; accuracy against
feedback density for E4 (log x); and with ``--e5`` the expansion-ratio analysis (E5,
:func:`minigrad_pfa.analysis.expansion_ratio_analysis`) beside the published points.
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import time
from collections import OrderedDict
from dataclasses import dataclass

#: protocols in report order (others follow, alphabetically)
PROTOCOL_ORDER = ("E1", "E2", "E3", "E4", "F1", "quickstart")
#: protocols whose published number is the final-epoch *validation* accuracy
FINAL_VAL_PROTOCOLS = ("E2",)
#: display names of the rules (paper spelling), in table order
RULE_NAMES = OrderedDict([("bp", "BP"), ("fa", "FA"), ("dfa", "DFA"), ("usf", "uSF"),
                          ("brsf", "brSF"), ("frsf", "frSF"), ("kp", "KP"), ("wm", "WM"),
                          ("pfa", "PFA")])
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
DASH = "—"


# ---------------------------------------------------------------------------- loading
@dataclass
class RunData:
    """What the report reads from one run directory."""
    path: str
    cfg: dict
    metrics: list
    results: dict | None

    @property
    def complete(self) -> bool:
        return self.results is not None

    @property
    def seed(self) -> int:
        return int(self.cfg.get("seed", 0))

    @property
    def protocol(self) -> str:
        return self.cfg.get("protocol") or "(no protocol)"

    @property
    def wall_s(self) -> float | None:
        if self.results and self.results.get("wall_s") is not None:
            return float(self.results["wall_s"])
        return self.metrics[-1].get("wall_s") if self.metrics else None

    def commands(self) -> list[str]:
        """The recorded command line(s), or an equivalent one from the saved config."""
        if self.results and self.results.get("commands"):
            return list(self.results["commands"])
        meta = _checkpoint_meta(os.path.join(self.path, "latest.npz"))
        if meta.get("commands"):
            return list(meta["commands"])
        argv = list(meta.get("argv") or [])
        if argv and argv[0].endswith(("cli.py", "minigrad-pfa")):   # not a library caller's
            return [shlex.join(["minigrad-pfa"] + argv[1:])]
        return [f"minigrad-pfa train {shlex.quote(os.path.join(self.path, 'config.yaml'))} "
                "--run-dir NEW_DIR   (not recorded; reproduces the saved config)"]


def _checkpoint_meta(path: str) -> dict:
    """The meta of a checkpoint without reading (or hashing) its arrays; {} if unreadable."""
    try:
        import numpy as np
        with np.load(path, allow_pickle=False) as z:
            return json.loads(z["__meta__"].item()).get("meta", {})
    except Exception:  # a missing or partial checkpoint only costs the command line
        return {}


def find_run_dirs(paths) -> list[str]:
    """Run directories (holding a config.yaml) given directly or found under ``paths``."""
    found, seen = [], set()
    for p in paths:
        if not os.path.isdir(p):
            raise FileNotFoundError(f"{p} is not a directory (give run directories or "
                                    "folders holding them)")
        if os.path.exists(os.path.join(p, "config.yaml")):
            candidates = [p]
        else:
            candidates = sorted(root for root, _, files in os.walk(p) if "config.yaml" in files)
        for c in candidates:
            key = os.path.realpath(c)
            if key not in seen:
                seen.add(key)
                found.append(c)
    if not found:
        raise FileNotFoundError(f"no run directories (with a config.yaml) in {list(paths)}")
    return found


def load_run(path: str) -> RunData:
    """Read config.yaml, metrics.jsonl (epoch records) and results.json (if finished)."""
    from .config import yaml_load

    with open(os.path.join(path, "config.yaml")) as fh:
        cfg = yaml_load(fh) or {}
    metrics = []
    mpath = os.path.join(path, "metrics.jsonl")
    if os.path.exists(mpath):
        with open(mpath) as fh:
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    if "step" not in rec:
                        metrics.append(rec)
    results = None
    rpath = os.path.join(path, "results.json")
    if os.path.exists(rpath):
        with open(rpath) as fh:
            results = json.load(fh)
    return RunData(path, cfg, metrics, results)


# ---------------------------------------------------------------------------- rules
def rule_spec(cfg: dict) -> dict:
    from .rules import parse_rule

    spec = cfg.get("rule") or "bp"
    return dict(spec) if isinstance(spec, dict) else parse_rule(spec)


def rule_label(cfg: dict, drop=()) -> str:
    """Display name of a run's rule with its non-default options, e.g. ``PFA-o``,
    ``PFA(expand_ratio=5)``, ``FA(feedback_density=0.1)``; ``drop`` hides options."""
    from .rules.pfa import PFA
    from .rules.registry import rule_options

    spec = rule_spec(cfg)
    name = spec.pop("name")
    layers, shallow = spec.pop("layers", None) or cfg.get("rule_map"), \
        spec.pop("shallow", False) or cfg.get("shallow")
    try:
        defaults = rule_options(name)
    except ValueError:          # a rule this version does not know: show every option
        defaults = {}
    opts = {k: v for k, v in spec.items()
            if k not in drop and (k not in defaults or defaults[k] != v)}
    label = RULE_NAMES.get(name, name)
    if name == "pfa" and opts.pop("orthogonal", False):
        label = "PFA-o"
    if name == "pfa" and opts.get("expand_ratio") == PFA.DEFAULT_RATIO:
        del opts["expand_ratio"]         # what an omitted expand_ratio means: plain "PFA"
    if opts:
        label += "(" + ", ".join(f"{k}={v}" for k, v in sorted(opts.items())) + ")"
    if layers:
        label += " +per-layer rules"
    if shallow:
        label += " [shallow]"
    return label


def feedback_density(cfg: dict) -> float:
    return float(rule_spec(cfg).get("feedback_density", 1.0))


#: resolved-config keys that label a run without changing what it computes
LABEL_KEYS = ("name", "protocol", "published", "seed", "seeds")


def training_config(cfg: dict, density: float | None = None) -> dict:
    """The part of a resolved config that determines the computation (for any seed).

    Drops :data:`LABEL_KEYS` and makes the rule's feedback density explicit (``density``,
    when given, replaces it), so that e.g. an E1 run and the E4 protocol at density 1 compare
    equal exactly when they train the same network the same way."""
    c = {k: v for k, v in cfg.items() if k not in LABEL_KEYS}
    spec = rule_spec(cfg)
    spec["feedback_density"] = float(spec.get("feedback_density", 1.0)
                                     if density is None else density)
    c["rule"] = spec
    return c


def _rule_order(label: str) -> int:
    names = list(RULE_NAMES.values()) + ["PFA-o"]
    base = re.split(r"[(\s\[]", label)[0]
    return names.index(base) if base in names else len(names)


def _protocol_order(p: str):
    return (PROTOCOL_ORDER.index(p), p) if p in PROTOCOL_ORDER else (len(PROTOCOL_ORDER), p)


def group_runs(runs) -> "OrderedDict[tuple, list]":
    """``{(protocol, rule label): [runs by seed]}`` in report order."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((r.protocol, rule_label(r.cfg)), []).append(r)
    keys = sorted(groups, key=lambda k: (_protocol_order(k[0]), _rule_order(k[1]),
                                         -feedback_density(groups[k][0].cfg), k[1]))
    return OrderedDict((k, sorted(groups[k], key=lambda r: (r.seed, r.path))) for k in keys)


# ---------------------------------------------------------------------------- numbers
def mean_std(values) -> tuple:
    """(mean, sample std or None for one value, n) of the finite values; (None, None, 0)."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None, None, 0
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return m, s, len(v)


def measured(run: RunData) -> float | None:
    """The run's number comparable to the published one (module docstring)."""
    if not run.complete:
        return None
    if run.cfg.get("protocol") in FINAL_VAL_PROTOCOLS:
        return run.metrics[-1].get("val_acc") if run.metrics else None
    return run.results.get("test_acc")


def measured_label(group: list) -> str:
    if group[0].cfg.get("protocol") in FINAL_VAL_PROTOCOLS:
        return "final-epoch validation accuracy"
    sel = {r.results.get("selected_on") for r in group if r.complete}
    if not sel:         # nothing finished yet: what the configs will select on
        for r in group:
            how = (r.cfg.get("eval") or {}).get("select_on", "auto")
            if how == "auto":
                how = "val" if (r.cfg.get("data") or {}).get("val_size") else "final"
            sel.add(how)
    if sel == {"final"}:
        return "final-epoch test accuracy (no checkpoint selection)"
    if sel == {"val"}:
        return "test accuracy of the best-validation checkpoint"
    return "test accuracy (checkpoint selection differs between seeds!)"


def epoch_series(runs, key: str) -> dict:
    """Mean and std over runs of ``metrics[key]`` per epoch (runs may have different
    lengths: each epoch averages the runs that reached it)."""
    per_epoch: dict = {}
    for r in runs:
        for rec in r.metrics:
            per_epoch.setdefault(int(rec["epoch"]), []).append(rec.get(key))
    out = {"epoch": [], "mean": [], "std": []}
    for e in sorted(per_epoch):
        m, s, n = mean_std(per_epoch[e])
        if n:
            out["epoch"].append(e)
            out["mean"].append(m)
            out["std"].append(s or 0.0)
    return out


def layer_names(runs) -> list[str]:
    """Weight layers with a path-alignment entry, in forward order."""
    names = []
    for r in runs:
        for rec in r.metrics[:1]:
            for k in rec:
                if k.endswith("/path_angle") and k[:-11] not in names:
                    names.append(k[:-11])
    return names


def final_alignment(runs) -> "OrderedDict[str, dict]":
    """Per layer: mean over seeds of the last epoch's path angle and norm ratio, and
    whether the layer's feedback is unused (the first layer)."""
    out = OrderedDict()
    last = [r.metrics[-1] for r in runs if r.metrics]
    for layer in layer_names(runs):
        angle = mean_std([rec.get(f"{layer}/path_angle") for rec in last])[0]
        ratio = mean_std([rec.get(f"{layer}/path_norm_ratio") for rec in last])[0]
        unused = any(rec.get(f"{layer}/feedback_unused") for rec in last)
        out[layer] = {"angle": angle, "ratio": ratio, "unused": bool(unused)}
    return out


def _pm(m, s, digits=2) -> str:
    if m is None:
        return DASH
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def _hms(seconds) -> str:
    if seconds is None:
        return DASH
    s = int(round(seconds))
    return f"{seconds:.1f} s" if seconds < 60 else f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _machine(r: RunData) -> str:
    if not r.results:
        return DASH
    m = r.results.get("machine") or {}
    cpus = f", {m['cpus']} CPUs" if m.get("cpus") else ""
    return f"{m.get('node', '?')} ({m.get('processor', '?')}{cpus}; {r.results.get('device', '?')})"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


# ---------------------------------------------------------------------------- report
def group_summary(key, runs) -> dict:
    """Numbers of one group (also written to summary.json)."""
    protocol, label = key
    done = [r for r in runs if r.complete]
    m, s, n = mean_std([measured(r) for r in done])
    pub = next((r.cfg.get("published") for r in runs if r.cfg.get("published")), None) or {}
    test = mean_std([r.results.get("test_acc") for r in done])
    wall = mean_std([r.wall_s for r in done])[0]
    return {
        "protocol": protocol, "rule": label, "configs": sorted({r.cfg.get("name") for r in runs}),
        "seeds": [r.seed for r in done], "incomplete": [r.path for r in runs if not r.complete],
        "measured": {"what": measured_label(runs), "mean": m, "std": s, "n": n},
        "test_acc": {"mean": test[0], "std": test[1], "n": test[2]},
        "published": {"mean": pub.get("mean"), "std": pub.get("std"),
                      "what": pub.get("metric")} if pub else None,
        "difference": (m - pub["mean"]) if (m is not None and pub.get("mean") is not None)
        else None,
        "wall_s_per_seed": wall, "machines": sorted({_machine(r) for r in done}),
        "density": feedback_density(runs[0].cfg),
        "final_alignment": final_alignment(runs),
    }


def _protocol_title(runs) -> str:
    cfg = runs[0].cfg
    model = cfg.get("model", {})
    arch = model.get("name", "?")
    if model.get("hidden"):
        arch += " " + "-".join(str(h) for h in model["hidden"])
    data = (cfg.get("data") or {}).get("name", "?")
    return f"{data}, {arch}, {cfg.get('epochs', '?')} epochs"


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
    from . import plots as P

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
        md += [f"## {protocol}: {_protocol_title(gruns)}", ""]
        md += _main_table(keys, groups, summaries)
        md += _alignment_table(keys, summaries)
        if protocol in ORDERING_REFERENCE:
            md += _ordering_section(protocol, keys, summaries)
        if protocol == "E4" or len({summaries[k]["density"] for k in keys}) > 1:
            md += _density_section(protocol, keys, groups, summaries, runs, out, plots, P)
        if plots:
            md += _curve_figures(protocol, keys, groups, out, P)

    if e5:
        md += _e5_section(out, e5_reps, plots, P)
    if runs:
        md += _runs_section(groups)

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


def _main_table(keys, groups, summaries) -> list[str]:
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
               _pm(s["measured"]["mean"], s["measured"]["std"]),
               _pm(pub["mean"], pub["std"]) if pub else DASH,
               DASH if s["difference"] is None else f"{s['difference']:+.2f}"]
        if final_val:
            row.insert(4, _pm(s["test_acc"]["mean"], s["test_acc"]["std"]))
        row += [_hms(s["wall_s_per_seed"]), "; ".join(s["machines"]) or DASH]
        rows.append(row)
    return lines + _table(header, rows)


def _alignment_table(keys, summaries) -> list[str]:
    layers = []
    for k in keys:
        for layer in summaries[k]["final_alignment"]:
            if layer not in layers:
                layers.append(layer)
    if not layers:
        return []
    lines = ["Per-layer path alignment at the last recorded epoch, mean over seeds: angle "
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
    return lines + _table(["layer"] + [summaries[k]["rule"] for k in keys], rows)


def _density_section(protocol, keys, groups, summaries, runs, out, plots, P) -> list[str]:
    points: "OrderedDict[str, list]" = OrderedDict()
    for k in keys:
        base = rule_label(groups[k][0].cfg, drop=("feedback_density",))
        s = summaries[k]["measured"]
        if s["n"]:
            points.setdefault(base, []).append((summaries[k]["density"], s["mean"], s["std"]))
    if not points:
        return []
    borrowed = _borrowed_dense_points(protocol, keys, groups, points)
    for base, (m, sd, _) in borrowed.items():
        points[base].append((1.0, m, sd))
    densities = sorted({d for pts in points.values() for d, _, _ in pts}, reverse=True)
    rows = []
    for base, pts in points.items():
        cell = {d: _pm(m, sd) for d, m, sd in pts}
        if base in borrowed:
            cell[1.0] += " †"
        rows.append([base] + [cell.get(d, DASH) for d in densities])
    lines = [f"Accuracy (%) against feedback density rho ({protocol}):", ""]
    lines += _table(["rule"] + [f"rho = {d:g}" for d in densities], rows)
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
        name = f"density_{_slug(protocol)}.png"
        P.accuracy_vs_density(points, os.path.join(out, name),
                              f"{protocol}: accuracy vs feedback density", bands)
        lines += [f"![accuracy vs feedback density]({name})", ""]
    return lines


def ordering_agreement(measured: dict, reference: dict) -> tuple:
    """Pairwise agreement of a measured ranking with a reference one.

    Parameters
    ----------
    measured : dict
        ``{rule: mean accuracy}``.
    reference : dict
        ``{rule: (mean, std)}``.

    Returns
    -------
    (agree, total, disagreements)
        Over the pairs of rules present in both: a pair agrees when the measured order is the
        reference order, or when the reference means differ by no more than the sum of their
        stds (a published tie, e.g. "PFA-o ≳ BP", where either order agrees);
        ``disagreements`` lists the pairs ``(a, b)`` that the reference puts a > b but the
        measurement does not.
    """
    rules = [r for r in reference if r in measured]
    agree, total, bad = 0, 0, []
    for i, a in enumerate(rules):
        for b in rules[i + 1:]:
            (ma, sa), (mb, sb) = reference[a], reference[b]
            hi, lo = (a, b) if ma >= mb else (b, a)
            total += 1
            if abs(ma - mb) <= sa + sb or measured[hi] > measured[lo]:
                agree += 1
            else:
                bad.append((hi, lo))
    return agree, total, bad


def _ordering_section(protocol, keys, summaries) -> list[str]:
    source, ref = ORDERING_REFERENCE[protocol]
    meas = {summaries[k]["rule"]: summaries[k]["measured"]["mean"] for k in keys
            if summaries[k]["measured"]["n"]}
    if not meas:
        return []
    ranked = sorted(meas, key=lambda r: -meas[r])
    ref_ranked = sorted(ref, key=lambda r: -ref[r][0])
    lines = [f"Ordering: measured here, best first: "
             + " > ".join(f"{r} {meas[r]:.2f}" for r in ranked) + f". Reference, {source}: "
             + " > ".join(f"{r} {ref[r][0]:.2f}" for r in ref_ranked) + "."]
    agree, total, bad = ordering_agreement(meas, ref)
    if total:
        lines[-1] += (f" Pairs in the reference order: {agree} of {total} (a pair whose "
                      f"reference means lie within the sum of their stds counts either way)")
        lines[-1] += ("; reversed: " + ", ".join(f"{a} > {b}" for a, b in bad) + "."
                      if bad else ".")
    missing = [r for r in ref if r not in meas]
    if missing:
        lines[-1] += " Not yet measured: " + ", ".join(missing) + "."
    return lines + [""]


def _borrowed_dense_points(protocol, keys, groups, points) -> dict:
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


def _curve_figures(protocol, keys, groups, out, P) -> list[str]:
    curves, eval_labels = OrderedDict(), set()
    for k in keys:
        g = groups[k]
        ev = "val_acc" if any("val_acc" in rec for r in g for rec in r.metrics) \
            else "test_acc_unselected"
        eval_labels.add("validation" if ev == "val_acc" else "test (unselected curve)")
        curves[k[1]] = {"train": epoch_series(g, "train_acc"), "eval": epoch_series(g, ev)}
    name = f"acc_{_slug(protocol)}.png"
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
        name = f"align_{_slug(protocol)}_{_slug(k[1])}.png"
        P.layer_alignment(series, os.path.join(out, name),
                          f"{protocol}, {k[1]}: per-layer path alignment "
                          f"(mean over {len(g)} seed(s))", unused)
        lines += [f"![{protocol} {k[1]} alignment]({name})", ""]
    return lines


def _e5_section(out, reps, plots, P) -> list[str]:
    from .analysis import expansion_ratio_analysis

    rows = expansion_ratio_analysis(reps=reps)
    lines = ["## E5: path alignment against the expansion ratio (analysis, no training)", "",
             f"W (100, 256) and B (100, r·100) Xavier-uniform, R = B^T W (converged), "
             f"{reps} draws per ratio (published: 100). Published: Li & Benna 2024, Fig. 3.",
             ""]
    table = []
    for x in rows:
        pub = next((p for p in E5_PUBLISHED
                    if x["variant"] == "pfa" and abs(p[0] - x["r"]) / p[0] < 0.01), None)
        table.append([x["variant"], f"{x['r']:.3g}", x["mid"],
                      _pm(x["angle_mean"], x["angle_std"]),
                      DASH if pub is None else f"{pub[1]:.1f}",
                      _pm(x["norm_ratio_mean"], x["norm_ratio_std"], 3),
                      DASH if pub is None else f"{pub[2]:g}",
                      f"{x['eig_min_mean']:.3f} / {x['eig_max_mean']:.3f}",
                      f"{x['mp_lower']:.3f} / {x['mp_upper']:.3f}"])
    lines += _table(["variant", "r", "mid", "angle °", "published °", "norm ratio",
                     "published", "eig(B B^T) min / max", "Marchenko–Pastur edges"], table)
    if plots:
        P.expansion_ratio(rows, E5_PUBLISHED, os.path.join(out, "e5_expansion_ratio.png"))
        lines += ["![E5 expansion ratio](e5_expansion_ratio.png)", ""]
    return lines


def _runs_section(groups) -> list[str]:
    rows = []
    for (protocol, label), g in groups.items():
        for r in g:
            total = r.cfg.get("epochs", "?")
            acc = f"{r.results['test_acc']:.2f}" if r.complete else "unfinished"
            cmds = r.commands()
            cmd = f"`{cmds[0]}`" + (f" (+{len(cmds) - 1} resume)" if len(cmds) > 1 else "")
            rows.append([r.path, protocol, label, r.seed, f"{len(r.metrics)}/{total}", acc,
                         _hms(r.wall_s), _machine(r), cmd])
    return ["## Runs", "", "Test accuracy as recorded in results.json (its checkpoint "
            "selection as in the protocol); commands as recorded by the trainer.", ""] + \
        _table(["run", "protocol", "rule", "seed", "epochs", "test %", "wall", "machine",
                "command"], rows)
