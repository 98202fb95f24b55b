"""Peer checkpoints: real BioTorch 0.0.16 state dicts into engine models and back, and the
PFA authors' fork naming on a small torch mock (minigrad_pfa.peer_checkpoints)."""
from __future__ import annotations

import contextlib
import io
from collections import OrderedDict

import numpy as np
import pytest

from minigrad_pfa.nn.layers import Conv2d, Flatten, Linear, ReLU, Sequential
from minigrad_pfa.nn.models import finalize, init_model, weight_layers
from minigrad_pfa.nn.module import BackwardContext
from minigrad_pfa.peer_checkpoints import (PeerCheckpointError, export_peer_state,
                                           import_peer_state, load_peer_file, save_peer_file)
from minigrad_pfa.rules import attach_rules

torch = pytest.importorskip("torch", reason="peer checkpoints are PyTorch files: "
                                            "pip install torch==2.13.0")
nn = torch.nn
#: BioTorch's DFA layers use a deprecated non-full backward hook (torch warns; documented)
pytestmark = pytest.mark.filterwarnings("ignore:Using a non-full backward hook:FutureWarning")

MODES = {"fa": "fa", "dfa": "dfa", "usf": "usf", "brsf": "brsf", "frsf": "frsf",
         "backpropagation": "bp"}


def engine_net(rule, dtype="float32", seed=0, **opts):
    m = Sequential(OrderedDict(conv1=Conv2d(3, 4, 3, padding=1, dtype=dtype), relu=ReLU(),
                               flatten=Flatten(), fc=Linear(4 * 5 * 5, 10, dtype=dtype)))
    m = init_model(finalize(m), seed)
    attach_rules(m, dict(name=rule, **opts), seed)
    return m


def torch_net():
    return nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(),
                                     flatten=nn.Flatten(), fc=nn.Linear(4 * 5 * 5, 10)))


def biotorch_model(mode, trained=True, seed=0):
    """A real BioTorch model (BioModule), after one SGD step when ``trained``."""
    biomodule = pytest.importorskip(
        "biotorch.module.biomodule",
        reason="BioTorch is installed with: pip install --no-deps biotorch==0.0.16")
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):     # BioModule prints a summary
        model = biomodule.BioModule(torch_net(), mode=mode,
                                    output_dim=10 if mode == "dfa" else None)
    if trained:
        x, y = torch.randn(6, 3, 5, 5), torch.randint(0, 10, (6,))
        loss_fn = nn.CrossEntropyLoss()
        out = model(x, y, loss_fn) if mode == "dfa" else model(x)
        loss_fn(out, y).backward()
        torch.optim.SGD(model.parameters(), lr=0.5).step()
    return model


def sd_numpy(model):
    return OrderedDict((k, v.detach().numpy().copy()) for k, v in model.state_dict().items())


@pytest.mark.parametrize("mode", list(MODES))
def test_biotorch_state_dict_round_trip_bit_exact(mode, tmp_path):
    bt = biotorch_model(mode)
    path = str(tmp_path / "bt.pt")
    torch.save(bt.state_dict(), path)
    original = sd_numpy(bt)
    eng = engine_net(MODES[mode])
    report = import_peer_state(eng, load_peer_file(path), "biotorch")
    assert report["prefix"] == "module."
    back = export_peer_state(eng, "biotorch", prefix="module.")
    assert list(back) == list(original)
    for k in original:
        assert back[k].dtype == original[k].dtype and np.array_equal(back[k], original[k]), k
    save_peer_file(back, str(tmp_path / "back.pt"))
    again = torch.load(str(tmp_path / "back.pt"), weights_only=True)
    for k, v in bt.state_dict().items():
        assert torch.equal(again[k], v), k


@pytest.mark.parametrize("mode", ["fa", "frsf", "usf", "backpropagation"])
def test_imported_model_computes_what_biotorch_computes(mode):
    """Same logits, and the same input error at every layer (conv1's too, made explicit)."""
    bt = biotorch_model(mode)
    eng = engine_net(MODES[mode])
    import_peer_state(eng, bt.state_dict(), "biotorch")
    weight_layers(eng)["conv1"].needs_input_error = True
    x = torch.randn(3, 3, 5, 5, requires_grad=True)
    g = torch.randn(3, 10)
    bt.zero_grad()                      # drop the training step's gradients
    y = bt(x)
    y.backward(g)
    y_eng = eng.forward(x.detach().numpy())
    dx = eng.backward(g.numpy(), BackwardContext())
    np.testing.assert_allclose(y_eng, y.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, x.grad.numpy(), rtol=1e-4, atol=1e-6)
    gw = bt.module.fc.weight.grad.numpy()
    np.testing.assert_allclose(weight_layers(eng)["fc"].weight.grad, gw, rtol=1e-5, atol=1e-6)


def test_engine_model_exports_and_reimports():
    eng = engine_net("frsf")
    state = export_peer_state(eng, "biotorch")
    assert (state["fc.weight_backward"] >= 0).all()                 # BioTorch stores |M0|
    np.testing.assert_array_equal(state["fc.bias_backward"], 0)
    other = engine_net("frsf", seed=1)
    import_peer_state(other, state, "biotorch")
    for name in ("conv1", "fc"):
        a, b = weight_layers(eng)[name], weight_layers(other)[name]
        np.testing.assert_array_equal(a.rule.path_matrix(a), b.rule.path_matrix(b))


def test_usf_cache_is_refreshed_after_the_engine_changes_w():
    bt = biotorch_model("usf")
    eng = engine_net("usf")
    import_peer_state(eng, bt.state_dict(), "biotorch")
    fc = weight_layers(eng)["fc"]
    fc.weight.data *= -1.0
    out = export_peer_state(eng, "biotorch", prefix="module.")
    np.testing.assert_array_equal(out["module.fc.weight_backward"], fc.rule.path_matrix(fc))


def test_every_problem_in_one_error():
    bt = biotorch_model("fa", trained=False)
    state = sd_numpy(bt)
    del state["module.fc.weight_backward"]
    state["module.fc.extra"] = np.zeros(3, np.float32)
    state["module.conv1.weight"] = np.zeros((4, 3, 5, 5), np.float32)
    state["module.conv1.bias"] = state["module.conv1.bias"].astype(np.float64)
    eng = engine_net("fa")
    before = export_peer_state(eng, "biotorch")
    with pytest.raises(PeerCheckpointError) as err:
        import_peer_state(eng, state, "biotorch")
    msg = str(err.value)
    assert "\n" not in msg
    for text in ("missing ['module.fc.weight_backward']", "unexpected ['module.fc.extra']",
                 "module.conv1.weight: shape (4, 3, 5, 5), the model needs (4, 3, 3, 3)",
                 "module.conv1.bias: dtype float64"):
        assert text in msg, msg
    after = export_peer_state(eng, "biotorch")
    assert all(np.array_equal(before[k], after[k]) for k in before)   # model unchanged


@pytest.mark.parametrize("rule, opts, needle", [
    ("kp", {}, "rule 'kp' has no biotorch counterpart"),
    ("pfa", {"expand_ratio": 2}, "use format 'biotorch-fork'"),
    ("fa", {"feedback_density": 0.5}, "sparse feedback"),
])
def test_rules_biotorch_cannot_express(rule, opts, needle):
    with pytest.raises(PeerCheckpointError, match=needle):
        export_peer_state(engine_net(rule, **opts), "biotorch")


def test_wrong_values_are_named():
    bt = biotorch_model("frsf", trained=False)
    state = sd_numpy(bt)
    state["module.fc.weight_backward"][0, 0] = -1.0
    with pytest.raises(PeerCheckpointError, match="negative"):
        import_peer_state(engine_net("frsf"), state, "biotorch")
    state = sd_numpy(biotorch_model("usf", trained=False))
    state["module.fc.weight_backward"] *= 2.0
    with pytest.raises(PeerCheckpointError, match="init='kaiming'"):
        import_peer_state(engine_net("usf"), state, "biotorch")


def test_missing_torch_names_the_install(monkeypatch, tmp_path):
    import builtins
    real = builtins.__import__

    def no_torch(name, *a, **k):
        if name == "torch":
            raise ImportError("no torch")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_torch)
    path = tmp_path / "x.pt"
    path.write_bytes(b"not read")
    with pytest.raises(PeerCheckpointError, match=r"pip install torch==2\.13\.0"):
        load_peer_file(str(path))
    with pytest.raises(PeerCheckpointError, match=r"pip install torch==2\.13\.0"):
        save_peer_file({}, str(tmp_path / "y.pt"))


def test_a_file_that_is_not_a_state_dict_is_named(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(PeerCheckpointError, match="junk.pt.*is not a PyTorch state dict"):
        load_peer_file(str(path))
    with pytest.raises(PeerCheckpointError, match="is a directory"):
        load_peer_file(str(tmp_path))


# ------------------------------------------------------------------ the fork's naming
class ForkPFALinear(nn.Linear):
    """A mock of a fork layer: ``weight_backward_B`` (out, mid) fixed, ``weight_backward_R``
    (mid, in) learned; delta_in = (delta @ B) @ R."""

    def __init__(self, i, o, r):
        super().__init__(i, o)
        self.weight_backward_B = nn.Parameter(torch.randn(o, r * o) / (r * o) ** 0.5,
                                              requires_grad=False)
        self.weight_backward_R = nn.Parameter(torch.randn(r * o, i) / i ** 0.5)


class ForkPFAConv(nn.Conv2d):
    def __init__(self, i, o, k, r, **kw):
        super().__init__(i, o, k, **kw)
        self.weight_backward_B = nn.Parameter(torch.randn(o, r * o, 1, 1),
                                              requires_grad=False)
        self.weight_backward_R = nn.Parameter(torch.randn(r * o, i, k, k))


def test_fork_naming_round_trip_and_shapes():
    torch.manual_seed(1)
    fork = nn.Sequential(OrderedDict(conv1=ForkPFAConv(3, 4, 3, 2, padding=1), relu=nn.ReLU(),
                                     flatten=nn.Flatten(), fc=ForkPFALinear(100, 10, 2)))
    original = sd_numpy(fork)
    eng = engine_net("pfa", expand_ratio=2)
    import_peer_state(eng, fork.state_dict(), "biotorch-fork")
    conv = weight_layers(eng)["conv1"]
    np.testing.assert_array_equal(conv.feedback_B, original["conv1.weight_backward_B"][:, :, 0, 0])
    np.testing.assert_array_equal(conv.feedback_R.data, original["conv1.weight_backward_R"])
    back = export_peer_state(eng, "biotorch-fork")
    assert list(back) == list(original)
    assert all(np.array_equal(back[k], original[k]) for k in original)
    with pytest.raises(PeerCheckpointError, match="weight_backward_R: shape"):
        import_peer_state(engine_net("pfa", expand_ratio=3), fork.state_dict(), "biotorch-fork")


# ------------------------------------------------------------------ command line
def test_cli_export_then_import_round_trip(tmp_path, monkeypatch, capsys):
    """A trained engine run -> BioTorch names (.pt) -> a real BioTorch model loads it
    strictly -> back into an engine checkpoint with the same arrays."""
    from minigrad_pfa.checkpoint import load_checkpoint
    from minigrad_pfa.cli import main
    from minigrad_pfa.config import resolve_config
    from minigrad_pfa.data import synthetic
    from minigrad_pfa.experiment_data import build_data
    from minigrad_pfa.train import Trainer
    monkeypatch.setitem(synthetic.DEFAULT_SIZES, "train", 96)
    monkeypatch.setitem(synthetic.DEFAULT_SIZES, "test", 32)
    cfg = resolve_config({
        "name": "fa", "dtype": "float32", "epochs": 1, "rule": "fa",
        "model": {"name": "mlp", "hidden": [24, 16]},
        "data": {"name": "synthetic-mlp", "flatten": True, "limit_train": 64,
                 "batch_size": 32, "normalize": "train_stats"},
        "optim": {"lr": 0.05, "weight_decay": 1e-3}, "metrics": {"every_epoch": False}})
    run = str(tmp_path / "run")
    Trainer(cfg, run, build_data(cfg), progress=False, log=lambda *a: None).fit()
    pt, back = str(tmp_path / "fa.pt"), str(tmp_path / "back.npz")
    assert main(["export", run, "--out", pt, "--format", "biotorch", "--prefix", "module."]) == 0
    state = torch.load(pt, weights_only=True)
    assert "module.fc1.weight_backward" in state and "module.fc.bias_backward" in state
    biomodule = pytest.importorskip("biotorch.module.biomodule")
    sizes = [state["module.fc1.weight"].shape[1], 24, 16, 10]
    net = nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(sizes[0], 24), relu1=nn.ReLU(),
        fc2=nn.Linear(24, 16), relu2=nn.ReLU(), fc=nn.Linear(16, sizes[3])))
    with contextlib.redirect_stdout(io.StringIO()):
        bt = biomodule.BioModule(net, mode="fa")
    bt.load_state_dict(state, strict=True)
    assert main(["import", pt, "--like", run, "--out", back]) == 0
    out = capsys.readouterr().out
    assert "prefix 'module.'" in out and "fc2" in out and "angle" in out
    a, _ = load_checkpoint(back)
    b, _ = load_checkpoint(str(tmp_path / "run" / "latest.npz"))
    for k, v in a.items():
        np.testing.assert_array_equal(v, b[k])
    with pytest.raises(SystemExit):
        main(["import", pt, "--like", run, "--out", back, "--format", "nope"])
    capsys.readouterr()
    assert main(["export", run, "--out", pt, "--prefix", "module."]) == 2   # torch format
    assert "--prefix applies to --format biotorch" in capsys.readouterr().err
    state["module.fc.weight_backward"] = state["module.fc.weight_backward"][:, :3]
    torch.save(state, pt)
    assert main(["import", pt, "--like", run, "--out", back]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "module.fc.weight_backward: shape" in err
