"""The decay laws on the page: measured feedback mismatch of PFA / KP runs beside the law.

The mismatch ``D`` (PFA: ``R - B.T @ W``; KP: ``W - B``) obeys the optimizer alone
(:mod:`minigrad_pfa.metrics.mechanism`). Runs log per layer and epoch:

* ``mismatch_decay`` = measured ``||D_t|| / ||D_0||`` and ``mismatch_decay_predicted`` (the
  trainer's :class:`~minigrad_pfa.metrics.mechanism.MismatchPredictor`) -- used as is;
* older runs only ``mismatch_norm`` = ``||D_t||``: then the reference is the end of the
  first logged epoch, measured ``||D_e|| / ||D_e0||``, and the prediction is the same
  two-number simulation replayed here from the run's config (lr and weight-decay schedules,
  momentum, steps per epoch from the recorded training-set size), ``d(e) / d(e0)``.

Both are exact consequences of the law, so measured and predicted must agree to the
float32 floor (about 1e-7 of ``||R||`` or ``||W||`` per step), which the table quantifies.
"""
from __future__ import annotations

import math
import os
import re
from collections import OrderedDict

from .fmt import DASH, slug, table

#: (protocol, rule labels) whose mismatch is drawn, in report order
DECAY_FAMILIES = (("E1", ("PFA", "PFA-o", "KP")), ("F1", ("PFA", "PFA-o", "KP")))
_KINDS = ("pfa_mismatch", "kp_mismatch")


def mismatch_layers(run) -> list[str]:
    """Layers with a PFA / KP mismatch entry, in forward order."""
    names = []
    for rec in run.metrics[:1]:
        for k in rec:
            layer, _, what = k.rpartition("/")
            if what in _KINDS and layer not in names:
                names.append(layer)
    return names


def steps_per_epoch(run) -> int | None:
    """Optimizer steps per epoch from the recorded training-set size and the batch size."""
    m = re.match(r"train [^:]+: (\d+) samples", (run.results or {}).get("data", ""))
    data = run.cfg.get("data") or {}
    if not m or not data.get("batch_size"):
        return None
    n, bs = int(m.group(1)), int(data["batch_size"])
    if data.get("limit_train"):
        n = min(n, int(data["limit_train"]))
    return n // bs if data.get("drop_last") else -(-n // bs)


def replay_law(cfg: dict, epochs: int, spe: int) -> list | None:
    """Predicted ``||D|| / ||D_0||`` at the end of each epoch (SGD law, from the config)."""
    from ..metrics.mechanism import MismatchPredictor
    from ..train import schedules_from_config

    o = cfg.get("optim") or {}
    if o.get("name") != "sgd":
        return None
    lr_s, wd_s = schedules_from_config(cfg)
    pred = MismatchPredictor("sgd", o.get("momentum", 0.0), o.get("dampening", 0.0),
                             o.get("nesterov", False))
    out = []
    for e in range(epochs):
        for s in range(spe):
            pred.step(lr_s.value(e, s, spe), wd_s.value(e, s, spe))
        out.append(pred.ratio)
    return out


def decay_series(run):
    """``(layers, predicted, reference)`` of one run.

    ``layers``: ``{layer: (epochs, measured ratios)}``; ``predicted``: ``(epochs, ratios)``
    or None where no law can be replayed; ``reference``: what the ratios are relative to.
    """
    layers = mismatch_layers(run)
    epochs = [int(r["epoch"]) for r in run.metrics]
    logged = any(r.get(f"{layer}/mismatch_decay") is not None
                 for r in run.metrics for layer in layers)
    if logged:
        meas = OrderedDict((layer, (epochs, [r.get(f"{layer}/mismatch_decay")
                                             for r in run.metrics])) for layer in layers)
        pred = next(([r.get(f"{layer}/mismatch_decay_predicted") for r in run.metrics]
                     for layer in layers), None)
        return meas, (epochs, pred) if pred else None, "D_0 (initialisation)"
    meas = OrderedDict()
    for layer in layers:
        vals = [r.get(f"{layer}/mismatch_norm") for r in run.metrics]
        ref = vals[0] if vals else None
        meas[layer] = (epochs, [v / ref if v is not None and ref else None for v in vals])
    spe = steps_per_epoch(run)
    law = replay_law(run.cfg, max(epochs) + 1, spe) if spe and epochs else None
    pred = None
    if law:
        pred = (epochs, [law[e] / law[epochs[0]] for e in epochs])
    return meas, pred, f"D at the end of epoch {epochs[0]} (D_0 not logged by this run)"


def agreement(meas, pred) -> float | None:
    """Largest ``|log10(measured / predicted)|`` over layers and epochs (0: exact)."""
    if not pred:
        return None
    worst = None
    p = dict(zip(*pred))
    for ep, vals in meas.values():
        for e, v in zip(ep, vals):
            if v and p.get(e) and v > 0 and p[e] > 0:
                d = abs(math.log10(v / p[e]))
                worst = d if worst is None else max(worst, d)
    return worst


def decay_section(groups, out, plots) -> list[str]:
    """One figure and one table per family of :data:`DECAY_FAMILIES` (seed-0 runs, or the
    lowest seed present); families with no run say so."""
    lines = ["## Decay laws of the feedback mismatch (PFA, PFA-o, KP)", "",
             "Measured mismatch `||R - BᵀW||` (PFA) / `||W - B||` (KP) relative to a "
             "reference, per layer, against the decay law's prediction (dashed), replayed from "
             "the optimizer's lr / weight-decay schedule (`minigrad_pfa.metrics.mechanism`). "
             "'worst' = largest |log10(measured / predicted)| over layers and epochs "
             "(0 = exact).", ""]
    for protocol, labels in DECAY_FAMILIES:
        panels, rows = [], []
        for label in labels:
            g = groups.get((protocol, label))
            if not g:
                rows.append([label, DASH, DASH, DASH, DASH, "pending (run not finished)"])
                continue
            run = g[0]
            meas, pred, ref = decay_series(run)
            if not meas:
                rows.append([label, run.path, DASH, DASH, DASH, "no mismatch logged"])
                continue
            last = [v[-1] for _, v in meas.values() if v and v[-1] is not None]
            final_pred = pred[1][-1] if pred else None
            worst = agreement(meas, pred)
            rows.append([label, run.path + ("" if run.complete else " (unfinished)"), ref,
                         f"{min(last):.3g} – {max(last):.3g}" if last else DASH,
                         DASH if final_pred is None else f"{final_pred:.3g}",
                         DASH if worst is None else f"{worst:.2g}"])
            panels.append((f"{protocol} {label}, seed {run.seed} (reference: {ref.split(' (')[0]})",
                           meas, pred or ([], [])))
        lines += [f"### {protocol}", ""]
        lines += table(["rule", "run", "reference", "measured at the last epoch (layer range)",
                        "predicted", "worst"], rows)
        if plots and panels:
            name = f"decay_{slug(protocol)}.png"
            from .figures import decay_panels
            decay_panels(panels, os.path.join(out, name))
            lines += [f"![{protocol} mismatch decay]({name})", ""]
    return lines
