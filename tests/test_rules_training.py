"""End to end: every rule trains a small MLP on a task that needs its hidden layers and a
ResNet-8 on tiny images; the shallow baseline (last layer only) cannot solve the former.

Task "xor": x ~ N(0, I_10), label = [x0 * x1 > 0]. No linear read-out of the input (or of
random features of it, measured: loss ~0.63-0.67 for the shallow baseline over 3 seeds)
solves it; BP reaches ~0.03-0.10 and every rule here ~0.04-0.22 in 300 steps.
"""
import numpy as np
import pytest

from _rules_common import ALL_SPECS, mlp, train_step
from minigrad_pfa.functional.loss import softmax_cross_entropy
from minigrad_pfa.nn.models import finalize, init_model
from minigrad_pfa.nn.resnet import CifarResNet
from minigrad_pfa.optim import SGD
from minigrad_pfa.rules import attach_rules

SPECS = [("bp", "bp")] + list(ALL_SPECS.items())


def xor_data(n=512):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 10)).astype(np.float32)
    return X, (X[:, 0] * X[:, 1] > 0).astype(np.int64)


def blob_images(n=128, classes=4):
    """Class templates (3, 8, 8) plus Gaussian noise of std 3."""
    centers = np.random.default_rng(100).standard_normal((classes, 3, 8, 8))
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    return (centers[y] + 3.0 * rng.standard_normal((n, 3, 8, 8))).astype(np.float32), y


def full_loss(model, X, Y):
    """Loss on the whole set with batch statistics (after a few dozen steps, BN's running
    statistics are not yet a fair summary of the network)."""
    loss, _ = softmax_cross_entropy(model.forward(X), Y)
    model.clear_cache()
    return float(loss)


def fit(model, spec, X, Y, steps, lr, bs, input_shape=None, wd=1e-3):
    attach_rules(model, spec, 0, input_shape=input_shape)
    opt = SGD(list(model.named_parameters(trainable_only=True)), lr=lr, momentum=0.9,
              weight_decay=wd)
    before = full_loss(model, X, Y)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        idx = rng.integers(0, len(Y), bs)
        train_step(model, opt, X[idx], Y[idx])
    return before, full_loss(model, X, Y)


def xor_mlp():
    return mlp(sizes=(10, 32, 32, 2), dtype="float32", seed=0)


@pytest.mark.parametrize("name,spec", SPECS, ids=[k for k, _ in SPECS])
def test_mlp_learns_xor(name, spec):
    X, Y = xor_data()
    before, after = fit(xor_mlp(), spec, X, Y, 300, 0.05, 32)
    assert before > 0.6 and after < 0.35, (before, after)


def test_shallow_baseline_is_worse_than_bp():
    X, Y = xor_data()
    _, bp = fit(xor_mlp(), "bp", X, Y, 300, 0.05, 32)
    _, shallow = fit(xor_mlp(), {"name": "bp", "shallow": True}, X, Y, 300, 0.05, 32)
    assert shallow > 0.55 and bp < 0.5 * shallow, (bp, shallow)


@pytest.mark.parametrize("name,spec", SPECS, ids=[k for k, _ in SPECS])
def test_resnet8_reduces_loss(name, spec):
    X, Y = blob_images()
    model = init_model(finalize(CifarResNet(depth=8, num_classes=4)), 0)
    before, after = fit(model, spec, X, Y, 60, 0.02, 16, input_shape=(3, 8, 8), wd=1e-4)
    assert after < 0.5 * before, (before, after)
