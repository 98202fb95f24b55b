"""Model state: checkpoints of whole models, state-dict names, load errors, devices.

* a model (with a learned-feedback rule, trained a few steps) saved with
  :mod:`minigrad_pfa.checkpoint` and loaded into a *fresh* model built from a different
  seed reproduces its outputs bitwise, and training resumes bitwise;
* an interrupted save leaves the previous checkpoint intact, a truncated file is
  rejected with a clear error;
* ``state_dict(include_feedback=False)`` has exactly the keys of the PyTorch model of the
  same architecture (ResNet-18: torchvision's list in ``tests/data``; ResNet-20 and the MLP:
  torch.nn twins), while ``include_feedback=True`` adds exactly the rules' ``feedback_*``;
* ``load_state_dict`` names missing / unexpected keys and shape mismatches, and a failed
  load changes nothing;
* ``model.to("cpu")`` keeps every value; an unusable device is a clear error.
"""
import os
from collections import OrderedDict

import numpy as np
import pytest

from minigrad_pfa import checkpoint as ckpt
from minigrad_pfa.backend import DeviceError, cuda_available
from minigrad_pfa.nn.models import build_model, finalize, init_model, weight_layers
from minigrad_pfa.nn.resnet import CifarResNet
from minigrad_pfa.optim import build_optimizer
from minigrad_pfa.rules import attach_rules
from minigrad_pfa.train import train_step

DATA = os.path.join(os.path.dirname(__file__), "data")


def resnet8(seed, rule="pfa", dtype="float32"):
    model = init_model(finalize(CifarResNet(depth=8, dtype=dtype)), seed)
    attach_rules(model, rule, seed=seed, input_shape=(3, 16, 16))
    opt = build_optimizer("sgd", list(model.named_parameters(trainable_only=True)), lr=0.05,
                          momentum=0.9, weight_decay=5e-4)
    return model, opt


def data(step, n=4):
    rng = np.random.default_rng(100 + step)
    return rng.standard_normal((n, 3, 16, 16)).astype(np.float32), rng.integers(0, 10, n)


def train(model, opt, steps, start=0):
    layers = list(weight_layers(model).values())
    for s in range(start, start + steps):
        train_step(model, layers, opt, *data(s))


def states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(
        sa[k].dtype == sb[k].dtype and np.array_equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("rule", ["pfa", "kp", "brsf"])
def test_checkpoint_round_trip_into_a_fresh_model_is_bitwise(tmp_path, rule):
    model, opt = resnet8(seed=0, rule=rule)
    train(model, opt, 2)
    path = str(tmp_path / "model.npz")
    ckpt.save_checkpoint(path, ckpt.pack_state(model, opt), {"step": 2})

    fresh, fresh_opt = resnet8(seed=7, rule=rule)
    assert not states_equal(fresh, model)  # a different seed: loading must do the work
    arrays, meta = ckpt.load_checkpoint(path)
    assert meta == {"step": 2}
    ckpt.unpack_state(arrays, fresh, fresh_opt)
    assert states_equal(fresh, model)

    x, _ = data(99)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        getattr(fresh, mode)()
        for m in (model, fresh):  # probe passes must not move the running statistics
            for _, sub in m.named_modules():
                if hasattr(sub, "update_running_stats"):
                    sub.update_running_stats = False
        a, b = model.forward(x), fresh.forward(x)
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b), mode
        for m in (model, fresh):
            for _, sub in m.named_modules():
                if hasattr(sub, "update_running_stats"):
                    sub.update_running_stats = True
    model.train()
    fresh.train()
    # resuming: both continue identically (optimizer state and feedback state restored)
    train(model, opt, 2, start=2)
    train(fresh, fresh_opt, 2, start=2)
    assert states_equal(fresh, model)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = resnet8(seed=0)
    train(model, opt, 1)
    path = str(tmp_path / "latest.npz")
    ckpt.save_checkpoint(path, ckpt.pack_state(model, opt), {"epoch": 1})
    good = {k: np.array(v) for k, v in model.state_dict().items()}
    train(model, opt, 1, start=1)

    real_savez = np.savez

    def dying_savez(f, *args, **kwargs):  # writes part of the file, then the disk is full
        f.write(b"PK\x03\x04 partial zip member")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.np, "savez", dying_savez)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_checkpoint(path, ckpt.pack_state(model, opt), {"epoch": 2})
    monkeypatch.setattr(ckpt.np, "savez", real_savez)
    assert os.listdir(tmp_path) == ["latest.npz"]  # the temporary file was removed

    arrays, meta = ckpt.load_checkpoint(path)
    assert meta == {"epoch": 1}
    fresh, fresh_opt = resnet8(seed=3)
    ckpt.unpack_state(arrays, fresh, fresh_opt)
    for k, v in fresh.state_dict().items():
        assert np.array_equal(v, good[k]), k


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.99])
def test_truncated_checkpoint_is_rejected(tmp_path, fraction):
    model, opt = resnet8(seed=0)
    path = str(tmp_path / "full.npz")
    ckpt.save_checkpoint(path, ckpt.pack_state(model, opt))
    raw = open(path, "rb").read()
    cut = str(tmp_path / "cut.npz")
    with open(cut, "wb") as fh:
        fh.write(raw[:int(len(raw) * fraction)])
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load_checkpoint(cut)
    msg = str(info.value)
    assert "cut.npz" in msg and ("truncated" in msg or "corrupt" in msg)
    ckpt.load_checkpoint(path)  # the original is fine


# ------------------------------------------------------------------------ state-dict names
def read_torchvision_list(depth):
    out = OrderedDict()
    with open(os.path.join(DATA, f"torchvision_resnet{depth}_state_dict.txt")) as fh:
        for line in fh:
            name, shape = line.split()
            out[name] = tuple(int(s) for s in shape.strip("()").split(",") if s)
    return out


def test_resnet18_without_feedback_has_torchvision_keys():
    model = build_model("resnet18", seed=0)
    attach_rules(model, "pfa", seed=0)
    with_fb = model.state_dict()
    without = model.state_dict(include_feedback=False)
    expected = read_torchvision_list(18)
    assert list(without) == list(expected)
    assert {k: tuple(v.shape) for k, v in without.items()} == dict(expected)
    extra = [k for k in with_fb if k not in without]
    assert extra and all(k.rsplit(".", 1)[1].startswith("feedback_") for k in extra)
    assert {k.rsplit(".", 1)[0] for k in extra} == set(weight_layers(model))


def test_resnet20_and_mlp_without_feedback_have_torch_keys():
    torch = pytest.importorskip("torch")
    import test_models_torch as tm
    nn = torch.nn
    model = build_model("resnet20", seed=0)
    attach_rules(model, "kp", seed=0)
    assert any("feedback_" in k for k in model.state_dict())
    theirs = tm.TorchCifarResNet(20, 10, "A")
    got = {k: tuple(v.shape) for k, v in model.state_dict(include_feedback=False).items()}
    assert list(got) == list(theirs.state_dict())
    assert got == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}

    mlp = build_model("mlp", seed=0, in_features=20, hidden=(16, 12))
    attach_rules(mlp, "fa", seed=0)
    theirs = nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()), ("fc1", nn.Linear(20, 16)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(16, 12)), ("relu2", nn.ReLU()), ("fc", nn.Linear(12, 10))]))
    got = {k: tuple(v.shape) for k, v in mlp.state_dict(include_feedback=False).items()}
    assert got == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert list(got) == list(theirs.state_dict())


# ------------------------------------------------------------------------ load errors
def small():
    return build_model("mlp", seed=0, in_features=6, hidden=(5,), num_classes=3)


def test_load_state_dict_names_missing_and_unexpected_keys():
    model = small()
    state = OrderedDict((k, np.array(v)) for k, v in model.state_dict().items())
    del state["fc.bias"]
    state["fc.gamma"] = np.zeros(3, np.float32)
    with pytest.raises(KeyError) as info:
        model.load_state_dict(state)
    msg = str(info.value)
    assert "missing=['fc.bias']" in msg and "unexpected=['fc.gamma']" in msg
    # strict=False loads what matches and ignores the rest
    state["fc.weight"] = np.full((3, 5), 0.5, np.float32)
    model.load_state_dict(state, strict=False)
    assert np.all(model.fc.weight.data == 0.5) and model.fc.weight.data.dtype == np.float32


def test_load_state_dict_names_shape_mismatches_and_changes_nothing():
    model = small()
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    state = OrderedDict((k, np.zeros_like(v)) for k, v in before.items())
    state["fc.weight"] = np.zeros((3, 4), np.float32)        # the last layer's: checked first
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    msg = str(info.value)
    assert "fc.weight" in msg and "(3, 4)" in msg and "(3, 5)" in msg
    assert "fc1.weight" not in msg
    for k, v in model.state_dict().items():  # nothing was half-loaded
        assert np.array_equal(v, before[k]), k


def test_load_state_dict_casts_to_the_models_dtype():
    model = small()
    state = {k: np.asarray(v, dtype=np.float64) if v.dtype == np.float32 else v
             for k, v in model.state_dict().items()}
    state["fc.bias"] = np.array([1.0, 2.0, 3.0])
    model.load_state_dict(state)
    assert model.fc.bias.data.dtype == np.float32
    assert np.array_equal(model.fc.bias.data, [1.0, 2.0, 3.0])
    state["fc.bias"][0] = 9.0  # a copy, not a view of the caller's array
    assert model.fc.bias.data[0] == 1.0


# ------------------------------------------------------------------------ devices
def test_to_cpu_keeps_values():
    model, opt = resnet8(seed=0)
    train(model, opt, 1)
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    grads = {k: np.array(p.grad) for k, p in model.named_parameters()}
    assert model.to("cpu") is model
    assert model.device == "cpu"
    for k, v in model.state_dict().items():
        assert isinstance(v, np.ndarray) and v.dtype == before[k].dtype
        assert np.array_equal(v, before[k]), k
    for k, p in model.named_parameters():
        assert np.array_equal(p.grad, grads[k]), k
    train(model, opt, 1, start=1)  # and it still trains (caches were cleared)


def test_unusable_device_is_a_clear_error():
    model = small()
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        model.to("gpu")
    if not cuda_available():
        with pytest.raises(DeviceError, match="--device cpu"):
            model.to("cuda")
        assert model.device == "cpu"
