"""WM's ``akrout`` variant and KP against Akrout et al. (2019)'s reference code.

The "reference" functions below are independent transcriptions of their NumPy code
(column layout: ``W`` (out, in), activations (features, batch), ``back_w`` (in, out) =
the engine's ``B.T``), written from the paper's repository, not from the engine.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from minigrad_pfa.nn.layers import Conv2d, Linear
from minigrad_pfa.optim.sgd import SGD
from minigrad_pfa.rules import make_rule
from minigrad_pfa.rules.wm_compare import compare_mirrors


def their_mirror_step(back_w, w, b, noise_x, lr):
    """One inner iteration of FCNN_WM.mirror for one layer (their code, column layout):
    ``noise_y = sigmoid(w @ noise_x + b); back_w += lr * noise_x @ noise_y.T``."""
    noise_y = 1.0 / (1.0 + np.exp(-(np.matmul(w, noise_x) + b)))
    return back_w + lr * np.matmul(noise_x, noise_y.T)


def wm_layer(out=6, inp=9, batch=5, bias=True, **opts):
    layer = Linear(inp, out, bias=bias, dtype="float64")
    g = np.random.default_rng(3)
    layer.weight.data[...] = g.standard_normal((out, inp)) * 0.4
    if bias:
        layer.bias.data[...] = g.standard_normal(out) * 0.5
    layer.rule = make_rule("wm", variant="akrout", **opts)
    layer.rule.attach(layer, np.random.default_rng([0, 1, 0]))
    x = g.standard_normal((batch, inp))
    delta = g.standard_normal((batch, out))
    return layer, x, delta


@pytest.mark.parametrize("bias", [True, False])
def test_akrout_mirror_step_equals_their_code(bias):
    layer, x, delta, = wm_layer(bias=bias, pretrain_steps=0, mirror_lr=0.03)
    layer.forward(x)
    layer.backward(delta)               # records the batch size; no pre-training
    assert int(layer.feedback_mirror_count) == 0
    W = layer.weight.data.copy()
    b = (layer.bias.data.copy() if bias else np.zeros(W.shape[0]))[:, None]
    back_w = layer.feedback_B.T.copy()
    for t in (1, 2, 3):
        xi = layer.rule.noise(layer, t)                 # (n, in) = their noise_x.T
        assert xi.shape == (5, 9)
        back_w = their_mirror_step(back_w, W, b, xi.T, 0.03)
        layer.rule.mirror_step(layer)
        np.testing.assert_allclose(layer.feedback_B, back_w.T, rtol=1e-13, atol=1e-15)


def test_akrout_noise_is_their_uniform():
    layer, x, delta = wm_layer(inp=400, batch=250, pretrain_steps=0, noise_amplitude=0.3)
    layer.forward(x)
    layer.backward(delta)
    xi = layer.rule.noise(layer, 1)
    assert xi.min() >= -0.15 and xi.max() < 0.15
    assert abs(xi.mean()) < 0.003                          # 1e5 draws, std 0.087
    assert abs(xi.var() / (0.09 / 12) - 1) < 0.02          # Var = a^2 / 12
    np.testing.assert_array_equal(xi, layer.rule.noise(layer, 1))   # a pure function of t
    assert not np.array_equal(xi, layer.rule.noise(layer, 2))


def test_akrout_pretraining_runs_before_b_is_first_used():
    layer, x, delta = wm_layer(pretrain_steps=7)
    W = layer.weight.data.copy()
    b = layer.bias.data.copy()[:, None]
    back_w = layer.feedback_B.T.copy()
    layer.forward(x)
    dx = layer.backward(delta)
    assert int(layer.feedback_mirror_count) == 7
    for t in range(1, 8):
        back_w = their_mirror_step(back_w, W, b, layer.rule.noise(layer, t).T, 0.01)
    np.testing.assert_allclose(layer.feedback_B, back_w.T, rtol=1e-13, atol=1e-15)
    # the first input error already uses the mirrored B (theirs: mirror before training)
    np.testing.assert_allclose(dx, delta @ back_w.T, rtol=1e-13)
    layer.rule.after_step(layer)         # then one mirror step per SGD step
    layer.backward(delta)                # no second pre-training phase
    assert int(layer.feedback_mirror_count) == 8


def test_akrout_defaults_init_and_registry():
    rule = make_rule("wm", variant="akrout")
    o = rule.options
    assert (o["mirror_lr"], o["mirror_decay"], o["noise_amplitude"], o["pretrain_steps"],
            o["mirror_steps"], o["noise_std"]) == (0.01, 0.0, 0.1, 468, 1, None)
    assert rule.describe() == "wm(variant='akrout')"
    assert make_rule("wm").describe() == "wm"
    assert make_rule("wm", variant="akrout", mirror_lr=0.02).describe() == \
        "wm(mirror_lr=0.02, variant='akrout')"
    # B_0 ~ N(0, 1/(in + out)), their backward_weights init
    layer = Linear(300, 200, dtype="float64")
    rule.attach(layer, np.random.default_rng(5))
    B = layer.feedback_B
    assert abs(B.mean()) < 3 * math.sqrt(1 / 500 / B.size)
    assert abs(B.std() / math.sqrt(1 / 500) - 1) < 0.01
    assert abs(np.mean(np.abs(B)) / (B.std() * math.sqrt(2 / math.pi)) - 1) < 0.01  # Gaussian


@pytest.mark.parametrize("opts, match", [
    ({"variant": "akrout", "noise_std": 1.0}, "noise_amplitude"),
    ({"noise_amplitude": 0.1}, "noise_std"),
    ({"variant": "mirror"}, "variant"),
    ({"variant": "akrout", "pretrain_steps": -1}, "pretrain_steps"),
    ({"variant": "akrout", "noise_amplitude": 0.0}, "noise_amplitude"),
])
def test_akrout_option_errors(opts, match):
    with pytest.raises(ValueError, match=match):
        make_rule("wm", **opts)


def test_akrout_rejects_conv_layers():
    layer = Conv2d(2, 3, 3, dtype="float64")
    with pytest.raises(ValueError, match="Linear layers only"):
        make_rule("wm", variant="akrout").attach(layer, np.random.default_rng(0))


def test_rules_command_lists_effective_defaults(capsys):
    from minigrad_pfa.cli import main
    assert main(["rules"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if "variant=" in ln][0]
    for text in ("mirror_lr=0.05 (ema) / 0.01 (akrout)", "variant='ema'",
                 "noise_amplitude=0.1 (akrout)", "pretrain_steps=0 (ema) / 468 (akrout)"):
        assert text in line


def test_the_documented_consequences_hold():
    """docs/rules.md: akrout's B grows without bound along diag(s'(b)) W, slowly, with a
    rank-one residual s(b) (sum of noise)^T; ema's B settles at ||W|| with its angle floor."""
    r = compare_mirrors(out=20, inp=40, batch=128, checkpoints=(468, 2000, 8000),
                        bias_std=2.0)
    ema, ak = r["ema"], r["akrout"]
    for row in ema:
        assert 0.85 < row["norm_ratio"] < 1.15
        assert 0.6 * r["floor_deg"] < row["angle_W"] < 1.5 * r["floor_deg"]
    assert ak[-1]["norm_ratio"] > 1.6 * ak[1]["norm_ratio"] > 1.6 * ak[0]["norm_ratio"]          # unbounded norm
    angles = [row["angle_target"] for row in ak]
    assert angles[0] > angles[1] > angles[2] > 2 * ema[-1]["angle_W"]   # slow
    assert ak[-1]["angle_target"] < ak[-1]["angle_W"] - 3    # towards diag(s'(b)) W, not W
    assert all(row["rank1"] > 0.95 for row in ak)            # the residual is rank one


def their_kp_step(w, back_w, delta, a, lr, wd):
    """FCNN_KP.train's update (column layout, del_w = delta @ a.T, already /batch here):
    ``w <- wd*w - lr*del_w``; ``back_w <- wd*back_w - lr*del_w.T``."""
    del_w = np.matmul(delta, a.T)
    return wd * w - lr * del_w, wd * back_w - lr * del_w.T


def test_kp_equals_their_update_under_sgd_with_decay():
    lr, lam = 0.1, 0.3
    g = np.random.default_rng(11)
    layer = Linear(7, 4, bias=False, dtype="float64")
    layer.weight.data[...] = g.standard_normal((4, 7))
    layer.rule = make_rule("kp")
    layer.rule.attach(layer, np.random.default_rng(2))
    opt = SGD([("w", layer.weight), ("b", layer.feedback_B)], lr=lr, weight_decay=lam)
    w, back_w = layer.weight.data.copy(), layer.feedback_B.data.T.copy()
    for _ in range(6):
        x, delta = g.standard_normal((5, 7)), g.standard_normal((5, 4))
        layer.forward(x)
        dx = layer.backward(delta)
        np.testing.assert_allclose(dx.T, back_w @ delta.T, rtol=1e-12)   # their back pass
        opt.step()
        w, back_w = their_kp_step(w, back_w, delta.T, x.T, lr, 1.0 - lr * lam)
        np.testing.assert_allclose(layer.weight.data, w, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(layer.feedback_B.data, back_w.T, rtol=1e-12, atol=1e-14)


def test_crosscheck_akrout_cases_match_their_code():
    """The catalogue's akrout mirror cases: expected B = their FCNN_WM.mirror loop on the
    stored W, b, B and noise (plus the decay option, 0 in their code)."""
    from minigrad_pfa.crosscheck import catalogue
    entries = [p.build() for p in catalogue.pending_cases(["wm"]) if "akrout" in p.id]
    assert len(entries) == 16
    for e in entries:
        a, o = e.case.inputs, e.case.options
        W = a["weight"]
        b = (a["bias"] if "bias" in a else np.zeros(W.shape[0]))[:, None]
        back_w = a["B"].T.copy()
        for xi in a["noise"]:
            back_w = (1 - o["mirror_lr"] * o["mirror_decay"]) * back_w
            back_w = their_mirror_step(back_w, W, b, xi.T, o["mirror_lr"])
        tol = 1e-12 if e.case.dtype == "float64" else 2e-6
        np.testing.assert_allclose(e.expected["B"], back_w.T, rtol=tol, atol=tol, err_msg=e.case.id)
        assert np.abs(a["noise"]).max() <= o["noise_amplitude"] / 2


def test_akrout_trains_an_mlp_and_resumes_without_a_second_pretraining():
    """Through attach_rules and training steps: the pre-training phase runs once per layer
    at the first backward, then one mirror step per optimizer step; a state-dict copy
    (a checkpoint) carries the count, so a restored model does not pre-train again."""
    from _rules_common import attached, batch, mlp, train_step
    from minigrad_pfa.nn.models import weight_layers

    spec = {"name": "wm", "variant": "akrout", "pretrain_steps": 25}
    model = attached(mlp, spec)
    opt = SGD(list(model.named_parameters(trainable_only=True)), lr=0.1)
    losses = [train_step(model, opt, *batch((7,), 4, n=6, seed=s)) for s in range(4)]
    assert all(np.isfinite(losses))
    counts = {n: int(l.feedback_mirror_count) for n, l in weight_layers(model).items()}
    assert counts == {n: 25 + 4 for n in counts}
    other = attached(mlp, spec)
    other.load_state_dict(model.state_dict())
    opt2 = SGD(list(other.named_parameters(trainable_only=True)), lr=0.1)
    train_step(other, opt2, *batch((7,), 4, n=6, seed=9))
    assert all(int(l.feedback_mirror_count) == 30 for l in weight_layers(other).values())
