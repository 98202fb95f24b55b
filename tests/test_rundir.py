"""One run per run directory (issue 10): identity, --overwrite, torn metrics lines, stale
temporary files, refusing to mix runs, and ``--init-from`` continuation.

The headline regression: a fresh ``train`` into a directory holding a finished run used to
delete some of its files and keep ``latest.npz``; killed in its first epoch, the new run
then "resumed" the *old* run's checkpoint and wrote a results.json mixing the two. Now the
fresh start is refused (exit 2) unless ``--overwrite`` clears the whole directory, and every
file carries a run id that ``--resume`` and ``grid`` check.
"""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import yaml

from minigrad_pfa import train as train_mod
from minigrad_pfa import step as step_mod
from minigrad_pfa.checkpoint import load_checkpoint, save_checkpoint
from minigrad_pfa.cli import main
from minigrad_pfa.config import resolve_config
from minigrad_pfa.data import synthetic
from minigrad_pfa.experiment_data import build_data
from minigrad_pfa.train import Trainer


@pytest.fixture(autouse=True)
def small_synthetic(monkeypatch):
    monkeypatch.setitem(synthetic.DEFAULT_SIZES, "train", 256)
    monkeypatch.setitem(synthetic.DEFAULT_SIZES, "test", 96)


CFG = {"name": "rd", "epochs": 3, "seed": 1,
       "model": {"name": "mlp", "hidden": [16]},
       "data": {"name": "synthetic-mlp", "batch_size": 32, "val_size": 64,
                "limit_train": 128, "flatten": True, "normalize": "train_stats",
                "eval_batch_size": 64, "prefetch": 0},
       "rule": {"name": "pfa", "expand_ratio": 2},
       "optim": {"lr": 0.05, "weight_decay": 1e-3},
       "schedule": {"weight_decay": {"type": "piecewise", "values": [0.01, 1e-3],
                                     "boundaries": [1]}},
       "metrics": {"probe_size": 16}}


def cfg_file(tmp_path, **over):
    path = tmp_path / "rd.yaml"
    path.write_text(yaml.safe_dump(dict(CFG, **over)))
    return str(path)


def trainer(out, cfg=None, **kw):
    cfg = cfg or resolve_config(CFG)
    return Trainer(cfg, str(out), build_data(cfg), progress=False, log=kw.pop("log", None)
                   or (lambda *a: None), **kw)


def read_lines(path):
    with open(path) as fh:
        return [json.loads(ln) for ln in fh if ln.strip()]


def train_cli(*args):
    return main(["train", *map(str, args), "--no-progress"])


def kill_in_epoch(monkeypatch, step):
    """KeyboardInterrupt at the ``step``-th training step of this process."""
    real, calls = train_mod.train_step, {"n": 0}

    def hook(*a, **kw):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(train_mod, "train_step", hook)


def one_line_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# ---------------------------------------------------------------- 1. identity
def test_fresh_train_into_a_used_directory_is_refused_and_leaves_it_alone(tmp_path, capsys,
                                                                           monkeypatch):
    cfg, run = cfg_file(tmp_path), tmp_path / "run"
    assert train_cli(cfg, "--run-dir", run) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert train_cli(cfg, "--run-dir", run) == 2
    line = one_line_error(capsys)
    assert str(run) in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # the sequence: a fresh run killed in its first epoch, then --resume, must not
    # continue the old run's checkpoint
    with monkeypatch.context() as mp:
        kill_in_epoch(mp, 2)
        assert train_cli(cfg, "--run-dir", run, "--overwrite") == 130
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "run.json", "run.lock"]
    capsys.readouterr()
    assert train_cli("--resume", run) == 2
    assert "no checkpoint" in one_line_error(capsys)
    assert not any(p.name.startswith(".run.trash") for p in tmp_path.iterdir())


def test_overwrite_keeps_the_grid_log_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    trainer(run).fit()
    (run / "log.txt").write_text("attempt 1\n")
    (run / "latest.npz.tmpXYZ").write_bytes(b"junk")
    old_id = json.loads((run / "run.json").read_text())["run_id"]
    t = trainer(run, overwrite=True)
    with pytest.MonkeyPatch.context() as mp:
        kill_in_epoch(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            t.fit()
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "log.txt", "run.json",
                                                     "run.lock"]
    assert (run / "log.txt").read_text() == "attempt 1\n"
    assert json.loads((run / "run.json").read_text())["run_id"] != old_id


def test_every_file_of_a_run_carries_its_run_id(tmp_path):
    run = tmp_path / "run"
    trainer(run, cfg=resolve_config(dict(CFG, metrics={"probe_size": 16,
                                                       "every_n_steps": 2}))).fit()
    rid = json.loads((run / "run.json").read_text())["run_id"]
    assert len(rid) == 32 and int(rid, 16) >= 0
    for name in ("latest.npz", "best.npz"):
        assert load_checkpoint(str(run / name))[1]["run_id"] == rid
    assert {r["run_id"] for r in read_lines(run / "metrics.jsonl")} == {rid}
    assert {r["run_id"] for r in read_lines(run / "metrics_steps.jsonl")} == {rid}
    assert json.loads((run / "results.json").read_text())["run_id"] == rid
    other = tmp_path / "other"
    trainer(other).fit()
    assert json.loads((other / "run.json").read_text())["run_id"] != rid


def _interrupted_after_epoch(run, epoch_done, cfg=None):
    t = trainer(run, cfg=cfg)
    real = Trainer.end_epoch

    def stop(self, epoch, record):
        real(self, epoch, record)
        if epoch == epoch_done:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "end_epoch", stop)
        with pytest.raises(KeyboardInterrupt):
            t.fit()


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _interrupted_after_epoch(a, 1)
    _interrupted_after_epoch(b, 0)
    shutil.copy(a / "latest.npz", b / "latest.npz")      # b's directory, a's checkpoint
    assert train_cli("--resume", b) == 2
    line = one_line_error(capsys)
    assert str(b) in line and "different runs" in line and "latest.npz" in line
    assert len(read_lines(b / "metrics.jsonl")) == 1     # nothing was touched


def test_grid_skips_a_directory_holding_files_of_two_runs(tmp_path, capsys):
    from minigrad_pfa import grid as G

    cfg = cfg_file(tmp_path, seeds=[1])
    runs = G.plan_grid([cfg], out=str(tmp_path / "o"))
    d = runs[0].run_dir
    _interrupted_after_epoch(d, 0, runs[0].cfg)
    _interrupted_after_epoch(tmp_path / "x", 1, runs[0].cfg)
    shutil.copy(tmp_path / "x" / "latest.npz", os.path.join(d, "latest.npz"))
    before = sorted(os.listdir(d))
    assert main(["grid", cfg, "--out", str(tmp_path / "o")]) == 1
    out = capsys.readouterr().out
    assert "different runs" in out and "1 mixed" in out
    assert sorted(os.listdir(d)) == before and not os.path.exists(os.path.join(d, "log.txt"))


def test_grid_restarts_a_run_killed_in_its_first_epoch(tmp_path, capsys, monkeypatch):
    """Left with run.json and config.yaml but no checkpoint: nothing to continue, so the
    grid starts it again (with --overwrite), keeping its log."""
    from minigrad_pfa import grid as G

    cfg = cfg_file(tmp_path, seeds=[1], epochs=1)
    d = G.plan_grid([cfg], out=str(tmp_path / "o"))[0].run_dir
    with monkeypatch.context() as mp:
        kill_in_epoch(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            trainer(d, cfg=G.plan_grid([cfg], out=str(tmp_path / "o"))[0].cfg).fit()
    runs = G.plan_grid([cfg], out=str(tmp_path / "o"))
    assert runs[0].state == "new" and "--overwrite" in G.train_command(runs[0])
    G.run_grid(runs, echo=lambda *a: None)
    assert runs[0].status == "done", runs[0].message


# ---------------------------------------------------------------- 3. torn metrics lines
def test_torn_trailing_metrics_line_is_dropped_with_a_warning(tmp_path, capsys):
    run = tmp_path / "run"
    _interrupted_after_epoch(run, 0)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 1, "lr": 0.0')                # killed while writing epoch 2's line
    assert train_cli("--resume", run) == 0
    err = capsys.readouterr()
    assert "torn last line" in err.out + err.err and "metrics.jsonl, line 2" in err.out + err.err
    assert [r["epoch"] for r in read_lines(run / "metrics.jsonl")] == [0, 1, 2]


def test_damaged_metrics_line_the_checkpoint_needs_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    _interrupted_after_epoch(run, 1)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(lines[0][:20] + "\n" + lines[1])
    assert train_cli("--resume", run) == 2
    line = one_line_error(capsys)
    assert "metrics.jsonl, line 1" in line and "--init-from" in line
    # a missing epoch line (the checkpoint covers it) is an error too
    (run / "metrics.jsonl").write_text(lines[0])
    assert train_cli("--resume", run) == 2
    assert "lacks the line(s) of epoch(s) 2" in one_line_error(capsys)


# ---------------------------------------------------------------- 4. stale temporary files
def test_stale_temporary_files_are_removed_on_resume(tmp_path):
    run = tmp_path / "run"
    _interrupted_after_epoch(run, 0)
    junk = ["latest.npz.tmpab12cd", "best.npz.tmpzz", "metrics.jsonl.tmp", "results.json.tmp"]
    for name in junk:
        (run / name).write_bytes(b"\0" * 100_000)
    logs = []
    t = trainer(run, log=logs.append)
    t.resume()
    assert not any((run / n).exists() for n in junk)
    assert any("removed 4 temporary file(s)" in str(x) for x in logs)
    t.fit()


# ---------------------------------------------------------------- 7. --init-from
def test_init_from_continues_a_run_as_a_new_run(tmp_path):
    """Initialised from the checkpoint after epoch 1 with the *same* config, the new run's
    epochs 2..3 repeat the uninterrupted run's bit for bit (parameters, feedback, optimizer
    and tracker state, and the epoch position carry over); its identity is new and its
    run.json names the source."""
    ref, src, new = tmp_path / "ref", tmp_path / "src", tmp_path / "new"
    trainer(ref).fit()
    _interrupted_after_epoch(src, 0)
    t = trainer(new, init_from=str(src))
    assert t.start_epoch == 1
    t.fit()
    meta = json.loads((new / "run.json").read_text())
    src_meta = json.loads((src / "run.json").read_text())
    digest = hashlib.sha256((src / "latest.npz").read_bytes()).hexdigest()
    assert meta["run_id"] != src_meta["run_id"] and meta["first_epoch"] == 1
    assert meta["init_from"] == {"run_id": src_meta["run_id"],
                                 "checkpoint": str(src / "latest.npz"), "sha256": digest,
                                 "epoch_done": 0, "config_changes": []}
    drop = ("train_time_s", "wall_s", "run_id")
    got = [{k: v for k, v in r.items() if k not in drop} for r in read_lines(new / "metrics.jsonl")]
    want = [{k: v for k, v in r.items() if k not in drop} for r in read_lines(ref / "metrics.jsonl")]
    assert got == want[1:]
    a, _ = load_checkpoint(str(ref / "latest.npz"))
    b, _ = load_checkpoint(str(new / "latest.npz"))
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_init_from_with_a_lower_lr_after_divergence(tmp_path, capsys):
    cfg = cfg_file(tmp_path, rule="bp", schedule={"lr": None, "weight_decay": None})
    old, new = tmp_path / "old", tmp_path / "new"
    assert train_cli(cfg, "--run-dir", old, "--set", "epochs=1") == 0
    assert train_cli(cfg, "--run-dir", new, "--init-from", old,
                     "--set", "optim.lr=0.01", "--set", "epochs=2") == 0
    meta = json.loads((new / "run.json").read_text())
    assert meta["init_from"]["config_changes"] == ["epochs", "optim.lr"]
    assert [r["epoch"] for r in read_lines(new / "metrics.jsonl")] == [1]
    assert read_lines(new / "metrics.jsonl")[0]["lr"] == 0.01
    # the continued run resumes as itself (its metrics start at epoch 2)
    os.remove(new / "results.json")
    assert train_cli("--resume", new) == 0
    capsys.readouterr()
    # nothing left to train: a clear error
    assert train_cli(cfg, "--run-dir", tmp_path / "n2", "--init-from", old,
                     "--set", "epochs=1") == 2
    assert "epochs" in one_line_error(capsys)


def test_divergence_message_points_at_init_from(tmp_path, monkeypatch):
    from minigrad_pfa.train import DivergenceError

    real, calls = step_mod.softmax_cross_entropy, {"n": 0}

    def fake(logits, y):
        loss, e = real(logits, y)
        calls["n"] += 1
        return (loss * np.float32(np.nan) if calls["n"] >= 8 else loss), e

    monkeypatch.setattr(step_mod, "softmax_cross_entropy", fake)
    run = tmp_path / "run"
    with pytest.raises(DivergenceError) as info:
        trainer(run).fit()
    msg = str(info.value)
    assert f"--init-from {run}" in msg and "optim.lr" in msg and "--run-dir" in msg


# ---------------------------------------------------------------- 7. messages
def test_config_given_with_resume_must_be_the_runs_own(tmp_path, capsys):
    cfg = cfg_file(tmp_path)
    run = tmp_path / "run"
    _interrupted_after_epoch(run, 0)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(dict(CFG, optim={"lr": 0.5, "weight_decay": 1e-3})))
    assert train_cli(other, "--resume", run) == 2
    line = one_line_error(capsys)
    assert str(other) in line and "optim.lr" in line
    assert len(read_lines(run / "metrics.jsonl")) == 1        # nothing trained
    assert train_cli(cfg, "--resume", run) == 0               # the same config: fine


def test_corrupt_checkpoint_on_resume_suggests_only_what_works(tmp_path, capsys):
    run = tmp_path / "run"
    _interrupted_after_epoch(run, 1)
    data = bytearray((run / "latest.npz").read_bytes())
    data[0] ^= 0xFF
    (run / "latest.npz").write_bytes(bytes(data))
    assert train_cli("--resume", run) == 3
    line = one_line_error(capsys)
    assert str(run / "latest.npz") in line and "--overwrite" in line
    assert f"--init-from {run / 'best.npz'}" in line
    assert "earlier checkpoint" not in line and "pickle" not in line.lower()


def test_export_errors_never_mention_resume(tmp_path, capsys):
    run = tmp_path / "run"
    _interrupted_after_epoch(run, 0)
    data = (run / "latest.npz").read_bytes()
    for broken in (data[: len(data) // 2], b"\xff" + data[1:]):
        (run / "latest.npz").write_bytes(broken)
        assert main(["export", str(run / "latest.npz"), "--out", str(tmp_path / "m.pt")]) == 2
        line = one_line_error(capsys)
        assert str(run / "latest.npz") in line
        assert "--resume" not in line and "pickle" not in line.lower()
