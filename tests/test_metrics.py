"""Alignment metrics: angle / norm ratio, weight (path) alignment, mechanism diagnostics and
their decay laws, and the probe's gradient / error alignment against a BP twin.

Expected values come from closed forms (30 deg for sign-concordant feedback, the fan ratio
of PFA's initial path norm, 17.5 deg at r = 10), from independent NumPy computations on
the layers' arrays, from PyTorch autograd (the BP twin's gradients) and from torch.optim
(the decay laws).
"""
import json
import math
from collections import OrderedDict

import numpy as np
import pytest

from minigrad_pfa.backend import to_numpy
from minigrad_pfa.metrics import (MechanismTracker, MismatchPredictor, angle,
                                  collect_metrics, mechanism_diagnostics, norm_ratio,
                                  probe_alignment, probe_records, weight_alignment)
from minigrad_pfa.nn.layers import (BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU,
                                    Sequential, xavier_uniform)
from minigrad_pfa.nn.models import build_model, finalize, init_model, weight_layers
from minigrad_pfa.nn.module import BackwardContext, Parameter
from minigrad_pfa.functional.loss import softmax_cross_entropy
from minigrad_pfa.optim import build_optimizer
from minigrad_pfa.rules import attach_rules
from minigrad_pfa.rules.base import Rule

from _util import rel_err


def ref_angle(a, c):
    """Independent reference: float64 NumPy, in logical (C) order."""
    a = np.asarray(to_numpy(a), dtype=np.float64).ravel()
    c = np.asarray(to_numpy(c), dtype=np.float64).ravel()
    cos = np.dot(a, c) / (np.linalg.norm(a) * np.linalg.norm(c))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def ref_ratio(a, c):
    return float(np.linalg.norm(np.asarray(to_numpy(a), np.float64)) /
                 np.linalg.norm(np.asarray(to_numpy(c), np.float64)))


def channels_last(a):
    """The same (n, c, h, w) values stored channels-last (the engine's activation layout)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


# ============================================================================ measures
def test_angle_of_an_array_with_itself_and_its_negative_is_exact(rng):
    for shape in [(7,), (13, 5), (4, 3, 5, 5)]:
        for dt in (np.float32, np.float64):
            A = rng.standard_normal(shape).astype(dt)
            assert angle(A, A) == 0.0
            assert angle(A, A.copy()) == 0.0
            assert angle(A, -A) == 180.0
            if A.ndim == 4:   # same values, another memory layout
                assert angle(A, channels_last(A)) == 0.0
                assert angle(channels_last(A), -A) == 180.0


def test_angle_closed_forms_and_reference(rng):
    assert angle(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(90.0, abs=1e-12)
    assert angle(np.array([1.0, 0.0]), np.array([2.0, 2.0])) == pytest.approx(45.0, abs=1e-12)
    assert angle(np.array([1.0, 0.0]), np.array([-1.0, math.sqrt(3.0)])) == \
        pytest.approx(120.0, abs=1e-12)
    # scale invariance, float32 inputs, layouts
    A = rng.standard_normal((6, 4, 5, 5)).astype(np.float32)
    C = (A + 0.7 * rng.standard_normal(A.shape)).astype(np.float32)
    ref = ref_angle(A, C)
    assert angle(A, C) == pytest.approx(ref, abs=1e-9)
    assert angle(channels_last(A), C) == pytest.approx(ref, abs=1e-9)
    assert angle(3.0 * A, 0.5 * C) == pytest.approx(ref, abs=1e-6)
    assert angle(Parameter(A), C) == pytest.approx(ref, abs=1e-9)


def test_small_angles_of_float32_arrays_are_resolved():
    # float64 accumulation: a 0.05 deg angle between float32 arrays of 10^6 entries
    rng = np.random.default_rng(1)
    A = rng.standard_normal(10**6)
    P = rng.standard_normal(10**6)
    P -= (P @ A) / (A @ A) * A                       # orthogonal to A
    theta = math.radians(0.05)
    C = math.cos(theta) * A / np.linalg.norm(A) + math.sin(theta) * P / np.linalg.norm(P)
    A32, C32 = A.astype(np.float32), C.astype(np.float32)
    assert angle(A32, C32) == pytest.approx(ref_angle(A32, C32), abs=1e-6)
    assert angle(A32, C32) == pytest.approx(0.05, abs=2e-3)


def test_undefined_and_bad_input(rng):
    A = rng.standard_normal((3, 4))
    assert math.isnan(angle(A, np.zeros_like(A)))
    assert math.isnan(angle(np.zeros_like(A), A))
    assert math.isnan(norm_ratio(A, np.zeros_like(A)))
    assert norm_ratio(np.zeros_like(A), A) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        angle(A, A.T)


def test_norm_ratio(rng):
    A = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    C = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    assert norm_ratio(2.0 * A, A) == pytest.approx(2.0, rel=1e-7)
    assert norm_ratio(A, C) == pytest.approx(ref_ratio(A, C), rel=1e-12)
    assert norm_ratio(A, A) == 1.0


def test_sign_feedback_of_a_large_uniform_matrix_is_at_30_degrees():
    # cos = E|w| / sqrt(E w^2) = (a/2) / (a/sqrt(3)) = sqrt(3)/2 for w ~ U(-a, a)
    rng = np.random.default_rng(3)
    fan_in, fan_out = 1000, 800
    W = xavier_uniform(rng, (fan_out, fan_in), fan_in, fan_out)
    s = math.sqrt(2.0 / (fan_in + fan_out))
    M = (s * np.sign(W)).astype(np.float32)
    assert angle(M, W) == pytest.approx(30.0, abs=0.1)
    # s is the Xavier std, the rms of W: norm ratio 1
    assert norm_ratio(M, W) == pytest.approx(1.0, abs=0.01)


# ============================================================================ test rules
class FixedB(Rule):
    """A minimal FA rule written for these tests: fixed buffer ``feedback_B``, ``M = B``."""

    name = "test_fa"

    def attach(self, layer, rng):
        B = xavier_uniform(rng, layer.weight_shape, layer.fan_in, layer.fan_out, dtype=layer.dtype)
        layer.register_buffer("feedback_B", self._host_to_layer(layer, B))

    def input_error(self, layer, delta, ctx):
        return layer.apply_transpose(delta, layer.feedback_B)

    def path_matrix(self, layer):
        return layer.feedback_B


class NoPath(FixedB):
    """Like FixedB but reports no path matrix (as DFA does)."""

    name = "test_nopath"

    def path_matrix(self, layer):
        return None


class WrongPath(FixedB):
    name = "test_wrongpath"

    def path_matrix(self, layer):
        return layer.feedback_B[:1]


class Counting(FixedB):
    """FA plus a counter buffer and a generator on the rule object (like brSF / WM)."""

    name = "test_counting"

    def attach(self, layer, rng):
        super().attach(layer, rng)
        layer.register_buffer("feedback_draws", np.zeros((), dtype=np.int64))
        self.gen = np.random.default_rng(7)
        self.seen_shapes = None

    def feedback_grads(self, layer, delta, gW, ctx):
        self.seen_shapes = tuple(delta.shape)     # rule-object state a probe must restore

    def before_step(self, layer):
        layer.feedback_draws += 1
        self.gen.standard_normal(3)


class MiniPFA(Rule):
    """PFA written independently for these tests: B (out, mid) fixed, R learned."""

    name = "test_pfa"

    def __init__(self, r=10, orthogonal=False):
        self.r, self.orthogonal = r, orthogonal

    def attach(self, layer, rng):
        out = layer.weight_shape[0]
        mid = out if self.orthogonal else self.r * out
        R = xavier_uniform(rng, (mid,) + layer.weight_shape[1:], layer.fan_in,
                           mid * layer.receptive, dtype=np.float64)
        if self.orthogonal:
            q, rr = np.linalg.qr(rng.standard_normal((out, out)))
            B = q * np.sign(np.diag(rr))
        else:
            B = xavier_uniform(rng, (out, mid), mid, out,
                               gain=math.sqrt((1 + 1 / self.r) / 2), dtype=np.float64)
        layer.register_buffer("feedback_B", self._host_to_layer(layer, B))
        layer.register_parameter("feedback_R", self._host_to_layer(layer, R))

    def path_matrix(self, layer):
        B, R = layer.feedback_B, layer.feedback_R.data
        return np.tensordot(B, R, axes=(1, 0)).astype(R.dtype)

    def input_error(self, layer, delta, ctx):
        return layer.apply_transpose(delta, self.path_matrix(layer))

    def feedback_grads(self, layer, delta, gW, ctx):
        layer.feedback_R.grad = np.tensordot(layer.feedback_B, gW, axes=(0, 0)).astype(gW.dtype)


class MiniKP(FixedB):
    """KP written for these tests: Parameter ``feedback_B``, ``gB = gW``."""

    name = "test_kp"

    def attach(self, layer, rng):
        B = xavier_uniform(rng, layer.weight_shape, layer.fan_in, layer.fan_out, dtype=layer.dtype)
        layer.register_parameter("feedback_B", self._host_to_layer(layer, B))

    def input_error(self, layer, delta, ctx):
        return layer.apply_transpose(delta, layer.feedback_B.data)

    def path_matrix(self, layer):
        return layer.feedback_B.data

    def feedback_grads(self, layer, delta, gW, ctx):
        layer.feedback_B.grad = gW.copy()


class InPlaceKP(MiniKP):
    """KP that reuses its gradient buffer (writes ``gB`` in place when one exists)."""

    name = "test_kp_inplace"

    def feedback_grads(self, layer, delta, gW, ctx):
        B = layer.feedback_B
        if B.grad is None:
            B.grad = gW.copy()
        else:
            B.grad[...] = gW


def attach(model, make, seed=0):
    for i, layer in enumerate(weight_layers(model).values()):
        rule = make(i) if callable(make) and not isinstance(make, type) else make()
        rule.attach(layer, np.random.default_rng([seed, 1, i]))
        layer.rule = rule
    return model


def mlp(dtype="float64", hidden=(16, 12), in_features=20, classes=5, seed=0):
    return build_model("mlp", seed=seed, dtype=dtype, in_features=in_features,
                       hidden=hidden, num_classes=classes)


def batch(rng, n=8, shape=(20,), classes=5, dtype=np.float64):
    return (rng.standard_normal((n,) + shape).astype(dtype),
            (np.arange(n) % classes).astype(np.int64))


# ============================================================================ weight alignment
def test_weight_alignment_of_bp_is_exact_and_first_layer_flagged():
    wa = weight_alignment(mlp())
    assert list(wa) == ["fc1", "fc2", "fc"]
    for name, d in wa.items():
        assert d["rule"] == "bp" and d["angle"] == 0.0 and d["norm_ratio"] == 1.0
        assert d["first_layer_feedback_unused"] is (name == "fc1")


def test_weight_alignment_uses_the_rules_matrix():
    model = attach(mlp(dtype="float32", hidden=(300, 200), in_features=400), FixedB)
    wa = weight_alignment(model)
    for name, layer in weight_layers(model).items():
        ref = ref_angle(layer.feedback_B, layer.weight.data)
        assert wa[name]["angle"] == pytest.approx(ref, abs=1e-9)
        assert wa[name]["norm_ratio"] == pytest.approx(
            ref_ratio(layer.feedback_B, layer.weight.data), rel=1e-9)
        assert wa[name]["rule"] == "test_fa"
    assert wa["fc2"]["angle"] == pytest.approx(90.0, abs=2.0)   # independent random B


def test_rule_without_path_matrix_reports_none_and_bad_shapes_raise():
    wa = weight_alignment(attach(mlp(), NoPath))
    assert all(d["angle"] is None and d["norm_ratio"] is None for d in wa.values())
    with pytest.raises(ValueError, match="path matrix of shape"):
        weight_alignment(attach(mlp(), WrongPath))


def expected_pfa_ratio(layer, mid):
    """sqrt((fan_in + fan_out of W) / (fan_in + fan_out of R)), R (mid, in[, kh, kw])."""
    k = layer.receptive
    return math.sqrt((layer.fan_in + layer.fan_out) / (layer.fan_in + mid * k))


@pytest.mark.parametrize("layer_factory", [
    lambda: Linear(512, 512, dtype="float64"),
    lambda: Linear(512, 10, dtype="float64"),
    lambda: Conv2d(32, 64, 3, 2, 1, bias=False, dtype="float64"),   # channel doubling
])
def test_pfa_initial_path_norm_ratio_matches_the_fan_ratio(layer_factory):
    model = Sequential(OrderedDict(a=layer_factory()))
    finalize(model)
    init_model(model, 0)
    layer = model.a
    attach(model, lambda i: MiniPFA(10))
    d = weight_alignment(model)["a"]
    assert d["norm_ratio"] == pytest.approx(expected_pfa_ratio(layer, 10 * layer.weight_shape[0]),
                                            rel=0.05)
    assert d["angle"] == pytest.approx(90.0, abs=3.0)
    assert d["first_layer_feedback_unused"] is True


def test_analytic_expansion_ratio_check_through_the_metric():
    # the paper's Figure 3 setup: out=100, in=256, r=10, R set to its fixed point B.T W
    model = Sequential(OrderedDict(a=Linear(256, 100, dtype="float64")))
    finalize(model)
    init_model(model, 0)
    attach(model, lambda i: MiniPFA(10))
    layer = model.a
    layer.feedback_R.data[...] = layer.feedback_B.T @ layer.weight.data
    d = weight_alignment(model)["a"]
    assert d["angle"] == pytest.approx(17.5, abs=1.0)
    assert d["norm_ratio"] == pytest.approx(1.05, abs=0.02)
    # PFA-o: B orthogonal, B B.T = I, the path is W
    attach(model, lambda i: MiniPFA(orthogonal=True))
    layer.feedback_R.data[...] = layer.feedback_B.T @ layer.weight.data
    d = weight_alignment(model)["a"]
    assert d["angle"] < 1e-5 and d["norm_ratio"] == pytest.approx(1.0, abs=1e-12)


# ============================================================================ mechanism
def conv_pfa_model(seed=0):
    model = Sequential(OrderedDict(c=Conv2d(3, 4, 3, 1, 1, dtype="float64"), r=ReLU(),
                                   f=Flatten(), fc=Linear(4 * 5 * 5, 3, dtype="float64")))
    finalize(model)
    init_model(model, seed)
    return attach(model, lambda i: MiniPFA(3))


def test_mechanism_diagnostics_pfa_and_kp(rng):
    model = conv_pfa_model()
    c = model.c
    B, W = c.feedback_B, c.weight.data
    BtW = np.einsum("om,oikl->mikl", B, W)
    D = rng.standard_normal(BtW.shape)
    c.feedback_R.data[...] = BtW + D
    diag = mechanism_diagnostics(model)
    assert list(diag) == ["c", "fc"]
    assert diag["c"]["pfa_mismatch"] == pytest.approx(np.linalg.norm(D) / np.linalg.norm(BtW),
                                                      rel=1e-10)
    assert diag["c"]["mismatch_norm"] == pytest.approx(np.linalg.norm(D), rel=1e-10)

    model = attach(mlp(), MiniKP)
    diag = mechanism_diagnostics(model)
    for name, layer in weight_layers(model).items():
        W, Bk = layer.weight.data, layer.feedback_B.data
        assert diag[name]["kp_mismatch"] == pytest.approx(
            np.linalg.norm(W - Bk) / np.linalg.norm(W), rel=1e-10)
    # rules without a learned mechanism are absent
    assert mechanism_diagnostics(attach(mlp(), FixedB)) == OrderedDict()
    assert mechanism_diagnostics(mlp()) == OrderedDict()


def test_predictor_plain_sgd_closed_form():
    p = MismatchPredictor("sgd")
    lrs, wds = [0.1] * 5 + [0.05] * 5, [0.01] * 3 + [0.001] * 7
    for lr, wd in zip(lrs, wds):
        p.step(lr, wd)
    assert p.ratio == pytest.approx(np.prod([1 - a * b for a, b in zip(lrs, wds)]), rel=1e-14)
    q = MismatchPredictor("decoupled")
    q.step(0.1, 0.5)
    assert q.ratio == pytest.approx(0.95, rel=1e-15)
    assert MismatchPredictor("none").step(0.1, 0.1) is None
    with pytest.raises(ValueError, match="decay law"):
        MismatchPredictor("adam")


@pytest.mark.parametrize("kw", [
    dict(momentum=0.9), dict(momentum=0.9, nesterov=True), dict(momentum=0.5, dampening=0.3),
    dict(momentum=0.0)])
@pytest.mark.parametrize("mechanism", ["kp", "pfa"])
def test_predictor_matches_torch_sgd_dynamics(kw, mechanism):
    """Random gradient streams through torch.optim.SGD; D = W - B or R - B.T W."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    out, inp, mid = 6, 5, 18
    W = torch.tensor(rng.standard_normal((out, inp)), requires_grad=True)
    Bf = torch.tensor(rng.standard_normal((out, mid)) / math.sqrt(mid))
    F = torch.tensor(rng.standard_normal((mid, inp) if mechanism == "pfa" else (out, inp)),
                     requires_grad=True)

    def mismatch():
        with torch.no_grad():
            return float(torch.linalg.norm(F - Bf.T @ W if mechanism == "pfa" else W - F))

    opt = torch.optim.SGD([W, F], lr=0.1, **kw)
    pred = MismatchPredictor("sgd", **kw)
    d0 = mismatch()
    for t in range(40):
        lr, wd = (0.2 if t < 20 else 0.05), (0.05 if t < 10 else 0.01)
        for g in opt.param_groups:
            g["lr"], g["weight_decay"] = lr, wd
        gW = torch.tensor(rng.standard_normal((out, inp)))
        W.grad = gW
        F.grad = Bf.T @ gW if mechanism == "pfa" else gW.clone()
        opt.step()
        pred.step(lr, wd)
        assert mismatch() / d0 == pytest.approx(pred.ratio, rel=1e-9, abs=1e-12)
    assert pred.ratio < 0.9


def test_predictor_matches_torch_adamw_for_kp():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    W = torch.tensor(rng.standard_normal((5, 4)), requires_grad=True)
    B = torch.tensor(rng.standard_normal((5, 4)), requires_grad=True)
    opt = torch.optim.AdamW([W, B], lr=0.05, weight_decay=0.3)
    pred = MismatchPredictor("decoupled")
    d0 = float(torch.linalg.norm(W - B).detach())
    for _ in range(30):
        g = torch.tensor(rng.standard_normal((5, 4)))
        W.grad, B.grad = g, g.clone()
        opt.step()
        pred.step(0.05, 0.3)
    assert float(torch.linalg.norm(W - B).detach()) / d0 == pytest.approx(pred.ratio, rel=1e-9)


def test_predictor_law_from_engine_optimizers():
    p = [Parameter(np.zeros(3))]
    named = [("w", p[0])]
    sgd = build_optimizer("sgd", named, lr=0.1, momentum=0.9, nesterov=True)
    pr = MismatchPredictor.for_optimizer(sgd)
    assert (pr.law, pr.momentum, pr.nesterov) == ("sgd", 0.9, True)
    adamw = build_optimizer("adamw", named, lr=0.1)
    adam = build_optimizer("adam", named, lr=0.1)
    assert MismatchPredictor.for_optimizer(adamw, True).law == "decoupled"
    assert MismatchPredictor.for_optimizer(adamw, False).law == "none"
    l2 = MismatchPredictor.for_optimizer(adam, True)
    assert l2.law == "l2_adaptive"
    assert l2.step(0.1, 0.0) == 1.0 and l2.step(0.1, 0.01) is None and l2.step(0.1, 0.0) is None


def train_steps(model, opt, tracker, rng, steps, lr_wd, x_shape=(20,), classes=5):
    for t in range(steps):
        lr, wd = lr_wd(t)
        opt.lr, opt.weight_decay = lr, wd
        for layer in weight_layers(model).values():
            layer.rule.before_step(layer)
        dtype = next(iter(weight_layers(model).values())).dtype
        x, y = batch(rng, 16, x_shape, classes, dtype)
        logits = model.forward(x)
        _, e = softmax_cross_entropy(logits, y)
        model.backward(e, BackwardContext(output_error=e))
        opt.step()
        for layer in weight_layers(model).values():
            layer.rule.after_step(layer)
        tracker.step(lr, wd)


def test_tracker_follows_the_law_through_real_training_steps():
    """Mixed PFA / KP layers trained by the engine's SGD with momentum and a wd schedule."""
    model = attach(mlp(), lambda i: MiniKP() if i == 1 else MiniPFA(4))
    opt = build_optimizer("sgd", model.named_parameters(), lr=0.05, momentum=0.9)
    tracker = MechanismTracker(model, opt)
    assert tracker.law_of == OrderedDict(fc1="sgd", fc2="sgd", fc="sgd")
    rng = np.random.default_rng(0)
    train_steps(model, opt, tracker, rng, 25, lambda t: (0.05, 0.05 if t < 10 else 0.01))
    rep = tracker.report(model)
    assert set(rep["fc2"]) == {"kp_mismatch", "mismatch_norm", "mismatch_decay",
                               "mismatch_decay_predicted"}
    for name, d in rep.items():
        assert d["mismatch_decay"] == pytest.approx(d["mismatch_decay_predicted"], rel=1e-9)
        assert d["mismatch_decay"] < 0.95
    # resume: a new tracker loaded from the state continues identically
    t2 = MechanismTracker(model, opt)
    t2.load_state_dict({k: np.array(v) for k, v in tracker.state_dict().items()})
    assert t2.report(model) == rep


# ============================================================================ probe
def torch_mlp_grads(model, x, y):
    """BP gradients of the engine MLP's loss, by PyTorch autograd (float64)."""
    torch = pytest.importorskip("torch")
    layers = list(weight_layers(model).values())
    Ws = [torch.tensor(lay.weight.data, requires_grad=True) for lay in layers]
    bs = [torch.tensor(lay.bias.data, requires_grad=True) for lay in layers]
    h = torch.tensor(x).reshape(x.shape[0], -1)
    acts, pres = [h], []
    for i, (W, b) in enumerate(zip(Ws, bs)):
        z = h @ W.T + b
        pres.append(z)
        h = torch.relu(z) if i < len(Ws) - 1 else z
        acts.append(h)
    loss = torch.nn.functional.cross_entropy(h, torch.tensor(y))
    loss.backward()
    return [W.grad.numpy() for W in Ws], [a.detach().numpy() for a in acts], \
        [p.detach().numpy() for p in pres], torch.softmax(h, 1).detach().numpy()


def test_probe_of_bp_model_is_exactly_zero(rng):
    model = mlp()
    x, y = batch(rng)
    for d in probe_alignment(model, x, y).values():
        assert d == {"grad_angle": 0.0, "grad_norm_ratio": 1.0, "error_angle": 0.0,
                     "error_norm_ratio": 1.0}


def test_probe_fa_against_torch_and_hand_computed_feedback(rng):
    model = attach(mlp(), FixedB)
    x, y = batch(rng)
    rule_rec, bp_rec = probe_records(model, x, y)
    gWs, acts, pres, p = torch_mlp_grads(model, x, y)
    names = list(weight_layers(model))
    for name, g in zip(names, gWs):                      # the BP twin is exact BP
        assert rel_err(bp_rec[name]["gW"], g) < 1e-12
    # FA by hand: delta_L = e; delta_l = (delta_{l+1} @ B_{l+1}) * relu'(z_l)
    layers = list(weight_layers(model).values())
    e = (p - np.eye(5)[y]) / len(y)
    deltas = [None, None, e]
    for i in (1, 0):
        deltas[i] = (deltas[i + 1] @ layers[i + 1].feedback_B) * (pres[i] > 0)
    for i, name in enumerate(names):
        assert rel_err(rule_rec[name]["delta"], deltas[i]) < 1e-12
        assert rel_err(rule_rec[name]["gW"], deltas[i].T @ acts[i]) < 1e-12
    pa = probe_alignment(model, x, y)
    for i, name in enumerate(names):
        # the reference pairs a hand-computed gW with torch's: for the last layer they are
        # the same matrix up to rounding (~1e-16), and arccos turns a cosine error d near 1
        # into sqrt(2 d) rad ~ 1e-6 degrees, so 1e-5 degrees is the tolerance arccos allows
        assert pa[name]["grad_angle"] == pytest.approx(ref_angle(deltas[i].T @ acts[i], gWs[i]),
                                                       abs=1e-5)
        assert pa[name]["grad_norm_ratio"] == pytest.approx(
            ref_ratio(deltas[i].T @ acts[i], gWs[i]), rel=1e-10)
    assert pa["fc"]["grad_angle"] == 0.0 and pa["fc"]["error_angle"] == 0.0
    assert pa["fc2"]["error_angle"] > 10.0 and pa["fc1"]["grad_angle"] > 10.0


def small_cnn(dtype="float64"):
    model = Sequential(OrderedDict(
        conv=Conv2d(3, 4, 3, 1, 1, dtype=dtype), bn=BatchNorm2d(4, dtype=dtype), relu=ReLU(),
        pool=MaxPool2d(2), conv2=Conv2d(4, 5, 3, 1, 1, bias=False, dtype=dtype),
        relu2=ReLU(), flatten=Flatten(), fc=Linear(5 * 4 * 4, 3, dtype=dtype)))
    finalize(model)
    return init_model(model, 0)


@pytest.mark.parametrize("train", [True, False])
def test_probe_bp_twin_matches_torch_with_batchnorm(train):
    """The twin reuses the forward cache: train-mode BN gradients use the batch statistics."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    rng = np.random.default_rng(2)
    model = attach(small_cnn(), FixedB)
    model.bn.running_mean[...] = rng.standard_normal(4)
    model.bn.running_var[...] = rng.uniform(0.5, 2.0, 4)
    model.train(train)
    x = rng.standard_normal((6, 3, 8, 8))
    y = np.array([0, 1, 2, 0, 1, 2])
    rm, rv = model.bn.running_mean.copy(), model.bn.running_var.copy()
    rule_rec, bp_rec = probe_records(model, x, y)

    tm = tnn.Sequential(tnn.Conv2d(3, 4, 3, 1, 1), tnn.BatchNorm2d(4), tnn.ReLU(),
                        tnn.MaxPool2d(2), tnn.Conv2d(4, 5, 3, 1, 1, bias=False), tnn.ReLU(),
                        tnn.Flatten(), tnn.Linear(80, 3)).double()
    with torch.no_grad():
        tm[0].weight.copy_(torch.tensor(model.conv.weight.data))
        tm[0].bias.copy_(torch.tensor(model.conv.bias.data))
        tm[1].running_mean.copy_(torch.tensor(rm))
        tm[1].running_var.copy_(torch.tensor(rv))
        tm[4].weight.copy_(torch.tensor(model.conv2.weight.data))
        tm[7].weight.copy_(torch.tensor(model.fc.weight.data))
        tm[7].bias.copy_(torch.tensor(model.fc.bias.data))
    tm.train(train)
    loss = tnn.functional.cross_entropy(tm(torch.tensor(x)), torch.tensor(y))
    loss.backward()
    for name, t in (("conv", tm[0]), ("conv2", tm[4]), ("fc", tm[7])):
        assert rel_err(bp_rec[name]["gW"], t.weight.grad.numpy()) < 1e-10
    assert rel_err(rule_rec["fc"]["gW"], tm[7].weight.grad.numpy()) < 1e-12
    assert rel_err(rule_rec["conv"]["gW"], tm[0].weight.grad.numpy()) > 1e-3  # FA differs
    # the probe left the running statistics alone
    assert np.array_equal(model.bn.running_mean, rm) and np.array_equal(model.bn.running_var, rv)


def snapshot(model):
    state = OrderedDict((k, np.array(to_numpy(v), copy=True))
                        for k, v in model.state_dict().items())
    grads = [(p, p.grad, None if p.grad is None else p.grad.copy())
             for _, p in model.named_parameters()]
    caches = [(m, dict(m.cache)) for _, m in model.named_modules()]
    return state, grads, caches


def assert_unchanged(model, snap):
    state, grads, caches = snap
    now = model.state_dict()
    assert list(now) == list(state)
    for k, v in state.items():
        cur = to_numpy(now[k])
        assert cur.dtype == v.dtype and np.array_equal(cur, v), k
    for p, g, saved in grads:
        assert p.grad is g
        if g is not None:
            assert np.array_equal(g, saved)
    for m, saved in caches:
        assert m.cache.keys() == saved.keys()
        assert all(m.cache[k] is saved[k] for k in saved)


def test_probe_changes_no_state_counter_grad_cache_or_random_stream():
    rng = np.random.default_rng(4)
    model = build_model("resnet20", seed=0, dtype="float32")
    attach(model, Counting)
    model.train()
    # one ordinary step so that caches, grads and BN statistics are all populated
    for layer in weight_layers(model).values():
        layer.rule.before_step(layer)
    x, y = batch(rng, 4, (3, 8, 8), 10, np.float32)
    _, e = softmax_cross_entropy(model.forward(x), y)
    model.backward(e, BackwardContext(output_error=e))
    for _, p in model.named_parameters():       # some grads present, some absent
        if p.grad is not None and p.data.ndim == 1:
            p.grad = None
    snap = snapshot(model)
    rules = [layer.rule for layer in weight_layers(model).values()]
    gen_states = [r.gen.bit_generator.state for r in rules]
    seen = [r.seen_shapes for r in rules]
    global_state = np.random.get_state()[1].copy()
    flags = [m.update_running_stats for _, m in model.named_modules()
             if hasattr(m, "update_running_stats")]

    xp_, yp = batch(rng, 3, (3, 8, 8), 10, np.float32)    # another batch size
    pa = probe_alignment(model, xp_, yp)
    assert list(pa) == list(weight_layers(model))
    assert pa["fc"]["grad_angle"] == 0.0 and pa["fc"]["error_angle"] == 0.0
    assert 0.0 < pa["conv1"]["grad_angle"] < 180.0

    assert_unchanged(model, snap)
    assert [r.gen.bit_generator.state for r in rules] == gen_states
    assert [r.seen_shapes for r in rules] == seen
    assert np.array_equal(np.random.get_state()[1], global_state)
    assert flags == [m.update_running_stats for _, m in model.named_modules()
                     if hasattr(m, "update_running_stats")] and all(flags)


def test_probe_restores_state_after_an_error():
    model = attach(mlp(), FixedB)
    x, _ = batch(np.random.default_rng(0))
    snap = snapshot(model)
    with pytest.raises(ValueError):
        probe_alignment(model, x, np.full(8, 99, dtype=np.int64))   # labels out of range
    assert_unchanged(model, snap)


def test_probe_restores_gradients_written_in_place():
    rng = np.random.default_rng(8)
    model = attach(mlp(), InPlaceKP)
    for _, p in model.named_parameters():
        p.grad = rng.standard_normal(p.data.shape)
    snap = snapshot(model)
    pa = probe_alignment(model, *batch(rng))
    assert pa["fc2"]["error_angle"] > 10.0
    assert_unchanged(model, snap)


# ============================================================================ collect
def test_collect_metrics_is_flat_and_json_ready(rng):
    model = attach(mlp(), lambda i: [NoPath, MiniKP, FixedB][i]())
    opt = build_optimizer("sgd", model.named_parameters(), lr=0.1, momentum=0.9)
    tracker = MechanismTracker(model, opt)
    out = collect_metrics(model, probe=batch(rng), tracker=tracker)
    json.dumps(out, allow_nan=False)
    assert out["fc1/path_angle"] is None and out["fc1/feedback_unused"] is True
    assert out["fc2/feedback_unused"] is False
    assert out["fc2/kp_mismatch"] is not None and out["fc2/mismatch_decay"] == 1.0
    assert out["fc2/mismatch_decay_predicted"] == 1.0
    assert "fc/kp_mismatch" not in out and "fc1/pfa_mismatch" not in out
    for name in ("fc1", "fc2", "fc"):
        for k in ("grad_angle", "grad_norm_ratio", "error_angle", "error_norm_ratio"):
            assert isinstance(out[f"{name}/{k}"], float)
    assert all(v is None or isinstance(v, (float, bool)) for v in out.values())
    plain = collect_metrics(model)
    assert "fc1/grad_angle" not in plain and "fc2/mismatch_decay" not in plain


# ============================================================================ the engine's rules
def real(spec, model=None, seed=0, **kw):
    model = model if model is not None else mlp(**kw)
    attach_rules(model, spec, seed)
    return model


def test_real_sign_concordant_rules_at_init():
    # uSF: cos = sqrt(3)/2 (30 deg), norm ratio 1; frSF / brSF with independent uniform
    # magnitudes: cos = E|m| E|w| / sqrt(E m^2 E w^2) = 3/4 (41.4 deg) -- not ~90 deg,
    # which is what comparing W with the unsigned |M0| would read
    model = real("usf", dtype="float32", hidden=(600, 500), in_features=700)
    for name, d in weight_alignment(model).items():
        if name != "fc":
            assert d["angle"] == pytest.approx(30.0, abs=0.3)
            assert d["norm_ratio"] == pytest.approx(1.0, abs=0.01)
    for rule in ("frsf", "brsf"):
        model = real(rule, dtype="float32", hidden=(600, 500), in_features=700)
        d = weight_alignment(model)["fc2"]
        assert d["angle"] == pytest.approx(math.degrees(math.acos(0.75)), abs=0.3)


def test_real_rules_path_matrices_at_init():
    model = real("fa", dtype="float32", hidden=(400, 300), in_features=500)
    wa = weight_alignment(model)
    assert wa["fc2"]["angle"] == pytest.approx(90.0, abs=1.5)
    assert wa["fc1"]["first_layer_feedback_unused"] is True
    wa = weight_alignment(real("dfa"))
    assert all(d["angle"] is None and d["norm_ratio"] is None and d["rule"] == "dfa"
               for d in wa.values())


def test_real_pfa_initial_path_norm_ratio_mlp_and_resnet():
    model = real("pfa", dtype="float32", hidden=(512, 512), in_features=784, classes=10)
    wa = weight_alignment(model)
    for name, layer in weight_layers(model).items():
        mid = layer.feedback_B.shape[1]
        assert mid == 10 * layer.weight_shape[0]
        assert wa[name]["norm_ratio"] == pytest.approx(expected_pfa_ratio(layer, mid), rel=0.05)
        assert wa[name]["angle"] == pytest.approx(90.0, abs=4.0)
    # hidden square layers 0.43-0.47, output layer 0.65-0.9 (algorithms.md reference values)
    assert 0.42 < wa["fc2"]["norm_ratio"] < 0.48 and 0.65 < wa["fc"]["norm_ratio"] < 0.95
    net = real("pfa", build_model("resnet20", seed=0))
    wa = weight_alignment(net)
    for name in ("layer1.0.conv1", "layer2.0.conv1", "layer3.2.conv2"):
        layer = weight_layers(net)[name]
        assert wa[name]["norm_ratio"] == pytest.approx(
            expected_pfa_ratio(layer, 10 * layer.weight_shape[0]), rel=0.05)
    # channel doubling (16 -> 32) sits below the square layers
    assert wa["layer2.0.conv1"]["norm_ratio"] < wa["layer1.0.conv1"]["norm_ratio"]
    wa = weight_alignment(real("pfa:orthogonal=true", dtype="float32", hidden=(64,)))
    assert all(abs(d["norm_ratio"] - ref) < 0.1 for d, ref in
               zip(wa.values(), (1.0, 1.0)))


def test_real_pfa_analytic_expansion_ratio_check():
    model = Sequential(OrderedDict(a=Linear(256, 100, dtype="float64")))
    finalize(model)
    init_model(model, 0)
    for spec, ang, ratio, tol in (("pfa", 17.5, 1.05, 1.0),
                                  ("pfa:orthogonal=true", 0.0, 1.0, 1e-5)):
        real(spec, model)
        layer = model.a
        layer.feedback_R.data[...] = layer.feedback_B.T @ layer.weight.data
        d = weight_alignment(model)["a"]
        assert d["angle"] == pytest.approx(ang, abs=tol)
        assert d["norm_ratio"] == pytest.approx(ratio, abs=0.02 if tol > 1e-3 else 1e-9)
        assert mechanism_diagnostics(model)["a"]["pfa_mismatch"] < 1e-12


@pytest.mark.parametrize("spec", ["pfa", "kp", "pfa:identity=true", "pfa:feedback_density=0.5"])
def test_real_mechanism_diagnostics_agree_with_the_rules_own_mismatch(spec):
    net = Sequential(OrderedDict(c=Conv2d(3, 4, 3, 1, 1, dtype="float64"), f=Flatten(),
                                 fc=Linear(4 * 5 * 5, 3, dtype="float64")))
    finalize(net)
    real(spec, init_model(net, 0))
    diag = mechanism_diagnostics(net)
    assert list(diag) == ["c", "fc"]
    for name, layer in weight_layers(net).items():
        D = layer.rule.mismatch(layer)        # the rule's own D (independent code)
        W = layer.weight.data
        if spec == "kp":
            ref = W
        else:
            ref = np.tensordot(layer.feedback_B, W, axes=(0, 0))
        key = "kp_mismatch" if spec == "kp" else "pfa_mismatch"
        assert diag[name]["mismatch_norm"] == pytest.approx(np.linalg.norm(D), rel=1e-12)
        assert diag[name][key] == pytest.approx(np.linalg.norm(D) / np.linalg.norm(ref),
                                                rel=1e-12)
    if spec == "pfa:identity=true":   # bitwise KP: identical numbers
        kp = mechanism_diagnostics(real("kp", net))
        assert [d["mismatch_norm"] for d in kp.values()] == \
            [d["mismatch_norm"] for d in diag.values()]
        assert [d["kp_mismatch"] for d in kp.values()] == \
            [d["pfa_mismatch"] for d in diag.values()]


ALL_RULES = ["bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm", "pfa",
             "pfa:orthogonal=true", "usf:batch_manhattan=true"]


@pytest.mark.parametrize("spec", ALL_RULES)
def test_real_rules_probe_changes_nothing(spec):
    rng = np.random.default_rng(9)
    model = real(spec, dtype="float32", hidden=(24, 16))
    opt = build_optimizer("sgd", model.named_parameters(), lr=0.05, momentum=0.9,
                          weight_decay=1e-3)
    tracker = MechanismTracker(model, opt)
    train_steps(model, opt, tracker, rng, 2, lambda t: (0.05, 1e-3))
    # brSF memoises M_t in the layer's cache when its path matrix is read (not state)
    weight_alignment(model)
    snap = snapshot(model)
    rule_vars = [dict(vars(layer.rule)) for layer in weight_layers(model).values()]
    out = collect_metrics(model, probe=batch(rng, 5, dtype=np.float32), tracker=tracker)
    json.dumps(out, allow_nan=False)
    assert_unchanged(model, snap)
    assert rule_vars == [dict(vars(layer.rule)) for layer in weight_layers(model).values()]
    assert out["fc/grad_angle"] == 0.0 and out["fc/error_angle"] == 0.0
    if spec == "bp":
        assert all(out[f"{n}/error_angle"] == 0.0 for n in ("fc1", "fc2"))
    else:
        assert out["fc1/error_angle"] > 1.0
    # the next training step is what it would have been without the probe
    twin = real(spec, dtype="float32", hidden=(24, 16))
    twin_opt = build_optimizer("sgd", twin.named_parameters(), lr=0.05, momentum=0.9,
                               weight_decay=1e-3)
    twin_tr = MechanismTracker(twin, twin_opt)
    rng_b = np.random.default_rng(9)
    train_steps(twin, twin_opt, twin_tr, rng_b, 2, lambda t: (0.05, 1e-3))
    for m, r in ((model, np.random.default_rng(11)), (twin, np.random.default_rng(11))):
        train_steps(m, opt if m is model else twin_opt, tracker if m is model else twin_tr,
                    r, 1, lambda t: (0.05, 1e-3))
    for (k, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert np.array_equal(to_numpy(a), to_numpy(b)), k


@pytest.mark.parametrize("spec,opt_name,opt_kw,law", [
    ("pfa", "sgd", dict(momentum=0.9), "sgd"),
    ("kp", "sgd", dict(momentum=0.9, nesterov=True), "sgd"),
    ("pfa:orthogonal=true", "sgd", dict(), "sgd"),
    ("kp", "adamw", dict(), "decoupled"),
    ("pfa:identity=true", "adamw", dict(), "decoupled"),
])
def test_real_rules_follow_their_decay_law(spec, opt_name, opt_kw, law):
    model = real(spec, hidden=(16, 12))
    opt = build_optimizer(opt_name, model.named_parameters(), lr=0.05, **opt_kw)
    tracker = MechanismTracker(model, opt)
    assert set(tracker.law_of.values()) == {law}
    train_steps(model, opt, tracker, np.random.default_rng(1), 20,
                lambda t: (0.05 if t < 12 else 0.02, 0.1 if t < 5 else 0.01))
    for name, d in tracker.report(model).items():
        assert d["mismatch_decay"] == pytest.approx(d["mismatch_decay_predicted"], rel=1e-9)
        assert d["mismatch_decay"] < 0.99   # it did decay (plain SGD: 0.970)


def test_real_pfa_under_adamw_has_no_prediction():
    model = real("pfa", hidden=(16, 12))
    opt = build_optimizer("adamw", model.named_parameters(), lr=0.01)
    tracker = MechanismTracker(model, opt)
    tracker.step(0.01, 0.01)
    assert all(d["mismatch_decay_predicted"] is None for d in tracker.report(model).values())


# ============================================================================ devices
def test_metrics_on_the_array_backend(xp):
    """NumPy / CuPy parity (the CuPy case runs only where a GPU exists)."""
    rng = np.random.default_rng(12)
    A = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    C = (A + rng.standard_normal(A.shape)).astype(np.float32)
    assert angle(xp.asarray(A), xp.asarray(C)) == pytest.approx(angle(A, C), abs=1e-9)
    assert angle(xp.asarray(A), xp.asarray(A)) == 0.0
    x, y = batch(rng, 6, dtype=np.float32)
    cpu = real("pfa", dtype="float32")
    dev = real("pfa", dtype="float32")
    if xp is not np:
        dev.to("cuda")
    ref = collect_metrics(cpu, probe=(x, y))
    out = collect_metrics(dev, probe=(x, y))       # host probe arrays are moved to the model
    assert list(out) == list(ref)
    for k, v in ref.items():
        if isinstance(v, float):
            assert out[k] == pytest.approx(v, rel=1e-4, abs=1e-3), k
        else:
            assert out[k] == v, k
