"""Every rule's layer operator re-derived with PyTorch operations from the equations
(float64), on a Linear layer and on a strided, padded, non-square Conv2d layer.

The expected values are computed from the feedback arrays the rule stored on the layer
(or from the documented recipe for per-step draws), with torch's own conv gradients
(torch.nn.grad.conv2d_input / conv2d_weight), never with the engine's functions.
"""
import math
from collections import OrderedDict

import numpy as np
import pytest

from _util import rel_err
from minigrad_pfa.nn.layers import Conv2d, Linear, Sequential
from minigrad_pfa.nn.models import finalize, init_model
from minigrad_pfa.nn.module import BackwardContext
from minigrad_pfa.rules import attach_rules

torch = pytest.importorskip("torch")
tgrad = torch.nn.grad

STRIDE, PAD = (2, 1), (1, 0)
X_SHAPE = {"linear": (6, 5), "conv": (5, 3, 7, 6)}


def single(kind):
    layer = (Linear(5, 4, dtype="float64") if kind == "linear" else
             Conv2d(3, 4, (3, 2), STRIDE, PAD, dtype="float64"))
    model = init_model(finalize(Sequential(OrderedDict(layer=layer))), 0)
    return model, layer


def T(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float64)))


def t_input_error(kind, M, delta, x_shape):
    """delta_in = delta @ M (conv: transposed convolution with kernel M)."""
    if kind == "linear":
        return (T(delta) @ T(M)).numpy()
    return tgrad.conv2d_input(x_shape, T(M), T(delta), stride=STRIDE, padding=PAD).numpy()


def t_weight_grad(kind, delta, x, shape):
    """gK = delta.T @ x (conv: weight gradient of (x, delta))."""
    if kind == "linear":
        return (T(delta).T @ T(x)).numpy()
    return tgrad.conv2d_weight(T(x), shape, T(delta), stride=STRIDE, padding=PAD).numpy()


def run(kind, spec, steps_before=1, scale_w=1.0):
    """Attach ``spec``, (optionally rescale W, as training would), do one forward/backward
    with random delta and e; return the layer, x, delta, e, the current W and delta_in."""
    model, layer = single(kind)
    attach_rules(model, spec, 3, input_shape=X_SHAPE[kind][1:])
    layer.weight.data *= scale_w
    layer.needs_input_error = True  # a lone first layer would skip its input error
    for _ in range(steps_before):
        layer.rule.before_step(layer)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(X_SHAPE[kind])
    y = model.forward(x)
    delta = rng.standard_normal(y.shape)
    e = rng.standard_normal((x.shape[0], 4))
    W0 = layer.weight.data.copy()
    dx = layer.backward(delta, BackwardContext(output_error=e))
    return layer, x, delta, e, W0, dx


KINDS = ["linear", "conv"]


def check(kind, layer, x, delta, dx, M):
    assert dx.dtype == np.float64
    assert rel_err(dx, t_input_error(kind, M, delta, x.shape)) < 1e-12
    gW = t_weight_grad(kind, delta, x, layer.weight_shape)
    assert rel_err(layer.weight.grad, gW) < 1e-12
    return gW


@pytest.mark.parametrize("kind", KINDS)
def test_bp(kind):
    layer, x, delta, _, W, dx = run(kind, "bp")
    check(kind, layer, x, delta, dx, W)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("density", [1.0, 0.4])
def test_fa(kind, density):
    layer, x, delta, _, W, dx = run(kind, {"name": "fa", "feedback_density": density})
    B = layer.feedback_B
    check(kind, layer, x, delta, dx, B)
    a = math.sqrt(6.0 / (layer.fan_in + layer.fan_out))  # Xavier bound of W's shape
    assert np.abs(B).max() <= a
    if density < 1:
        assert np.array_equal(B == 0, ~layer.feedback_mask)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spec", [{"name": "dfa"}, {"name": "dfa", "conv": "dense"},
                                  {"name": "dfa", "feedback_density": 0.5}])
def test_dfa(kind, spec):
    layer, x, delta, e, W, dx = run(kind, spec)
    D = layer.feedback_D
    n = x.shape[0]
    if kind == "linear" or spec.get("conv") == "dense":
        want = (T(e) @ T(D)).reshape(x.shape).numpy()
        assert D.shape == (4, int(np.prod(x.shape[1:])))
    else:
        oh, ow = delta.shape[2:]
        e_grid = T(e)[:, :, None, None].expand(n, 4, oh, ow)
        want = tgrad.conv2d_input(x.shape, T(D), e_grid, stride=STRIDE, padding=PAD).numpy()
        assert D.shape == (4,) + layer.weight_shape[1:]
    assert rel_err(dx, want) < 1e-12
    assert rel_err(layer.weight.grad, t_weight_grad(kind, delta, x, layer.weight_shape)) < 1e-12
    if "feedback_density" in spec:
        assert np.all(D[~layer.feedback_mask] == 0)


def sign_magnitude(name, layer):
    """|magnitude| of the SF rules from the stored state / the documented brSF recipe."""
    if name == "usf":
        return math.sqrt(2.0 / (layer.fan_in + layer.fan_out))
    if name == "frsf":
        return np.abs(layer.feedback_M0)
    t = int(layer.feedback_draws)
    k0, k1 = (int(v) for v in layer.feedback_key)
    a = math.sqrt(6.0 / (layer.fan_in + layer.fan_out))
    return np.abs(np.random.default_rng([k0, k1, t]).uniform(-a, a, layer.weight_shape))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["usf", "frsf", "brsf"])
@pytest.mark.parametrize("opts", [{}, {"norm": "sn"}, {"norm": "init"},
                                  {"feedback_density": 0.5}, {"batch_manhattan": True}])
def test_sign_concordant(kind, name, opts):
    layer, x, delta, _, W, dx = run(kind, dict(name=name, **opts), steps_before=2,
                                    scale_w=1.7)
    A = sign_magnitude(name, layer) * np.sign(W)
    if opts.get("norm") == "sn":      # the current norm
        A = A * np.linalg.norm(W) / np.linalg.norm(A)
    if opts.get("norm") == "init":    # the norm at attach time, before the rescaling
        A = A * (np.linalg.norm(W) / 1.7) / np.linalg.norm(A)
    if "feedback_density" in opts:
        A = A * layer.feedback_mask
    assert rel_err(dx, t_input_error(kind, A, delta, x.shape)) < 1e-12
    gW = t_weight_grad(kind, delta, x, layer.weight_shape)
    if opts.get("batch_manhattan"):
        assert np.array_equal(layer.weight.grad, np.sign(gW))
        assert np.array_equal(layer.bias.grad, np.sign(T(delta).sum(
            dim=tuple(i for i in range(delta.ndim) if i != 1)).numpy()))
    else:
        assert rel_err(layer.weight.grad, gW) < 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_const_keeps_initial_norm(kind):
    layer, x, delta, _, W0, dx = run(kind, {"name": "usf", "const": True})
    W = layer.weight.data
    ref = id(W)
    W -= 0.3 * layer.weight.grad      # an optimizer step changes the norm ...
    assert abs(np.linalg.norm(W) - np.linalg.norm(W0)) > 1e-3
    layer.rule.after_step(layer)      # ... and Const restores it, in the same array
    assert id(layer.weight.data) == ref
    assert abs(np.linalg.norm(W) / np.linalg.norm(W0) - 1.0) < 1e-14


@pytest.mark.parametrize("kind", KINDS)
def test_kp(kind):
    layer, x, delta, _, W, dx = run(kind, "kp")
    B = layer.feedback_B
    gW = check(kind, layer, x, delta, dx, B.data)
    assert np.array_equal(B.grad, layer.weight.grad)   # gB = gW, same values
    assert B.grad is not layer.weight.grad              # ... in a separate array
    assert rel_err(B.grad, gW) < 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_wm_operator_and_mirror_step(kind):
    eta, lam, sigma = 0.2, 0.5, 0.7
    layer, x, delta, _, W, dx = run(kind, {"name": "wm", "mirror_lr": eta, "mirror_decay": lam,
                                           "noise_std": sigma, "mirror_batch": 4})
    B0 = layer.feedback_B.copy()
    check(kind, layer, x, delta, dx, B0)
    layer.rule.after_step(layer)       # one mirror step (t = 1)
    k0, k1 = (int(v) for v in layer.feedback_key)
    g = np.random.default_rng([k0, k1, 1])
    if kind == "linear":
        xi = sigma * g.standard_normal((4, 5))
        H = (T(xi) @ T(W).T).T @ T(xi) / 4.0
    else:
        n, c, h, w = (4,) + X_SHAPE["conv"][1:]
        xi = sigma * g.standard_normal((n, h, w, c)).transpose(0, 3, 1, 2)
        y = torch.nn.functional.conv2d(T(xi), T(W), stride=STRIDE, padding=PAD)
        H = tgrad.conv2d_weight(T(xi), W.shape, y, stride=STRIDE, padding=PAD)
        # per tap: the number of (sample, position) pairs where it reads the image
        count = tgrad.conv2d_weight(torch.ones(xi.shape, dtype=torch.float64), W.shape,
                                    torch.ones_like(y), stride=STRIDE, padding=PAD)
        assert count.min() < count.max()   # this geometry has border taps
        H = H / count
    want = (1.0 - eta * lam) * B0 + eta * H.numpy()
    assert rel_err(layer.feedback_B, want) < 1e-12
    assert int(layer.feedback_mirror_count) == 1


def pfa_torch(kind, B, R, delta, x):
    """The literal equations: delta_mid = delta @ B; delta_in = delta_mid @ R; gR = delta_mid.T @ x."""
    if kind == "linear":
        dmid = T(delta) @ T(B)
        return (dmid @ T(R)).numpy(), (dmid.T @ T(x)).numpy()
    dmid = torch.einsum("nohw,om->nmhw", T(delta), T(B))
    dx = tgrad.conv2d_input(x.shape, T(R), dmid, stride=STRIDE, padding=PAD)
    gR = tgrad.conv2d_weight(T(x), tuple(R.shape), dmid, stride=STRIDE, padding=PAD)
    return dx.numpy(), gR.numpy()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("order", ["literal", "fast"])
@pytest.mark.parametrize("opts", [{"expand_ratio": 3}, {"orthogonal": True},
                                  {"identity": True},
                                  {"expand_ratio": 2, "feedback_density": 0.5}])
def test_pfa(kind, order, opts):
    layer, x, delta, _, W, dx = run(kind, dict(name="pfa", order=order, **opts))
    B, R = layer.feedback_B, layer.feedback_R
    r = 1 if ("orthogonal" in opts or "identity" in opts) else opts["expand_ratio"]
    assert B.shape == (4, 4 * r) and R.data.shape == (4 * r,) + layer.weight_shape[1:]
    want_dx, want_gR = pfa_torch(kind, B, R.data, delta, x)
    if "feedback_density" in opts:
        want_gR = want_gR * layer.feedback_mask_R
        assert np.all(R.data[~layer.feedback_mask_R] == 0)
        assert np.all(B[~layer.feedback_mask_B] == 0)
    assert rel_err(dx, want_dx) < 1e-12
    assert rel_err(R.grad, want_gR) < 1e-12
    assert rel_err(layer.weight.grad, t_weight_grad(kind, delta, x, layer.weight_shape)) < 1e-12
    if "orthogonal" in opts:
        assert rel_err(B @ B.T, np.eye(4)) < 1e-14
    if "identity" in opts:
        assert np.array_equal(B, np.eye(4))
