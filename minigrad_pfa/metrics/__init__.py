"""Alignment metrics per weight layer (definitions and guarantees: ``docs/metrics.md``).

* :func:`angle`, :func:`norm_ratio` -- the two measures (float64 accumulation).
* :func:`weight_alignment` -- the matrix the rule propagates with against ``W``.
* :func:`probe_alignment` -- the rule's ``gW`` and ``delta`` against a BP twin on a probe
  batch (same forward pass; no state, BN statistic, grad or random number changes).
* :func:`mechanism_diagnostics`, :class:`MismatchPredictor`, :class:`MechanismTracker` --
  PFA's ``||R - B.T W|| / ||B.T W||`` and KP's ``||W - B|| / ||W||`` beside their decay laws.
* :func:`collect_metrics` -- all of it as one flat JSON-ready dict for ``metrics.jsonl``.
"""
from __future__ import annotations

from collections import OrderedDict

from .alignment import probe_alignment, probe_records, weight_alignment
from .measures import angle, norm_ratio
from .mechanism import (MechanismTracker, MismatchPredictor, layer_mismatch,
                        mechanism_diagnostics)

__all__ = ["angle", "norm_ratio", "weight_alignment", "probe_alignment", "probe_records",
           "mechanism_diagnostics", "layer_mismatch", "MismatchPredictor",
           "MechanismTracker", "collect_metrics"]


def collect_metrics(model, probe=None, tracker: MechanismTracker | None = None) -> dict:
    """Every metric of ``model`` as a flat dict of JSON-ready values.

    Parameters
    ----------
    model : Module
    probe : (x, y) or None
        A fixed probe batch; adds the gradient / error alignment (one forward, two
        backward passes; the model's state is left untouched).
    tracker : MechanismTracker or None
        Adds the measured and predicted decay of PFA / KP mismatches.

    Returns
    -------
    dict
        Keys ``"<qualname>/<metric>"``, grouped by family (each in forward layer order),
        values float, bool or ``None`` (undefined or not applicable):

        - ``path_angle``, ``path_norm_ratio``: :func:`weight_alignment` (``None`` for DFA);
        - ``feedback_unused``: True for the first weight layer (its feedback is never used);
        - ``pfa_mismatch`` / ``kp_mismatch``, ``mismatch_norm`` (PFA / KP layers only), and
          with a tracker ``mismatch_decay``, ``mismatch_decay_predicted``;
        - with a probe: ``grad_angle``, ``grad_norm_ratio``, ``error_angle``,
          ``error_norm_ratio``.
    """
    out: dict = OrderedDict()
    for name, d in weight_alignment(model).items():
        out[f"{name}/path_angle"] = d["angle"]
        out[f"{name}/path_norm_ratio"] = d["norm_ratio"]
        out[f"{name}/feedback_unused"] = d["first_layer_feedback_unused"]
    diag = tracker.report(model) if tracker is not None else mechanism_diagnostics(model)
    for name, d in diag.items():
        out.update((f"{name}/{k}", v) for k, v in d.items())
    if probe is not None:
        x, y = probe
        for name, d in probe_alignment(model, x, y).items():
            out.update((f"{name}/{k}", v) for k, v in d.items())
    return out
