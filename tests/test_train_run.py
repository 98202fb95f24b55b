"""Run directories: resume equality, divergence, stale outputs, the ``train`` command.

Resume: a run interrupted at several points (mid-epoch; between writing best.npz and the
metrics line; between the metrics line and latest.npz; right after an epoch) and then
continued with :meth:`Trainer.resume` must produce a metrics.jsonl and results.json equal,
field by field and bit for bit, to the uninterrupted run's, except the wall-clock fields
(``train_time_s``, ``wall_s``) and the recorded command lines; the final checkpoints must be
equal array by array. Checked for PFA on an MLP and for brSF (per-step random feedback
with a counter) on a ResNet-8 with BatchNorm and crop/flip augmentation, and for a run
resumed on another number of CPU threads.

Divergence: a NaN loss stops the run with :class:`DivergenceError` whose message says
where and what was kept; the last good checkpoint still loads and the run can continue.
"""
import json
import os

import numpy as np
import pytest

from minigrad_pfa import train as train_mod
from minigrad_pfa import step as step_mod
from minigrad_pfa.checkpoint import load_checkpoint
from minigrad_pfa.cli import main
from minigrad_pfa.config import resolve_config
from minigrad_pfa.data import synthetic
from minigrad_pfa.experiment_data import build_data
from minigrad_pfa.nn import models
from minigrad_pfa.nn.resnet import CifarResNet
from minigrad_pfa.train import DivergenceError, Trainer

WALL = ("train_time_s", "wall_s", "run_id")
RESULT_WALL = ("wall_s", "commands", "run_id")


@pytest.fixture(autouse=True)
def small_synthetic(monkeypatch):
    """Smaller synthetic splits (the default test split of 512 images dominates a ResNet run)."""
    monkeypatch.setitem(synthetic.DEFAULT_SIZES, "train", 256)
    monkeypatch.setitem(synthetic.DEFAULT_SIZES, "test", 96)
    # a CIFAR ResNet-8 (one BasicBlock per stage): the registry lists 20 and deeper
    monkeypatch.setitem(models.MODELS, "resnet8", lambda **kw: CifarResNet(depth=8, **kw))


def mlp_cfg(**over):
    cfg = {"name": "mlp_pfa", "epochs": 3, "seed": 1,
           "model": {"name": "mlp", "hidden": [32, 24]},
           "data": {"name": "synthetic-mlp", "batch_size": 32, "val_size": 64,
                    "limit_train": 160, "flatten": True, "normalize": "train_stats",
                    "eval_batch_size": 64},
           "rule": {"name": "pfa", "expand_ratio": 3},
           "optim": {"lr": 0.05, "weight_decay": 1e-3},
           "schedule": {"weight_decay": {"type": "piecewise", "values": [0.01, 1e-3],
                                         "boundaries": [1]}},
           "metrics": {"probe_size": 32}}
    cfg.update(over)
    return resolve_config(cfg)


def resnet_cfg():
    return resolve_config({
        "name": "resnet8_brsf", "epochs": 3, "seed": 2, "model": {"name": "resnet8"},
        "data": {"name": "synthetic-images", "batch_size": 16, "val_size": 32,
                 "limit_train": 48, "augment": "crop_flip", "normalize": "train_stats",
                 "eval_batch_size": 128},
        "rule": {"name": "brsf"}, "optim": {"lr": 0.05, "weight_decay": 1e-4},
        "metrics": {"probe_size": 16}})


def make_trainer(cfg, out, **kw):
    return Trainer(cfg, str(out), build_data(cfg), progress=False, log=lambda *a: None, **kw)


def read_metrics(run):
    with open(os.path.join(run, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_results(run):
    with open(os.path.join(run, "results.json")) as fh:
        return json.load(fh)


def strip(d, keys):
    return {k: v for k, v in d.items() if k not in keys}


def assert_same_run(a, b):
    ma, mb = read_metrics(a), read_metrics(b)
    assert [m["epoch"] for m in ma] == [m["epoch"] for m in mb]
    for x, y in zip(ma, mb):
        assert set(x) == set(y)
        assert strip(x, WALL) == strip(y, WALL), x["epoch"]      # exact float equality
    ra, rb = read_results(a), read_results(b)
    for r in (ra, rb):  # the thread count is recorded; the runs compared may differ in it
        r["machine"].pop("threads")
    assert strip(ra, RESULT_WALL) == strip(rb, RESULT_WALL)
    for name in ("latest.npz", "best.npz"):
        if not os.path.exists(os.path.join(a, name)):
            assert not os.path.exists(os.path.join(b, name))
            continue
        xa, meta_a = load_checkpoint(os.path.join(a, name))
        xb, meta_b = load_checkpoint(os.path.join(b, name))
        assert list(xa) == list(xb)
        for k in xa:
            np.testing.assert_array_equal(xa[k], xb[k], err_msg=f"{name}:{k}")
        assert strip(meta_a, ("wall_s", "argv", "commands", "run_id")) == \
            strip(meta_b, ("wall_s", "argv", "commands", "run_id"))


@pytest.fixture(scope="module")
def reference_mlp(tmp_path_factory):
    """The uninterrupted MLP run (built once for the module)."""
    mp = pytest.MonkeyPatch()
    mp.setitem(synthetic.DEFAULT_SIZES, "train", 256)
    mp.setitem(synthetic.DEFAULT_SIZES, "test", 96)
    out = tmp_path_factory.mktemp("ref") / "run"
    try:
        make_trainer(mlp_cfg(), out).fit()
    finally:
        mp.undo()
    return str(out)


class Interrupt:
    """Raise KeyboardInterrupt the ``n``-th time ``method`` of ``owner`` is called (with
    ``when(args)`` true), after (``after=True``) or instead of the real call."""

    def __init__(self, monkeypatch, owner, method, n=1, when=None, after=False):
        self.real = getattr(owner, method)
        self.count, self.n, self.when, self.after = 0, n, when, after

        def hook(*args, **kw):
            if self.when is None or self.when(args):
                self.count += 1
                if self.count == self.n:
                    if self.after:
                        self.real(*args, **kw)
                    raise KeyboardInterrupt
            return self.real(*args, **kw)

        monkeypatch.setattr(owner, method, hook)


INTERRUPTIONS = {
    # mid-epoch: the 3rd step of epoch 1 (5 steps per epoch)
    "mid_epoch": lambda mp: Interrupt(mp, train_mod, "train_step", n=8),
    # after best.npz of epoch 1 is written, before its metrics line
    "before_metrics": lambda mp: Interrupt(mp, Trainer, "_append_metrics",
                                           when=lambda a: a[1]["epoch"] == 1),
    # after the metrics line of epoch 1, before latest.npz is replaced
    "before_latest": lambda mp: Interrupt(
        mp, Trainer, "save", when=lambda a: a[1].endswith("latest.npz") and a[2] == 1),
    # right after epoch 1 is fully persisted
    "after_epoch": lambda mp: Interrupt(mp, Trainer, "end_epoch",
                                        when=lambda a: a[1] == 1, after=True),
    # during the final test evaluation (every epoch done, no results.json yet)
    "in_finish": lambda mp: Interrupt(mp, train_mod, "evaluate", n=4),
}


@pytest.mark.parametrize("where", sorted(INTERRUPTIONS))
def test_resume_equals_uninterrupted_mlp_pfa(tmp_path, monkeypatch, reference_mlp, where):
    cfg = mlp_cfg()
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        hook = INTERRUPTIONS[where](mp)
        with pytest.raises(KeyboardInterrupt):
            make_trainer(cfg, out).fit()
        assert hook.count == hook.n
    assert not (out / "results.json").exists()
    done = len(read_metrics(str(out)))
    assert done == {"mid_epoch": 1, "before_metrics": 1, "before_latest": 2,
                    "after_epoch": 2, "in_finish": 3}[where]
    trainer = make_trainer(cfg, out)
    trainer.resume()
    # a metrics line of an epoch that latest.npz does not cover is dropped and redone
    assert trainer.start_epoch == {"mid_epoch": 1, "before_metrics": 1, "before_latest": 1,
                                   "after_epoch": 2, "in_finish": 3}[where]
    assert len(read_metrics(str(out))) == trainer.start_epoch
    trainer.fit()
    assert_same_run(reference_mlp, str(out))


def test_resume_equals_uninterrupted_resnet8_brsf_bn(tmp_path, monkeypatch):
    cfg = resnet_cfg()
    ref, out = tmp_path / "ref", tmp_path / "run"
    make_trainer(cfg, ref).fit()
    with monkeypatch.context() as mp:
        Interrupt(mp, train_mod, "train_step", n=5)        # 3 steps per epoch: epoch 1, step 2
        with pytest.raises(KeyboardInterrupt):
            make_trainer(cfg, out).fit()
    trainer = make_trainer(cfg, out)
    trainer.resume()
    assert trainer.start_epoch == 1
    trainer.fit()
    assert_same_run(str(ref), str(out))
    # the brSF counters and BN statistics moved on (the comparison above is not vacuous)
    arrays, _ = load_checkpoint(str(out / "latest.npz"))
    draws = [v for k, v in arrays.items() if k.endswith("feedback_draws")]
    assert draws and all(int(d) == 9 for d in draws)
    assert int(arrays["model/bn1.num_batches_tracked"]) == 9


def test_resume_on_another_thread_count_is_the_same_run(tmp_path, monkeypatch):
    """Started on 1 thread, resumed on 2: bit for bit the uninterrupted 1-thread run (the CPU
    step has the same bits on any thread count; on 2 threads this MLP's 784 -> 256 layer and
    PFA's 768-unit products split into shards)."""
    import numpy as np

    from minigrad_pfa import cpu
    from minigrad_pfa.cpu import threads as cpu_threads
    base = mlp_cfg()
    cfg = mlp_cfg(model={"name": "mlp", "hidden": [256, 256]},
                  data=dict(base["data"], batch_size=64, limit_train=192))
    ref, out = tmp_path / "ref", tmp_path / "run"
    with cpu.using_threads(1):
        make_trainer(cfg, ref).fit()
        with monkeypatch.context() as mp:
            Interrupt(mp, train_mod, "train_step", n=5)  # 3 steps per epoch: epoch 1, step 2
            with pytest.raises(KeyboardInterrupt):
                make_trainer(cfg, out).fit()
    with cpu.using_threads(2):
        assert cpu_threads.is_sharded(np, 256, 64 * 784 * 256 // 16, gemm_rows=1)
        trainer = make_trainer(cfg, out)
        trainer.resume()
        assert trainer.start_epoch == 1
        trainer.fit()
    assert_same_run(str(ref), str(out))


def test_resume_with_a_different_config_is_refused(tmp_path, reference_mlp):
    trainer = make_trainer(mlp_cfg(optim={"lr": 0.07, "weight_decay": 1e-3}), reference_mlp)
    with pytest.raises(ValueError, match="optim"):
        trainer.resume()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        make_trainer(mlp_cfg(), tmp_path / "empty").resume()


def test_fresh_start_needs_overwrite_and_then_removes_everything_of_the_older_run(tmp_path):
    from minigrad_pfa.rundir import RunDirError

    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text('{"test_acc": -1}')
    (out / "metrics.jsonl").write_text('{"epoch": 0, "train_acc": -1}\n' * 5)
    (out / "best.npz").write_text("stale")
    (out / "latest.npz").write_text("stale")
    cfg = mlp_cfg(epochs=1)
    with pytest.raises(RunDirError, match="--overwrite"):
        make_trainer(cfg, out).fit()
    assert (out / "latest.npz").read_text() == "stale"
    with pytest.MonkeyPatch.context() as mp:
        Interrupt(mp, train_mod, "train_step", n=2)
        with pytest.raises(KeyboardInterrupt):
            make_trainer(cfg, out, overwrite=True).fit()
    # interrupted before its first epoch ended: nothing of the old run may be left
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "run.json", "run.lock"]
    make_trainer(cfg, out, overwrite=True).fit()
    assert read_results(str(out))["test_acc"] >= 0 and len(read_metrics(str(out))) == 1


# ---------------------------------------------------------------- divergence
def nan_loss_after(monkeypatch, n):
    """Make the training loss NaN from the n-th step on (the step itself still runs)."""
    real = step_mod.softmax_cross_entropy
    calls = {"n": 0}

    def fake(logits, y):
        loss, e = real(logits, y)
        calls["n"] += 1
        return (loss * np.float32(np.nan) if calls["n"] >= n else loss), e

    monkeypatch.setattr(step_mod, "softmax_cross_entropy", fake)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                     reference_mlp):
    out = tmp_path / "run"
    cfg = mlp_cfg()
    with monkeypatch.context() as mp:
        # 5 training steps and 1 validation batch per epoch: the 2nd step of epoch 2
        nan_loss_after(mp, 5 + 1 + 2)
        with pytest.raises(DivergenceError) as info:
            make_trainer(cfg, out).fit()
    msg = str(info.value)
    assert "diverged" in msg and "nan" in msg and "epoch 2" in msg and "step 2" in msg
    assert str(out / "latest.npz") in msg and "after epoch 1" in msg and "optim.lr" in msg
    assert not (out / "results.json").exists()
    assert len(read_metrics(str(out))) == 1
    # the kept checkpoint is the good one of epoch 0: identical to the reference run's
    # state after epoch 0, which a resume continues from to the reference's end
    arrays, meta = load_checkpoint(str(out / "latest.npz"))
    assert meta["epoch_done"] == 0
    assert all(np.isfinite(v).all() for v in arrays.values() if v.dtype.kind == "f")
    trainer = make_trainer(cfg, out)
    trainer.resume()
    trainer.fit()
    assert_same_run(reference_mlp, str(out))


def test_divergence_in_the_first_epoch_says_nothing_was_kept(tmp_path, monkeypatch):
    with monkeypatch.context() as mp:
        nan_loss_after(mp, 2)
        with pytest.raises(DivergenceError, match="no checkpoint was written"):
            make_trainer(mlp_cfg(), tmp_path / "run").fit()
    assert not (tmp_path / "run" / "latest.npz").exists()


def write_yaml(path, cfg):
    import yaml
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning",
                            "ignore:invalid value:RuntimeWarning")
def test_cli_real_divergence_exit_3_one_line(tmp_path, capsys):
    """A huge learning rate really diverges: one message, exit status 3, no results."""
    cfg = dict(mlp_cfg(name="div"), rule="bp", schedule={"lr": None, "weight_decay": None})
    path = write_yaml(tmp_path / "c.yaml", cfg)
    run = tmp_path / "run"
    assert main(["train", path, "--set", "optim.lr=1e6", "--run-dir", str(run),
                 "--no-progress"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged" in err[0], err
    assert not (run / "results.json").exists()


def test_cli_train_run_dir_resume_and_recorded_commands(tmp_path, capsys, monkeypatch):
    cfg = dict(mlp_cfg(name="cli"), epochs=2)
    path = write_yaml(tmp_path / "c.yaml", cfg)
    run = str(tmp_path / "exact" / "seed1")
    argv = ["train", path, "--run-dir", run, "--no-progress", "--set", "seed=1"]
    with monkeypatch.context() as mp:
        Interrupt(mp, Trainer, "end_epoch", when=lambda a: a[1] == 0, after=True)
        assert main(argv) == 130
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", run, "--no-progress"]) == 0
    res = read_results(run)
    assert res["commands"] == ["minigrad-pfa " + " ".join(argv),
                               f"minigrad-pfa train --resume {run} --no-progress"]
    assert res["seed"] == 1 and len(read_metrics(run)) == 2
    with open(os.path.join(run, "config.yaml")) as fh:
        assert "seed: 1" in fh.read()


# ---------------------------------------------------------------- one writer per run directory
def dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_live_lock_refuses_a_second_writer_and_a_stale_one_is_taken_over(tmp_path):
    import platform
    from minigrad_pfa.runlock import LOCK_NAME, RunLock, RunLockedError, lock_owner

    out = tmp_path / "run"
    lock = out / LOCK_NAME
    # a live holder (this test, through its own descriptor) trains here
    with RunLock(str(out)):
        with pytest.raises(RunLockedError, match=f"process {os.getpid()}.*{LOCK_NAME}"):
            make_trainer(mlp_cfg(epochs=1), out).fit()
    assert not (out / "metrics.jsonl").exists()
    # a lock file left by a dead process is no lock at all
    lock.write_text(json.dumps({"pid": dead_pid(), "host": platform.node(), "since": "x"}))
    make_trainer(mlp_cfg(epochs=1), out).fit()
    assert (out / "results.json").exists() and lock_owner(str(out)) is None
    # released after an interruption and after a refused resume too
    with pytest.MonkeyPatch.context() as mp:
        Interrupt(mp, train_mod, "train_step", n=2)
        with pytest.raises(KeyboardInterrupt):
            make_trainer(mlp_cfg(epochs=1), out, overwrite=True).fit()
    assert lock_owner(str(out)) is None
    with pytest.raises(FileNotFoundError):
        make_trainer(mlp_cfg(epochs=1), tmp_path / "other").resume()
    assert lock_owner(str(tmp_path / "other")) is None


def test_resume_may_change_the_device_only(tmp_path, reference_mlp):
    """A run checkpointed on a GPU may finish on the CPU (checkpoints are host arrays).
    Simulated by marking the saved run as a CUDA run; every other key must still match."""
    from minigrad_pfa.checkpoint import save_checkpoint

    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        Interrupt(mp, Trainer, "end_epoch", when=lambda a: a[1] == 0, after=True)
        with pytest.raises(KeyboardInterrupt):
            make_trainer(mlp_cfg(), out).fit()
    arrays, meta = load_checkpoint(str(out / "latest.npz"))
    meta["config"]["device"] = "cuda"
    save_checkpoint(str(out / "latest.npz"), arrays, meta)
    logs = []
    trainer = Trainer(mlp_cfg(), str(out), build_data(mlp_cfg()), progress=False,
                      log=logs.append)
    trainer.resume()
    assert any("continuing on cpu a run that trained on cuda" in x for x in logs)
    trainer.fit()
    assert_same_run(reference_mlp, str(out))
