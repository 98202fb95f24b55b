"""``grid --backend ray``: a grid of 2 configs x 2 seeds on a local Ray instance gives the
same runs as the local grid; a failing run is reported while the others finish; the
planning and skip semantics are the local grid's. Skipped when Ray is absent."""
import json
import os

import numpy as np
import pytest
import yaml

from minigrad_pfa.checkpoint import load_checkpoint
from minigrad_pfa.grid import plan_grid, run_grid

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'minigrad_pfa[ray]')")


def write(tmp_path, name, **model):
    cfg = {"name": name, "epochs": 1, "seeds": [0, 1],
           "model": {"name": "mlp", "hidden": [8], "num_classes": 10, **model},
           "data": {"name": "synthetic-mlp", "batch_size": 64, "flatten": True,
                    "normalize": "train_stats", "limit_train": 256, "prefetch": 0},
           "rule": name, "optim": {"name": "sgd", "lr": 0.05, "weight_decay": 1e-3},
           "metrics": {"probe_size": 16}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_ray_grid_equals_the_local_grid(tmp_path):
    from minigrad_pfa.distributed.ray_grid import run_grid_ray

    configs = [write(tmp_path, "fa"), write(tmp_path, "pfa")]
    # runs, then fails at its first forward pass (784 inputs into 5 features)
    broken = write(tmp_path, "bp", in_features=5)
    local = run_grid(plan_grid(configs + [broken], out=str(tmp_path / "local")), jobs=1,
                     threads=1, echo=lambda *a: None)
    lines = []
    ray_runs = run_grid_ray(plan_grid(configs + [broken], out=str(tmp_path / "ray")),
                            threads=1, echo=lines.append)
    assert any("local Ray instance" in ln for ln in lines)
    assert [(r.label, r.status) for r in ray_runs] == [(r.label, r.status) for r in local]
    assert [r.status for r in ray_runs] == ["done"] * 4 + ["failed"] * 2
    assert all("expected input (n, 5)" in r.message for r in ray_runs[4:])
    for a, b in zip(local[:4], ray_runs[:4]):
        ra = json.loads(open(os.path.join(a.run_dir, "results.json")).read())
        rb = json.loads(open(os.path.join(b.run_dir, "results.json")).read())
        assert (ra["test_acc"], ra["test_loss"], ra["seed"]) == \
            (rb["test_acc"], rb["test_loss"], rb["seed"])
        xa, _ = load_checkpoint(os.path.join(a.run_dir, "latest.npz"))
        xb, _ = load_checkpoint(os.path.join(b.run_dir, "latest.npz"))
        for k in xa:
            assert np.array_equal(np.asarray(xa[k]), np.asarray(xb[k])), k
    # the seeds differ (the comparison is not between copies of one run)
    assert json.loads(open(os.path.join(local[0].run_dir, "results.json")).read())[
        "test_loss"] != json.loads(open(os.path.join(local[1].run_dir, "results.json")).read())[
        "test_loss"]
    # run again: finished runs are skipped, as by the local grid (no Ray task needed)
    again = run_grid_ray(plan_grid(configs, out=str(tmp_path / "ray")), threads=1,
                         echo=lambda *a: None)
    assert [r.status for r in again] == ["skipped"] * 4
