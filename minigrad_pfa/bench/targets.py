"""The issue's performance targets, evaluated on one benchmark run's records.

Every target is a ratio (or a fraction, or a memory figure) of records from the same run,
so that a noisy shared machine moves numerator and denominator together. A target whose
records are missing (``--quick`` skips some) is reported with ``value = None``.
"""
from __future__ import annotations

import statistics

from .samestep import participant, samestep_records
from .suite import SAMESTEP_TORCH, reference_batches

#: (key, description, comparison, threshold)
TARGETS = (
    ("resnet_pfa_vs_bp", "ResNet-20 PFA (r = 10) step / this engine's BP step", "<=", 1.3),
    ("resnet_pfa_vs_literal", "ResNet-20 PFA (r = 10) step / this engine's literal PFA order",
     "<=", 0.2),
    ("resnet_pfa_r_spread", "ResNet-20 PFA step spread over r in {1, 10, 30}: max / min - 1",
     "<=", 0.2),
    ("resnet_pfa_vs_torch_published",
     "ResNet-20 PFA (r = 10) step / PyTorch published PFA formulation", "<=", 0.25),
    ("resnet_bp_vs_torch", "ResNet-20 BP step / PyTorch BP step", "<=", 2.0),
    ("resnet_bp_gemm_fraction", "ResNet-20 BP achieved GFLOP/s / measured GEMM peak", ">=",
     0.25),
    ("mlp_bp_vs_torch", "MLP BP step / PyTorch BP step", "<=", 1.1),
    ("resnet_pfa_peak_mb", "Peak RSS of a ResNet-20 batch-128 PFA (r = 10) step, MB", "<=",
     1500.0),
)

#: the all-core regime's targets (issue 14: every usable core, wall clock)
TARGETS_ALL_CORES = (
    ("resnet_bp_vs_torch", "ResNet-20 BP step / PyTorch BP step", "<=", 1.3),
    ("resnet_bp_vs_torch_b32", "ResNet-20 BP step / PyTorch BP step, batch 32", "<=", 1.3),
    ("resnet_bp_vs_torch_b256", "ResNet-20 BP step / PyTorch BP step, batch 256", "<=",
     1.3),
    ("resnet_bp_gemm_fraction", "ResNet-20 BP achieved GFLOP/s / measured GEMM peak", ">=",
     0.40),
    ("mlp_bp_vs_torch", "MLP BP step / PyTorch BP step", "<=", 1.0),
    ("resnet_pfa_vs_bp", "ResNet-20 PFA (r = 10) step / this engine's BP step", "<=", 1.1),
    ("resnet_pfa_r_spread", "ResNet-20 PFA step spread over r in {1, 10, 30}: max / min - 1",
     "<=", 0.2),
    ("resnet_pfa_peak_mb", "Peak RSS of a ResNet-20 batch-128 PFA (r = 10) step, MB", "<=",
     1500.0),
)


def target_table(machine: dict) -> tuple:
    """The targets of a regime: :data:`TARGETS_ALL_CORES` for several CPU threads, else
    the one-thread :data:`TARGETS`."""
    many = int(machine.get("threads", 1)) > 1 and machine.get("device_kind", "cpu") == "cpu"
    return TARGETS_ALL_CORES if many else TARGETS


#: the all-core targets are undecided when other processes kept more than this many cores
#: busy, on average, while a configuration was timed (``foreign_cores``: the machine's busy
#: CPU time from /proc/stat minus the worker's own, per wall second). One busy process is
#: enough to wreck a multi-threaded wall-clock figure: measured on 2 cores with one other
#: process running, PyTorch's 2-thread ResNet-20 BP step took 2.95 s instead of ~0.3 s and
#: its MLP step 200 ms instead of ~2.5 ms (its OpenMP threads wait for the busy core)
MAX_FOREIGN_CORES = 0.25
#: fallback for records without ``foreign_cores``: the 1-minute load average per core
MAX_LOAD_PER_CORE = 1.5


def contention(data: dict, records=None) -> str | None:
    """Why wall-clock all-core figures cannot decide a target, or None: judged on
    ``records`` (the ones the target reads; default every record of the run)."""
    recs = data.get("records", []) if records is None else records
    foreign = [r["foreign_cores"] for r in recs if r.get("foreign_cores") is not None]
    if foreign:
        if max(foreign) <= MAX_FOREIGN_CORES:
            return None
        return (f"other processes kept up to {max(foreign):.2f} cores busy during the "
                "measurements (rerun on a quiet machine)")
    m = data.get("machine", {})
    cores = m.get("cpus_usable") or m.get("cpus")
    loads = [r["load1"] for r in recs if r.get("load1") is not None]
    if not cores or not loads or max(loads) <= MAX_LOAD_PER_CORE * cores:
        return None
    return (f"load average up to {max(loads):.1f} on {cores} usable cores during the "
            "measurements (rerun on a quiet machine)")


def find(records, model, rule, impl="minigrad", batch=None, device=None):
    """The first successful record matching the fields given (None if there is none)."""
    for r in records:
        if r.get("error") or r.get("variants") or r.get("kind", "step") != "step":
            continue
        if (r["model"], r["rule"], r["impl"]) != (model, rule, impl):
            continue
        if batch is not None and r["batch"] != batch:
            continue
        if device is not None and r["device"] != device:
            continue
        return r
    return None


def round_values(key: str, used: list, peak=None, round_peaks=None) -> list | None:
    """The target's value computed from each interleaved round alone (its records' per-round
    medians ``round_step_s``), or None when fewer than two rounds have every record.

    Ratios: ``a_k / b_k``; the GEMM fraction: ``flops / t_k / peak_k`` with round k's own peak
    (``round_peaks``, measured right before the step; the run's ``peak`` where a round has
    none, as in runs from before the per-round peaks). Round k of every
    configuration ran in the same stretch of time (:mod:`.regimes`), so the per-round
    values show how far the machine's noise moves the figure. Not for the PFA spread
    (max / min - 1 of three noisy medians is biased upwards round by round: in one run
    its rounds gave 0.27-0.42 where the pooled medians gave 0.085) nor for memory."""
    if key in ("resnet_pfa_peak_mb", "resnet_pfa_r_spread") or not used:
        return None
    rounds = [r.get("round_step_s") or [] for r in used]
    # the rounds in which every record has a time: a failed round is None in round_step_s
    # (regimes.pool_rounds) and drops out of the check, not the check out of the verdict
    full = [j for j in range(min(len(x) for x in rounds))
            if all(x[j] is not None for x in rounds)]
    if len(full) < 2:
        return None
    if key == "resnet_bp_gemm_fraction":
        peaks = [(round_peaks[j] if round_peaks and j < len(round_peaks) and round_peaks[j]
                  else peak) for j in full]
        if not all(peaks):
            return None
        return [used[0]["flops"] / rounds[0][j] / 1e9 / p for j, p in zip(full, peaks)]
    if len(used) != 2:
        return None
    return [rounds[0][j] / rounds[1][j] for j in full]


#: the expansion ratios of the PFA spread target
SPREAD_R = (1, 10, 30)


def samestep_rules(data: dict, model: str, batch: int, needed=(), field=None):
    """(record, rules) of the run's first same-process comparison (:mod:`.samestep`) that
    ran without error on ``model`` at ``batch`` with every participant in ``needed`` (and,
    given ``field``, a record field such as ``gemm_round_gflops`` with a value in it), else
    (None, {})."""
    for same in samestep_records(data):
        rules = same.get("rules") or {}
        if not same.get("error") and same.get("model") == model and \
                same.get("batch") == batch and set(needed) <= rules.keys() and \
                (field is None or any(same.get(field) or [])):
            return same, rules
    return None, {}


def _same_process(same: dict) -> str:
    return (f"(one process, {same.get('rounds')} interleaved rounds of {same.get('steps')} "
            "steps each)")


def _fmt(t, unit):
    return f"{t * 1e3:.2f} ms" if unit == "ms" else f"{t:.3f} s"


def evaluate_targets(data: dict) -> list[dict]:
    """Each target's measured value, threshold and whether it is met.

    Parameters
    ----------
    data : dict
        The benchmark's JSON (``machine``, ``gemm_peak_gflops``, ``records``).

    Returns
    -------
    list of dict: ``key``, ``description``, ``op``, ``target``, ``value`` (float or None),
    ``met`` (bool or None), ``detail`` (the figures the value is made of), ``rounds`` (the
    value from each interleaved round alone, or None; :func:`round_values`).

    A ratio target is decided only when the pooled value and every round alone fall on the
    same side of the threshold; otherwise it is *undecided* (the noise, not the code,
    would decide it), as is an all-core target whose records saw contention.

    The targets that are ratios of two steps of one model and batch (PFA (r = 10) / BP, the
    PFA spread over r, BP / PyTorch's BP at every batch, the MLP's BP / PyTorch's) read the
    run's same-process comparisons (``data["samesteps"]``, :mod:`.samestep`: the steps
    interleaved in one process, so the machine's drift between processes falls on both
    sides) when one ran with both steps; its own rounds decide the ratio's side, its
    contention the all-core verdict, and the per-process figure is quoted beside it. The
    GEMM fraction likewise reads the comparison at the reference batch that measured the
    GEMM peak right before BP's steps in every round (``gemm_round_gflops``).
    Without one (older JSON, ``--device cuda``, no PyTorch, a failed comparison) they read
    the per-process records.
    """
    recs = data["records"]
    mode = data.get("machine", {}).get("mode", "full")
    ref = reference_batches(mode)
    rm, mm, rb, mb = ref["resnet_model"], ref["mlp_model"], ref["resnet"], ref["mlp"]
    dev = data.get("machine", {}).get("device_kind")

    used = []  # the records the current target reads (for its contention check)

    def step(model, rule, impl="minigrad", batch=rb):
        r = find(recs, model, rule, impl, batch, dev)
        if r is not None:
            used.append(r)
        return None if r is None else r["step_s"]

    def ratio(a, b, unit="s"):
        if a is None or b is None:
            return None, "not measured in this run"
        return a / b, f"{_fmt(a, unit)} / {_fmt(b, unit)}"

    def separate(model, name, batch):  # a per-process step, quoted beside a same-process one
        r = find(recs, model, *participant(name), batch, dev)
        return None if r is None else r["step_s"]

    def same_ratio(model, batch, a, b, unit="s"):
        """(value, detail, per-round values) of participant a's step / b's in a same-process
        comparison (the per-process ratio quoted beside), or None without one."""
        same, rules = samestep_rules(data, model, batch, (a, b))
        if same is None:
            return None
        used.append(same)
        x, y = rules[a], rules[b]
        per = [p / q for p, q in zip(x["round_s"], y["round_s"])]
        sa, sb = separate(model, a, batch), separate(model, b, batch)
        detail = (f"{_fmt(x['step_s'], unit)} / {_fmt(y['step_s'], unit)} "
                  f"{_same_process(same)}"
                  + ("" if None in (sa, sb) else f"; separate processes: {sa / sb:.3g}"))
        return x["step_s"] / y["step_s"], detail, (per if len(per) >= 2 else None)

    def same_fraction():
        """(value, detail, per-round values) of the GEMM fraction from the same-process
        comparison that measured the GEMM peak right before BP's steps in every round
        (``gemm_round_gflops``), or None without one (or without the BP record's FLOPs)."""
        r = find(recs, rm, "bp", "minigrad", rb, dev)
        same, rules = samestep_rules(data, rm, rb, ("bp",), "gemm_round_gflops")
        if same is None or r is None or next(iter(rules)) != "bp":
            return None  # (the peaks were measured before the first participant's steps)
        used.append(same)
        bp, peaks = rules["bp"], same["gemm_round_gflops"]
        peak = statistics.median(p for p in peaks if p)
        gflops = r["flops"] / bp["step_s"] / 1e9
        per = round_values("resnet_bp_gemm_fraction",
                           [{"flops": r["flops"], "round_step_s": bp["round_s"]}], peak, peaks)
        sep = r.get("gemm_fraction") or (r["gflops"] / data["gemm_peak_gflops"]
                                         if data.get("gemm_peak_gflops") else None)
        detail = (f"{gflops:.1f} / {peak:.1f} GFLOP/s {_same_process(same)}, the peak "
                  "measured right before BP's steps in every round (the median; each round "
                  "against its own)" + ("" if sep is None else
                                        f"; separate processes: {sep:.3g}"))
        return gflops / peak, detail, per

    spread_rules = [f"pfa-r{r}" for r in SPREAD_R]
    same, same_rules = samestep_rules(data, rm, rb, spread_rules)

    table = target_table(data.get("machine", {}))
    out = []
    for key, desc, op, thr in table:
        value, detail = None, "not measured in this run"
        used.clear()
        per_round, from_same = None, False
        pair = {"resnet_pfa_vs_bp": (rm, rb, "pfa-r10", "bp", "s"),
                "resnet_bp_vs_torch": (rm, rb, "bp", SAMESTEP_TORCH, "s"),
                "mlp_bp_vs_torch": (mm, mb, "bp", SAMESTEP_TORCH, "ms")}.get(key)
        if key.startswith("resnet_bp_vs_torch_b"):
            pair = (rm, int(key.rsplit("_b", 1)[1]), "bp", SAMESTEP_TORCH, "s")
        found = same_ratio(*pair) if pair else \
            same_fraction() if key == "resnet_bp_gemm_fraction" else None
        if found is not None:  # a ratio of two measurements in one process
            value, detail, per_round = found
            from_same = True
        elif key == "resnet_pfa_vs_bp":
            value, detail = ratio(step(rm, "pfa-r10"), step(rm, "bp"))
        elif key == "resnet_pfa_vs_literal":
            value, detail = ratio(step(rm, "pfa-r10"), step(rm, "pfa-r10-literal"))
        elif key == "resnet_pfa_r_spread" and same is not None:
            used.append(same)
            from_same = True
            ts = [same_rules[r]["step_s"] for r in spread_rules]
            value = max(ts) / min(ts) - 1.0
            sep = [separate(rm, r, rb) for r in spread_rules]
            detail = (f"r = 1, 10, 30: {', '.join(f'{t:.3f} s' for t in ts)} "
                      f"{_same_process(same)}" + (
                          "" if None in sep else
                          f"; separate processes: {max(sep) / min(sep) - 1.0:.3g}"))
        elif key == "resnet_pfa_r_spread":
            ts = [step(rm, f"pfa-r{r}") for r in SPREAD_R]
            if None not in ts:
                value = max(ts) / min(ts) - 1.0
                detail = "r = 1, 10, 30: " + ", ".join(f"{t:.3f} s" for t in ts)
        elif key == "resnet_pfa_vs_torch_published":
            value, detail = ratio(step(rm, "pfa-r10"), step(rm, "pfa-r10", "torch"))
        elif key == "resnet_bp_vs_torch":
            value, detail = ratio(step(rm, "bp"), step(rm, "bp", "torch"))
        elif key.startswith("resnet_bp_vs_torch_b"):
            b = int(key.rsplit("_b", 1)[1])
            value, detail = ratio(step(rm, "bp", batch=b), step(rm, "bp", "torch", batch=b))
        elif key == "resnet_bp_gemm_fraction":
            r = find(recs, rm, "bp", "minigrad", rb, dev)
            peak = data.get("gemm_peak_gflops")
            if r is not None and peak:
                used.append(r)
                value = r["gflops"] / peak
                detail = f"{r['gflops']:.1f} / {peak:.1f} GFLOP/s" + (
                    " (the median of the rounds' peaks)"
                    if any(data.get("gemm_round_gflops") or []) else "")
        elif key == "mlp_bp_vs_torch":
            value, detail = ratio(step(mm, "bp", batch=mb),
                                  step(mm, "bp", "torch", batch=mb), "ms")
        elif key == "resnet_pfa_peak_mb":
            r = find(recs, rm, "pfa-r10", "minigrad", rb, dev)
            if r is not None:
                value = r["peak_mb"]
                detail = f"batch {rb}" + ("" if rb == 128 else " (not the target's batch 128)")
        met = None if value is None else _side(value, op, thr)
        if not from_same:  # a same-process figure brings its own rounds (or none)
            per_round = round_values(key, list(used), data.get("gemm_peak_gflops"),
                                     data.get("gemm_round_gflops"))
        if per_round is not None and value is not None:
            sides = {_side(v, op, thr) for v in per_round} | {met}
            detail += (f"; rounds {format_vs(min(per_round), op, thr)} to "
                       f"{format_vs(max(per_round), op, thr)}")
            if len(sides) > 1:
                met = None
                detail += " (on both sides of the target: undecided)"
        # a target is undecided by contention measured while *its* records were timed
        busy = contention(data, used) if table is TARGETS_ALL_CORES and used else None
        if key == "resnet_pfa_peak_mb" and rb != 128:
            met = None  # only meaningful at batch 128
        elif busy and value is not None and key != "resnet_pfa_peak_mb":
            met = None  # wall-clock times on contended cores: the noise would decide
            detail += f"; undecided: {busy}"
        out.append({"key": key, "description": desc, "op": op, "target": thr,
                    "value": value, "met": met, "detail": detail, "rounds": per_round})
    return out


def _side(v: float, op: str, thr: float) -> bool:
    return v <= thr if op == "<=" else v >= thr


def format_vs(v: float, op: str, thr: float) -> str:
    """``v`` to 3 significant digits (whole numbers for thresholds above 100), or to as many
    more as it takes for the printed number to sit on the same side of ``thr`` as ``v``:
    1.0004 against ``<= 1`` prints "1.0004", not a "1" beside a missed target."""
    digits = [".0f", ".1f", ".2f", ".3f"] if thr > 100 else [f".{d}g" for d in range(3, 10)]
    for fmt in digits:
        text = format(v, fmt)
        if _side(float(text), op, thr) == _side(v, op, thr):
            return text
    return repr(v)


def format_value(t: dict, missing: str = "n/a") -> str:
    """A target's measured value as the log and the report print it (:func:`format_vs`)."""
    return missing if t["value"] is None else format_vs(t["value"], t["op"], t["target"])


def format_targets(targets) -> list[str]:
    """One plain-text line per target."""
    lines = []
    for t in targets:
        v = format_value(t)
        flag = {True: "met", False: "NOT met", None: "-"}[t["met"]]
        lines.append(f"{t['description']}: {v} (target {t['op']} {t['target']:g}) "
                     f"[{flag}] {t['detail']}")
    return lines
