"""Host synchronisations per training step, counted on the CuPy stand-in.

Notation
--------
S training steps in one epoch of :meth:`minigrad_pfa.train.Trainer.train_epoch`, run with
``--device cuda`` resolved to the stand-in (:mod:`minigrad_pfa.standin`);
sync = one device->host read (``.get()``, ``asnumpy``, ``float``/``int``/``bool``,
``.item()``, ...), each of which stalls a real GPU's queue until its work is done.

    host_syncs_per_step = (syncs of the epoch - syncs of its evaluations and metrics) / S
    host_syncs_per_epoch = syncs of the per-epoch evaluations and metrics (val/test passes,
                           alignment metrics), reported apart: they do not scale with S
    h2d_per_step         = host->device copies per step (data batches, brSF/WM host draws)

Target (issue 11): ``host_syncs_per_step <= 1`` for every rule with the metrics at their
default interval. The trainer reads loss and accuracy once per drain of its pending steps
(every 50 steps on a device), so S = 60 gives 2 reads / 60 steps. brSF and WM read their
counter and key buffers once per run (:mod:`minigrad_pfa.rules.hostcopy`): 2 reads per
weight layer in the first epoch, none after (ResNet-20, ``python -m
minigrad_pfa.bench.host_syncs --mode quick``: 0.683 and 0.700 per step over a 60-step
first epoch; every other rule 0.033). Counting needs no GPU:
the same engine code runs on the stand-in, which counts every crossing.
"""
from __future__ import annotations

import contextlib
import os
import tempfile

#: rules measured (their defaults; PFA at r = 10)
RULES = ("bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm", "pfa")
#: mode -> (model config, data config, steps): sizes do not change the count, only the time
SIZES = {
    "full": ({"name": "resnet20"}, {"name": "synthetic-images", "batch_size": 8}, 60),
    "quick": ({"name": "resnet20"}, {"name": "synthetic-images", "batch_size": 4}, 60),
    "tiny": ({"name": "mlp", "hidden": [32, 24]},
             {"name": "synthetic-mlp", "batch_size": 8, "flatten": True}, 60),
}
TARGET = 1.0


def _config(rule: str, model: dict, data: dict, steps: int) -> dict:
    from ..config import resolve_config
    batch = data["batch_size"]
    return resolve_config({
        "name": f"host_syncs_{rule}", "epochs": 1, "seed": 0, "device": "cuda",
        "model": dict(model),
        "data": dict(data, val_size=2 * batch, limit_train=steps * batch,
                     eval_batch_size=4 * batch, normalize="train_stats"),
        "rule": rule, "optim": {"lr": 0.01, "weight_decay": 5e-4},
        "metrics": {"probe_size": 2 * batch}})


@contextlib.contextmanager
def _counting_per_epoch(trainer, into: dict):
    """Count the syncs of ``evaluate`` and the epoch metrics apart (restored on exit)."""
    from .. import train as train_mod
    from ..standin import count_syncs

    real_eval, real_metrics = train_mod.evaluate, trainer._metrics

    def counted(fn):
        def run(*a, **kw):
            with count_syncs() as c:
                out = fn(*a, **kw)
            into["syncs"] += c["syncs"]
            return out
        return run

    train_mod.evaluate = counted(real_eval)
    trainer._metrics = counted(real_metrics)
    try:
        yield
    finally:
        train_mod.evaluate = real_eval
        del trainer._metrics


def measure_rule(rule: str, mode: str = "tiny", trace: bool = False) -> dict:
    """One rule's counts over one epoch of ``SIZES[mode]`` steps on the stand-in.

    Returns
    -------
    dict with ``rule``, ``model``, ``steps``, ``host_syncs_per_step``,
    ``host_syncs_per_epoch``, ``h2d_per_step`` and, with ``trace``, ``sites`` (the engine
    lines of the per-step syncs, ``"file:line (kind)" -> count``).
    """
    from ..backend import use_standin
    from ..experiment_data import build_data
    from ..standin import count_syncs
    from ..train import Trainer

    model, data, steps = SIZES[mode]
    cfg = _config(rule, model, data, steps)
    before = use_standin(True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, os.path.join(tmp, "run"), build_data(cfg),
                              progress=False, log=lambda *a: None)
            per_epoch = {"syncs": 0}
            n_steps = len(trainer.data.train)
            with _counting_per_epoch(trainer, per_epoch), count_syncs(trace=trace) as c:
                trainer.train_epoch(0)
    finally:
        use_standin(before)
    out = {"rule": rule, "model": model["name"], "batch": data["batch_size"],
           "steps": n_steps,
           "host_syncs_per_step": (c["syncs"] - per_epoch["syncs"]) / n_steps,
           "host_syncs_per_epoch": per_epoch["syncs"], "h2d_per_step": c["h2d"] / n_steps}
    if trace:
        out["sites"] = dict(c["sites"])
    return out


def measure_all(mode: str = "tiny", rules=RULES, log=print) -> list[dict]:
    """:func:`measure_rule` for every rule; logs one line each."""
    rows = []
    for rule in rules:
        try:
            r = measure_rule(rule, mode)
        except Exception as exc:  # reported, and a failure of the bench
            r = {"rule": rule, "error": f"{type(exc).__name__}: {exc}"}
        rows.append(r)
        log("  host syncs " + (f"{rule}: ERROR {r['error']}" if "error" in r else
                               f"{rule}: {r['host_syncs_per_step']:.3f} per step "
                               f"({r['model']}, {r['steps']} steps; "
                               f"{r['host_syncs_per_epoch']} per epoch in evaluation and "
                               f"metrics; {r['h2d_per_step']:.2f} host->device copies "
                               "per step)"))
    return rows


def markdown_section(rows) -> list[str]:
    """Lines of the performance report's host-sync table (empty without measurements)."""
    if not rows:
        return []
    lines = ["## Host synchronisations per training step (CuPy stand-in)", "",
             "Counted on the CPU stand-in of CuPy (`minigrad_pfa.standin`, which runs the "
             "`--device cuda` code and counts every device->host read) over one training "
             "epoch of `minigrad_pfa.train.Trainer` (`minigrad_pfa.bench.host_syncs`); "
             f"target <= {TARGET:g} per step for every rule. Evaluation and metric passes "
             "run once per epoch and are listed apart. Loss and accuracy are read back once "
             "per 50 steps; brSF and WM read each step-counter and key buffer once per run "
             "(start or resume; included in the first epoch counted here) and keep host "
             "copies. brSF's M_t and WM's mirror noise are drawn on the host, so that CPU and "
             "GPU runs draw the same numbers: their cost is one host->device copy of a "
             "W-sized (WM: input-sized) array per weight layer and step (the h2d column), "
             "not a synchronisation.", "",
             "| rule | model | steps | syncs / step | syncs / epoch (eval, metrics) | "
             "host->device / step | met |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['rule']} | - | - | ERROR | - | - | **no** |")
            continue
        met = "yes" if r["host_syncs_per_step"] <= TARGET else "**no**"
        lines.append(f"| {r['rule']} | {r['model']} | {r['steps']} | "
                     f"{r['host_syncs_per_step']:.3f} | {r['host_syncs_per_epoch']} | "
                     f"{r['h2d_per_step']:.2f} | {met} |")
    return lines + [""]


def main(argv=None) -> int:
    import argparse
    import json
    ap = argparse.ArgumentParser(prog="python -m minigrad_pfa.bench.host_syncs",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=tuple(SIZES), default="tiny")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = measure_all(args.mode, args.rules.split(","))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    bad = [r for r in rows if "error" in r or r["host_syncs_per_step"] > TARGET]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
