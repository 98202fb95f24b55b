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

Findings across protocols (:func:`~minigrad_pfa.report.document.cross_protocol_sections`),
each where one of its protocols has runs, with "pending (run not finished)" for what is
missing and every verdict computed from the numbers with its criterion printed:
the sign-concordant family on F1 against Moskovitz et al. (:mod:`.signfamily`); F2's
accuracy and path alignment against feedback density beside E4 (:mod:`.sparse`); KP beside
PFA with the mechanism diagnostics, and whether F1's close ordering survives seeds
(:mod:`.comparisons`); the measured mismatch decay against the law (:mod:`.decay`).

Modules: :mod:`.runs` (loading, labels, grouping, numbers), :mod:`.fmt` (Markdown),
:mod:`.sections` (per-protocol sections), :mod:`.document` (the document),
:mod:`.findings` (noise and verdict helpers), :mod:`.figures`.
"""
from .document import write_report
from .fmt import DASH
from .runs import (FINAL_VAL_PROTOCOLS, PROTOCOL_ORDER, RULE_NAMES, RunData, epoch_series,
                   feedback_density, final_alignment, find_run_dirs, group_runs, group_summary,
                   layer_names, load_run, mean_std, measured, measured_label, rule_label,
                   rule_spec, training_config)
from .sections import E4_BP_BAND, E5_PUBLISHED, ORDERING_REFERENCE, ordering_agreement

__all__ = ["write_report", "RunData", "find_run_dirs", "load_run", "group_runs",
           "group_summary", "rule_label", "rule_spec", "feedback_density", "training_config",
           "mean_std", "measured", "measured_label", "epoch_series", "layer_names",
           "final_alignment", "ordering_agreement", "ORDERING_REFERENCE", "PROTOCOL_ORDER",
           "FINAL_VAL_PROTOCOLS", "RULE_NAMES", "E4_BP_BAND", "E5_PUBLISHED", "DASH"]
