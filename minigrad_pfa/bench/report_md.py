"""Markdown report (``docs/performance.md``) from the benchmark's JSON.

``python -m minigrad_pfa.bench.report_md bench.json [-o docs/performance.md]``, or
``minigrad-pfa bench --json bench.json --markdown docs/performance.md`` in one go.
Everything in the report comes from the JSON: the machine, every target (met or not),
every record.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .gpu_targets import gpu_section
from .host_syncs import markdown_section as host_sync_section
from .regimes import regime_view
from .samestep import label, samestep_records
from .suite import GEMM_SIZE, MODELS, reference_batches
from .targets import evaluate_targets, find, format_value

_ORDER = ("bp", "fa", "usf", "brsf", "frsf", "dfa", "kp", "wm", "pfa-r1", "pfa-r10",
          "pfa-r30", "pfa-o", "pfa-r10-fast", "pfa-r10-literal")


def _fmt_s(t, ms=False):
    if t is None:
        return "-"
    return f"{t * 1e3:.2f}" if ms else f"{t:.3f}"


def _num(v, fmt="{:.1f}"):
    return "-" if v is None else fmt.format(v)


def _table(header, rows) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def _rule_key(r):
    rule = r["rule"]
    return (_ORDER.index(rule) if rule in _ORDER else len(_ORDER), r["impl"] != "minigrad")


def _rule_name(r):
    if r["impl"] == "torch":
        return f"{r['rule']} (PyTorch {'autograd' if r['rule'] == 'bp' else 'published PFA'})"
    return r["rule"]


def _model_section(data, model, batch, ms: bool, title: str) -> list[str]:
    recs = [r for r in data["records"] if r.get("model") == model and r.get("batch") == batch
            and r.get("group") not in ("scaling", "proposal")]
    if not recs:
        return []
    bp = find(recs, model, "bp", "minigrad", batch)
    unit = "ms" if ms else "s"
    timer = data["machine"].get("timer", "wall")
    other = "wall" if timer == "cpu" else "cpu"
    rows = []
    for r in sorted(recs, key=_rule_key):
        if r.get("error"):
            rows.append([_rule_name(r), "error: " + r["error"][:80]] + ["-"] * 10)
            continue
        orders = r.get("pfa_orders")
        rows.append([
            _rule_name(r), _fmt_s(r["step_s"], ms), _spread(r, ms),
            _num(r["step_s"] / bp["step_s"], "{:.2f}") if bp else "-",
            _fmt_s(min(r["step_times_s"]), ms), _fmt_s(r.get(f"step_{other}_s"), ms),
            _num(r["peak_mb"], "{:.0f}"), _num(r.get("base_mb"), "{:.0f}"),
            _num(r["flops"] / 1e9, "{:.2f}"), _num(r["gflops"]),
            _num(100 * r["gemm_fraction"], "{:.0f}%") if r.get("gemm_fraction") else "-",
            "-" if not orders else f"{orders['fast']}/{orders['literal']}"])
    lines = [f"### {title}", ""]
    lines += _table(["rule", f"step ({unit}, {timer}, median)", "IQR (steps)", "x engine BP",
                     f"fastest ({unit})", f"{other} ({unit}, median)",
                     "peak MB", "base MB", "GFLOP/step", "GFLOP/s", "of GEMM peak",
                     "PFA layers fast/literal"], rows)
    return lines


def _spread(r, ms=False) -> str:
    """'q1-q3 (k)' of a pooled record: the interquartile range of its k timed steps, and
    its failed rounds if any (their steps are not among the k)."""
    if r.get("step_q1_s") is None:
        return "-"
    failed = r.get("round_errors")
    return (f"{_fmt_s(r['step_q1_s'], ms)}-{_fmt_s(r['step_q3_s'], ms)} "
            f"({len(r['step_times_s'])})"
            + (f"; {len(failed)} round(s) failed: {failed[0][:60]}" if failed else ""))


def _scaling_section(data, model) -> list[str]:
    recs = [r for r in data["records"] if r.get("model") == model and not r.get("error")]
    batches = sorted({r["batch"] for r in recs if r.get("group") == "scaling"})
    if not batches:
        return []
    batches = sorted(set(batches) | {reference_batches(data["machine"]["mode"])["resnet"]})
    cols = [("bp", "minigrad"), ("pfa-r10", "minigrad"), ("bp", "torch")]
    rows = []
    for b in batches:
        row = [b]
        for rule, impl in cols:
            r = find(recs, model, rule, impl, b)
            row += ["-", "-"] if r is None else [f"{r['step_s']:.3f}",
                                                 f"{b / r['step_s']:,.0f}"]
        bp, pfa = find(recs, model, "bp", "minigrad", b), find(recs, model, "pfa-r10",
                                                                 "minigrad", b)
        row.append("-" if not (bp and pfa) else f"{pfa['step_s'] / bp['step_s']:.2f}")
        rows.append(row)
    lines = [f"### Scaling with the batch size (ResNet-20, {data['machine']['threads']} "
             "thread(s))", ""]
    lines += _table(["batch", "engine BP s", "img/s", "engine PFA r=10 s", "img/s",
                     "PyTorch BP s", "img/s", "PFA / BP"], rows)
    return lines


def _proposal_section(data) -> list[str]:
    recs = [r for r in data["records"] if r.get("group") == "proposal"]
    if not recs:
        return []
    timer = data["machine"].get("timer", "wall")
    rows = []
    for r in recs:
        if r.get("error"):
            rows.append([f"{r.get('model', '')} {r['rule']}",
                         "+".join(r.get("variants") or ["(engine as is)"]),
                         "error: " + r["error"][:80], "-", "-", "-"])
            continue
        base = next((b for b in recs if not b.get("error") and not b.get("variants")
                     and b["rule"] == r["rule"] and b.get("model") == r.get("model")), None)
        rows.append([f"{r.get('model', '')} {r['rule']}",
                     " + ".join(r.get("variants") or ["(engine as is)"]),
                     f"{r['step_s']:.4f}",
                     "-" if base is None else f"{r['step_s'] / base['step_s']:.2f}",
                     f"{r['peak_mb']:.0f}", f"{r['gflops']:.1f}"])
    return ["## Proposed engine speed-ups (prototypes, `minigrad_pfa.bench.proto`)", "",
            "The engine's steps measured again next to the same steps with prototype "
            "changes applied in the worker process; "
            "*x as is* is the ratio to the unchanged engine measured in this block.", ""] + \
        _table(["model rule", "variant", f"step (s, {timer}, median)", "x as is", "peak MB",
                "GFLOP/s"], rows)


def _loader_section(loader) -> list[str]:
    if not loader or loader.get("error"):
        return []
    c = loader["cifar_augment"]
    lines = ["## Data loader (`minigrad_pfa.bench.loader`, quick sizes)", ""]
    rows = [["CIFAR augmentation (crop 32 pad 4, flip, /255, normalise), batch "
             f"{c['batch']}, {c['images']} images", f"{c['images_per_s']:,.0f} images/s"]]
    for r in loader.get("imagenet_decode", []):
        rows.append([f"JPEG decode + random-resized-crop 224 + flip, {r['workers']} "
                     f"thread(s), {r['images']} images", f"{r['images_per_s']:,.0f} images/s"])
    for key, name in (("prefetch", "CPU-bound step"), ("prefetch_wait_step", "waiting step "
                                                        "(as for a GPU)")):
        p = loader.get(key)
        if p:
            rows.append([f"prefetch=2 with a {p['step_ms']:.1f} ms {name}",
                         f"{100 * p['hidden']:.0f}% of the data time hidden"])
    return lines + _table(["measurement", "result"], rows)


def _profile_section(profiles) -> list[str]:
    lines = []
    for p in profiles or []:
        if p.get("error"):
            continue
        total = p["step_s_profiled"]
        lines += [f"## Profile: {p['model']} {p['rule']} (batch {p['batch']}, "
                  f"{p['threads']} thread(s), {total:.3f} s/step of "
                  f"{p.get('timer', 'wall')} time under cProfile)", "",
                  "A function's own time includes the NumPy operators it applies with "
                  "operator syntax or ufuncs (`a @ b`, `xp.matmul`, `+=`): the GEMMs of the "
                  "convolutions are the own time of the chunk loops `rows` (forward and "
                  "stride-1 input error) and `partial` (weight gradient) in "
                  "`functional/conv.py`, one per batch shard; im2col's copy is the chunk "
                  "windows' `__call__`. With `--cpu-kernels numba` the stride-1 "
                  "convolutions are the compiled `forward` and `weight_grad` of "
                  "`jit/conv.py` (row taps and GEMMs in one call, counted as GEMM).", ""]
        if p.get("phases"):
            lines += ["By phase (`minigrad_pfa.bench.phases`: each function's own time "
                      "assigned to the phase that dominates it):", ""]
            lines += _table(["phase", "ms/step", "share"],
                            [[k, f"{v * 1e3:.1f}", f"{100 * v / total:.0f}%"]
                             for k, v in p["phases"].items()])
        rows = [[f"`{t['function']}`", f"`{t['where']}`", t["ncalls"],
                 f"{t['tottime_s'] * 1e3:.1f}", f"{100 * t['tottime_s'] / total:.0f}%",
                 f"{t['cumtime_s'] * 1e3:.1f}"] for t in p["top"][:12]]
        lines += _table(["function", "where", "calls", "own ms/step", "share",
                         "cumulative ms/step"], rows)
    return lines


def _allcore_section(allcore) -> list[str]:
    """"Where the all-core step goes" (:mod:`.allcore`): operations at 1 and T threads, and
    what T threads gain on this machine for compute- and memory-bound work."""
    ops = {int(t): r for t, r in ((allcore or {}).get("ops") or {}).items()
           if not r.get("error")}
    if len(ops) < 2:
        return []
    lo, hi = ops[min(ops)], ops[max(ops)]
    T = hi["threads"]
    lines = [f"## Where the all-core step goes: {hi['model']} {hi['rule']} (batch "
             f"{hi['batch']}), {lo['threads']} vs {T} threads", "",
             "Wall time per step of each operation the layers call "
             "(`minigrad_pfa.bench.allcore`, outermost calls only, "
             f"{hi['steps']} steps after warm-up, "
             + (f"the run with the shortest step of {hi['rounds']} interleaved runs each"
                if hi.get("rounds", 1) > 1 else "one run each") +
             "), the share of it spent in "
             "the pool's parallel regions, and how busy the threads were there (shard time "
             "/ (threads x region time); the rest is waiting for the slowest shard and the "
             "hand-off). *other*: Python between the operations, the loss, pooling and the "
             + ("shortcuts. " if "residual sum" in hi["operations"] else  # timed since 4ca14f8
                "residual additions. ") +
             "Timed in the serial order (`minigrad_pfa.cpu.overlap` "
             "off: no parameter gradient beside the backward pass); the tables above time the "
             "step as users run it.", ""]
    rows = []
    for k in [k for k in hi["operations"] if k != "other"] + ["other"]:
        if k == "other":
            a, b = lo["other_s"], hi["other_s"]
            o = hi["operations"].get("other", {})
            par, busy = o.get("parallel_s", 0.0), o.get("busy")
        else:
            a = lo["operations"].get(k, {}).get("s", 0.0)
            b, par, busy = (hi["operations"][k][f] for f in ("s", "parallel_s", "busy"))
            if max(a, b) < 5e-5:  # an operation this model hardly uses (its linear head)
                continue
        rows.append([k, f"{a * 1e3:.1f}", f"{b * 1e3:.1f}", f"{a / b:.2f}" if b > 0 else "-",
                     f"{100 * b / hi['step_s']:.0f}%",
                     f"{100 * par / b:.0f}%" if b > 0 else "-",
                     f"{busy:.2f}" if busy is not None else "-"])
    rows.append(["**step**", f"{lo['step_s'] * 1e3:.1f}", f"{hi['step_s'] * 1e3:.1f}",
                 f"{lo['step_s'] / hi['step_s']:.2f}", "100%", "", ""])
    lines += _table(["operation", f"{lo['threads']} thread ms", f"{T} threads ms",
                     "speed-up", f"share at {T}", "in parallel regions", "threads busy"],
                    rows)
    sc = (allcore or {}).get("scaling")
    if sc and not sc.get("error"):
        g, c = sc["gemm_in_cache"], sc["copy_32mb"]
        lines += [f"What {sc['threads']} threads gain on this machine for independent NumPy "
                  "work that releases the GIL (`minigrad_pfa.bench.allcore`, worker kind "
                  f"`scaling`: throughput over one thread, median of {len(g['speedups'])} "
                  f"interleaved rounds): in-cache GEMM **{g['speedup_median']:.2f}x**, "
                  f"streaming copy of 32 MB arrays **{c['speedup_median']:.2f}x**. The "
                  "memory-bound operations (im2col's copies, BatchNorm, ReLU) cannot gain "
                  "more than the copy does.", ""]
    return lines


def render(data: dict, json_name: str = "") -> str:
    """The Markdown report for one benchmark JSON."""
    m = data["machine"]
    mode = m.get("mode", "full")
    rounds = max([len(r.get("round_step_s") or [0]) for r in data["records"]] or [1])
    cmd = m.get("command") or (f"minigrad-pfa bench --device {m['device_kind']} "
                               f"--threads {m['threads']}")
    lines = ["# Performance", "",
             "Generated from the benchmark's JSON"
             + (f" (`{json_name}`)" if json_name else "") + " by "
             "`python -m minigrad_pfa.bench.report_md`; do not edit by hand. Reproduce with",
             "", "```", f"{cmd} --json bench.json --markdown performance.md", "```", "",
             "Every configuration ran in a fresh subprocess with its regime's thread "
             "settings, after warm-up; step times are medians of all timed steps"
             + (f" pooled over {rounds} interleaved rounds (each round runs every "
                "configuration under every regime back to back"
                + (", every second round in reverse order" if m.get("round_order") ==
                   "alternating" else "") +
                "; `minigrad_pfa.bench.regimes`), with their interquartile range"
                if rounds > 1 else "")
             + ", and comparisons are ratios within this one run (absolute times on a "
             "shared machine move with its load).", ""]
    la0, la1 = m.get("load_average_start"), m.get("load_average_end")
    rows = [["processor", f"{m.get('processor')} ({m.get('cpus')} CPUs, "
                          f"{m.get('cpus_usable')} usable)"],
            ["memory", _num(m.get("memory_gb"), "{:.0f} GB")],
            ["OS / Python / NumPy", f"{m.get('os')} / {m.get('python')} / {m.get('numpy')}"],
            ["BLAS", f"{m.get('blas')}, {_pools(m.get('blas_pools'))}"],
            ["OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE",
             " / ".join(str((m.get("blas_env") or {}).get(v) or "unset")
                        for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"))],
            ["threads", ", ".join(f"{b['threads']}" for b in _regimes(data)) +
             f" (the regimes; set through minigrad_pfa.cpu.set_threads, "
             f"{', '.join(m['thread_env'])} and torch.set_num_threads)"],
            ["engine's CPU kernels", (m.get("cpu_kernels") or "numpy") +
             " (`--cpu-kernels`, minigrad_pfa.jit)"],
            ["timer", "; ".join(f"{b['threads']} thread(s): {_TIMERS[b['timer']]}"
                                for b in _regimes(data))],
            ["load average (1, 5, 15 min)",
             f"start {_loadavg(la0)}, end {_loadavg(la1)}"],
            ["device", m["device_kind"] + (f" ({m['gpu']}, CuPy {m.get('cupy')})"
                                           if m.get("gpu") else "")],
            ["PyTorch", _torch_version(data) if m.get("torch_installed") else "not installed"],
            ["date (UTC) / commit", f"{m.get('date_utc')} / {m.get('git_commit')}"],
            ["mode / wall time", f"{mode} / {_num(m.get('wall_s'), '{:.0f} s')}"]]
    for b in _regimes(data):
        g, per_round = b.get("gemm", {}), b.get("gemm_round_gflops")
        gemm_txt = ", ".join(f"{k} {v['gflops_max']:.1f} GFLOP/s" for k, v in g.items()
                             if not v.get("error"))
        if per_round:  # measured again before the reference BP step of every round
            engine = next(iter(g), "numpy")  # numpy, or cupy on --device cuda
            gemm_txt = (gemm_txt or "failed") + (
                f" at the start; {engine}'s in each round, right before the reference BP "
                "step: " + ", ".join(_num(p) for p in per_round) + (
                    f" (median {_num(b.get('gemm_peak_gflops'))}: the peak the fractions use)"
                    if any(per_round) else " (all failed: the start's peak is used)"))
        size = next((v["size"] for v in g.values() if not v.get("error")),
                    GEMM_SIZE.get(m.get("mode", "full"), "?"))
        rows.append([f"float32 GEMM peak ({size} x {size}, best of the repeats), "
                     f"{b['threads']} thread(s)", gemm_txt or "-"])
    lines += ["## Machine", ""] + _table(["", ""], rows)
    if la0 and m.get("cpus_usable") and max(la0[0], (la1 or la0)[0]) > m["cpus_usable"]:
        lines += [f"The load average exceeded the {m['cpus_usable']} usable CPUs during the "
                  "run: other processes shared the cores, so absolute times are inflated "
                  "and noisier than on an idle machine; the ratios below are the figures "
                  "to read.", ""]

    for b in _regimes(data):
        lines += _regime_sections(regime_view(data, b))
    lines += _proposal_section(data)
    lines += _loader_section(data.get("loader"))
    lines += _profile_section(data.get("profiles"))
    lines += _allcore_section(data.get("allcore"))
    lines += host_sync_section(data.get("host_syncs"))
    lines += gpu_section(data["records"])
    lines += ["## How the figures are made", "",
              "- **Regimes**: *all usable cores* runs the engine with that many threads "
              "(`minigrad_pfa.cpu`: each operation's batch split into shards on a thread "
              "pool, BLAS single-threaded inside each shard) against PyTorch with "
              "`torch.set_num_threads` of the same count, on the wall clock; *one thread* "
              "is the per-core efficiency, on the worker's CPU time. The GEMM peak of a "
              "regime is NumPy's BLAS with that many threads.",
              "- **Contention**: each timed configuration records the cores others kept "
              "busy meanwhile (`/proc/stat`'s busy time, hypervisor steal included, minus "
              "the worker's own CPU time and one clock tick per CPU of rounding); an "
              "all-core target is *undecided* (`-`) when a configuration it reads saw more "
              "than 0.25 such cores, since one busy process slows a multi-threaded step "
              "many times over.",
              "- **Rounds**: a ratio target's *from* column gives its value in each "
              "interleaved round alone; the target is met or missed only when the pooled "
              "value and every round fall on the same side of the threshold, else it is "
              "*undecided* (`-`): on this shared machine the noise, not the code, would "
              "decide it (`minigrad_pfa.bench.targets.round_values`).",
              "- **BLAS kernel**: `OPENBLAS_CORETYPE` / `OPENBLAS_L2_SIZE` (set on some "
              "machines for old OpenBLAS builds) force a kernel and cache model that can "
              "slow a current NumPy; the machine table records them and the kernel "
              "threadpoolctl reports. Benchmark with both unset "
              "(`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE minigrad-pfa bench ...`); "
              "never change them in tests or CI.",
              "- **Step**: forward, softmax cross-entropy, backward (the rule's error "
              "signals and feedback gradients), SGD (momentum 0.9, weight decay 5e-4) and "
              "the rule's hooks: `minigrad_pfa.train.train_step`, on synthetic in-memory "
              "data. PyTorch: the same model and optimizer, in-memory tensors, no "
              "DataLoader.",
              "- **PyTorch published PFA**: a `torch.autograd.Function` per layer that runs "
              "the conv with W *and* a conv with R whose result is kept only for its shape; "
              "backward: a 1x1 transposed conv with B, a transposed conv with R (input "
              "error), weight gradients of W and R (`minigrad_pfa.bench.torch_models`).",
              "- **PFA orders**: `pfa-rN` lets each layer pick the cheaper evaluation order "
              "by a FLOP count (the last column counts the layers per order); "
              "`pfa-r10-literal` forces the paper's order everywhere.",
              "- **peak MB**: the configuration's maximum resident set size "
              "(`getrusage(RUSAGE_SELF).ru_maxrss`) in its own process; *base MB* is the "
              "resident size after the imports, before the model exists (PyTorch's "
              "libraries alone account for a few hundred MB).",
              "- **GFLOP/step**: the GEMM FLOPs of one step counted analytically per layer "
              "(`minigrad_pfa.bench.flops`: forward, weight gradient, input error, and each "
              "rule's extra terms; elementwise work not counted), the same count for both "
              "implementations of one rule; GFLOP/s = that count / the median step time; "
              "*of GEMM peak* compares with the float32 GEMM measured in the same run.",
              ""]
    return "\n".join(lines)


def _regimes(data) -> list[dict]:
    """The thread regimes of a run (a JSON from before issue 14 has one, the data itself)."""
    return data.get("regimes") or [{"threads": data["machine"]["threads"],
                                     "timer": data["machine"].get("timer", "wall"),
                                     "gemm": data.get("gemm", {}),
                                     "gemm_peak_gflops": data.get("gemm_peak_gflops"),
                                     "records": data["records"],
                                     "targets": data.get("targets")}]


def _regime_sections(data) -> list[str]:
    """Targets, the ResNet-20 and MLP tables and the batch scaling of one regime."""
    m = data["machine"]
    mode = m.get("mode", "full")
    ref = reference_batches(mode)
    t = m["threads"]
    many = t > 1 and m.get("device_kind", "cpu") == "cpu"
    title = (f"All usable cores: {t} threads (issue 14's targets)" if many else
             f"{t} thread{'s' if t > 1 else ''} (issue 6's targets)")
    lines = [f"## {title}", ""]
    targets = evaluate_targets(data)  # re-evaluated: the current rules on the stored records
    trows = []
    for x in targets:
        v = format_value(x, "-")
        met = {True: "yes", False: "**no**", None: "-"}[x["met"]]
        trows.append([x["description"], v, f"{x['op']} {x['target']:g}", met, x["detail"]])
    if mode != "full":
        lines += [f"Mode `{mode}`: ResNet-20 at batch {ref['resnet']}, so these are not the "
                  "targets' batch-128 figures.", ""]
    lines += ["### Targets", ""] + _table(["figure", "measured", "target", "met", "from"],
                                          trows)
    lines += _samestep_section(samestep_records(data), t)
    rm, mm = ref["resnet_model"], ref["mlp_model"]
    shape = "x".join(str(s) for s in MODELS[rm]["input"])
    lines += _model_section(data, rm, ref["resnet"], False,
                            f"ResNet-20 (batch {ref['resnet']}, {shape}, {t} thread(s))")
    hidden = "-".join(str(h) for h in MODELS[mm]["kwargs"]["hidden"])
    lines += _model_section(data, mm, ref["mlp"], True,
                            f"MLP {MODELS[mm]['kwargs']['in_features']}-{hidden}-10 "
                            f"(batch {ref['mlp']}, {t} thread(s))")
    lines += _scaling_section(data, rm)
    return lines


def _samestep_section(sames, threads) -> list[str]:
    """The steps compared in one process (:mod:`.samestep`), which the ratio targets read."""
    if not sames:
        return []
    lines = [f"### Steps compared in one process ({threads} thread(s))", "",
             "Every model of a comparison built once in one worker and their steps "
             "interleaved, odd rounds in reverse order (`minigrad_pfa.bench.samestep`), so the "
             "machine's drift between processes falls on both sides of every ratio. The "
             "targets that are ratios of two of these steps read these tables (the "
             "per-process figures are quoted beside them).", ""]
    for same in sames:
        head = (f"{same.get('model')} at batch {same.get('batch')}"
                if same.get("model") else "A comparison")
        if same.get("error"):
            lines += [f"{head}: the same-process comparison failed: {same['error']}", ""]
            continue
        rules = same["rules"]
        ref = next(iter(rules))
        clock = "CPU time" if same.get("timer") == "cpu" else "wall clock"
        ms = MODELS.get(same.get("model"), {}).get("name") == "mlp"  # milliseconds a step
        rows = [[label(r), _fmt_s(v["step_s"], ms), f"{v['ratio']:.3f}",
                 f"{min(v['round_ratios']):.3f} to {max(v['round_ratios']):.3f}"
                 if r != ref and v.get("round_ratios") else "-"] for r, v in rules.items()]
        foreign = same.get("foreign_cores")
        lines += [f"{head}: {same['rounds']} rounds of {same['steps']} steps each ({clock}"
                  + ("" if foreign is None else
                     f"; other processes kept {foreign:.2f} cores busy meanwhile"
                     + (", in its busiest round" if same.get("round_foreign_cores") else ""))
                  + ").", ""]
        lines += _table(["step", f"time ({'ms' if ms else 's'}, median)", f"x {label(ref)}",
                         "rounds"], rows)
        if same.get("gemm_round_gflops"):
            n = same.get("gemm_size")
            best = same.get("gemm_repeats", 3)  # 3 before the field was recorded
            lines += [f"The float32 GEMM peak ({n} x {n}, {threads} thread(s), best of {best}) "
                      f"right before {label(ref)}'s steps in each round: " + ", ".join(
                          f"{p:.1f}" for p in same["gemm_round_gflops"]) + " GFLOP/s.", ""]
    return lines


def _pools(pools) -> str:
    """threadpoolctl's pools in a short phrase (library version, kernel, threads)."""
    if not pools:
        return "threadpoolctl info unavailable"
    return "; ".join(f"{p.get('internal_api')} {p.get('version')} kernel "
                     f"{p.get('architecture') or '-'}, {p.get('num_threads')} thread(s) in "
                     "the GEMM worker" for p in pools if p.get("user_api") == "blas") or \
        "no BLAS pool found"


_TIMERS = {"wall": "wall-clock time (`time.perf_counter`)",
           "cpu": "the worker's CPU time (`time.process_time`, one thread): the step's own "
                  "work, not the time other processes held the cores; wall-clock medians "
                  "are listed next to it"}


def _loadavg(la):
    return "-" if not la else ", ".join(f"{v:.2f}" for v in la)


def _torch_version(data):
    for r in data["records"]:
        if r.get("torch"):
            return r["torch"]
    t = data.get("gemm", {}).get("torch")
    return t.get("version") if t and not t.get("error") else "installed"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigrad_pfa.bench.report_md",
                                 description="Markdown report from a benchmark JSON.")
    ap.add_argument("json", help="the JSON written by 'minigrad-pfa bench --json'")
    ap.add_argument("-o", "--output", default=None,
                    help="write here (default: print to stdout)")
    args = ap.parse_args(argv)
    data = json.loads(Path(args.json).read_text())
    text = render(data, json_name=args.json)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
