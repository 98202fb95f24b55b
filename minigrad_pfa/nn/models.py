"""Model zoo, seeded initialisation and the model registry.

Every model is a :class:`~minigrad_pfa.nn.layers.Sequential` (possibly nested), built on the
host in the requested dtype, initialised from a seeded host generator (Xavier-uniform
weights, zero biases, BN gamma 1 / beta 0, as in the published protocols) and then moved to
the device, so CPU and GPU runs start from identical arrays.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential, WeightLayer
from .module import Module
from .resnet import CifarResNet, ImageNetResNet


class MLP(Sequential):
    """Fully connected ReLU network ``in -> hidden[0] -> ... -> classes`` with biases.

    Layers are named ``fc1, fc2, ..., fc`` (the last one is ``fc``), as in the published
    alignment tables. Inputs of any shape (n, ...) are flattened first.
    """

    def __init__(self, in_features: int = 784, hidden=(512, 512), num_classes: int = 10,
                 dtype="float32"):
        layers: "OrderedDict[str, Module]" = OrderedDict()
        layers["flatten"] = Flatten()
        prev = int(in_features)
        for i, h in enumerate(hidden, start=1):
            layers[f"fc{i}"] = Linear(prev, int(h), dtype=dtype)
            layers[f"relu{i}"] = ReLU()
            prev = int(h)
        layers["fc"] = Linear(prev, num_classes, dtype=dtype)
        super().__init__(layers)


class LeNet(Sequential):
    """Small LeNet-style CNN: conv5x5(6)+ReLU+maxpool2, conv5x5(16)+ReLU+maxpool2,
    fc 120, fc 84, fc classes. For 28x28 inputs the first conv pads by 2 (LeNet-5 on MNIST).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 dtype="float32"):
        pad = 2 if image_size == 28 else 0
        s = (image_size + 2 * pad - 4) // 2      # conv1 (k5) then pool 2
        s = (s - 4) // 2                         # conv2 (k5) then pool 2
        if s < 1:
            raise ValueError(f"LeNet needs images of at least 28 pixels, got {image_size}")
        layers: "OrderedDict[str, Module]" = OrderedDict()
        layers["conv1"] = Conv2d(in_channels, 6, 5, 1, pad, dtype=dtype)
        layers["relu1"] = ReLU()
        layers["pool1"] = MaxPool2d(2)
        layers["conv2"] = Conv2d(6, 16, 5, 1, 0, dtype=dtype)
        layers["relu2"] = ReLU()
        layers["pool2"] = MaxPool2d(2)
        layers["flatten"] = Flatten()
        layers["fc1"] = Linear(16 * s * s, 120, dtype=dtype)
        layers["relu3"] = ReLU()
        layers["fc2"] = Linear(120, 84, dtype=dtype)
        layers["relu4"] = ReLU()
        layers["fc"] = Linear(84, num_classes, dtype=dtype)
        super().__init__(layers)


def weight_layers(model: Module) -> "OrderedDict[str, WeightLayer]":
    """Every Linear/Conv2d of ``model`` by qualified name, in forward (registration) order."""
    return OrderedDict((name, m) for name, m in model.named_modules()
                       if isinstance(m, WeightLayer))


def finalize(model: Module) -> Module:
    """Name the weight layers and mark the first one: its input error is never used,
    so it is not computed (and its feedback, if any, is flagged as unused by the metrics)."""
    layers = weight_layers(model)
    for i, (name, layer) in enumerate(layers.items()):
        layer.qualname = name
        layer.needs_input_error = i > 0
    return model


def init_model(model: Module, seed: int) -> Module:
    """Initialise every parameter from the *forward* stream of ``seed`` (host NumPy).

    The forward stream is ``default_rng([seed, 0])``; feedback arrays use a separate stream
    (:func:`minigrad_pfa.rules.attach_rules`), so a seed gives the same forward weights
    under every rule.
    """
    rng = np.random.default_rng([int(seed), 0])
    for _, m in model.named_modules():
        reset = getattr(m, "reset_parameters", None)
        if reset is not None:
            reset(rng)
    return model


MODELS = {
    "mlp": lambda **kw: MLP(**kw),
    "lenet": lambda **kw: LeNet(**kw),
    **{f"resnet{d}": (lambda d=d: lambda **kw: CifarResNet(depth=d, **kw))()
       for d in (20, 32, 44, 56, 110)},
    **{f"resnet{d}_imagenet": (lambda d=d: lambda **kw: ImageNetResNet(depth=d, **kw))()
       for d in (18, 34)},
}
# torchvision's own names for the ImageNet variants
MODELS["resnet18"] = MODELS["resnet18_imagenet"]
MODELS["resnet34"] = MODELS["resnet34_imagenet"]


def build_model(name: str, seed: int = 0, dtype="float32", **kwargs) -> Module:
    """Build, name and initialise a model on the host.

    Parameters
    ----------
    name : str
        One of :data:`MODELS` (``mlp``, ``lenet``, ``resnet20/32/44/56/110``,
        ``resnet18``, ``resnet34``).
    seed : int
        Seed of the forward-weight stream.
    dtype : {"float32", "float64"}
    **kwargs
        Passed to the model's constructor (e.g. ``hidden``, ``num_classes``,
        ``in_channels``).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    try:
        model = MODELS[name](dtype=dtype, **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad options for model {name!r}: {exc}") from exc
    finalize(model)
    return init_model(model, seed)
