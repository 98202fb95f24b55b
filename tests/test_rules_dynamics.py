"""How feedback state evolves: sign-concordant rules track W's signs, frSF's magnitudes
are fixed, brSF redraws reproducibly, sparse masks stay exactly zero, WM aligns B with W."""
import math

import numpy as np
import pytest

from _rules_common import CNN_INPUT, angle, attached, batch, cnn, mlp, train_step
from minigrad_pfa.nn.models import weight_layers
from minigrad_pfa.optim import SGD

BUILDERS = {"mlp": (mlp, (7,), 4), "cnn": (cnn, CNN_INPUT, 3)}


def sgd(model, **kw):
    kw = {"lr": 0.2, "momentum": 0.9, "weight_decay": 0.01, **kw}
    return SGD(list(model.named_parameters(trainable_only=True)), **kw)


def steps(model, kind, n, opt=None, seed0=0):
    _, shape, classes = BUILDERS[kind]
    opt = opt or sgd(model)
    return [train_step(model, opt, *batch(shape, classes, n=6, seed=seed0 + s))
            for s in range(n)]


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_usf_follows_sign_flips(kind):
    model = attached(BUILDERS[kind][0], "usf")
    for layer in weight_layers(model).values():
        W = layer.weight.data
        s = math.sqrt(2.0 / (layer.fan_in + layer.fan_out))
        flip = np.random.default_rng(0).random(W.shape) < 0.5
        W[flip] *= -1.0
        M = layer.rule.path_matrix(layer)
        assert np.array_equal(np.sign(M), np.sign(W))
        assert np.array_equal(M, s * np.sign(W))


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_frsf_magnitudes_never_change(kind):
    model = attached(BUILDERS[kind][0], "frsf")
    layers = weight_layers(model)
    M0 = {n: l.feedback_M0.copy() for n, l in layers.items()}
    signs_before = {n: np.sign(l.weight.data) for n, l in layers.items()}
    steps(model, kind, 30, sgd(model, lr=1.0))
    flipped = 0
    for n, l in layers.items():
        M = l.rule.path_matrix(l)
        assert np.array_equal(l.feedback_M0, M0[n])
        assert np.array_equal(np.abs(M), np.abs(M0[n]))
        assert np.array_equal(np.sign(M), np.sign(l.weight.data))
        flipped += int(np.sum(np.sign(l.weight.data) != signs_before[n]))
    assert flipped > 0   # training did flip signs, so "follows W" was exercised


def test_brsf_redraws_every_step_reproducibly():
    def draws(rule_seed, n_steps):
        model = attached(mlp, "brsf", rule_seed=rule_seed)
        layer = weight_layers(model)["fc2"]
        out = []
        opt = sgd(model)
        for s in range(n_steps):
            train_step(model, opt, *batch((7,), 4, seed=s))
            # the matrix used in this step's backward: layer.cache holds |M_t| of t = s + 1
            out.append(np.abs(layer.rule.path_matrix(layer)))
        return out, int(layer.feedback_draws)
    a, t = draws(3, 4)
    b, _ = draws(3, 4)
    c, _ = draws(4, 4)
    assert t == 4
    assert all(np.array_equal(x, y) for x, y in zip(a, b))          # reproducible
    assert all(not np.array_equal(x, y) for x, y in zip(a, a[1:]))  # new draw every step
    assert not np.array_equal(a[0], c[0])                           # seed matters


SPARSE = [{"name": "fa", "feedback_density": 0.3}, {"name": "dfa", "feedback_density": 0.3},
          {"name": "usf", "feedback_density": 0.3}, {"name": "frsf", "feedback_density": 0.3},
          {"name": "brsf", "feedback_density": 0.3},
          {"name": "pfa", "expand_ratio": 2, "feedback_density": 0.3},
          {"name": "pfa", "expand_ratio": 2, "feedback_density": 0.3, "order": "fast"}]


@pytest.mark.parametrize("spec", SPARSE)
def test_sparse_masks_stay_exactly_zero(spec):
    model = attached(cnn, spec)
    layers = weight_layers(model)
    steps(model, "cnn", 100, sgd(model, lr=0.05, momentum=0.9, weight_decay=0.05))
    kept = total = 0
    for l in layers.values():
        if spec["name"] == "pfa":
            pairs = [(l.feedback_B, l.feedback_mask_B), (l.feedback_R.data, l.feedback_mask_R)]
            assert np.any(l.feedback_R.data != 0)
        else:
            M = l.feedback_D if spec["name"] == "dfa" else l.rule.path_matrix(l)
            pairs = [(M, l.feedback_mask)]
        for arr, mask in pairs:
            assert mask.dtype == np.bool_ and arr.shape == mask.shape
            assert np.all(arr[~mask] == 0.0)
            kept += int(mask.sum())
            total += mask.size
    assert 0.2 < kept / total < 0.4


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_wm_drives_angle_down(kind):
    builder = mlp if kind == "linear" else cnn
    model = attached(builder, "wm")
    layer = weight_layers(model)["fc2" if kind == "linear" else "conv2"]
    _, shape, classes = BUILDERS["mlp" if kind == "linear" else "cnn"]
    x, y = batch(shape, classes, n=32)
    from _rules_common import backward
    backward(model, x, y)             # the mirror copies the training batch's input shape
    start = angle(layer.feedback_B, layer.weight.data)
    for _ in range(150):
        layer.rule.mirror_step(layer)
    end = angle(layer.feedback_B, layer.weight.data)
    assert start > 60.0 and end < 12.0, (start, end)
    ratio = np.linalg.norm(layer.feedback_B) / np.linalg.norm(layer.weight.data)
    assert 0.8 < ratio < 1.25        # defaults: B -> (sigma^2 / lam) W = W


def test_wm_tracks_w_during_training():
    model = attached(mlp, {"name": "wm", "mirror_batch": 64})
    layers = weight_layers(model)
    before = angle(layers["fc2"].feedback_B, layers["fc2"].weight.data)
    steps(model, "mlp", 120, sgd(model, lr=0.05))
    after = angle(layers["fc2"].feedback_B, layers["fc2"].weight.data)
    assert before > 60.0 and after < 20.0, (before, after)
    assert int(layers["fc2"].feedback_mirror_count) == 120


@pytest.mark.parametrize("spec", ["fa", "dfa", "usf", "brsf", "frsf",
                                  {"name": "pfa", "expand_ratio": 3}])
def test_explicit_density_one_is_the_dense_rule_bitwise(spec):
    """``feedback_density: 1.0`` is the dense rule itself: the same feedback draws and the
    same training trajectory, bit for bit. The report relies on this to show E1's runs as
    E4's rho = 1 point (E4 is E1 with a density)."""
    base = {"name": spec} if isinstance(spec, str) else dict(spec)
    models = [attached(cnn, base), attached(cnn, dict(base, feedback_density=1.0))]
    states = [m.state_dict() for m in models]
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert np.array_equal(states[0][k], states[1][k]), k
    opts = [SGD(list(m.named_parameters(trainable_only=True)), lr=0.05, momentum=0.9,
                weight_decay=1e-3) for m in models]
    x, y = batch(CNN_INPUT, 3)
    for _ in range(3):
        losses = [train_step(m, o, x, y) for m, o in zip(models, opts)]
        assert losses[0] == losses[1]
    states = [m.state_dict() for m in models]
    for k in states[0]:
        assert np.array_equal(states[0][k], states[1][k]), k
