"""Whole models against PyTorch on the CPU: ResNet-20 (CIFAR, option A), a ResNet-8 with
option-B shortcuts and ResNet-18 (torchvision's layout), with identical weights.

The PyTorch models are written here with ``torch.nn`` (torchvision does not import beside
the torch of the test environment): the CIFAR ResNets as in He et al. 2016, section 4.2,
with the option-A shortcut ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes//4, planes//4))``,
and ResNet-18 as torchvision's ``resnet.py`` (7x7/2 stem, max pool, BasicBlocks with a
1x1-conv ``downsample``). Weights are copied through ``state_dict`` names, which must map one
to one (the engine uses torchvision's names); ResNet-18's names and shapes are also checked
against the list dumped from the real torchvision (``tests/data``, see
``make_torchvision_list.py``).

Checked, in train mode (batch statistics), in float64 (relative Frobenius error <= 1e-6
per tensor) and float32 (<= 1e-4): logits, loss and every parameter gradient; the
running statistics after training steps; the parameters after 5 steps of SGD (momentum,
weight decay) and of AdamW.
"""
import os
import re
from collections import OrderedDict

import numpy as np
import pytest

from _util import rel_err
from minigrad_pfa.functional.loss import softmax_cross_entropy
from minigrad_pfa.nn.models import build_model, finalize, init_model
from minigrad_pfa.nn.module import BackwardContext
from minigrad_pfa.nn.resnet import CifarResNet, ImageNetResNet
from minigrad_pfa.optim import build_optimizer

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

DATA = os.path.join(os.path.dirname(__file__), "data")
TOL = {"float64": 1e-6, "float32": 1e-4}
TDTYPE = {"float64": torch.float64, "float32": torch.float32}


# ------------------------------------------------------------------ PyTorch reference models
class TorchShortcutA(nn.Module):
    """Option A: subsample by 2, zero-pad planes//4 channels on each side (no parameters)."""

    def __init__(self, planes):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class TorchBasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride, option):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = self.downsample = None
        if stride != 1 or in_planes != planes:
            if option == "A":
                self.shortcut = TorchShortcutA(planes)
            else:
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x
        if self.shortcut is not None:
            identity = self.shortcut(x)
        elif self.downsample is not None:
            identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TorchCifarResNet(nn.Module):
    def __init__(self, depth, num_classes, option):
        super().__init__()
        k = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 16
        for stage, (planes, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
            blocks = []
            for b in range(k):
                blocks.append(TorchBasicBlock(in_planes, planes, stride if b == 0 else 1, option))
                in_planes = planes
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TorchResNet18(nn.Module):
    """torchvision.models.resnet18's layout and names."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_planes = 64
        for stage, planes in enumerate((64, 128, 256, 512), start=1):
            stride = 1 if stage == 1 else 2
            blocks = [TorchBasicBlock(in_planes, planes, stride, "B"),
                      TorchBasicBlock(planes, planes, 1, "B")]
            in_planes = planes
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ------------------------------------------------------------------ helpers
def T(a, dtype):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a))).to(TDTYPE[dtype])


def pair(kind, dtype, seed=0):
    """The engine's model and a PyTorch twin holding the same weights and buffers."""
    if kind == "resnet20":
        ours = build_model("resnet20", seed=seed, dtype=dtype)
        theirs = TorchCifarResNet(20, 10, "A")
    elif kind == "resnet8B":
        ours = init_model(finalize(CifarResNet(depth=8, shortcut="B", dtype=dtype)), seed)
        theirs = TorchCifarResNet(8, 10, "B")
    elif kind == "resnet18":
        ours = build_model("resnet18", seed=seed, dtype=dtype, num_classes=10)
        theirs = TorchResNet18(10)
    else:
        raise ValueError(kind)
    # non-trivial BN affine parameters and running statistics, so every path is exercised
    rng = np.random.default_rng(seed + 100)
    for name, p in ours.named_parameters():
        if ".bn" in name or name.startswith("bn") or "downsample.1" in name or name == "fc.bias":
            p.data[...] = (rng.uniform(0.6, 1.4, p.shape) if name.endswith("weight")
                           else rng.uniform(-0.2, 0.2, p.shape))
    for name, b in ours.named_buffers():
        if name.endswith("running_mean"):
            b[...] = rng.uniform(-0.1, 0.1, b.shape)
        elif name.endswith("running_var"):
            b[...] = rng.uniform(0.8, 1.2, b.shape)
    theirs = theirs.to(TDTYPE[dtype])
    state = ours.state_dict(include_feedback=False)
    tstate = theirs.state_dict()
    assert list(state) == list(tstate), "state_dict names must map one to one, in order"
    for k in state:
        assert tuple(state[k].shape) == tuple(tstate[k].shape), k
    theirs.load_state_dict(OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in state.items()),
                           strict=True)
    ours.train()
    theirs.train()
    return ours, theirs


def batch(rng, n, size, dtype, classes=10):
    x = rng.standard_normal((n, 3, size, size)).astype(dtype)
    y = rng.integers(0, classes, n).astype(np.int64)
    return x, y


def engine_forward_backward(model, x, y):
    logits = model.forward(x)
    loss, e = softmax_cross_entropy(logits, y)
    model.backward(e, BackwardContext(output_error=e))
    return np.array(logits), float(loss)


def torch_forward_backward(model, x, y, dtype):
    model.zero_grad(set_to_none=True)
    logits = model(T(x, dtype))
    loss = F.cross_entropy(logits, torch.from_numpy(y))
    loss.backward()
    return logits.detach().numpy(), float(loss.detach())


def compare_state(ours, theirs, tol, what):
    """Every parameter and buffer (running statistics, counters) of the two models."""
    tstate = theirs.state_dict()
    bad = []
    for k, v in ours.state_dict(include_feedback=False).items():
        if k.endswith("num_batches_tracked"):
            if int(v) != int(tstate[k]):
                bad.append((k, int(v), int(tstate[k])))
            continue
        err = rel_err(v, tstate[k].numpy())
        if not err <= tol:
            bad.append((k, err))
    assert not bad, f"{what}: {bad[:8]}"


def compare_grads(ours, theirs, tol):
    tparams = dict(theirs.named_parameters())
    names = [n for n, _ in ours.named_parameters()]
    assert sorted(names) == sorted(tparams)
    errs = {n: rel_err(p.grad, tparams[n].grad.numpy()) for n, p in ours.named_parameters()}
    bad = {n: e for n, e in errs.items() if not e <= tol}
    assert not bad, f"gradient mismatch: {bad}"
    return errs


# ------------------------------------------------------------------ logits, loss, gradients
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind,n,size", [("resnet20", 6, 32), ("resnet8B", 4, 16),
                                         ("resnet18", 4, 64)])
def test_gradients_match_torch(kind, n, size, dtype):
    ours, theirs = pair(kind, dtype)
    x, y = batch(np.random.default_rng(1), n, size, dtype)
    logits, loss = engine_forward_backward(ours, x, y)
    tlogits, tloss = torch_forward_backward(theirs, x, y, dtype)
    tol = TOL[dtype]
    assert logits.dtype == np.dtype(dtype)
    assert rel_err(logits, tlogits) <= tol
    assert abs(loss - tloss) <= tol * abs(tloss)
    compare_grads(ours, theirs, tol)
    # the train-mode forward updated the running statistics identically
    compare_state(ours, theirs, tol, "after one train-mode forward")
    # and the eval-mode forward (running statistics) agrees too
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        tlogits = theirs(T(x, dtype)).numpy()
    assert rel_err(np.array(ours.forward(x)), tlogits) <= tol


def test_channels_last_input_gives_the_same_logits():
    ours, _ = pair("resnet20", "float64")
    x, _ = batch(np.random.default_rng(2), 3, 32, "float64")
    a = np.array(ours.forward(x))
    xcl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    b = np.array(ours.forward(xcl))
    assert rel_err(a, b) < 1e-13


# ------------------------------------------------------------------ training steps
OPTIMIZERS = {
    "sgd": ({"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
            lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4)),
    "adamw": ({"lr": 1e-3, "weight_decay": 1e-2},
              lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-2)),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_training_steps_match_torch(opt_name, dtype):
    """5 steps on ResNet-20 (fresh batch each step): after every step all parameters,
    running statistics and counters equal torch's."""
    ours, theirs = pair("resnet20", dtype, seed=3)
    kw, make_torch_opt = OPTIMIZERS[opt_name]
    opt = build_optimizer(opt_name, list(ours.named_parameters(trainable_only=True)), **kw)
    topt = make_torch_opt(theirs.parameters())
    rng = np.random.default_rng(4)
    tol = TOL[dtype]
    losses = []
    for step in range(5):
        x, y = batch(rng, 4, 32, dtype)
        _, loss = engine_forward_backward(ours, x, y)
        opt.step()
        _, tloss = torch_forward_backward(theirs, x, y, dtype)
        topt.step()
        assert abs(loss - tloss) <= tol * abs(tloss), (step, loss, tloss)
        compare_state(ours, theirs, tol, f"{opt_name} step {step + 1}")
        losses.append(loss)
    # the steps did move the model (a no-op optimizer could not pass the comparisons,
    # but check that the parameters actually changed)
    fresh, _ = pair("resnet20", dtype, seed=3)
    assert rel_err(ours.fc.weight.data, fresh.fc.weight.data) > 1e-4
    assert int(ours.bn1.num_batches_tracked) == 5


# ------------------------------------------------------------------ names against torchvision
def read_list(depth):
    path = os.path.join(DATA, f"torchvision_resnet{depth}_state_dict.txt")
    out = OrderedDict()
    with open(path) as fh:
        for line in fh:
            m = re.fullmatch(r"(\S+) \(([\d,]*)\)", line.strip())
            assert m, f"bad line in {path}: {line!r}"
            out[m.group(1)] = tuple(int(s) for s in m.group(2).split(",") if s)
    return out


@pytest.mark.parametrize("depth", [18, 34])
def test_state_dict_matches_torchvision(depth):
    expected = read_list(depth)
    assert len(expected) == {18: 122, 34: 218}[depth]
    model = ImageNetResNet(depth=depth)  # torchvision's default: 1000 classes
    got = OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict(include_feedback=False).items())
    assert list(got) == list(expected)
    assert got == expected


def test_torch_reference_model_has_torchvision_layout():
    """The hand-written PyTorch ResNet-18 used above has torchvision's exact state dict."""
    got = OrderedDict((k, tuple(v.shape)) for k, v in TorchResNet18(1000).state_dict().items())
    assert got == read_list(18)
