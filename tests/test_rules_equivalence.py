"""Rule invariants: the special cases that must reduce to BP (or to each other) do, and
every rule whose feedback differs from W sends a different error from BP's.

Expected values: BP on the same forward cache (the engine's reference rule, itself
cross-checked against PyTorch in test_rules_torch.py), closed forms (products of
weights), and bitwise equality where the equations are identical.
"""
import numpy as np
import pytest

from _rules_common import (ALL_SPECS, CNN_INPUT, angle, attached, batch, cnn, mlp,
                           train_step, twin_records)
from _util import rel_err
from minigrad_pfa.nn.models import weight_layers
from minigrad_pfa.optim import SGD
from minigrad_pfa.rules import attach_rules, pfa_flops
from minigrad_pfa.rules.pfa import contract_first

BUILDERS = {"mlp": (mlp, (7,), 4), "cnn": (cnn, CNN_INPUT, 3)}


def data(kind, n=6, seed=0):
    _, shape, classes = BUILDERS[kind]
    return batch(shape, classes, n=n, seed=seed)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_fa_with_B_equal_W_is_bitwise_bp(kind):
    model = attached(BUILDERS[kind][0], "fa")
    for layer in weight_layers(model).values():
        layer.feedback_B = layer.weight.data.copy()
    rule, bp = twin_records(model, *data(kind))
    for name in rule:
        assert np.array_equal(rule[name]["delta"], bp[name]["delta"]), name
        assert np.array_equal(rule[name]["gW"], bp[name]["gW"]), name


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("spec", list(ALL_SPECS))
def test_every_rule_differs_from_bp(kind, spec):
    """Negative test: a rule that secretly used W would pass every loss-decrease test."""
    model = attached(BUILDERS[kind][0], ALL_SPECS[spec])
    rule, bp = twin_records(model, *data(kind))
    names = list(weight_layers(model))
    assert rel_err(rule[names[-1]]["delta"], bp[names[-1]]["delta"]) == 0.0  # e is e
    for name in names[:-1]:
        a = angle(rule[name]["delta"], bp[name]["delta"])
        assert a > 1.0, (spec, name, a)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_pfa_o_with_R_equal_BtW_is_bp(kind):
    model = attached(BUILDERS[kind][0], {"name": "pfa", "orthogonal": True})
    for layer in weight_layers(model).values():
        layer.feedback_R.data[...] = contract_first(layer.feedback_B.T, layer.weight.data)
    rule, bp = twin_records(model, *data(kind))
    for name in rule:
        assert rel_err(rule[name]["delta"], bp[name]["delta"]) < 1e-13, name
        assert rel_err(rule[name]["gW"], bp[name]["gW"]) < 1e-13, name


def _train(model, kind, steps=4):
    params = list(model.named_parameters(trainable_only=True))
    opt = SGD(params, lr=0.1, momentum=0.9, weight_decay=0.05)
    return [train_step(model, opt, *data(kind, seed=s)) for s in range(steps)]


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("order", ["literal", "fast"])
def test_pfa_identity_is_kp_bitwise(kind, order):
    kp = attached(BUILDERS[kind][0], "kp")
    pfa = attached(BUILDERS[kind][0], {"name": "pfa", "identity": True, "order": order})
    for a, b in zip(weight_layers(kp).values(), weight_layers(pfa).values()):
        assert np.array_equal(a.feedback_B.data, b.feedback_R.data)  # the same draw
    assert _train(kp, kind) == _train(pfa, kind)
    for a, b in zip(weight_layers(kp).values(), weight_layers(pfa).values()):
        assert np.array_equal(a.weight.data, b.weight.data)
        assert np.array_equal(a.feedback_B.data, b.feedback_R.data)


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("opts", [{"expand_ratio": 3}, {"orthogonal": True},
                                  {"expand_ratio": 2, "feedback_density": 0.5}])
def test_pfa_fast_order_equals_literal(kind, opts):
    lit = attached(BUILDERS[kind][0], dict(name="pfa", order="literal", **opts))
    fast = attached(BUILDERS[kind][0], dict(name="pfa", order="fast", **opts))
    r_lit, _ = twin_records(lit, *data(kind))
    r_fast, _ = twin_records(fast, *data(kind))
    for name in r_lit:
        assert rel_err(r_fast[name]["delta"], r_lit[name]["delta"]) <= 1e-10
    lit_layers, fast_layers = weight_layers(lit), weight_layers(fast)
    for name in lit_layers:
        a, b = lit_layers[name].feedback_R.grad, fast_layers[name].feedback_R.grad
        assert rel_err(b, a) <= 1e-10, name
    # and after a few training steps (the orders' rounding does not drift apart)
    l1, l2 = _train(lit, kind), _train(fast, kind)
    assert rel_err(l2, l1) <= 1e-10
    for name in lit_layers:
        assert rel_err(fast_layers[name].feedback_R.data,
                       lit_layers[name].feedback_R.data) <= 1e-10


def test_dfa_linear_net_with_product_feedback_is_bp():
    """Identity activations and D_l = W_L ... W_l: e @ D_l is exactly BP's error."""
    model = mlp(sizes=(7, 6, 5, 4), act=False)
    attach_rules(model, "dfa", 1)
    layers = list(weight_layers(model).values())
    prod = None
    for layer in reversed(layers):
        prod = layer.weight.data if prod is None else prod @ layer.weight.data
        layer.feedback_D = prod.copy()
    rule, bp = twin_records(model, *data("mlp"))
    for name in rule:
        assert rel_err(rule[name]["delta"], bp[name]["delta"]) < 1e-13, name
        assert rel_err(rule[name]["gW"], bp[name]["gW"]) < 1e-13, name
    # and with random D_l it is not BP (the test above can fail)
    attach_rules(model, "dfa", 1)
    rule, bp = twin_records(model, *data("mlp"))
    assert angle(rule["fc1"]["delta"], bp["fc1"]["delta"]) > 1.0


def test_pfa_flops_formula_and_auto_choice():
    # MNIST MLP hidden layer 784 -> 512, r = 10, batch 64: literal ~6x cheaper
    c = pfa_flops(64, 512, 5120, 784)
    assert c["literal"] == 2 * 64 * 5120 * 512 + 2 * 2 * 64 * 5120 * 784
    assert c["fast"] == 2 * 2 * 512 * 5120 * 784 + 2 * 64 * 512 * 784
    assert 5 < c["fast"] / c["literal"] < 7
    # ResNet-20 16 -> 16 3x3 conv, batch 128 at 32x32: the fast order wins by > 10x
    c = pfa_flops(128 * 32 * 32, 16, 160, 16 * 9)
    assert c["literal"] / c["fast"] > 10
    # first layer (no input error): the delta_in terms vanish
    c = pfa_flops(10, 4, 8, 5, input_error=False)
    assert c == {"literal": 2 * 10 * 8 * 4 + 2 * 10 * 8 * 5, "fast": 2 * 8 * 4 * 5}
    # "auto" is resolved per layer at the first backward
    model = attached(cnn, {"name": "pfa", "expand_ratio": 2})
    layers = weight_layers(model)
    assert all(l.rule.resolved_order is None for l in layers.values())
    twin_records(model, *data("cnn"))
    for layer in layers.values():
        assert layer.rule.resolved_order in ("fast", "literal")


# ----------------------------------------------------------------- PFA initial statistics
def _pfa_layer(out, inp, r=None, density=1.0, seed=0, kernel=None, **opts):
    from collections import OrderedDict
    from minigrad_pfa.nn.layers import Conv2d, Linear, Sequential
    from minigrad_pfa.nn.models import finalize, init_model
    layer = (Linear(inp, out, dtype="float64") if kernel is None else
             Conv2d(inp, out, kernel, 1, 1, dtype="float64"))
    model = init_model(finalize(Sequential(OrderedDict(layer=layer))), seed)
    spec = dict(name="pfa", feedback_density=density, **opts)
    if r is not None:
        spec["expand_ratio"] = r
    attach_rules(model, spec, seed)
    return layer


@pytest.mark.parametrize("r,want_angle,want_ratio", [(1, 45.0, 1.41), (10, 17.5, 1.05)])
def test_pfa_B_gain_gives_the_papers_analytic_alignment(r, want_angle, want_ratio):
    """Figure 3 setup (algorithms.md): out = 100, in = 256, R = B.T W."""
    angles, ratios = [], []
    for seed in range(3):
        layer = _pfa_layer(100, 256, r, seed=seed)
        W, B = layer.weight.data, layer.feedback_B
        P = B @ B.T @ W
        angles.append(angle(W, P))
        ratios.append(np.linalg.norm(P) / np.linalg.norm(W))
    assert abs(np.mean(angles) - want_angle) < 1.0, angles
    assert abs(np.mean(ratios) - want_ratio) < 0.03, ratios


@pytest.mark.parametrize("density", [1.0, 0.3])
def test_pfa_B_is_normalised_and_R_is_xavier(density):
    layer = _pfa_layer(40, 30, 10, density=density, kernel=3)
    B, R = layer.feedback_B, layer.feedback_R.data
    mid = B.shape[1]
    assert B.shape == (40, 400) and R.shape == (400, 30, 3, 3)
    # E[B B.T] = I: mean diagonal ~1 (400 * density terms per row), off-diagonal ~0
    BBt = B @ B.T
    assert abs(np.mean(np.diag(BBt)) - 1.0) < 0.05
    assert abs(np.mean(BBt - np.diag(np.diag(BBt)))) < 0.01
    # R: Xavier-uniform gain 1 with its own fans (ic*kh*kw, mid*kh*kw)
    bound = np.sqrt(6.0 / (30 * 9 + mid * 9))
    assert np.abs(R).max() <= bound and np.abs(R).max() > 0.95 * bound
    # reference value at init: path norm ratio ~ sqrt((fans of W) / (fans of R)), times
    # sqrt(density) when sparse (B's gain compensates its mask, nothing compensates R's)
    ratio = np.linalg.norm(layer.rule.path_matrix(layer)) / np.linalg.norm(layer.weight.data)
    want = np.sqrt((30 * 9 + 40 * 9) / (30 * 9 + mid * 9) * density)
    assert abs(ratio - want) < 0.05 * want
