"""Run directories for the report: loading, rule labels, grouping and per-group numbers."""
from __future__ import annotations

import json
import math
import os
import re
import shlex
from collections import OrderedDict
from dataclasses import dataclass

from .fmt import machine_label

#: protocols in report order (others follow, alphabetically)
PROTOCOL_ORDER = ("E1", "E2", "E3", "E4", "F1", "F1-SF", "F2", "quickstart")
#: protocols whose published number is the final-epoch *validation* accuracy
FINAL_VAL_PROTOCOLS = ("E2",)
#: display names of the rules (paper spelling), in table order
RULE_NAMES = OrderedDict([("bp", "BP"), ("fa", "FA"), ("dfa", "DFA"), ("usf", "uSF"),
                          ("brsf", "brSF"), ("frsf", "frSF"), ("kp", "KP"), ("wm", "WM"),
                          ("pfa", "PFA")])


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
    from ..config import yaml_load

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
    from ..rules import parse_rule

    spec = cfg.get("rule") or "bp"
    return dict(spec) if isinstance(spec, dict) else parse_rule(spec)


def rule_label(cfg: dict, drop=()) -> str:
    """Display name of a run's rule with the options that change it, e.g. ``PFA-o``,
    ``PFA(expand_ratio=5)``, ``FA(feedback_density=0.1)``; ``drop`` hides options.

    An option is shown when leaving it out would change what the rule runs with
    (:func:`~minigrad_pfa.rules.registry.effective_options`): PFA's ``expand_ratio: 10``,
    PFA-o's ``expand_ratio: 1`` or WM-akrout's ``mirror_lr: 0.01`` are what omitting them
    means, so they are not shown."""
    spec = rule_spec(cfg)
    name = spec.pop("name")
    layers, shallow = spec.pop("layers", None) or cfg.get("rule_map"), \
        spec.pop("shallow", False) or cfg.get("shallow")
    opts = {k: v for k, v in spec.items() if k not in drop and _changes_rule(name, spec, k)}
    label = RULE_NAMES.get(name, name)
    if name == "pfa" and opts.pop("orthogonal", False):
        label = "PFA-o"
    if opts:
        label += "(" + ", ".join(f"{k}={v}" for k, v in sorted(opts.items())) + ")"
    if layers:
        label += " +per-layer rules"
    if shallow:
        label += " [shallow]"
    return label


def _changes_rule(name: str, spec: dict, key: str) -> bool:
    """Whether option ``key`` of ``spec`` makes the rule run differently from ``spec``
    without it; True where that cannot be told (an unknown rule or option, or a spec that
    is invalid without the key)."""
    from ..rules.registry import effective_options

    try:
        given = effective_options(name, spec)
        omitted = effective_options(name, {k: v for k, v in spec.items() if k != key})
    except ValueError:
        return True
    return key not in given or given[key] != omitted.get(key)


def feedback_density(cfg: dict) -> float:
    return float(rule_spec(cfg).get("feedback_density", 1.0))


#: resolved-config keys that label a run without changing what it computes
LABEL_KEYS = ("name", "protocol", "published", "seed", "seeds")


def training_config(cfg: dict, density: float | None = None) -> dict:
    """The part of a resolved config that determines the computation (for any seed).

    Drops :data:`LABEL_KEYS` and makes the rule's feedback density explicit (``density``,
    when given, replaces it), so that e.g. an E1 run and the E4 protocol at density 1 compare
    equal exactly when they train the same network the same way. Settings added to the
    schema after a run was saved take their defaults (:func:`~minigrad_pfa.config.
    resolve_config`), so an older run's config compares equal to a newer one that only
    spells them out (e.g. ``distributed: {sync_bn: false}``)."""
    from ..config import ConfigError, resolve_config
    try:
        cfg = resolve_config(cfg)
    except ConfigError:  # a config the current schema no longer accepts: compare as saved
        pass
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
    """Per layer: mean over ``runs`` (the caller passes the complete ones) of the last
    epoch's path angle and norm ratio, and whether the layer's feedback is unused (the
    first layer)."""
    out = OrderedDict()
    last = [r.metrics[-1] for r in runs if r.metrics]
    for layer in layer_names(runs):
        angle = mean_std([rec.get(f"{layer}/path_angle") for rec in last])[0]
        ratio = mean_std([rec.get(f"{layer}/path_norm_ratio") for rec in last])[0]
        unused = any(rec.get(f"{layer}/feedback_unused") for rec in last)
        out[layer] = {"angle": angle, "ratio": ratio, "unused": bool(unused)}
    return out


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
        "wall_s_per_seed": wall, "machines": sorted({machine_label(r) for r in done}),
        "density": feedback_density(runs[0].cfg),
        "final_alignment": final_alignment(done),  # complete runs only, as the accuracy
    }


