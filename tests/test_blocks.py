"""Finite-difference checks (float64) of every layer module and of whole residual blocks.

For a module ``m`` and a fixed random ``R`` of the output's shape, the scalar
``L(x, theta) = sum(m(x) * R)`` has ``dL/dx = m.backward(R)`` and ``dL/dtheta = p.grad``;
both are compared against central finite differences of ``L`` (:func:`_util.numerical_grad`,
eps = 1e-6), never against the engine's own maths.

Kinks: ReLU and max pooling are not differentiable everywhere, so inputs are kept away
from them: ReLU inputs satisfy ``|x| > MARGIN``, max-pool inputs are distinct values
``MARGIN`` apart, and for whole blocks every pre-activation (both ReLU inputs) is checked
to lie more than ``MARGIN`` from 0, re-drawing the input otherwise (a finite-difference
step moves them by ~1e-6 at most). Batch norm is in train mode throughout (the batch
statistics depend on every sample, and the finite differences see that path too).
"""
import numpy as np
import pytest

from _util import numerical_grad, rel_err
from minigrad_pfa.nn.layers import (BatchNorm1d, BatchNorm2d, Conv2d, Flatten, GlobalAvgPool2d,
                                    Linear, MaxPool2d, ReLU, Sequential)
from minigrad_pfa.nn.models import init_model
from minigrad_pfa.nn.module import BackwardContext
from minigrad_pfa.nn.resnet import BasicBlock, ShortcutA

TOL = 1e-6
MARGIN = 1e-3


def channels_last(a):
    """Same values, channels-last memory (an NHWC buffer seen as NCHW)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def is_channels_last(a):
    return a.transpose(0, 2, 3, 1).flags.c_contiguous


def randomize_bn(module, rng):
    """Non-trivial gamma / beta so that their gradients and the scale path are exercised."""
    for _, m in module.named_modules():
        if isinstance(m, (BatchNorm1d, BatchNorm2d)):
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.num_features)
            m.bias.data[...] = rng.uniform(-0.3, 0.3, m.num_features)


def fd_check(m, x, rng, tol=TOL):
    """Compare m.backward's input error and every parameter gradient with finite
    differences of L = sum(m(x) * R); returns the list of (name, rel_err)."""
    y = m.forward(x)
    assert y.dtype == np.float64
    R = rng.standard_normal(y.shape)

    def f():
        return float(np.sum(m.forward(x) * R))

    m.forward(x)
    dx = m.backward(R.copy(), BackwardContext())
    dx = None if dx is None else np.array(dx)
    grads = {name: np.array(p.grad) for name, p in m.named_parameters()}
    errs = []
    if dx is not None:
        assert dx.shape == x.shape and dx.dtype == np.float64
        errs.append(("input", rel_err(dx, numerical_grad(f, x))))
    for name, p in m.named_parameters():
        assert grads[name].shape == p.data.shape, name
        errs.append((name, rel_err(grads[name], numerical_grad(f, p.data))))
    bad = [(n, e) for n, e in errs if not e < tol]
    assert not bad, f"finite-difference mismatch: {bad}"
    return errs


def away_from_zero(shape, rng):
    """Standard normal values with |x| > MARGIN (ReLU kink avoided)."""
    x = rng.standard_normal(shape)
    x[np.abs(x) < 10 * MARGIN] += 20 * MARGIN
    assert np.abs(x).min() > MARGIN
    return x


def distinct(shape, rng):
    """Distinct values at least 0.1 apart (no ties in a max-pool window), random order."""
    return (rng.permutation(int(np.prod(shape))) * 0.1 - 1.0).reshape(shape).astype(np.float64)


# ---------------------------------------------------------------------------- layers
def test_linear(rng):
    m = init_model(Linear(5, 4, dtype="float64"), 0)
    m.bias.data[...] = rng.standard_normal(4)
    errs = fd_check(m, rng.standard_normal((3, 5)), rng)
    assert [n for n, _ in errs] == ["input", "weight", "bias"]


def test_linear_without_bias(rng):
    m = init_model(Linear(5, 4, bias=False, dtype="float64"), 0)
    errs = fd_check(m, rng.standard_normal((3, 5)), rng)
    assert [n for n, _ in errs] == ["input", "weight"]


@pytest.mark.parametrize("kernel,stride,padding,bias", [
    (3, 1, 1, True),
    (3, 2, 1, False),
    ((3, 2), (2, 1), (1, 2), True),
    (1, 2, 0, False),
])
def test_conv2d(rng, kernel, stride, padding, bias):
    m = init_model(Conv2d(3, 4, kernel, stride, padding, bias=bias, dtype="float64"), 0)
    if bias:
        m.bias.data[...] = rng.standard_normal(4)
    x = channels_last(rng.standard_normal((2, 3, 7, 6)))
    y = m.forward(x)
    assert is_channels_last(y)
    fd_check(m, x, rng)


def test_conv2d_any_input_layout(rng):
    m = init_model(Conv2d(3, 4, 3, 2, 1, dtype="float64"), 0)
    x = rng.standard_normal((2, 3, 7, 6))
    y_nchw = np.array(m.forward(x))
    y_cl = np.array(m.forward(channels_last(x)))
    assert np.array_equal(y_nchw, y_cl)


def test_batchnorm1d_train(rng):
    m = BatchNorm1d(5, dtype="float64")
    randomize_bn(m, rng)
    fd_check(m, rng.standard_normal((6, 5)) * 2.0 + 0.5, rng)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_batchnorm2d_train(rng, layout):
    m = BatchNorm2d(3, dtype="float64")
    randomize_bn(m, rng)
    x = rng.standard_normal((2, 3, 4, 5)) * 1.5 - 0.3
    if layout == "channels_last":
        x = channels_last(x)
    assert is_channels_last(m.forward(x))
    fd_check(m, x, rng)


def test_batchnorm2d_eval(rng):
    m = BatchNorm2d(3, dtype="float64")
    randomize_bn(m, rng)
    m.running_mean[...] = rng.standard_normal(3)
    m.running_var[...] = rng.uniform(0.5, 2.0, 3)
    m.eval()
    fd_check(m, rng.standard_normal((2, 3, 4, 5)), rng)


def test_relu(rng):
    fd_check(ReLU(), away_from_zero((3, 4), rng), rng)
    fd_check(ReLU(), channels_last(away_from_zero((2, 3, 4, 5), rng)), rng)


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0))])
def test_maxpool2d(rng, kernel, stride, padding):
    x = channels_last(distinct((2, 3, 7, 6), rng))
    m = MaxPool2d(kernel, stride, padding)
    assert is_channels_last(m.forward(x))
    fd_check(m, x, rng)


def test_global_avgpool(rng):
    fd_check(GlobalAvgPool2d(), channels_last(rng.standard_normal((2, 3, 4, 5))), rng)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_flatten(rng, layout):
    x = rng.standard_normal((2, 3, 4, 5))
    if layout == "channels_last":
        x = channels_last(x)
    m = Flatten()
    # PyTorch's (c, h, w) order whatever the memory layout
    assert np.array_equal(m.forward(x), np.asarray(x).copy(order="C").reshape(2, -1))
    fd_check(m, x, rng)


@pytest.mark.parametrize("shape,planes", [((2, 4, 6, 6), 8), ((2, 3, 5, 7), 12)])
def test_shortcut_a(rng, shape, planes):
    m = ShortcutA(planes)
    x = channels_last(rng.standard_normal(shape))
    y = m.forward(x)
    n, c, h, w = shape
    pad = planes // 4
    assert y.shape == (n, c + 2 * pad, (h + 1) // 2, (w + 1) // 2)
    assert is_channels_last(y)
    # definition: zero channels around the even-position subsample
    assert np.array_equal(y[:, pad:pad + c], x[:, :, ::2, ::2])
    assert not np.any(y[:, :pad]) and not np.any(y[:, pad + c:])
    fd_check(m, x, rng)


def test_small_network_of_layers(rng):
    """Linear -> BN1d -> ReLU -> Linear in one Sequential (errors flow through all).
    The first Linear has no bias: before a train-mode BN its gradient is exactly 0."""
    m = init_model(Sequential(Linear(6, 5, bias=False, dtype="float64"),
                              BatchNorm1d(5, dtype="float64"),
                              ReLU(), Linear(5, 3, dtype="float64")), 1)
    randomize_bn(m, rng)
    for _ in range(20):
        x = rng.standard_normal((4, 6))
        pre = m[1].forward(m[0].forward(x))
        if np.abs(pre).min() > MARGIN:
            break
    else:
        pytest.fail("could not draw an input away from the ReLU kink")
    fd_check(m, x, rng)


# ---------------------------------------------------------------------------- blocks
def block_preactivations(b, x):
    """The two ReLU inputs of a BasicBlock, recomposed from its submodules."""
    a1 = b.bn1.forward(b.conv1.forward(x))
    z = b.relu1.forward(a1)
    a2 = b.bn2.forward(b.conv2.forward(z))
    a2 = a2 + (x if b.shortcut is None else b.shortcut.forward(x))
    return a1, a2


@pytest.mark.parametrize("in_planes,planes,stride,shortcut", [
    (4, 4, 1, "A"),   # identity shortcut
    (4, 8, 2, "A"),   # option A: subsample + zero channels
    (4, 8, 2, "B"),   # option B: 1x1 conv + BN ("downsample")
    (4, 6, 1, "B"),   # option B for a channel change only
])
def test_basic_block(rng, in_planes, planes, stride, shortcut):
    b = init_model(BasicBlock(in_planes, planes, stride, shortcut, dtype="float64"), 3)
    randomize_bn(b, rng)
    kinds = {n.split(".")[0] for n, _ in b.named_parameters()}
    if shortcut == "B" and (stride != 1 or in_planes != planes):
        assert "downsample" in kinds
    else:
        assert "downsample" not in kinds
    for _ in range(50):
        x = channels_last(rng.standard_normal((2, in_planes, 6, 6)))
        a1, a2 = block_preactivations(b, x)
        if min(np.abs(a1).min(), np.abs(a2).min()) > MARGIN:
            break
    else:
        pytest.fail("could not draw an input whose pre-activations avoid the ReLU kink")
    y = b.forward(x)
    assert y.shape == (2, planes, 6 // stride, 6 // stride)
    assert is_channels_last(y)
    errs = fd_check(b, x, rng)
    names = [n for n, _ in errs]
    expected = ["input", "conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight",
                "bn2.weight", "bn2.bias"]
    if "downsample" in kinds:
        expected += ["downsample.0.weight", "downsample.1.weight", "downsample.1.bias"]
    assert names == expected


def test_block_parameters_are_listed_once():
    """A module registered under two names would be updated twice per optimizer step."""
    b = BasicBlock(4, 8, 2, "B")
    ids = [id(p) for p in b.parameters()]
    assert len(ids) == len(set(ids)) == 9
    assert list(b.state_dict()) == [
        "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
        "bn1.num_batches_tracked", "conv2.weight", "bn2.weight", "bn2.bias",
        "bn2.running_mean", "bn2.running_var", "bn2.num_batches_tracked",
        "downsample.0.weight", "downsample.1.weight", "downsample.1.bias",
        "downsample.1.running_mean", "downsample.1.running_var",
        "downsample.1.num_batches_tracked"]
