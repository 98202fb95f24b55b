"""Modules: parameters, layers, residual blocks and models."""
from .module import BackwardContext, Module, Parameter
from .layers import (BatchNorm1d, BatchNorm2d, Conv2d, Flatten, GlobalAvgPool2d, Linear,
                     MaxPool2d, ReLU, Sequential, WeightLayer)
