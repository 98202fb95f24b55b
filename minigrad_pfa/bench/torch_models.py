"""The benchmark's PyTorch side: ResNet-20 and the MLP, trained by autograd (BP) or by PFA
in its published formulation. Imported only by benchmark workers (never by the engine).

Published PFA formulation (Li & Benna 2024, arXiv:2405.20594; the authors' BioTorch-based
code), written here as :class:`torch.autograd.Function` s from its description. Conv
(x (n, ic, h, w), W (oc, ic, kh, kw), R (mid, ic, kh, kw), B (oc, mid) used as the 1x1
kernel (oc, mid, 1, 1))::

    forward    y         = conv(x, W) + b
               _         = conv(x, R)            computed only to learn its shape (n, mid, oh, ow)
    backward   delta_mid = conv_transpose(delta, B)        1x1: delta @ B over channels
               dx        = conv_transpose(delta_mid, R)    (when x needs a gradient)
               gW        = weight gradient of (x, delta)
               gR        = weight gradient of (x, delta_mid)

Linear: the same with matrix products (``y = x @ W.T + b``, ``delta_mid = delta @ B``,
``dx = delta_mid @ R``, ``gW = delta.T @ x``, ``gR = delta_mid.T @ x``). ``B`` is a fixed
buffer; ``R`` a parameter updated by the same optimizer as ``W``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import grad as nn_grad


class PublishedPFAConv2dFunction(torch.autograd.Function):
    """Conv with PFA feedback, as published: an extra forward conv with R for its shape."""

    @staticmethod
    def forward(ctx, x, W, R, B, b, stride, padding):
        y = F.conv2d(x, W, b, stride, padding)
        ctx.mid_shape = F.conv2d(x, R, None, stride, padding).shape  # kept only for its shape
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, b is not None
        ctx.save_for_backward(x, W, R, B)
        return y

    @staticmethod
    def backward(ctx, delta):
        x, W, R, B = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        B4 = B.reshape(B.shape[0], B.shape[1], 1, 1)  # (oc, mid, 1, 1): mid -> oc conv
        delta_mid = nn_grad.conv2d_input(ctx.mid_shape, B4, delta)
        dx = nn_grad.conv2d_input(x.shape, R, delta_mid, s, p) if ctx.needs_input_grad[0] \
            else None
        gW = nn_grad.conv2d_weight(x, W.shape, delta, s, p)
        gR = nn_grad.conv2d_weight(x, R.shape, delta_mid, s, p)
        gb = delta.sum((0, 2, 3)) if ctx.has_bias else None
        return dx, gW, gR, None, gb, None, None


class PublishedPFALinearFunction(torch.autograd.Function):
    """Linear with PFA feedback, as published (an extra ``x @ R.T`` for its shape)."""

    @staticmethod
    def forward(ctx, x, W, R, B, b):
        y = F.linear(x, W, b)
        ctx.mid_shape = F.linear(x, R).shape  # kept only for its shape
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, R, B)
        return y

    @staticmethod
    def backward(ctx, delta):
        x, R, B = ctx.saved_tensors
        delta_mid = (delta @ B).reshape(ctx.mid_shape)
        dx = delta_mid @ R if ctx.needs_input_grad[0] else None
        gW = delta.T @ x
        gR = delta_mid.T @ x
        gb = delta.sum(0) if ctx.has_bias else None
        return dx, gW, gR, None, gb


def _pfa_feedback(module, out: int, r: int, R_shape, fan_in: int, receptive: int) -> None:
    """R (learned) Xavier-uniform; B (fixed) Xavier-uniform with gain sqrt((1 + 1/r) / 2)."""
    mid = r * out
    a_R = math.sqrt(6.0 / (fan_in + mid * receptive))
    module.feedback_R = nn.Parameter(torch.empty(R_shape).uniform_(-a_R, a_R))
    a_B = math.sqrt((1.0 + 1.0 / r) / 2.0) * math.sqrt(6.0 / (mid + out))
    module.register_buffer("feedback_B", torch.empty(out, mid).uniform_(-a_B, a_B))


class PublishedPFAConv2d(nn.Conv2d):
    def __init__(self, *args, expand_ratio: int = 10, **kw):
        super().__init__(*args, **kw)
        oc, ic, kh, kw_ = self.weight.shape
        _pfa_feedback(self, oc, expand_ratio, (expand_ratio * oc, ic, kh, kw_), ic * kh * kw_,
                      kh * kw_)

    def forward(self, x):
        return PublishedPFAConv2dFunction.apply(x, self.weight, self.feedback_R,
                                                self.feedback_B, self.bias, self.stride,
                                                self.padding)


class PublishedPFALinear(nn.Linear):
    def __init__(self, *args, expand_ratio: int = 10, **kw):
        super().__init__(*args, **kw)
        out, inp = self.weight.shape
        _pfa_feedback(self, out, expand_ratio, (expand_ratio * out, inp), inp, 1)

    def forward(self, x):
        return PublishedPFALinearFunction.apply(x, self.weight, self.feedback_R,
                                                self.feedback_B, self.bias)


def layer_factories(rule: str):
    """(conv, linear) constructors for ``bp`` or ``pfa-rN`` (published formulation)."""
    from .suite import pfa_ratio

    if rule == "bp":
        return nn.Conv2d, nn.Linear
    r = pfa_ratio(rule)
    if r is None or rule == "pfa-o" or rule.endswith(("-literal", "-fast")):
        raise ValueError(f"the PyTorch side runs 'bp' or 'pfa-rN' (published formulation), "
                         f"got {rule!r}")
    return (lambda *a, **k: PublishedPFAConv2d(*a, expand_ratio=r, **k),
            lambda *a, **k: PublishedPFALinear(*a, expand_ratio=r, **k))


class _ShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2, zero-pad planes // 4 channels on each side."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlock(nn.Module):
    def __init__(self, conv, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = conv(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = (_ShortcutA(planes) if stride != 1 or in_planes != planes
                         else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TorchCifarResNet(nn.Module):
    """The engine's CIFAR ResNet (option-A shortcuts, no conv bias) in PyTorch."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3,
                 rule: str = "bp"):
        super().__init__()
        conv, linear = layer_factories(rule)
        k = (depth - 2) // 6
        self.conv1 = conv(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(k):
                blocks.append(_BasicBlock(conv, in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = linear(64, num_classes)

    def forward(self, x):
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.fc(out.mean((2, 3)))


class TorchMLP(nn.Module):
    """The engine's MLP: in -> hidden... -> classes, ReLU, biases."""

    def __init__(self, in_features: int = 784, hidden=(512, 512), num_classes: int = 10,
                 rule: str = "bp"):
        super().__init__()
        _, linear = layer_factories(rule)
        layers, prev = [], in_features
        for h in hidden:
            layers += [linear(prev, h), nn.ReLU()]
            prev = h
        layers.append(linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.reshape(x.shape[0], -1))


def build_torch_model(model_spec: dict, rule: str, num_classes: int = 10) -> nn.Module:
    """PyTorch twin of a benchmark model (:data:`minigrad_pfa.bench.suite.MODELS`)."""
    name, kw = model_spec["name"], model_spec["kwargs"]
    if name.startswith("resnet"):
        return TorchCifarResNet(int(name[6:]), num_classes, model_spec["input"][0], rule)
    if name == "mlp":
        return TorchMLP(kw["in_features"], tuple(kw["hidden"]), num_classes, rule)
    raise ValueError(f"no PyTorch twin for model {name!r}")
