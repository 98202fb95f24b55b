"""Rule selection and validation, per-layer maps, frozen layers, the shallow baseline,
feedback streams, checkpoints of feedback state, and the optimizer guard."""
import warnings

import numpy as np
import pytest

from _rules_common import ALL_SPECS, CNN_INPUT, attached, batch, cnn, mlp, train_step
from minigrad_pfa.nn.models import build_model, finalize, init_model, weight_layers
from minigrad_pfa.nn.resnet import CifarResNet
from minigrad_pfa.optim import SGD, Adam, AdamW
from minigrad_pfa.rules import (BP, FA, KP, PFA, RULES, attach_rules, check_optimizer,
                                make_rule, parse_rule)


# ----------------------------------------------------------------- make_rule validation
def test_rule_names():
    assert list(RULES) == ["bp", "fa", "dfa", "usf", "brsf", "frsf", "kp", "wm", "pfa"]
    for name in RULES:
        assert make_rule(name).name == name


@pytest.mark.parametrize("name,options,match", [
    ("backprop", {}, "unknown learning rule 'backprop'.*'pfa'"),
    ("pfa", {"expand": 3}, r"does not take option\(s\) \['expand'\].*expand_ratio"),
    ("bp", {"feedback_density": 0.5}, "valid options: none"),
    ("kp", {"feedback_density": 0.5}, "does not take"),
    ("pfa", {"expand_ratio": 0}, "integer >= 1"),
    ("pfa", {"expand_ratio": 2.5}, "integer >= 1"),
    ("pfa", {"expand_ratio": True}, "integer >= 1"),
    ("pfa", {"orthogonal": True, "feedback_density": 0.5}, "orthogonal.*density"),
    ("pfa", {"orthogonal": True, "expand_ratio": 4}, "mid = out"),
    ("pfa", {"orthogonal": True, "identity": True}, "exclude each other"),
    ("pfa", {"identity": True, "feedback_density": 0.5}, "identity"),
    ("pfa", {"order": "quick"}, "order.*auto"),
    ("pfa", {"orthogonal": "yes"}, "true or false"),
    ("fa", {"feedback_density": 0.0}, r"\(0, 1\]"),
    ("dfa", {"feedback_density": 1.5}, r"\(0, 1\]"),
    ("dfa", {"conv": "full"}, "'conv', 'dense'"),
    ("usf", {"norm": "l2"}, "norm"),
    ("wm", {"mirror_lr": 0.0}, "mirror_lr"),
    ("wm", {"mirror_lr": 2.0, "mirror_decay": 1.0}, "< 1"),
    ("wm", {"mirror_steps": -1}, "mirror_steps"),
])
def test_make_rule_rejects(name, options, match):
    with pytest.raises(ValueError, match=match):
        make_rule(name, **options)


def test_make_rule_options_and_describe():
    r = make_rule("pfa")
    assert isinstance(r, PFA) and r.ratio == 10 and r.describe() == "pfa"
    assert make_rule("pfa", orthogonal=True).ratio == 1
    assert make_rule("pfa", expand_ratio=5, feedback_density=0.3).describe() == \
        "pfa(expand_ratio=5, feedback_density=0.3)"
    assert make_rule("usf", norm="none").options["norm"] is None
    assert parse_rule("pfa:expand_ratio=5, orthogonal=true,order=fast") == \
        {"name": "pfa", "expand_ratio": 5, "orthogonal": True, "order": "fast"}
    assert parse_rule("dfa:conv=dense,feedback_density=0.1") == \
        {"name": "dfa", "conv": "dense", "feedback_density": 0.1}
    with pytest.raises(ValueError, match="key=value"):
        parse_rule("pfa:orthogonal")


# ----------------------------------------------------------------- streams & state
def forward_state(model):
    return {k: v.copy() for k, v in model.state_dict(include_feedback=False).items()}


def test_same_seed_same_forward_init_under_every_rule():
    ref = forward_state(build_model("resnet20", seed=4))
    for key, spec in [("bp", "bp")] + list(ALL_SPECS.items()):
        model = build_model("resnet20", seed=4)
        attach_rules(model, spec, 4, input_shape=(3, 8, 8))
        st = forward_state(model)
        assert list(st) == list(ref)
        assert all(np.array_equal(st[k], ref[k]) for k in ref), spec
        full = model.state_dict()
        if key not in ("bp", "usf", "usf_sn"):  # uSF's feedback is a function of W alone
            assert any("feedback_" in k for k in full)   # feedback state is model state


def test_feedback_streams_are_per_layer():
    a = attached(mlp, "fa", rule_seed=5)
    b = attached(mlp, {"name": "fa", "layers": {"fc2": "bp"}}, rule_seed=5)
    c = attached(mlp, "fa", rule_seed=6)
    la, lb, lc = weight_layers(a), weight_layers(b), weight_layers(c)
    for name in ("fc1", "fc"):  # other layers' rules do not shift a layer's draws
        assert np.array_equal(la[name].feedback_B, lb[name].feedback_B)
        assert not np.array_equal(la[name].feedback_B, lc[name].feedback_B)
    assert "feedback_B" not in lb["fc2"].state_dict()
    # layer i draws from default_rng([seed, 1, i]): B is its first Xavier draw
    L = la["fc2"]
    bound = np.sqrt(6.0 / (L.fan_in + L.fan_out))
    want = np.random.default_rng([5, 1, 1]).uniform(-bound, bound, L.weight_shape)
    assert np.array_equal(L.feedback_B, want)


@pytest.mark.parametrize("spec", ["kp", "wm", "brsf", {"name": "pfa", "expand_ratio": 2,
                                                       "feedback_density": 0.5}])
def test_checkpoint_restores_feedback_and_resumes_bitwise(spec):
    def opt_for(m):
        return SGD(list(m.named_parameters(trainable_only=True)), lr=0.1, momentum=0.9,
                   weight_decay=0.01)
    data = [batch(CNN_INPUT, 3, n=6, seed=s) for s in range(6)]
    ref = attached(cnn, spec)
    opt = opt_for(ref)
    for x, y in data[:3]:
        train_step(ref, opt, x, y)
    state = {k: v.copy() for k, v in ref.state_dict().items()}
    ostate = {k: np.array(v, copy=True) for k, v in opt.state_dict().items()}
    tail_ref = [train_step(ref, opt, x, y) for x, y in data[3:]]
    # a fresh model attached with another seed, then restored: same continuation
    new = attached(cnn, spec, seed=9, rule_seed=9)
    new.load_state_dict(state)
    opt2 = opt_for(new)
    opt2.load_state_dict(ostate)
    tail = [train_step(new, opt2, x, y) for x, y in data[3:]]
    assert tail == tail_ref
    for k, v in ref.state_dict().items():
        assert np.array_equal(new.state_dict()[k], v), k


# ----------------------------------------------------------------- per-layer maps
def test_per_layer_map_and_frozen():
    model = attached(cnn, {"name": "pfa", "expand_ratio": 2,
                           "layers": {"fc": "bp", "conv1": "frozen",
                                      "conv[23]": {"name": "fa", "feedback_density": 0.5}}})
    layers = weight_layers(model)
    assert isinstance(layers["fc"].rule, BP) and isinstance(layers["conv1"].rule, PFA)
    assert isinstance(layers["conv2"].rule, FA) and layers["conv3"].rule.describe() == \
        "fa(feedback_density=0.5)"
    assert not layers["conv1"].weight.requires_grad and not layers["conv1"].bias.requires_grad
    assert layers["conv2"].weight.requires_grad
    opt = SGD(list(model.named_parameters(trainable_only=True)), lr=0.1)
    w1 = layers["conv1"].weight.data.copy()
    w2 = layers["conv2"].weight.data.copy()
    train_step(model, opt, *batch(CNN_INPUT, 3))
    assert np.array_equal(layers["conv1"].weight.data, w1)
    assert not np.array_equal(layers["conv2"].weight.data, w2)


def test_first_matching_pattern_wins_and_bad_patterns_fail():
    model = attached(mlp, {"name": "fa", "layers": {"fc1": "kp", "fc*": "bp"}})
    layers = weight_layers(model)
    assert isinstance(layers["fc1"].rule, KP) and isinstance(layers["fc2"].rule, BP)
    with pytest.raises(ValueError, match=r"\['conv9'\] match no weight layer.*fc1"):
        attach_rules(mlp(), {"name": "fa", "layers": {"conv9": "bp"}}, 0)
    with pytest.raises(ValueError, match="does not take option"):
        attach_rules(mlp(), {"name": "fa", "layers": {"fc": {"name": "bp", "x": 1}}}, 0)
    with pytest.raises(ValueError, match="has no 'name'"):
        attach_rules(mlp(), {"layers": {"fc": "bp"}}, 0)
    with pytest.raises(ValueError, match="dense.*input_shape"):
        attach_rules(cnn(), {"name": "dfa", "conv": "dense"}, 0)


def test_shallow_baseline_trains_only_the_last_layer():
    model = init_model(finalize(CifarResNet(depth=8, num_classes=3)), 0)
    summary = attach_rules(model, {"name": "bp", "shallow": True}, 0)
    names = list(weight_layers(model))
    assert summary[-1][0] == "fc" and "shallow" in summary[-1][1]
    trainable = [k for k, _ in model.named_parameters(trainable_only=True)]
    assert trainable == ["fc.weight", "fc.bias"]
    fc = weight_layers(model)["fc"]
    assert fc.needs_input_error is False
    before = {k: v.copy() for k, v in model.state_dict().items()}
    opt = SGD(list(model.named_parameters(trainable_only=True)), lr=0.5)
    x, y = batch((3, 8, 8), 3, n=4)
    train_step(model, opt, x.astype(np.float32), y)
    after = model.state_dict()
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    # only the last layer and BN running statistics (forward-pass bookkeeping) change
    assert {"fc.weight", "fc.bias"} <= changed
    assert all(k.startswith("fc.") or "running" in k or "num_batches" in k for k in changed)
    assert all(weight_layers(model)[n].weight.grad is None for n in names[:-1])


# ----------------------------------------------------------------- optimizer guard
def opt(kind, model, **kw):
    params = list(model.named_parameters(trainable_only=True))
    return {"sgd": SGD, "adam": Adam, "adamw": AdamW}[kind](params, lr=0.01, **kw)


@pytest.mark.parametrize("spec,kind,wd,ok", [
    ("pfa", "sgd", 0.1, True), ("pfa", "adam", 0.1, False), ("pfa", "adamw", 0.1, False),
    ("kp", "adamw", 0.1, True), ("kp", "adam", 0.1, False), ("kp", "adam", 0.0, True),
    ({"name": "pfa", "identity": True}, "adamw", 0.1, True),
    ({"name": "pfa", "orthogonal": True}, "adamw", 0.1, False),
    ("fa", "adam", 0.1, True), ("bp", "adam", 0.1, True), ("wm", "adamw", 0.1, True),
    ({"name": "bp", "layers": {"fc2": "pfa"}}, "adam", 0.1, False),
])
def test_guard(spec, kind, wd, ok):
    model = attached(mlp, spec)
    o = opt(kind, model, weight_decay=wd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the weight-decay-0 warning is tested below
        if ok:
            assert check_optimizer(model, o) == []
            return
        with pytest.raises(ValueError, match="allow_adaptive_optimizer: true"):
            check_optimizer(model, o)
    with pytest.warns(UserWarning, match="does not commute with B.T"):
        broken = check_optimizer(model, o, allow_adaptive=True)
    assert broken


def test_guard_warns_without_weight_decay():
    model = attached(mlp, "pfa")
    with pytest.warns(UserWarning, match="weight_decay is 0"):
        check_optimizer(model, opt("sgd", model))


# ----------------------------------------------------------------- devices
@pytest.mark.parametrize("key", ["fa", "dfa_dense", "brsf", "frsf_init", "kp", "wm", "pfa",
                                 "pfa_sparse"])
def test_feedback_moves_with_the_model(xp, key):
    """Feedback drawn on the host, moved by Module.to: a GPU run matches the CPU run
    (on NumPy-only machines this runs the same code path on the CPU)."""
    from minigrad_pfa.backend import to_device, to_numpy
    device = "cpu" if xp is np else "cuda"
    spec = ALL_SPECS[key]
    ref = attached(cnn, spec)
    dev = attached(cnn, spec).to(device)
    for name, arr in dev.state_dict().items():
        assert (xp is np) or not isinstance(arr, np.ndarray), name
    data = [batch(CNN_INPUT, 3, n=6, seed=s) for s in range(3)]
    o_ref = SGD(list(ref.named_parameters(trainable_only=True)), lr=0.1, weight_decay=0.01)
    o_dev = SGD(list(dev.named_parameters(trainable_only=True)), lr=0.1, weight_decay=0.01)
    for x, y in data:
        a = train_step(ref, o_ref, x, y)
        b = train_step(dev, o_dev, to_device(x, device), to_device(y, device))
        assert abs(a - b) <= 1e-10 * abs(a)
    for k, v in ref.state_dict().items():
        got = to_numpy(dev.state_dict()[k])
        assert got.dtype == v.dtype and np.allclose(got, v, rtol=1e-9, atol=1e-12), k
