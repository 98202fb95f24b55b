"""Residual networks: the BasicBlock with option-A / option-B shortcuts, the CIFAR ResNets
(He et al. 2016, arXiv:1512.03385, section 4.2) and the ImageNet ResNet-18/34 (torchvision
layout and parameter names).

Backward of a block (exact under every rule; only the weight layers inside use the rule)::

    out   = relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))
    d     = relu2.backward(dy)
    dx    = branch.backward(d) + shortcut.backward(d)

Forward, bn1 -> relu1 and bn2 -> (+ shortcut) -> relu2 run as layer pairs
(:meth:`~minigrad_pfa.nn.layers._BatchNorm.forward_relu`): with ``--cpu-kernels numba`` the
normalisation, residual sum and ReLU in one output pass (after the statistics pass); backward,
relu1 -> bn1 (``backward_relu``: the mask read in the batch norm's passes; relu2's error ``d``
also feeds the shortcut, so it is written). The layers one by one otherwise; the same bits.
"""
from __future__ import annotations

from collections import OrderedDict

from ..backend import get_array_module
from ..functional import elementwise as F_ew
from .layers import (BatchNorm2d, Conv2d, GlobalAvgPool2d, Linear, MaxPool2d, ReLU,
                     Sequential, bn_relu, relu_bn_backward)
from .module import Module


def channels_last_zeros(xp, shape, dtype):
    """Zeros of NCHW shape ``shape`` stored channels-last (a view of an (n, h, w, c) buffer)."""
    n, c, h, w = shape
    return xp.zeros((n, h, w, c), dtype=dtype).transpose(0, 3, 1, 2)


class ShortcutA(Module):
    """Option-A shortcut (parameter-free): ``x[:, :, ::2, ::2]`` then ``pad`` zero channels
    on each side, ``pad = planes // 4``. (n, c, h, w) -> (n, c + 2 pad, ceil(h/2), ceil(w/2)).

    Backward: the middle channels of ``dy`` scattered back to the even positions.
    """

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        xp = get_array_module(x)
        sub = x[:, :, ::2, ::2]
        n, c, h, w = sub.shape
        y = channels_last_zeros(xp, (n, c + 2 * self.pad, h, w), x.dtype)
        y[:, self.pad:self.pad + c] = sub
        self.cache["x_shape"] = tuple(x.shape)
        return y

    def backward(self, dy, ctx=None):
        xp = get_array_module(dy)
        dx = channels_last_zeros(xp, self.cache["x_shape"], dy.dtype)
        c = self.cache["x_shape"][1]
        dx[:, :, ::2, ::2] = dy[:, self.pad:self.pad + c]
        return dx


class BasicBlock(Module):
    """Two 3x3 conv+BN layers with an identity, option-A or option-B shortcut.

    Parameters
    ----------
    in_planes, planes : int
        Input and output channels.
    stride : int
        Stride of the first conv (and of the shortcut).
    shortcut : {"A", "B"}
        Used when the shape changes (``stride != 1`` or ``in_planes != planes``): "A" is
        :class:`ShortcutA`; "B" is a 1x1 conv + BN registered as ``downsample`` (torchvision's
        name, so state dicts map one to one).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A",
                 dtype="float32"):
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.conv1 = Conv2d(in_planes, planes, 3, stride, 1, bias=False, dtype=dtype)
        self.bn1 = BatchNorm2d(planes, dtype=dtype)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(planes, planes, 3, 1, 1, bias=False, dtype=dtype)
        self.bn2 = BatchNorm2d(planes, dtype=dtype)
        self.relu2 = ReLU()
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = ShortcutA(planes)
            else:
                self.downsample = Sequential(
                    Conv2d(in_planes, planes, 1, stride, 0, bias=False, dtype=dtype),
                    BatchNorm2d(planes, dtype=dtype))
                # a plain alias, not a second registration: registering the same child
                # under two names would list its arrays twice in named_parameters() and
                # state_dict() (the optimizer would update them twice per step)
                object.__setattr__(self, "shortcut", self.downsample)

    def forward(self, x):
        # BN -> ReLU and BN -> residual sum -> ReLU as layer pairs (nn.layers.bn_relu): one
        # output pass each with the compiled kernels, where they are the engine's own layers
        out = self.conv2(bn_relu(self.bn1, self.relu1, self.conv1(x)))
        return bn_relu(self.bn2, self.relu2, out,
                       add=x if self.shortcut is None else self.shortcut(x))

    def backward(self, dy, ctx=None):
        d = self.relu2.backward(dy, ctx)
        dbranch = self.bn2.backward(d, ctx)
        dbranch = self.conv2.backward(dbranch, ctx)
        dbranch = relu_bn_backward(self.bn1, self.relu1, dbranch, ctx)
        dbranch = self.conv1.backward(dbranch, ctx)
        dshort = d if self.shortcut is None else self.shortcut.backward(d, ctx)
        if dbranch is None:
            return dshort
        if dshort is None:
            return dbranch
        return F_ew.add(dbranch, dshort)


def make_stages(in_planes: int, stages, shortcut: str, dtype) -> "OrderedDict[str, Module]":
    """``layer1, layer2, ...``: one Sequential of BasicBlocks per ``(planes, stride, blocks)``;
    only a stage's first block strides (and changes the width)."""
    out: "OrderedDict[str, Module]" = OrderedDict()
    for i, (planes, stride, n_blocks) in enumerate(stages, start=1):
        blocks = []
        for b in range(n_blocks):
            blocks.append(BasicBlock(in_planes, planes, stride if b == 0 else 1, shortcut, dtype))
            in_planes = planes
        out[f"layer{i}"] = Sequential(*blocks)
    return out


class CifarResNet(Sequential):
    """CIFAR ResNet-(6k+2): conv3x3(16)+BN+ReLU, 3 stages of ``k`` BasicBlocks (16/32/64
    channels, strides 1/2/2, option-A shortcuts), global average pooling, fc 64 -> classes.

    x (n, in_channels, 32, 32) -> logits (n, num_classes). Convs have no bias.
    ``widths`` (default 16, 32, 64, as published) narrows the stages for small test
    networks (the crosscheck's ResNet step uses 4, 8, 16).
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3,
                 shortcut: str = "A", dtype="float32", widths=(16, 32, 64)):
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6k+2 (20, 32, 44, 56, 110), got {depth}")
        if len(widths) != 3 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be three positive channel counts, got {widths!r}")
        k = (depth - 2) // 6
        w1, w2, w3 = (int(w) for w in widths)
        layers: "OrderedDict[str, Module]" = OrderedDict()
        layers["conv1"] = Conv2d(in_channels, w1, 3, 1, 1, bias=False, dtype=dtype)
        layers["bn1"] = BatchNorm2d(w1, dtype=dtype)
        layers["relu"] = ReLU()
        layers.update(make_stages(w1, [(w1, 1, k), (w2, 2, k), (w3, 2, k)], shortcut, dtype))
        layers["avgpool"] = GlobalAvgPool2d()
        layers["fc"] = Linear(w3, num_classes, dtype=dtype)
        super().__init__(layers)
        self.depth = depth


class ImageNetResNet(Sequential):
    """torchvision's ResNet-18/34 layout and names: conv7x7/2(64)+BN+ReLU+maxpool3x3/2,
    4 stages of BasicBlocks (64/128/256/512, strides 1/2/2/2, option-B ``downsample``),
    global average pooling, fc 512 -> classes.
    """

    BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

    def __init__(self, depth: int = 18, num_classes: int = 1000, in_channels: int = 3,
                 dtype="float32"):
        if depth not in self.BLOCKS:
            raise ValueError(f"ImageNet ResNet depth must be one of {sorted(self.BLOCKS)}, got {depth}")
        layers: "OrderedDict[str, Module]" = OrderedDict()
        layers["conv1"] = Conv2d(in_channels, 64, 7, 2, 3, bias=False, dtype=dtype)
        layers["bn1"] = BatchNorm2d(64, dtype=dtype)
        layers["relu"] = ReLU()
        layers["maxpool"] = MaxPool2d(3, 2, 1)
        stages = [(planes, 1 if i == 0 else 2, n)
                  for i, (planes, n) in enumerate(zip((64, 128, 256, 512), self.BLOCKS[depth]))]
        layers.update(make_stages(64, stages, "B", dtype))
        layers["avgpool"] = GlobalAvgPool2d()
        layers["fc"] = Linear(512, num_classes, dtype=dtype)
        super().__init__(layers)
        self.depth = depth
