"""Decay laws of the feedback mismatch (algorithms.md, "Decay laws").

A network is trained on random data with KP or PFA on every layer; the mismatch
``D = W - B`` (KP) or ``D = R - B.T @ W`` (PFA) measured from the arrays must follow the
optimizer's scalar law, iterated here from ``D_0`` alone (no data), to float64 rounding:

    SGD        D <- (1 - lr*lam) D
    momentum   V <- mu V + lam D;  D <- D - lr V               (V_0 = 0: torch's first step)
    Nesterov   V <- mu V + lam D;  D <- D - lr (lam D + mu V)
    AdamW (KP) D <- (1 - lr*lam) D

Negative controls show the comparison can fail: Adam with L2 decay breaks KP, and any
adaptive optimizer breaks PFA.
"""
import numpy as np
import pytest

from _rules_common import CNN_INPUT, attached, batch, cnn, mlp, train_step
from minigrad_pfa.nn.models import weight_layers
from minigrad_pfa.optim import SGD, Adam, AdamW

LR, LAM, MU, STEPS = 0.05, 0.4, 0.9, 25


def law(kind):
    """The scalar recursion on D for optimizer ``kind``: a function D_0 -> [D_0, D_1, ...]."""
    def run(D0):
        D, V, out = D0.copy(), np.zeros_like(D0), [D0.copy()]
        for _ in range(STEPS):
            if kind in ("sgd", "adamw"):
                D = (1.0 - LR * LAM) * D
            else:
                V = MU * V + LAM * D
                D = D - LR * ((LAM * D + MU * V) if kind == "nesterov" else V)
            out.append(D.copy())
        return out
    return run


def make_opt(kind, params):
    if kind == "sgd":
        return SGD(params, lr=LR, weight_decay=LAM)
    if kind in ("momentum", "nesterov"):
        return SGD(params, lr=LR, momentum=MU, weight_decay=LAM, nesterov=kind == "nesterov")
    if kind == "adamw":
        return AdamW(params, lr=LR, weight_decay=LAM)
    return Adam(params, lr=LR, weight_decay=LAM)


def mismatch(layer):
    """D, restricted to R's mask when sparse: a masked R entry stays 0 while (B.T W) there
    follows the data, so the law holds on the mask's support only (R -> mask * B.T W)."""
    D = layer.rule.mismatch(layer)
    mask = layer._buffers.get("feedback_mask_R")
    return D * mask if mask is not None else D.copy()


def trajectory(builder, spec, opt_kind, shape, classes):
    model = attached(builder, spec)
    opt = make_opt(opt_kind, list(model.named_parameters(trainable_only=True)))
    layers = list(weight_layers(model).values())
    Ds = [[mismatch(l)] for l in layers]
    W0 = [l.weight.data.copy() for l in layers]
    for s in range(STEPS):
        train_step(model, opt, *batch(shape, classes, n=8, seed=s))
        for i, l in enumerate(layers):
            Ds[i].append(mismatch(l))
    moved = min(np.linalg.norm(l.weight.data - w0) / np.linalg.norm(w0)
                for l, w0 in zip(layers, W0))
    return Ds, moved


def worst_law_error(Ds, opt_kind):
    worst = 0.0
    for traj in Ds:
        pred = law(opt_kind)(traj[0])
        scale = np.linalg.norm(traj[0])
        worst = max(worst, max(np.linalg.norm(a - b) / scale for a, b in zip(traj, pred)))
    return worst


CASES = [("kp", "sgd"), ("kp", "momentum"), ("kp", "nesterov"), ("kp", "adamw"),
         ({"name": "pfa", "expand_ratio": 2}, "sgd"),
         ({"name": "pfa", "expand_ratio": 2}, "momentum"),
         ({"name": "pfa", "expand_ratio": 2, "order": "literal"}, "nesterov"),
         ({"name": "pfa", "expand_ratio": 2, "order": "fast"}, "nesterov"),
         ({"name": "pfa", "orthogonal": True}, "momentum"),
         ({"name": "pfa", "expand_ratio": 2, "feedback_density": 0.5}, "momentum")]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("spec,opt_kind", CASES)
def test_mismatch_follows_decay_law(kind, spec, opt_kind):
    builder, shape, classes = (mlp, (7,), 4) if kind == "mlp" else (cnn, CNN_INPUT, 3)
    Ds, moved = trajectory(builder, spec, opt_kind, shape, classes)
    assert moved > 1e-2               # the data really moved W: the cancellation is tested
    assert worst_law_error(Ds, opt_kind) < 1e-12
    shrink = max(np.linalg.norm(t[-1]) / np.linalg.norm(t[0]) for t in Ds)
    assert shrink < 0.8               # and D really decayed


@pytest.mark.parametrize("spec,opt_kind", [("kp", "adam"),
                                           ({"name": "pfa", "expand_ratio": 2}, "adamw")])
def test_adaptive_optimizers_break_the_law(spec, opt_kind):
    Ds, _ = trajectory(mlp, spec, opt_kind, (7,), 4)
    assert worst_law_error(Ds, "sgd" if opt_kind == "adamw" else "adamw") > 1e-3
