"""``minigrad-pfa report`` on tiny synthetic runs.

The runs are real (the trainer on SYNTHETIC data, a few seconds in all), labelled with the
protocols whose special cases the report handles: "E2" (the published number is the
final-epoch *validation* accuracy, shown beside the test accuracy of the best-validation
checkpoint), "E4" (feedback densities: a rule x density table and plot; DFA's undefined
alignment), plus an unfinished seed. Expected numbers are recomputed here from the run
files with NumPy (mean, sample std), never taken from the report module.
"""
import json
import os
import re
import shutil

import numpy as np
import pytest
import yaml

from minigrad_pfa.cli import main
from minigrad_pfa.config import resolve_config
from minigrad_pfa.data import synthetic
from minigrad_pfa.experiment_data import build_data
from minigrad_pfa.report import write_report
from minigrad_pfa.train import Trainer

PUBLISHED = {"mean": 90.0, "std": 1.0, "metric": "final-epoch validation accuracy % (5k split)"}


def base_cfg(**kw):
    cfg = {"epochs": 2, "model": {"name": "mlp", "hidden": [16]},
           "data": {"name": "synthetic-mlp", "batch_size": 32, "limit_train": 96,
                    "flatten": True, "normalize": "train_stats"},
           "optim": {"lr": 0.02, "weight_decay": 1e-3}, "metrics": {"probe_size": 16}}
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """root/<name>/seed<k> for E2-like (2 rules x 2 seeds + 1 unfinished) and E4-like runs."""
    mp = pytest.MonkeyPatch()
    mp.setitem(synthetic.DEFAULT_SIZES, "train", 192)
    mp.setitem(synthetic.DEFAULT_SIZES, "test", 64)
    root = tmp_path_factory.mktemp("runs")
    try:
        for rule, name in (("bp", "e2_bp"), ({"name": "pfa", "expand_ratio": 2}, "e2_pfa")):
            for seed in (0, 1, 2):
                if seed == 2 and name == "e2_pfa":
                    continue
                raw = base_cfg(name=name, protocol="E2", seed=seed, seeds=[0, 1, 2], rule=rule,
                               published=PUBLISHED, eval={"select_on": "val"})
                raw["data"]["val_size"] = 48
                cfg = resolve_config(raw)
                run = root / name / f"seed{seed}"
                Trainer(cfg, str(run), build_data(cfg), progress=False,
                        log=lambda *a: None).fit()
        os.remove(root / "e2_bp" / "seed2" / "results.json")     # an unfinished seed
        # E4-like runs through the command line (so their commands are recorded)
        for rule in ("fa", "dfa"):
            for d in (1.0, 0.5):
                name = f"e4_{rule}_d{d:g}"
                path = root / f"{name}.yaml"
                path.write_text(yaml.safe_dump(base_cfg(
                    name=name, protocol="E4",
                    rule={"name": rule, "feedback_density": d})))
                assert main(["train", str(path), "--run-dir", str(root / name / "seed0"),
                             "--no-progress"]) == 0
    finally:
        mp.undo()
    return root


def read(run):
    with open(os.path.join(run, "metrics.jsonl")) as fh:
        metrics = [json.loads(x) for x in fh if x.strip()]
    res = None
    if os.path.exists(os.path.join(run, "results.json")):
        with open(os.path.join(run, "results.json")) as fh:
            res = json.load(fh)
    return metrics, res


def pm(values):
    values = np.asarray(values, dtype=np.float64)
    if values.size == 1:
        return f"{values[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def section(md, title_start):
    parts = re.split(r"^## ", md, flags=re.M)
    # "F1" must not also match "F1-SF": a title is the name followed by ":" or the line end
    hits = [p for p in parts if re.match(re.escape(title_start) + r"(:|\s*$)", p, flags=re.M)]
    assert len(hits) == 1, [p[:20] for p in parts]
    return hits[0]


def table_rows(text):
    """Rows (lists of cells) of every Markdown table in ``text``, header rows included."""
    return [[c.strip() for c in line.strip().strip("|").split(" | ")]
            for line in text.splitlines() if line.startswith("| ")]


def row(text, first):
    hits = [r for r in table_rows(text) if r[0] == first]
    assert hits, (first, table_rows(text))
    return hits[0]


def table_with(text, header_start):
    """The rows of the table whose header row begins with ``header_start``."""
    for block in re.split(r"\n\s*\n", text):
        rows = table_rows(block)
        if rows and rows[0][:len(header_start)] == header_start:
            return rows
    raise AssertionError(f"no table with header {header_start}")


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    path = write_report([str(runs)], str(out), e5=True, e5_reps=2)
    with open(path) as fh:
        return out, fh.read()


def test_e2_compares_final_epoch_validation_and_shows_test_beside(runs, report):
    out, md = report
    sec = section(md, "E2")
    assert "final-epoch validation accuracy" in sec and "best-validation checkpoint" in sec
    header = table_rows(sec)[0]
    assert header[:7] == ["rule", "config", "seeds", "measured %", "test % (best-val ckpt)",
                          "published %", "Δ"]
    for rule, name, n in (("BP", "e2_bp", 2), ("PFA(expand_ratio=2)", "e2_pfa", 2)):
        vals, tests = [], []
        for seed in range(n):
            metrics, res = read(runs / name / f"seed{seed}")
            vals.append(metrics[-1]["val_acc"])
            tests.append(res["test_acc"])
        r = row(sec, rule)
        assert r[1] == name
        assert r[2] == ("2 (+1 unfinished)" if name == "e2_bp" else "2")
        assert r[3] == pm(vals)
        assert r[4] == pm(tests)
        assert r[5] == "90.00 ± 1.00"
        assert r[6] == f"{np.mean(vals) - 90.0:+.2f}"
        assert "cpu" in r[8]


def test_alignment_table_is_the_last_epoch_mean(runs, report):
    _, md = report
    sec = section(md, "E2")
    last = [read(runs / "e2_pfa" / f"seed{s}")[0][-1] for s in (0, 1)]
    for layer, label in (("fc1", "fc1 (unused)"), ("fc", "fc")):
        angle = np.mean([m[f"{layer}/path_angle"] for m in last])
        ratio = np.mean([m[f"{layer}/path_norm_ratio"] for m in last])
        r = row(sec, label)
        assert r[1] == "0.0° (1.00)"                         # BP
        assert r[2] == f"{angle:.1f}° ({ratio:.2f})"


def test_e4_density_table_and_undefined_dfa_alignment(runs, report):
    _, md = report
    sec = section(md, "E4")
    density = table_with(sec, ["rule", "rho = 1"])
    assert density[0] == ["rule", "rho = 1", "rho = 0.5"]
    for rule in ("fa", "dfa"):
        accs = [read(runs / f"e4_{rule}_d{d:g}" / "seed0")[1]["test_acc"] for d in (1.0, 0.5)]
        assert row("\n".join("| " + " | ".join(r) + " |" for r in density),
                   rule.upper())[1:] == [f"{a:.2f}" for a in accs]
    assert "final-epoch test accuracy (no checkpoint selection)" in sec
    # the drop from dense to the sparsest density, from the same runs
    drops = {rule: accs for rule, accs in (
        (r, [read(runs / f"e4_{r}_d{d:g}" / "seed0")[1]["test_acc"] for d in (1.0, 0.5)])
        for r in ("fa", "dfa"))}
    line = [x for x in sec.splitlines() if x.startswith("Change from rho = 1")][0]
    for rule, (dense, sparse) in drops.items():
        assert re.search(rf"(?<![A-Za-z]){rule.upper()} {sparse - dense:+.2f} \(rho = 0\.5\)",
                         line), line
    align = table_with(sec, ["layer"])
    fc = [r for r in align if r[0] == "fc"][0]
    assert fc[align[0].index("DFA")] == "n/a"
    assert fc[align[0].index("FA")].endswith(")")
    assert "![accuracy vs feedback density](density_E4.png)" in sec
    assert "align_E4_DFA" not in sec and "align_E4_FA.png" in sec


def test_figures_exist_and_are_linked(report):
    from PIL import Image

    out, md = report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"acc_E2.png", "acc_E4.png", "density_E4.png", "e5_expansion_ratio.png",
            "align_E2_BP.png", "align_E2_PFA_expand_ratio_2.png"} <= set(links)
    for name in links:
        assert not os.path.isabs(name)
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200


def test_e5_section_and_runs_table(runs, report):
    _, md = report
    e5 = section(md, "E5")
    r10 = row(e5, "pfa")  # first pfa row is r = 1
    assert r10[1] == "1" and r10[4] == "45.0"
    ten = [r for r in table_rows(e5) if r[:2] == ["pfa", "10"]][0]
    assert abs(float(ten[3].split(" ± ")[0]) - 17.5) < 1.5 and ten[4] == "17.5"
    runs_sec = section(md, "Runs")
    r = row(runs_sec, str(runs / "e4_fa_d0.5" / "seed0"))
    assert r[4] == "2/2" and r[7].startswith(os.uname().nodename)
    assert r[8] == (f"`minigrad-pfa train {runs / 'e4_fa_d0.5.yaml'} --run-dir "
                    f"{runs / 'e4_fa_d0.5' / 'seed0'} --no-progress`")
    unfinished = row(runs_sec, str(runs / "e2_bp" / "seed2"))
    assert unfinished[5] == "unfinished"


def test_summary_json(runs, report):
    out, _ = report
    with open(out / "summary.json") as fh:
        groups = json.load(fh)
    assert [(g["protocol"], g["rule"]) for g in groups] == [
        ("E2", "BP"), ("E2", "PFA(expand_ratio=2)"), ("E4", "FA"),
        ("E4", "FA(feedback_density=0.5)"), ("E4", "DFA"), ("E4", "DFA(feedback_density=0.5)")]
    bp = groups[0]
    assert bp["seeds"] == [0, 1] and len(bp["incomplete"]) == 1
    assert bp["published"]["mean"] == 90.0
    assert bp["difference"] == pytest.approx(bp["measured"]["mean"] - 90.0)


def test_cli_report_and_errors(runs, tmp_path, capsys):
    one = str(runs / "e2_pfa" / "seed0")
    out = tmp_path / "rep"
    assert main(["report", one, str(runs / "e2_pfa"), "--out", str(out), "--no-plots"]) == 0
    assert "wrote" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "2 run directories" in md              # seed0 given twice counts once
    assert "__main__" not in md                   # no host program's argv as a command
    assert not list(out.glob("*.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run directories" in err[0]


def test_report_reads_runs_without_recorded_commands(runs, tmp_path):
    """Older runs (no "commands" in results.json) get an equivalent command line."""
    src = runs / "e2_pfa" / "seed1"
    dst = tmp_path / "old" / "seed1"
    shutil.copytree(src, dst)
    res = json.loads((dst / "results.json").read_text())
    res.pop("commands", None)
    (dst / "results.json").write_text(json.dumps(res))
    path = write_report([str(dst)], str(tmp_path / "rep"), plots=False)
    md = open(path).read()
    assert f"minigrad-pfa train {dst / 'config.yaml'}" in md


def test_e4_density_one_borrowed_only_from_identical_e1_runs(tmp_path, monkeypatch):
    """E4's rho = 1 is E1's protocol: the report shows an E1 run there (marked †) only when
    its resolved config equals the E4 one at density 1 apart from labels; an E1 run with a
    different learning rate is not used."""
    monkeypatch.setitem(synthetic.DEFAULT_SIZES, "train", 192)
    monkeypatch.setitem(synthetic.DEFAULT_SIZES, "test", 64)
    specs = [("e1_fa", "E1", {"name": "fa"}, 0.02, 0),
             ("e4_fa_d0.5", "E4", {"name": "fa", "feedback_density": 0.5}, 0.02, 0),
             ("e1_dfa", "E1", {"name": "dfa"}, 0.05, 0),            # not the E4 protocol
             ("e4_dfa_d0.5", "E4", {"name": "dfa", "feedback_density": 0.5}, 0.02, 0)]
    for name, protocol, rule, lr, seed in specs:
        raw = base_cfg(name=name, protocol=protocol, seed=seed, rule=rule,
                       published=PUBLISHED if protocol == "E1" else None)
        raw["optim"]["lr"] = lr
        cfg = resolve_config(raw)
        Trainer(cfg, str(tmp_path / name / "seed0"), build_data(cfg), progress=False,
                log=lambda *a: None).fit()
    path = write_report([str(tmp_path)], str(tmp_path / "report"), plots=False)
    with open(path) as fh:
        sec = section(fh.read(), "E4")
    density = table_with(sec, ["rule", "rho = 1"])
    assert density[0] == ["rule", "rho = 1", "rho = 0.5"]
    e1_fa = read(tmp_path / "e1_fa" / "seed0")[1]["test_acc"]
    text = "\n".join("| " + " | ".join(r) + " |" for r in density)
    assert row(text, "FA")[1] == f"{e1_fa:.2f} †"
    assert row(text, "DFA")[1] == "—"
    assert "† FA at rho = 1: the E1 runs" in sec and "† DFA" not in sec


def test_ordering_agreement_counts_pairs_and_published_ties():
    from minigrad_pfa.report import ORDERING_REFERENCE, ordering_agreement

    ref = ORDERING_REFERENCE["F1"][1]
    # PFA-o < BP here but the reference has them within their stds (91.31 ± 0.18 vs
    # 91.42 ± 0.19): a tie, either order agrees; PFA < uSF reverses 90.70 vs 89.97.
    meas = {"PFA-o": 91.0, "BP": 91.2, "PFA": 90.0, "uSF": 90.5, "FA": 70.0, "DFA": 40.0}
    assert ordering_agreement(meas, ref) == (14, 15, [("PFA", "uSF")], [])
    assert ordering_agreement({"BP": 80.0, "FA": 85.0}, ref) == (0, 1, [("BP", "FA")], [])
    assert ordering_agreement({"BP": 80.0}, ref) == (0, 0, [], [])


def test_ordering_agreement_measured_ties():
    from minigrad_pfa.report import ORDERING_REFERENCE, ordering_agreement

    ref = ORDERING_REFERENCE["F1"][1]   # BP 91.42 > PFA 90.70: not a published tie
    # equal means at 0.01: tied, whatever the spread
    assert ordering_agreement({"BP": 92.37, "PFA": 92.37}, ref) == (0, 1, [], [("BP", "PFA")])
    # PFA 0.3 above BP; over 3 seeds each with stds 0.3 the standard error is
    # sqrt(0.09/3 + 0.09/3) = 0.245, twice that 0.49 > 0.3: tied, not reversed
    meas, spread = {"BP": 92.0, "PFA": 92.3}, {"BP": (0.3, 3), "PFA": (0.3, 3)}
    assert ordering_agreement(meas, ref, spread) == (0, 1, [], [("BP", "PFA")])
    # the same gap over single seeds: reversed
    assert ordering_agreement(meas, ref, {"BP": (None, 1), "PFA": (None, 1)}) == \
        (0, 1, [("BP", "PFA")], [])
    # BP 0.6 above PFA, beyond 0.49: agrees
    assert ordering_agreement({"BP": 92.9, "PFA": 92.3}, ref, spread) == (1, 1, [], [])


def test_f1_report_states_the_measured_ordering(tmp_path, monkeypatch):
    monkeypatch.setitem(synthetic.DEFAULT_SIZES, "train", 192)
    monkeypatch.setitem(synthetic.DEFAULT_SIZES, "test", 64)
    accs = {}
    for rule in ("bp", "fa"):
        cfg = resolve_config(base_cfg(name=f"f1_{rule}", protocol="F1", rule=rule))
        Trainer(cfg, str(tmp_path / rule / "seed0"), build_data(cfg), progress=False,
                log=lambda *a: None).fit()
        accs[rule.upper()] = read(tmp_path / rule / "seed0")[1]["test_acc"]
    path = write_report([str(tmp_path)], str(tmp_path / "report"), plots=False)
    with open(path) as fh:
        sec = section(fh.read(), "F1")
    line = [x for x in sec.splitlines() if x.startswith("Ordering:")][0]
    best, worst = sorted(accs, key=lambda r: -accs[r])
    rel = "=" if f"{accs[best]:.2f}" == f"{accs[worst]:.2f}" else ">"
    assert (f"best first (mean over the complete seeds): {best} {accs[best]:.2f} {rel} "
            f"{worst} {accs[worst]:.2f}.") in line
    agree = int(accs["BP"] > accs["FA"])
    assert f"Pairs in the reference order: {agree} of 1" in line
    assert "Not yet measured: PFA-o, PFA, uSF, DFA." in line


def test_rule_labels_use_the_papers_names():
    from minigrad_pfa.report import rule_label

    assert rule_label({"rule": {"name": "pfa", "expand_ratio": 10}}) == "PFA"   # r = 10: default
    assert rule_label({"rule": {"name": "pfa"}}) == "PFA"
    assert rule_label({"rule": {"name": "pfa", "expand_ratio": 5}}) == "PFA(expand_ratio=5)"
    assert rule_label({"rule": {"name": "pfa", "orthogonal": True}}) == "PFA-o"
    assert rule_label({"rule": "usf"}) == "uSF"
    assert rule_label({"rule": {"name": "fa", "feedback_density": 0.1}}, drop=(
        "feedback_density",)) == "FA"
