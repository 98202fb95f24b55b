"""``minigrad-pfa grid``: planning, thread environment, and real subprocess runs.

The end-to-end tests start real ``python -m minigrad_pfa.cli train`` children on tiny
SYNTHETIC configs (about two seconds each, mostly interpreter start-up): a 2 configs x 2
seeds grid in 2 processes, a second invocation that skips everything, a run made partial
that is resumed, a diverging run reported as failed, and a changed config refused.
"""
import json
import os
import time

import pytest
import yaml

from minigrad_pfa import grid as G
from minigrad_pfa.cli import main
from minigrad_pfa.config import ConfigError

CFG = {"epochs": 2, "seeds": [0, 1], "model": {"name": "mlp", "hidden": [16]},
       "data": {"name": "synthetic-mlp", "batch_size": 32, "limit_train": 96, "flatten": True,
                "normalize": "train_stats", "prefetch": 0},
       "optim": {"lr": 0.02, "weight_decay": 1e-3}, "metrics": {"probe_size": 16}}


def write_cfg(tmp_path, name, **kw):
    cfg = dict(CFG, name=name, **kw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def results(run_dir):
    with open(os.path.join(run_dir, "results.json")) as fh:
        return json.load(fh)


# ---------------------------------------------------------------- planning (no runs)
def test_plan_expands_configs_and_seeds(tmp_path):
    a = write_cfg(tmp_path, "g_bp", rule="bp")
    b = write_cfg(tmp_path, "g_fa", rule="fa", seeds=[3])
    runs = G.plan_grid([a, b], out=str(tmp_path / "out"), overrides=["optim.lr=0.05"])
    assert [(r.name, r.seed) for r in runs] == [("g_bp", 0), ("g_bp", 1), ("g_fa", 3)]
    assert [r.run_dir for r in runs] == [str(tmp_path / "out" / n / f"seed{s}")
                                         for n, s in (("g_bp", 0), ("g_bp", 1), ("g_fa", 3))]
    assert all(r.state == "new" for r in runs)
    assert runs[1].cfg["seed"] == 1 and runs[1].cfg["optim"]["lr"] == 0.05
    assert runs[1].overrides == ["optim.lr=0.05", "seed=1"]
    # --seeds replaces every config's list
    runs = G.plan_grid([a, b], seeds=[7, 8], out=str(tmp_path / "out"), device="cpu")
    assert [(r.name, r.seed) for r in runs] == [("g_bp", 7), ("g_bp", 8), ("g_fa", 7),
                                                ("g_fa", 8)]
    cmd = G.train_command(runs[0], device="cpu", python="PY")
    assert cmd == ["PY", "-m", "minigrad_pfa.cli", "train", a, "--run-dir", runs[0].run_dir,
                   "--no-progress", "--set", "seed=7", "--device", "cpu"]


def test_plan_errors_name_the_file_and_key(tmp_path):
    a = write_cfg(tmp_path, "g_bp", rule="bp")
    bad = write_cfg(tmp_path, "bad", rule="bp", epohcs=3)
    with pytest.raises(ConfigError, match=r"bad\.yaml: .*'epohcs'"):
        G.plan_grid([a, bad])
    # rule options are validated before anything runs
    opt = write_cfg(tmp_path, "opt", rule={"name": "pfa", "expand_ration": 3})
    with pytest.raises(ConfigError, match=r"opt\.yaml: .*expand_ration"):
        G.plan_grid([opt])
    # two configs with the same name would share run directories
    twin = tmp_path / "twin.yaml"
    twin.write_text(open(a).read())
    with pytest.raises(ConfigError, match="both write"):
        G.plan_grid([a, str(twin)], out=str(tmp_path))


def test_thread_env():
    env = G.thread_env(2, base={"PATH": "/bin"}, cpus=4)
    assert [env[v] for v in G.THREAD_VARS] == ["2", "2", "2", "2"]
    assert G.thread_env(8, base={}, cpus=4)["OPENBLAS_NUM_THREADS"] == "1"
    # an explicit setting in the environment wins, --threads wins over it
    env = G.thread_env(1, base={"OPENBLAS_NUM_THREADS": "1"}, cpus=16)
    assert env["OPENBLAS_NUM_THREADS"] == "1" and env["OMP_NUM_THREADS"] == "16"
    env = G.thread_env(1, threads=3, base={"OPENBLAS_NUM_THREADS": "1"}, cpus=16)
    assert [env[v] for v in G.THREAD_VARS] == ["3", "3", "3", "3"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(G.__file__)))
    assert env["PYTHONPATH"].split(os.pathsep)[0] == root
    assert G.thread_env(1, base={"PYTHONPATH": "x"}, cpus=1)["PYTHONPATH"] == \
        os.pathsep.join([root, "x"])


# ---------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    """A finished 2 x 2 grid, run in two processes by the command line."""
    tmp = tmp_path_factory.mktemp("grid")
    a = write_cfg(tmp, "g_bp", rule="bp")
    b = write_cfg(tmp, "g_pfa", rule={"name": "pfa", "expand_ratio": 2})
    out = tmp / "out"
    t0 = time.time()
    rc = main(["grid", a, b, "--out", str(out), "--jobs", "2"])
    return {"tmp": tmp, "configs": [a, b], "out": out, "rc": rc, "wall": time.time() - t0}


def test_grid_runs_everything_in_subprocesses(grid_dir, capsys):
    assert grid_dir["rc"] == 0
    out = grid_dir["out"]
    for name in ("g_bp", "g_pfa"):
        for seed in (0, 1):
            d = out / name / f"seed{seed}"
            res = results(d)
            assert res["seed"] == seed and res["name"] == name
            assert res["commands"] == [
                f"minigrad-pfa train {grid_dir['tmp'] / (name + '.yaml')} --run-dir {d} "
                f"--no-progress --set seed={seed}"]
            log = (d / "log.txt").read_text()
            assert "grid: " in log and "test acc" in log
            assert len(open(d / "metrics.jsonl").readlines()) == 2


def test_second_invocation_skips_complete_runs(grid_dir, capsys):
    out = grid_dir["out"]
    logs = {p: p.read_text() for p in out.glob("*/seed*/log.txt")}
    t0 = time.time()
    assert main(["grid", *grid_dir["configs"], "--out", str(out)]) == 0
    assert time.time() - t0 < 10
    text = capsys.readouterr().out
    assert "4 need nothing, 0 to run" in text and "4 skipped" in text
    assert {p: p.read_text() for p in out.glob("*/seed*/log.txt")} == logs
    # the dry run lists the plan and runs nothing
    assert main(["grid", *grid_dir["configs"], "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("skip (complete)") == 4


def test_partial_run_is_resumed(grid_dir, tmp_path, capsys):
    out = grid_dir["out"]
    d = out / "g_pfa" / "seed1"
    before = results(d)
    os.remove(d / "results.json")      # every epoch checkpointed, the results lost
    runs = G.plan_grid(grid_dir["configs"], out=str(out))
    assert [r.state for r in runs] == ["complete"] * 3 + ["partial"]
    assert G.train_command(runs[3], python="PY") == [
        "PY", "-m", "minigrad_pfa.cli", "train", "--resume", str(d), "--no-progress"]
    G.run_grid(runs, jobs=1, echo=lambda *a: None)
    assert [r.status for r in runs] == ["skipped"] * 3 + ["resumed"]
    after = results(d)
    assert after["commands"][1] == f"minigrad-pfa train --resume {d} --no-progress"
    drop = ("wall_s", "commands")
    for r in (before, after):  # the grid ran 2 jobs of 1 thread, the resume 1 of 2: the
        r["machine"].pop("threads")  # same numbers, only the recorded setting differs
    assert {k: v for k, v in after.items() if k not in drop} == \
        {k: v for k, v in before.items() if k not in drop}
    assert "resumed" in (d / "log.txt").read_text()


def test_changed_config_is_refused_not_mixed(grid_dir, capsys):
    out = grid_dir["out"]
    mtimes = {p: p.stat().st_mtime for p in out.glob("*/seed*/results.json")}
    assert main(["grid", *grid_dir["configs"], "--out", str(out),
                 "--set", "optim.lr=0.05"]) == 1
    text = capsys.readouterr().out
    assert "differs in optim.lr" in text and "4 changed" in text
    assert {p: p.stat().st_mtime for p in out.glob("*/seed*/results.json")} == mtimes


def test_failed_run_is_reported_and_others_continue(tmp_path, capsys):
    bad = write_cfg(tmp_path, "g_div", rule="bp", seeds=[0], optim={"lr": 1e6})
    ok = write_cfg(tmp_path, "g_ok", rule="bp", seeds=[0], epochs=1)
    assert main(["grid", bad, ok, "--out", str(tmp_path / "o"), "--jobs", "2"]) == 1
    text = capsys.readouterr().out
    assert "g_div/seed0: FAILED (exit 3)" in text and "diverged" in text
    table = {ln.split()[0]: ln for ln in text.splitlines() if "/seed0 " in ln}
    assert "failed" in table["g_div/seed0"] and "diverged" in table["g_div/seed0"]
    assert " done " in table["g_ok/seed0"]
    assert not (tmp_path / "o" / "g_div" / "seed0" / "results.json").exists()
    assert results(tmp_path / "o" / "g_ok" / "seed0")["epochs"] == 1


def test_interrupted_grid_marks_runs_and_reraises(tmp_path, monkeypatch):
    a = write_cfg(tmp_path, "g_int", rule="bp", seeds=[0, 1])
    runs = G.plan_grid([a], out=str(tmp_path / "o"))

    def ctrl_c(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(G, "_pause", ctrl_c)         # Ctrl-C while the first run is going
    with pytest.raises(KeyboardInterrupt):
        G.run_grid(runs, jobs=1, echo=lambda *a: None)
    assert [r.status for r in runs] == ["interrupted", "interrupted"]
    assert runs[0].returncode is not None               # the started child was waited for
    assert runs[1].message == "not started"
    assert "interrupted" in G.summary_table(runs)


def test_run_locked_by_a_live_process_is_left_alone(tmp_path, capsys):
    from minigrad_pfa.runlock import RunLock
    a = write_cfg(tmp_path, "g_busy", rule="bp", seeds=[0])
    d = tmp_path / "o" / "g_busy" / "seed0"
    with RunLock(str(d)):
        assert main(["grid", a, "--out", str(tmp_path / "o")]) == 0  # busy is not a failure
    text = capsys.readouterr().out
    assert f"being trained by process {os.getpid()}" in text and "1 busy" in text
    assert not (d / "log.txt").exists()
