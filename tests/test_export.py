"""Export of a trained checkpoint to a PyTorch state dict.

Expected values come from PyTorch itself: the architecture is written here with
``torch.nn`` (an MLP; a CIFAR ResNet-8 with option-A shortcuts, He et al. 2016 section 4.2),
the exported file is loaded with ``torch.load(weights_only=True)`` and
``load_state_dict(strict=True)`` (so names, shapes and the absence of feedback state are
checked by PyTorch), and the eval-mode logits must equal the engine's: relative error
<= 1e-10 in float64, <= 1e-5 in float32.
"""
import json
import os

import numpy as np
import pytest

from _util import rel_err
from minigrad_pfa.checkpoint import load_checkpoint
from minigrad_pfa.cli import main
from minigrad_pfa.config import resolve_config
from minigrad_pfa.data import synthetic
from minigrad_pfa.experiment_data import build_data
from minigrad_pfa.export import ExportError, export_checkpoint, resolve_checkpoint
from minigrad_pfa.nn import models
from minigrad_pfa.nn.resnet import CifarResNet
from minigrad_pfa.train import Trainer, model_from_config

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional
TOL = {"float64": 1e-10, "float32": 1e-5}
TDTYPE = {"float64": torch.float64, "float32": torch.float32}


# ------------------------------------------------------------------ the same models in torch
class TorchMLP(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.names = [f"fc{i}" for i in range(1, len(sizes) - 1)] + ["fc"]
        for name, a, b in zip(self.names, sizes[:-1], sizes[1:]):
            setattr(self, name, nn.Linear(a, b))

    def forward(self, x):
        x = torch.flatten(x, 1)
        for name in self.names[:-1]:
            x = F.relu(getattr(self, name)(x))
        return self.fc(x)


class TorchBlockA(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else None

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        short = x if self.pad is None else \
            F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class TorchResNet8A(nn.Module):
    def __init__(self, in_channels=3, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(TorchBlockA(16, 16, 1))
        self.layer2 = nn.Sequential(TorchBlockA(16, 32, 2))
        self.layer3 = nn.Sequential(TorchBlockA(32, 64, 2))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


# ------------------------------------------------------------------ trained run directories
@pytest.fixture(autouse=True)
def small(monkeypatch):
    monkeypatch.setitem(synthetic.DEFAULT_SIZES, "train", 192)
    monkeypatch.setitem(synthetic.DEFAULT_SIZES, "test", 64)
    monkeypatch.setitem(models.MODELS, "resnet8", lambda **kw: CifarResNet(depth=8, **kw))


def trained_run(tmp_path, kind, dtype):
    if kind == "mlp":
        cfg = {"model": {"name": "mlp", "hidden": [24, 16]},
               "data": {"name": "synthetic-mlp", "flatten": True, "limit_train": 96,
                        "batch_size": 32, "normalize": "train_stats"},
               "rule": {"name": "pfa", "expand_ratio": 2}}
    else:
        cfg = {"model": {"name": "resnet8"},
               "data": {"name": "synthetic-images", "limit_train": 32, "batch_size": 16,
                        "val_size": 16, "normalize": "train_stats"},
               "rule": "kp"}
    cfg.update(name=kind, dtype=dtype, epochs=1,
               optim={"lr": 0.05, "weight_decay": 1e-3}, metrics={"every_epoch": False})
    cfg = resolve_config(cfg)
    run = str(tmp_path / kind)
    data = build_data(cfg)
    Trainer(cfg, run, data, progress=False, log=lambda *a: None).fit()
    return cfg, run, data


def engine_logits(cfg, ckpt, x):
    model, _ = model_from_config(cfg)
    arrays, _ = load_checkpoint(ckpt)
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
    model.eval()
    return np.asarray(model.forward(x))


@pytest.mark.parametrize("kind, dtype", [("mlp", "float64"), ("mlp", "float32"),
                                         ("resnet8", "float64"), ("resnet8", "float32")])
def test_exported_state_dict_gives_the_same_logits_in_pytorch(tmp_path, kind, dtype):
    cfg, run, data = trained_run(tmp_path, kind, dtype)
    ckpt = resolve_checkpoint(run)
    assert ckpt.endswith("best.npz" if kind == "resnet8" else "latest.npz")
    out = str(tmp_path / "model.pt")
    info = export_checkpoint(run, out)
    assert info["checkpoint"] == ckpt and info["dtypes"][0] == dtype

    state = torch.load(out, weights_only=True)
    assert not any("feedback_" in k for k in state)
    arrays, _ = load_checkpoint(ckpt)
    assert any("feedback_" in k for k in arrays)            # the rule's state was dropped
    theirs = (TorchMLP([784, 24, 16, 10]) if kind == "mlp" else TorchResNet8A())
    theirs = theirs.to(TDTYPE[dtype])
    theirs.load_state_dict(state, strict=True)
    theirs.eval()
    for k, v in state.items():                             # exact copies, dtypes kept
        np.testing.assert_array_equal(v.numpy(), arrays["model/" + k])
        assert v.dtype == (torch.int64 if k.endswith("num_batches_tracked")
                           else TDTYPE[dtype])
    if kind == "resnet8":                                   # trained BN statistics
        assert int(state["bn1.num_batches_tracked"]) == 2
        assert not torch.allclose(state["bn1.running_var"], torch.ones(16, dtype=TDTYPE[dtype]))

    x, _ = next(iter(data.test))
    ours = engine_logits(cfg, ckpt, x)
    with torch.no_grad():
        ref = theirs(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    assert ours.shape == ref.shape == (x.shape[0], 10)
    err = rel_err(ours, ref)
    print(f"{kind} {dtype}: relative logit error {err:.3g}")
    assert err <= TOL[dtype], err


def test_cli_export_and_errors(tmp_path, capsys):
    _, run, _ = trained_run(tmp_path, "mlp", "float32")
    out = tmp_path / "sub" / "m.pt"
    assert main(["export", os.path.join(run, "latest.npz"), "--out", str(out)]) == 0
    msg = capsys.readouterr().out
    assert "wrote" in msg and "mlp" in msg and "6 tensors" in msg and "after epoch 1" in msg
    assert list(torch.load(str(out), weights_only=True)) == [
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc.weight", "fc.bias"]
    # --include-feedback keeps PFA's B and R
    assert main(["export", run, "--out", str(out), "--include-feedback"]) == 0
    keys = list(torch.load(str(out), weights_only=True))
    assert "fc2.feedback_B" in keys and "fc2.feedback_R" in keys
    capsys.readouterr()
    # a missing file; an npz that is not a checkpoint
    assert main(["export", str(tmp_path / "none.npz"), "--out", str(out)]) == 2
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    assert main(["export", str(tmp_path / "plain.npz"), "--out", str(out)]) != 0
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 2 and all(e.startswith("minigrad-pfa export: error:") for e in errs)


def test_export_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    _, run, _ = trained_run(tmp_path, "mlp", "float32")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(ExportError, match="pip install torch"):
        export_checkpoint(run, str(tmp_path / "m.pt"))


def test_resolve_checkpoint_follows_results_selection(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    for name in ("latest.npz", "best.npz"):
        (run / name).write_bytes(b"")
    assert resolve_checkpoint(str(run)).endswith("latest.npz")        # unfinished run
    (run / "results.json").write_text(json.dumps({"selected_on": "val"}))
    assert resolve_checkpoint(str(run)).endswith("best.npz")
    (run / "results.json").write_text(json.dumps({"selected_on": "final"}))
    assert resolve_checkpoint(str(run)).endswith("latest.npz")
    with pytest.raises(FileNotFoundError, match="no latest.npz"):
        resolve_checkpoint(str(tmp_path))
