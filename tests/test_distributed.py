"""Data-parallel training over MPI (minigrad_pfa.distributed): ``mpiexec -n 2`` in the suite.

* 2 ranks with sync_bn equal one process at the same global batch after 5 steps, for bp,
  fa, dfa, usf, kp, pfa (MLP and a tiny ResNet; float64 <= 1e-10, float32 <= 1e-5 relative)
  and WM with ``mirror_batch = n``; per-rank BatchNorm statistics differ (control);
* a 2-rank run stopped after an epoch and resumed (on 2 ranks, and on 1) equals the
  uninterrupted one; rank 0 alone writes; the run directory records N;
* a rank that is killed, raises or hangs ends every rank with a clear message within the
  collective timeout, leaving the last checkpoint loadable;
* the same step on the CuPy stand-in's device arrays (all-reduced through the host);
* sharding and selection logic without MPI.

Skipped with the reason when mpi4py or mpiexec is absent.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from minigrad_pfa.checkpoint import load_checkpoint
from minigrad_pfa.distributed.parallel import shard_bounds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))


def _mpi_missing():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'minigrad_pfa[mpi]')"
    if shutil.which("mpiexec") is None:
        return "no mpiexec on PATH (pip install mpich)"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=_mpi_missing() or "")


def mpiexec(n, args, env=None, timeout=240):
    full = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    full.update(env or {})
    t0 = time.monotonic()
    proc = subprocess.run(["mpiexec", "-n", str(n), sys.executable] + args, env=full,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - t0


# ---------------------------------------------------------------- no MPI needed
def test_shard_bounds_partition_the_batch_in_rank_order():
    for k in (8, 9, 1, 0, 127):
        for size in (1, 2, 3, 4):
            parts = [shard_bounds(k, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == k
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1


def _loaders(n=20, batch=8, images=False, **kw):
    from types import SimpleNamespace

    from minigrad_pfa.data import transforms as T
    from minigrad_pfa.data.dataset import ArrayDataset
    from minigrad_pfa.data.loader import DataLoader
    from minigrad_pfa.distributed.parallel import ShardedLoader

    if images:  # random crops and flips: the augmentation draws matter
        x = np.random.default_rng(0).integers(0, 255, (n, 2, 6, 6), dtype=np.uint8)
        kw["transform"] = T.Compose([T.RandomCrop(6, 2), T.RandomHorizontalFlip(),
                                     T.ToFloat()])
    else:
        x = np.arange(n, dtype=np.uint8).reshape(n, 1)
    ds = ArrayDataset(x, np.arange(n))
    base = DataLoader(ds, batch, shuffle=True, seed=3, prefetch=0, **kw)
    group = lambda r, s: SimpleNamespace(rank=r, size=s, combine_totals=None)  # noqa: E731
    return base, lambda r, s, even=True: ShardedLoader(base, group(r, s), even=even)


def test_sharded_loader_splits_every_global_batch_in_rank_order():
    base, shard = _loaders(n=24, batch=8)
    base.set_epoch(2)
    whole = [y for _, y in base]
    parts = []
    for r in range(2):
        loader = shard(r, 2)
        loader.set_epoch(2)
        parts.append([y for _, y in loader])
    assert len(parts[0]) == len(parts[1]) == len(whole) == 3
    for b, y in enumerate(whole):
        assert np.array_equal(np.concatenate([parts[0][b], parts[1][b]]), y)
    # per-rank augmentation streams (image folders): deterministic, different between ranks
    a0, a1 = shard(0, 2).batch_rng(2, 1).random(4), shard(1, 2).batch_rng(2, 1).random(4)
    assert np.array_equal(a0, shard(0, 2).batch_rng(2, 1).random(4))
    assert not np.array_equal(a0, a1)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_in_memory_shards_are_the_rows_of_one_process_augmented_batch(prefetch):
    base, shard = _loaders(n=24, batch=8, images=True)
    base.prefetch = prefetch
    base.set_epoch(1)
    whole = [x for x, _ in base]
    parts = []
    for r in range(2):
        loader = shard(r, 2)
        assert loader.sliced
        loader.set_epoch(1)
        parts.append([x for x, _ in loader])
    for b, x in enumerate(whole):
        assert np.array_equal(np.concatenate([parts[0][b], parts[1][b]]), x)
    # not vacuous: a shard augmented on its own (its own draws) is another batch
    own = shard(1, 2)
    own.sliced = False
    own.set_epoch(1)
    assert not all(np.array_equal(a, b) for (a, _), b in zip(own, parts[1]))


def test_sharded_loader_refuses_batches_that_do_not_divide():
    _, shard = _loaders(n=24, batch=9)
    with pytest.raises(ValueError, match="data.batch_size 9 .* does not divide over 2 ranks"):
        shard(0, 2)
    _, shard = _loaders(n=20, batch=6)          # last batch: 2 examples over 3 ranks
    with pytest.raises(ValueError, match="last batch of every epoch has 2 examples"):
        shard(1, 3)
    _, shard = _loaders(n=20, batch=8, drop_last=True)
    assert len(shard(1, 2)) == 2


def test_uneven_evaluation_shards_cover_every_example_once():
    base, shard = _loaders(n=7, batch=4)
    seen = np.concatenate([y for r in range(3) for _, y in shard(r, 3, even=False)])
    assert sorted(seen.tolist()) == list(range(7))


# ---------------------------------------------------------------- equivalence
@needs_mpi
def test_two_ranks_with_sync_bn_equal_one_process(tmp_path):
    out = tmp_path / "eq.json"
    proc, _ = mpiexec(2, [os.path.join(HERE, "_mpi_equivalence.py"), str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for kind in ("mlp", "resnet"):
        for rule in ("bp", "fa", "dfa", "usf", "kp", "pfa"):
            assert res[f"{kind}/{rule}/float64/sync_bn"] <= 1e-10, (kind, rule)
            assert res[f"{kind}/{rule}/float32/sync_bn"] <= 1e-5, (kind, rule)
    assert res["resnet/wm/float64/sync_bn"] <= 1e-10
    # the control: per-rank BatchNorm statistics are another computation
    assert res["resnet/bp/float64/local_bn"] > 1e-3


@needs_mpi
def test_device_arrays_on_the_cupy_standin_equal_one_process(tmp_path):
    # the GPU code path of the step (device buffers, BN sums, sharded device batches) on
    # the strict CPU stand-in of CuPy; the sums go through the host instead of NCCL
    pytest.importorskip("minigrad_pfa.standin", reason="the CuPy stand-in is absent")
    out = tmp_path / "eq.json"
    proc, _ = mpiexec(2, [os.path.join(HERE, "_mpi_equivalence.py"), str(out), "cuda"],
                      env={"MINIGRAD_PFA_CUPY_STANDIN": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert len(res) == 8 and max(res.values()) <= 1e-10, res


# ---------------------------------------------------------------- CLI runs
def write_cfg(tmp_path, **over):
    cfg = {"name": "dp", "epochs": 3, "dtype": "float64",
           "model": {"name": "mlp", "hidden": [16], "num_classes": 10},
           "data": {"name": "synthetic-mlp", "batch_size": 32, "val_size": 64,
                    "flatten": True, "normalize": "train_stats", "limit_train": 256,
                    "prefetch": 0},
           "rule": "pfa", "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
           "metrics": {"probe_size": 32}, "distributed": {"sync_bn": True}}
    cfg.update(over)
    path = tmp_path / "dp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def train_args(cfg, run_dir, *extra):
    return [os.path.join(HERE, "_mpi_train.py"), "train", cfg, "--run-dir", str(run_dir),
            "--no-progress", "--distributed", *extra]


def metrics(run_dir):
    lines = [json.loads(s) for s in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [{k: v for k, v in r.items() if not k.endswith("time_s") and k not in ("wall_s", "run_id")}
            for r in lines]


def assert_runs_close(a, b, rtol):
    ma, mb = metrics(a), metrics(b)
    assert len(ma) == len(mb) == 3
    for ra, rb in zip(ma, mb):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], float):
                assert ra[k] == pytest.approx(rb[k], rel=rtol, abs=1e-12), k
            else:
                assert ra[k] == rb[k], k
    xa, _ = load_checkpoint(os.path.join(a, "latest.npz"))
    xb, _ = load_checkpoint(os.path.join(b, "latest.npz"))
    assert xa.keys() == xb.keys()
    for k in xa:
        va, vb = np.asarray(xa[k]), np.asarray(xb[k])
        if va.dtype.kind in "fiu":
            np.testing.assert_allclose(va.astype(np.float64), vb.astype(np.float64),
                                       rtol=rtol, atol=1e-12, err_msg=k)
        else:
            assert np.array_equal(va, vb), k


@needs_mpi
def test_resume_of_a_two_rank_run_equals_the_uninterrupted_run(tmp_path):
    cfg = write_cfg(tmp_path)
    ref = tmp_path / "ref"
    proc, _ = mpiexec(2, train_args(cfg, ref))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((ref / "results.json").read_text())
    assert results["distributed"] == {"world_size": 2, "sync_bn": True, "backend": "mpi"}
    record = json.loads((ref / "distributed.json").read_text())
    assert [r["world_size"] for r in record] == [2] and record[0]["per_rank_batch"] == 16
    # rank 0 alone writes the run directory (run.json / run.lock: its identity and lock)
    assert set(os.listdir(ref)) - {"run.json", "run.lock"} == {
        "config.yaml", "metrics.jsonl", "latest.npz", "best.npz", "results.json",
        "distributed.json"}
    for n_resume in (2, 1):
        run = tmp_path / f"run{n_resume}"
        proc, _ = mpiexec(2, train_args(cfg, run), env={"MGP_FAULT": "stop:0"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(metrics(run)) == 1 and not (run / "results.json").exists()
        proc, _ = mpiexec(n_resume, [os.path.join(HERE, "_mpi_train.py"), "train", "--resume",
                                     str(run), "--no-progress", "--distributed"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        # same N: the same additions in the same order, bitwise; another N: rounding only
        assert_runs_close(str(ref), str(run), rtol=0.0 if n_resume == 2 else 1e-10)
        record = json.loads((run / "distributed.json").read_text())
        assert [(r["world_size"], r["start_epoch"]) for r in record] == [(2, 0), (n_resume, 1)]


@needs_mpi
def test_per_rank_batchnorm_statistics_are_made_rank_0s_at_each_epoch_end(tmp_path):
    # without sync_bn each rank's running statistics follow its own shard; the epoch-end
    # copy from rank 0 is what lets the state check (a digest of every buffer) pass
    cfg = write_cfg(tmp_path, epochs=1, dtype="float32",
                    model={"name": "resnet20", "num_classes": 10},
                    data={"name": "synthetic-images", "batch_size": 16, "val_size": 16,
                          "limit_train": 32, "prefetch": 0, "eval_batch_size": 16,
                          "normalize": "train_stats"},
                    distributed={"sync_bn": False})
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run = tmp_path / "run"
    proc, _ = mpiexec(2, train_args(cfg, run), env={"TMPDIR": str(scratch)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["distributed"]["sync_bn"] is False
    arrays, _ = load_checkpoint(str(run / "latest.npz"))
    assert int(arrays["model/bn1.num_batches_tracked"]) == 2
    assert list(scratch.iterdir()) == []          # the other rank's scratch copy is gone


@needs_mpi
def test_two_ranks_with_sync_bn_and_augmentation_equal_one_rank_end_to_end(tmp_path):
    # `train --distributed` on a BN network with random crops and flips: N=2 and N=1 train
    # the same rows with the same statistics, so the runs agree up to float rounding
    cfg = write_cfg(tmp_path, epochs=1, model={"name": "resnet20", "num_classes": 10},
                    data={"name": "synthetic-images", "batch_size": 16, "limit_train": 32,
                          "prefetch": 0, "eval_batch_size": 16, "normalize": "train_stats",
                          "augment": "crop_flip"},
                    eval={"select_on": "final"})
    runs = {}
    for n in (2, 1):
        runs[n] = tmp_path / f"n{n}"
        proc, _ = mpiexec(n, train_args(cfg, runs[n]))
        assert proc.returncode == 0, proc.stderr[-3000:]
    x2, _ = load_checkpoint(str(runs[2] / "latest.npz"))
    x1, _ = load_checkpoint(str(runs[1] / "latest.npz"))
    for k in x1:
        if np.asarray(x1[k]).dtype.kind == "f":
            np.testing.assert_allclose(x2[k], x1[k], rtol=1e-9, atol=1e-12, err_msg=k)
    r2, r1 = (json.loads((runs[n] / "results.json").read_text()) for n in (2, 1))
    assert r2["test_loss"] == pytest.approx(r1["test_loss"], rel=1e-9)


@needs_mpi
def test_a_batch_that_does_not_divide_over_the_ranks_is_a_clear_error(tmp_path):
    cfg = write_cfg(tmp_path, data={"name": "synthetic-mlp", "batch_size": 33,
                                    "normalize": "none", "flatten": True, "limit_train": 256})
    proc, _ = mpiexec(2, train_args(cfg, tmp_path / "r"))
    assert proc.returncode != 0
    assert "data.batch_size 33 (the global batch) does not divide over 2 ranks" in proc.stderr


@needs_mpi
@pytest.mark.parametrize("fault", ["kill", "raise", "hang"])
def test_a_failing_rank_ends_every_rank_within_the_timeout(tmp_path, fault):
    cfg = write_cfg(tmp_path)
    run = tmp_path / "run"
    timeout = 8
    # rank 1 fails at its 11th step: epoch 0 (8 steps) is checkpointed
    proc, elapsed = mpiexec(2, train_args(cfg, run, "--collective-timeout", str(timeout)),
                            env={"MGP_FAULT": f"{fault}:1:11"}, timeout=120)
    assert proc.returncode != 0
    assert elapsed < timeout + 60
    err = proc.stdout + proc.stderr
    if fault == "raise":
        assert "rank 1 of 2): error: RuntimeError: injected fault (ending every rank)" in err
    elif fault == "hang":
        assert "rank 0 of 2): error: gradient all-reduce: no answer from the other ranks " \
               f"within {timeout} s" in err
    else:  # the launcher notices the death at once, or rank 0 at the deadline
        assert ("Killed (signal 9)" in err or "no answer from the other ranks" in err), err
    # the last good checkpoint (epoch 0) is intact and loadable; no results
    arrays, meta = load_checkpoint(str(run / "latest.npz"))
    assert meta["epoch_done"] == 0 and arrays
    assert not (run / "results.json").exists()


# ---------------------------------------------------------------- GPU path without a GPU
def test_nccl_check_reports_instead_of_raising():
    from minigrad_pfa.backend import cuda_available, standin_active
    from minigrad_pfa.distributed.nccl import check_nccl

    c = check_nccl(n=1024)
    assert c["check"] == "nccl all-reduce" and c["rule"] == "-"
    if standin_active() or not cuda_available():  # the CPU stand-in of CuPy has no NCCL
        assert not c["ok"]
        assert "no CUDA device is visible" in c["detail"] or "NCCL" in c["detail"]
    else:  # pragma: no cover - machines with GPUs
        assert c["ok"], c["detail"]


def test_cuda_selects_nccl_and_without_a_device_says_so():
    from minigrad_pfa.backend import DeviceError, cuda_available, standin_active
    from minigrad_pfa.distributed.launch import select_communicator

    if cuda_available() or standin_active():  # pragma: no cover - machines with GPUs
        pytest.skip("a CUDA device is present: this checks the message without one")
    with pytest.raises(DeviceError, match="no CUDA device is visible"):
        select_communicator("cuda")


def test_nccl_dtype_table():
    from types import SimpleNamespace

    from minigrad_pfa.distributed.nccl import nccl_dtype

    fake = SimpleNamespace(NCCL_FLOAT32=7, NCCL_FLOAT64=8)
    assert nccl_dtype(fake, np.float32) == 7 and nccl_dtype(fake, "float64") == 8
    with pytest.raises(TypeError, match="float16"):
        nccl_dtype(fake, np.float16)
