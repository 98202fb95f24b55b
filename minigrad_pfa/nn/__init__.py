"""Modules: parameters, layers, residual blocks and models."""
from .layers import (BatchNorm1d, BatchNorm2d, Conv2d, Flatten, GlobalAvgPool2d, Linear,
                     MaxPool2d, ReLU, Sequential, WeightLayer)
from .models import LeNet, MLP, build_model, finalize, init_model, weight_layers
from .module import BackwardContext, Module, Parameter
from .resnet import BasicBlock, CifarResNet, ImageNetResNet, ShortcutA

__all__ = ["BackwardContext", "Module", "Parameter", "BatchNorm1d", "BatchNorm2d", "Conv2d",
           "Flatten", "GlobalAvgPool2d", "Linear", "MaxPool2d", "ReLU", "Sequential",
           "WeightLayer", "BasicBlock", "CifarResNet", "ImageNetResNet", "ShortcutA", "LeNet",
           "MLP", "build_model", "finalize", "init_model", "weight_layers"]
