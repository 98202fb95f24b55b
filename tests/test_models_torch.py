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

float32 and kinks: a ReLU input within float32 rounding of 0 (or a max-pool near-tie) takes
a different branch in the two implementations, and that one element changes the gradient of
every layer below it by ~1/sqrt(number of activations), ~1e-3..1e-2 relative here (PyTorch
float32 against PyTorch float64 does the same). Such inputs are a property of the batch,
not of the code, so the float32 comparisons use batches on which both implementations take
the same branch at every ReLU and max pool (compared mask by mask, arg-max by arg-max),
re-drawing the batch otherwise, just as finite-difference checks keep away from kinks.
"""
import copy
import os
import re
from collections import OrderedDict

import numpy as np
import pytest

from _util import rel_err
from minigrad_pfa.functional.loss import softmax_cross_entropy
from minigrad_pfa.nn.models import build_model, finalize, init_model
from minigrad_pfa.nn.layers import MaxPool2d, ReLU
from minigrad_pfa.nn.module import BackwardContext
from minigrad_pfa.nn.resnet import CifarResNet, ImageNetResNet
from minigrad_pfa.optim import build_optimizer

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

@pytest.fixture(autouse=True)
def one_torch_thread():
    """One thread: faster on a small shared machine, and no thread-count-dependent sums."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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


# ------------------------------------------------------------------ branch agreement (float32)
def engine_branches(model):
    """Every ReLU mask and max-pool arg-max (as flat input indices, torch's convention) of
    the engine's last forward pass, in forward order."""
    out = []
    for _, m in model.named_modules():
        if isinstance(m, ReLU):
            out.append(np.array(m.cache["relu"], dtype=bool))
        elif isinstance(m, MaxPool2d):
            c = m.cache["pool"]
            arg = np.asarray(c["arg"]).astype(np.int64)          # (n, oh, ow, c) tap i*kw + j
            _, _, h, w = c["x_shape"]
            kh, kw = c["kernel"]
            (sh, sw), (ph, pw) = c["stride"], c["padding"]
            oh, ow = arg.shape[1:3]
            iy = np.arange(oh)[None, :, None, None] * sh - ph + arg // kw
            ix = np.arange(ow)[None, None, :, None] * sw - pw + arg % kw
            out.append((iy * w + ix).transpose(0, 3, 1, 2))
    return out


def torch_branches(model, x, dtype):
    """The same for the torch twin (pre-hooks see each ReLU's input before the in-place op)."""
    out = []

    def relu_hook(m, inp):
        out.append((inp[0] > 0).numpy().copy())

    def pool_hook(m, inp):
        _, idx = F.max_pool2d(inp[0], m.kernel_size, m.stride, m.padding, return_indices=True)
        out.append(idx.numpy().copy())

    hooks = [m.register_forward_pre_hook(relu_hook if isinstance(m, nn.ReLU) else pool_hook)
             for m in model.modules() if isinstance(m, (nn.ReLU, nn.MaxPool2d))]
    saved = copy.deepcopy(model.state_dict())   # the probe must not move the running stats
    try:
        with torch.no_grad():
            model(T(x, dtype))
    finally:
        for h in hooks:
            h.remove()
        model.load_state_dict(saved)
    return out


def same_branches(ours, theirs, x, dtype):
    for _, m in ours.named_modules():
        if hasattr(m, "update_running_stats"):
            m.update_running_stats = False
    try:
        ours.forward(x)
    finally:
        for _, m in ours.named_modules():
            if hasattr(m, "update_running_stats"):
                m.update_running_stats = True
    a, b = engine_branches(ours), torch_branches(theirs, x, dtype)
    assert len(a) == len(b) > 0
    return all(u.shape == v.shape and np.array_equal(u, v) for u, v in zip(a, b))


def comparable_batch(ours, theirs, rng, n, size, dtype, tries=30):
    """A random batch; in float32 one on which both models branch identically (see top)."""
    for _ in range(tries if dtype == "float32" else 1):
        x, y = batch(rng, n, size, dtype)
        if dtype == "float64" or same_branches(ours, theirs, x, dtype):
            return x, y
    pytest.fail(f"no batch in {tries} draws on which the float32 models branch identically")


# ------------------------------------------------------------------ logits, loss, gradients
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind,n,size", [("resnet20", 4, 32), ("resnet8B", 4, 16),
                                         ("resnet18", 4, 64)])
def test_gradients_match_torch(kind, n, size, dtype):
    ours, theirs = pair(kind, dtype)
    x, y = comparable_batch(ours, theirs, np.random.default_rng(1), n, size, dtype)
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
def optimizers(opt_name, dtype):
    """(engine kwargs, torch constructor) of the same optimizer.

    AdamW's eps is 1e-6 in float32: Adam's first update is ``lr * g / (|g| + eps)``, so a
    gradient element at the float32 rounding level of its tensor (~1e-8 here) gets an
    update of either sign ~lr in each implementation; eps = 1e-6 damps such elements and
    leaves the others unchanged (torch's default 1e-8 is used in float64).
    """
    if opt_name == "sgd":
        kw = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
        return kw, lambda ps: torch.optim.SGD(ps, **kw)
    kw = {"lr": 1e-3, "weight_decay": 1e-2, "eps": 1e-6 if dtype == "float32" else 1e-8}
    return kw, lambda ps: torch.optim.AdamW(ps, **kw)


def sync_torch_to_engine(ours, opt, theirs, topt):
    """Copy the engine's parameters, buffers and optimizer state into the torch twin."""
    theirs.load_state_dict(OrderedDict(
        (k, torch.from_numpy(np.array(v))) for k, v in ours.state_dict(include_feedback=False).items()))
    tparams = dict(theirs.named_parameters())
    for name, st in opt.state.items():
        tst = topt.state[tparams[name]]
        for slot, v in st.items():
            tst[slot] = (torch.tensor(float(v)) if slot == "step"
                         else torch.from_numpy(np.array(v)))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_training_steps_match_torch(opt_name, dtype):
    """5 steps on ResNet-20 (a fresh batch each step): after every step, all parameters,
    running statistics and counters equal torch's.

    float64: the two 5-step trajectories run independently. float32: a multi-step
    float32 trajectory is not a well-posed comparison: a ReLU input within float32
    rounding of 0 flips its mask in one implementation only, which changes the gradient of
    every layer below by ~1/sqrt(activations) (~1e-2 relative here), and the trajectories
    then separate chaotically (measured: PyTorch float32 against PyTorch float64 itself
    drifts to 1e-3..1e-2 in 5 steps, the engine's float32 drifts no more). So in float32 the
    torch twin is re-synchronised to the engine's state (weights, buffers, optimizer
    slots) before each step, and each single step is compared: the engine's own
    trajectory is never modified.
    """
    ours, theirs = pair("resnet20", dtype, seed=3)
    kw, make_torch_opt = optimizers(opt_name, dtype)
    opt = build_optimizer(opt_name, list(ours.named_parameters(trainable_only=True)), **kw)
    topt = make_torch_opt(theirs.parameters())
    rng = np.random.default_rng(4)
    tol = TOL[dtype]
    for step in range(5):
        if dtype == "float32" and step > 0:
            sync_torch_to_engine(ours, opt, theirs, topt)
        x, y = comparable_batch(ours, theirs, rng, 4, 32, dtype)
        _, loss = engine_forward_backward(ours, x, y)
        opt.step()
        _, tloss = torch_forward_backward(theirs, x, y, dtype)
        topt.step()
        assert abs(loss - tloss) <= tol * abs(tloss), (step, loss, tloss)
        compare_state(ours, theirs, tol, f"{opt_name} step {step + 1}")
    # the steps did move the model (a no-op optimizer could not pass the comparisons,
    # but check that the parameters actually changed) and counted 5 BN batches
    fresh, _ = pair("resnet20", dtype, seed=3)
    assert rel_err(ours.fc.weight.data, fresh.fc.weight.data) > 1e-3
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
