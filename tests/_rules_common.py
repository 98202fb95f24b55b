"""Helpers shared by the tests of minigrad_pfa.rules (tiny models, one training step, angles)."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from minigrad_pfa.functional.loss import softmax_cross_entropy
from minigrad_pfa.nn.layers import Conv2d, Flatten, Linear, ReLU, Sequential
from minigrad_pfa.nn.models import finalize, init_model, weight_layers
from minigrad_pfa.nn.module import BackwardContext
from minigrad_pfa.rules import BP, attach_rules

#: one spec per rule and variant exercised by the suite
ALL_SPECS = OrderedDict([
    ("fa", "fa"), ("dfa", "dfa"), ("dfa_dense", {"name": "dfa", "conv": "dense"}),
    ("usf", "usf"), ("brsf", "brsf"), ("frsf", "frsf"),
    ("usf_sn", {"name": "usf", "norm": "sn"}), ("frsf_init", {"name": "frsf", "norm": "init"}),
    ("kp", "kp"), ("wm", "wm"),
    ("pfa", {"name": "pfa", "expand_ratio": 3}),
    ("pfa_o", {"name": "pfa", "orthogonal": True}),
    ("pfa_id", {"name": "pfa", "identity": True}),
    ("pfa_sparse", {"name": "pfa", "expand_ratio": 2, "feedback_density": 0.5}),
])


def mlp(sizes=(7, 6, 5, 4), seed=0, dtype="float64", act=True):
    """Linear layers ``fc1 .. fc`` with ReLUs between them (none with ``act=False``)."""
    layers = OrderedDict()
    n = len(sizes) - 1
    for i in range(n):
        name = "fc" if i == n - 1 else f"fc{i + 1}"
        layers[name] = Linear(sizes[i], sizes[i + 1], dtype=dtype)
        if act and i < n - 1:
            layers[f"relu{i + 1}"] = ReLU()
    return init_model(finalize(Sequential(layers)), seed)


def cnn(seed=0, dtype="float64", classes=3):
    """conv(2->3, k3, s2, p1) - ReLU - conv(3->4, k3, s1, p1) - ReLU - conv(4->5, k2, s1, p0)
    - ReLU - flatten - fc(5*3*3 -> classes); input (n, 2, 7, 7)."""
    layers = OrderedDict([
        ("conv1", Conv2d(2, 3, 3, 2, 1, dtype=dtype)), ("relu1", ReLU()),
        ("conv2", Conv2d(3, 4, 3, 1, 1, dtype=dtype)), ("relu2", ReLU()),
        ("conv3", Conv2d(4, 5, 2, 1, 0, dtype=dtype)), ("relu3", ReLU()),
        ("flatten", Flatten()), ("fc", Linear(5 * 3 * 3, classes, dtype=dtype))])
    return init_model(finalize(Sequential(layers)), seed)


CNN_INPUT = (2, 7, 7)


def batch(shape, classes, n=6, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + tuple(shape)).astype(dtype)
    y = rng.integers(0, classes, size=n)
    return x, y


def backward(model, x, y, rule_override=None):
    """One forward + backward; returns ``(record, loss, e)`` (record: per layer delta, gW)."""
    logits = model.forward(x)
    loss, e = softmax_cross_entropy(logits, y)
    ctx = BackwardContext(output_error=e, rule_override=rule_override, record={})
    model.backward(e, ctx)
    return ctx.record, float(loss), e


def twin_records(model, x, y):
    """Records of the model's own rules and of BP on the same forward cache."""
    rec, _, e = backward(model, x, y)
    rec = {k: {kk: None if vv is None else vv.copy() for kk, vv in v.items()}
           for k, v in rec.items()}
    # the BP twin reuses the forward cache of the same batch
    ctx = BackwardContext(output_error=e, rule_override=BP(), record={})
    model.backward(e, ctx)
    return rec, ctx.record


def train_step(model, opt, x, y) -> float:
    layers = weight_layers(model).values()
    for layer in layers:
        layer.rule.before_step(layer)
    logits = model.forward(x)
    loss, e = softmax_cross_entropy(logits, y)
    model.backward(e, BackwardContext(output_error=e))
    opt.step()
    for layer in layers:
        layer.rule.after_step(layer)
    return float(loss)


def angle(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    c = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def attached(builder, spec, seed=0, rule_seed=1, **kw):
    model = builder(seed=seed, **kw)
    input_shape = CNN_INPUT if builder is cnn else None
    attach_rules(model, spec, rule_seed, input_shape=input_shape)
    return model
