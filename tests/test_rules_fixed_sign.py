"""The E/I condition of the sign-concordant rules (``fixed_sign``): every forward weight keeps
the sign of W_0; an entry pushed across zero is clipped to 0 and may grow back only in its
original sign; the feedback stays sign(W_t)-based.

The expected behaviour is checked against sign(W_0) saved by the test itself before any
step, never against the rule's own buffer.
"""
import numpy as np
import pytest

from _rules_common import batch, cnn, mlp, train_step, CNN_INPUT
from minigrad_pfa.nn.models import weight_layers
from minigrad_pfa.optim import SGD
from minigrad_pfa.rules import attach_rules
from minigrad_pfa.rules.registry import make_rule, rule_options

SIGN_RULES = ("usf", "frsf", "brsf")


def _train(builder, spec, steps=100, lr=0.5, input_shape=None, watch=None):
    """``steps`` SGD steps (large lr, so that many weights are pushed across zero); calls
    ``watch(layers, W0_signs)`` after every step. Returns (layers, W0 signs)."""
    model = builder(seed=0, dtype="float64")
    attach_rules(model, spec, 1, input_shape=input_shape)
    layers = weight_layers(model)
    s0 = {n: np.sign(l.weight.data).copy() for n, l in layers.items()}
    opt = SGD(list(model.named_parameters(trainable_only=True)), lr=lr, momentum=0.9)
    shape, classes = (CNN_INPUT, 3) if builder is cnn else ((7,), 4)
    for t in range(steps):
        x, y = batch(shape, classes, n=16, seed=t)
        train_step(model, opt, x, y)
        if watch is not None:
            watch(layers, s0)
    return layers, s0


def _flipped(layers, s0) -> int:
    """Entries whose sign is the opposite of their initial sign."""
    return sum(int(np.sum(np.sign(l.weight.data) * s0[n] < 0)) for n, l in layers.items())


@pytest.mark.parametrize("name", SIGN_RULES)
@pytest.mark.parametrize("builder", [mlp, cnn], ids=["mlp", "cnn"])
def test_no_weight_ever_changes_sign_over_100_steps(name, builder):
    zeros = []

    def watch(layers, s0):
        assert _flipped(layers, s0) == 0
        zeros.append(sum(int(np.sum(l.weight.data == 0)) for l in layers.values()))

    _train(builder, {"name": name, "fixed_sign": True},
           input_shape=CNN_INPUT if builder is cnn else None, watch=watch)
    assert max(zeros) > 0      # the constraint was active: some entries were clipped


@pytest.mark.parametrize("builder", [mlp, cnn], ids=["mlp", "cnn"])
def test_without_fixed_sign_the_same_training_flips_signs(builder):
    """Negative control: the setting above does push weights across zero."""
    layers, s0 = _train(builder, "usf", input_shape=CNN_INPUT if builder is cnn else None)
    assert _flipped(layers, s0) > 0


def _single_linear(spec):
    model = mlp(sizes=(3, 2), act=False)
    attach_rules(model, spec, 1)
    return weight_layers(model)["fc"]


@pytest.mark.parametrize("name", SIGN_RULES)
def test_clipped_entry_grows_back_in_its_original_sign_only(name):
    layer = _single_linear({"name": name, "fixed_sign": True})
    W = layer.weight.data
    ref = id(W)
    s = np.sign(W[0, 0])
    others = W.copy()
    W[0, 0] -= s * (abs(W[0, 0]) + 0.2)          # an update across zero ...
    layer.rule.after_step(layer)
    assert W[0, 0] == 0.0                          # ... is clipped to 0,
    assert np.array_equal(W.ravel()[1:], others.ravel()[1:])   # the rest untouched
    assert id(layer.weight.data) == ref            # in place (the optimizer's array)
    assert layer.rule.feedback_matrix(layer)[0, 0] == 0.0   # sign(W_t) = 0 feeds back 0
    W[0, 0] -= s * 0.1                             # pushed further the wrong way: still 0
    layer.rule.after_step(layer)
    assert W[0, 0] == 0.0
    W[0, 0] += s * 0.3                             # pushed the original way: it grows
    layer.rule.after_step(layer)
    assert W[0, 0] == pytest.approx(s * 0.3)
    assert np.sign(layer.rule.feedback_matrix(layer)[0, 0]) == s


def test_feedback_is_the_usual_sign_matrix():
    """fixed_sign changes only the forward update: the feedback of the same W is uSF's."""
    a = _single_linear({"name": "usf", "fixed_sign": True})
    b = _single_linear("usf")
    assert np.array_equal(a.weight.data, b.weight.data)
    assert np.array_equal(a.rule.feedback_matrix(a), b.rule.feedback_matrix(b))


def test_with_const_signs_kept_and_norm_restored():
    layer = _single_linear({"name": "usf", "fixed_sign": True, "const": True})
    W = layer.weight.data
    n0, s0 = np.linalg.norm(W), np.sign(W).copy()
    W[0, 0] = -s0[0, 0] * 0.5
    W[1, 1] *= 3.0
    layer.rule.after_step(layer)
    assert W[0, 0] == 0.0 and np.all(np.sign(W) * s0 >= 0)
    assert np.linalg.norm(W) == pytest.approx(n0, rel=1e-12)


def test_option_registered_and_validated():
    for name in SIGN_RULES:
        assert rule_options(name)["fixed_sign"] is False
        assert make_rule(name, fixed_sign=True).describe() == f"{name}(fixed_sign=True)"
    with pytest.raises(ValueError, match="fixed_sign.*true or false"):
        make_rule("usf", fixed_sign="yes please")
    with pytest.raises(ValueError, match="does not take option"):
        make_rule("fa", fixed_sign=True)


def test_sign_of_w0_is_part_of_the_saved_state():
    """A resumed run must clip against the signs of the original W_0, not of W at resume."""
    model = mlp(sizes=(3, 2), act=False)
    attach_rules(model, {"name": "usf", "fixed_sign": True}, 1)
    layer = weight_layers(model)["fc"]
    s0 = np.sign(layer.weight.data).copy()
    state = model.state_dict()
    layer.weight.data[...] = -layer.weight.data      # every sign flipped ...
    model.load_state_dict(state)                      # ... and the checkpoint restored
    assert np.array_equal(state["fc.feedback_w0_sign"], s0)
    layer.weight.data[0, 0] = -s0[0, 0]
    layer.rule.after_step(layer)
    assert layer.weight.data[0, 0] == 0.0
