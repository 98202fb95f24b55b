"""Layers: thin stateful wrappers around the pure functions of :mod:`minigrad_pfa.functional`.

Weight layers (:class:`Linear`, :class:`Conv2d`) delegate the *input-error operator* and the
feedback learning to their :class:`~minigrad_pfa.rules.base.Rule`; everything else
(ReLU, BatchNorm, pooling, flattening, residual addition) back-propagates with its exact
local derivative under every rule.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from ..backend import get_array_module, resolve_dtype
from ..cpu import overlap
from ..cpu.threads import GEMM_MACS_PER_ELEMENT
from ..functional import activation as F_act
from ..functional import batchnorm as F_bn
from ..functional import conv as F_conv
from ..functional import elementwise as F_ew
from ..functional import linear as F_lin
from ..functional import pooling as F_pool
from ..distributed.context import current as current_parallel_group
from ..rules.base import BP
from .module import BackwardContext, Module, Parameter


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def xavier_uniform(rng: np.random.Generator, shape, fan_in: int, fan_out: int,
                   gain: float = 1.0, dtype=np.float32) -> np.ndarray:
    """Xavier/Glorot uniform on the host: ``U(-a, a)``, ``a = gain * sqrt(6 / (fan_in + fan_out))``.

    Fans follow PyTorch: for a conv kernel (oc, ic, kh, kw), ``fan_in = ic*kh*kw`` and
    ``fan_out = oc*kh*kw``.
    """
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=shape).astype(dtype)


class WeightLayer(Module):
    """Common machinery of Linear and Conv2d: forward-weight gradient + the rule's operator.

    Backward, for an error ``delta`` at the output (``rule`` = the context's override or
    the layer's own rule)::

        gW       = weight_grad(delta)            (same for every rule)
        gb       = delta summed over all axes but the channel axis
        rule.feedback_grads(self, delta, gW)     (KP: gB = gW; PFA: gR = B.T @ gW)
        delta_in = rule.input_error(self, delta) (BP: apply_transpose(delta, W))

    in this order, or, within a training step's backward on several CPU threads and where
    the rule allows it (``rule.input_error_first``), ``delta_in`` first and the three
    gradients as one task on another thread (:mod:`minigrad_pfa.cpu.overlap`).

    Primitives offered to rules (so that rules never depend on the layer type):
    :meth:`apply_transpose`, :meth:`weight_grad`, :meth:`channel_mix`.
    """

    #: size of W's first axis (out features / out channels) and second (in)
    out_features: int
    in_features: int

    def __init__(self):
        super().__init__()
        self.rule = BP()
        # False for a network's first weight layer: its input error is never used
        self.needs_input_error = True
        self.qualname = ""

    # shapes & fans ---------------------------------------------------------------
    @property
    def weight_shape(self) -> tuple:
        return tuple(self.weight.data.shape)

    @property
    def receptive(self) -> int:
        """Number of kernel taps (1 for Linear, kh*kw for Conv2d)."""
        s = self.weight_shape
        return int(np.prod(s[2:])) if len(s) > 2 else 1

    @property
    def fan_in(self) -> int:
        return self.weight_shape[1] * self.receptive

    @property
    def fan_out(self) -> int:
        return self.weight_shape[0] * self.receptive

    @property
    def dtype(self):
        return self.weight.data.dtype

    def reset_parameters(self, rng: np.random.Generator) -> None:
        """Xavier-uniform weight (gain 1) drawn on the host, bias 0 (published protocol)."""
        w = xavier_uniform(rng, self.weight_shape, self.fan_in, self.fan_out,
                           dtype=self.dtype)
        xp = get_array_module(self.weight.data)
        self.weight.data[...] = xp.asarray(w)
        if self.bias is not None:
            self.bias.data[...] = 0.0

    # backward ---------------------------------------------------------------------
    def backward(self, delta, ctx: BackwardContext | None = None):
        ctx = ctx if ctx is not None else BackwardContext()
        rule = ctx.rule_override if ctx.rule_override is not None else self.rule
        # the input error first and the parameter gradients on another thread, beside the
        # layers below (cpu.overlap: NumPy, T > 1, inside the train step's backward only)
        if ctx.record is None and self.needs_input_error and \
                overlap.can_defer(self.task_work(delta)) and \
                rule.input_error_first(self, delta):
            delta_in = rule.input_error(self, delta, ctx)
            overlap.defer(lambda: self.parameter_grads(delta, rule, ctx))
            return delta_in
        self.parameter_grads(delta, rule, ctx)
        if not self.needs_input_error:
            return None
        return rule.input_error(self, delta, ctx)

    def task_work(self, delta) -> int:
        """Work of the parameter-gradient task for :func:`minigrad_pfa.cpu.overlap.can_defer`
        (the weight gradient's multiply-adds / ``GEMM_MACS_PER_ELEMENT``)."""
        return delta.size * self.fan_in // GEMM_MACS_PER_ELEMENT

    def parameter_grads(self, delta, rule, ctx) -> None:
        """``gW``, ``gb`` and the rule's feedback gradients for the output error ``delta``
        (written to the parameters' ``.grad``; recorded in ``ctx.record`` if it is set)."""
        need_gW = self.weight.requires_grad or ctx.record is not None
        gW = self.weight_grad(delta) if need_gW else None
        self.weight.grad = gW
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad = self.bias_grad(delta)
        rule.feedback_grads(self, delta, gW, ctx)
        if ctx.record is not None:
            ctx.record[self.qualname] = {"delta": delta, "gW": gW}

    # primitives for rules -----------------------------------------------------------
    def apply_transpose(self, delta, M):
        """Send ``delta`` (n, out', ...) back through the transpose of the forward op with kernel ``M``."""
        raise NotImplementedError

    def weight_grad(self, delta):
        """Gradient w.r.t. a kernel of the forward op, for an output error ``delta``
        with any number of channels (``W``'s out, or PFA's ``mid``)."""
        raise NotImplementedError

    def bias_grad(self, delta):
        raise NotImplementedError

    def channel_mix(self, delta, B):
        """Contract the channel axis of ``delta`` (axis 1) with ``B`` (c, m): (n, c, ...) -> (n, m, ...)."""
        return F_conv.channel_matmul(delta, B)

    def extra_repr(self) -> str:
        return f"{self.weight_shape}, rule={self.rule.describe()}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


class Linear(WeightLayer):
    """``y = x @ W.T + b``; x (n, in) -> y (n, out); W (out, in), b (out,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype="float32"):
        super().__init__()
        dt = resolve_dtype(dtype)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(np.zeros((out_features, in_features), dtype=dt))
        self.bias = Parameter(np.zeros((out_features,), dtype=dt)) if bias else None

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self.qualname or 'Linear'}: expected input (n, {self.in_features}), "
                             f"got {tuple(x.shape)}")
        if x.dtype != self.weight.data.dtype:
            # NEP 50 would silently promote a float32 layer to float64 (as Conv2d, refuse)
            raise TypeError(f"{self.qualname or 'Linear'}: input dtype {x.dtype} does not match "
                            f"the layer's {self.weight.data.dtype}; cast the input first")
        self.cache["x"] = x
        return F_lin.linear_forward(x, self.weight.data,
                                    None if self.bias is None else self.bias.data)

    def task_work(self, delta) -> int:
        # as a feature shard of its GEMMs (functional.linear.WORK_DIVISOR)
        return F_lin.work(delta.size * self.fan_in)

    def apply_transpose(self, delta, M):
        return F_lin.linear_input_error(delta, M)

    def weight_grad(self, delta):
        return F_lin.linear_weight_grad(delta, self.cache["x"])

    def bias_grad(self, delta):
        return F_lin.linear_bias_grad(delta)


class Conv2d(WeightLayer):
    """2-D convolution by im2col; x (n, ic, h, w) -> y (n, oc, oh, ow); W (oc, ic, kh, kw).

    ``oh = (h + 2 ph - kh) // sh + 1`` (likewise ``ow``). Equations in
    :mod:`minigrad_pfa.functional.conv`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1,
                 padding=0, bias: bool = True, dtype="float32"):
        super().__init__()
        dt = resolve_dtype(dtype)
        kh, kw = _pair(kernel_size)
        self.in_features = self.in_channels = int(in_channels)
        self.out_features = self.out_channels = int(out_channels)
        self.kernel_size = (kh, kw)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        if min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"invalid stride {self.stride} or padding {self.padding}")
        self.weight = Parameter(np.zeros((out_channels, in_channels, kh, kw), dtype=dt))
        self.bias = Parameter(np.zeros((out_channels,), dtype=dt)) if bias else None

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self.qualname or 'Conv2d'}: expected input (n, {self.in_channels}, h, w), "
                             f"got {tuple(x.shape)}")
        y, cache = F_conv.conv2d_forward(x, self.weight.data,
                                         None if self.bias is None else self.bias.data,
                                         self.stride, self.padding)
        self.cache["conv"] = cache
        self.cache["x_shape"] = tuple(x.shape)
        return y

    def apply_transpose(self, delta, M):
        return F_conv.conv2d_input_error(delta, M, self.cache["x_shape"], self.stride,
                                         self.padding)

    def weight_grad(self, delta):
        return F_conv.conv2d_weight_grad(delta, self.cache["conv"])

    def bias_grad(self, delta):
        return F_conv.conv2d_bias_grad(delta)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, "
                f"s={self.stride}, p={self.padding}, rule={self.rule.describe()}")


# ---------------------------------------------------------------------- exact layers
class ReLU(Module):
    """``y = max(x, 0)``; backward ``dx = dy * [x > 0]``."""

    def forward(self, x):
        y, self.cache["relu"] = F_act.relu_forward(x)
        return y

    def backward(self, dy, ctx=None):
        return F_act.relu_backward(dy, self.cache["relu"])


class Flatten(Module):
    """(n, c, h, w) -> (n, c*h*w) in PyTorch's (c, h, w) order, whatever the memory layout."""

    def forward(self, x):
        self.cache["shape"] = tuple(x.shape)
        xp = get_array_module(x)
        return xp.ascontiguousarray(x).reshape(x.shape[0], -1)

    def backward(self, dy, ctx=None):
        return dy.reshape(self.cache["shape"])


class MaxPool2d(Module):
    """Max pooling (kernel, stride, padding with -inf); backward routes dy to the arg-max."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.padding = _pair(padding)

    def forward(self, x):
        y, self.cache["pool"] = F_pool.maxpool2d_forward(x, self.kernel_size, self.stride,
                                                         self.padding)
        return y

    def backward(self, dy, ctx=None):
        return F_pool.maxpool2d_backward(dy, self.cache["pool"])


class GlobalAvgPool2d(Module):
    """(n, c, h, w) -> (n, c): mean over the spatial grid (AdaptiveAvgPool2d(1) + flatten)."""

    def forward(self, x):
        self.cache["shape"] = tuple(x.shape)
        return F_pool.global_avgpool_forward(x)

    def backward(self, dy, ctx=None):
        return F_pool.global_avgpool_backward(dy, self.cache["shape"])


class _BatchNorm(Module):
    """Batch normalisation with PyTorch's conventions.

    Train mode normalises with the biased batch variance and updates
    ``running_mean``/``running_var`` (the latter with the *unbiased* variance,
    m = n·h·w values per channel) with momentum 0.1, and counts
    ``num_batches_tracked``. Setting ``update_running_stats = False`` keeps batch
    statistics but leaves the buffers untouched (the metrics' probe pass).
    """

    _ndim: int = 0

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 dtype="float32"):
        super().__init__()
        dt = resolve_dtype(dtype)
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.update_running_stats = True
        self.weight = Parameter(np.ones((num_features,), dtype=dt))
        self.bias = Parameter(np.zeros((num_features,), dtype=dt))
        self.register_buffer("running_mean", np.zeros((num_features,), dtype=dt))
        self.register_buffer("running_var", np.ones((num_features,), dtype=dt))
        self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))

    def forward(self, x):
        return self._forward(x, F_bn.batchnorm_forward)

    def forward_relu(self, x, relu: "ReLU", add=None):
        """``relu(self(x) + add)`` with ``relu``'s cache filled for its backward pass.

        ``F_bn.batchnorm_relu_forward``: one pass over the output with the compiled kernels,
        else this layer, the residual sum and ``relu`` one after the other (the same bits).
        """
        def bn_relu(*args, **kwargs):
            y, cache, relu.cache["relu"] = F_bn.batchnorm_relu_forward(*args, add=add,
                                                                       **kwargs)
            return y, cache

        return self._forward(x, bn_relu)

    def backward_relu(self, dy, relu: "ReLU", ctx=None):
        """``self.backward(relu.backward(dy))``, the ReLU's mask read inside the batch norm's
        passes where its forward ran compiled (``F_bn.relu_batchnorm_backward``)."""
        dx, self.weight.grad, self.bias.grad = F_bn.relu_batchnorm_backward(
            dy, relu.cache["relu"], self.cache["bn"])
        return dx

    def _forward(self, x, bn_forward):
        if x.ndim != self._ndim or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected {self._ndim}-D input with "
                             f"{self.num_features} channels, got {tuple(x.shape)}")
        update = self.training and self.update_running_stats
        # data parallel with sync_bn: statistics of the global batch (distributed.context)
        group = current_parallel_group()
        reduce = group.reduce_sum if self.training and group is not None and group.sync_bn \
            else None
        y, self.cache["bn"] = bn_forward(
            x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
            training=self.training, momentum=self.momentum, eps=self.eps,
            update_stats=update, reduce=reduce)
        if update:
            self.num_batches_tracked += 1
        return y

    def backward(self, dy, ctx=None):
        dx, dgamma, dbeta = F_bn.batchnorm_backward(dy, self.cache["bn"])
        self.weight.grad, self.bias.grad = dgamma, dbeta
        return dx

    def reset_parameters(self, rng=None) -> None:
        self.weight.data[...] = 1.0
        self.bias.data[...] = 0.0


class BatchNorm1d(_BatchNorm):
    """BatchNorm over (n, c) inputs."""
    _ndim = 2


class BatchNorm2d(_BatchNorm):
    """BatchNorm over (n, c, h, w) inputs (statistics over n, h, w)."""
    _ndim = 4


def fusable(bn, relu) -> bool:
    """True when ``bn`` -> ``relu`` may run as one layer (:meth:`_BatchNorm.forward_relu`):
    both exactly the engine's classes, with no ``forward`` / ``backward`` replaced on the
    instance (a subclass, a hook or a wrapper then keeps its own code)."""
    return type(bn) in (BatchNorm1d, BatchNorm2d) and type(relu) is ReLU and \
        not any(name in vars(m) for m in (bn, relu) for name in _REPLACEABLE)


#: methods whose replacement on an instance keeps a layer out of a pair (:func:`fusable`)
_REPLACEABLE = ("forward", "backward", "forward_relu", "backward_relu")


def bn_relu(bn, relu, x, add=None):
    """``relu(bn(x) [+ add])``: one layer pair where :func:`fusable`, else the layers (and the
    residual sum) one by one; the same bits either way."""
    if fusable(bn, relu):
        return bn.forward_relu(x, relu, add=add)
    y = bn(x)
    # not in place: BN's cache may hold its output
    return relu(y if add is None else F_ew.add(y, add))


def relu_bn_backward(bn, relu, dy, ctx=None):
    """The backward of :func:`bn_relu` without a residual: ``bn.backward(relu.backward(dy))``,
    the mask read in the batch norm's passes where :func:`fusable`."""
    if fusable(bn, relu):
        return bn.backward_relu(dy, relu, ctx)
    return bn.backward(relu.backward(dy, ctx), ctx)


class Sequential(Module):
    """Children applied in order; backward in reverse. Children are named "0", "1", ...
    unless given as an ordered dict."""

    def __init__(self, *layers, **named):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (dict, OrderedDict)):
            items = list(layers[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(layers)] + list(named.items())
        for name, m in items:
            self.add_module(name, m)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def forward(self, x):
        # a BatchNorm followed by a ReLU runs as one layer (forward_relu / backward_relu):
        # the same operations, fewer passes over memory with the compiled kernels
        mods = list(self._modules.values())
        i = 0
        while i < len(mods):
            m = mods[i]
            if i + 1 < len(mods) and fusable(m, mods[i + 1]):
                x = m.forward_relu(x, mods[i + 1])  # BN -> ReLU: one output pass
                i += 2
                continue
            x = m.forward(x)
            i += 1
        return x

    def backward(self, dy, ctx=None):
        mods = list(self._modules.values())
        i = len(mods) - 1
        while i >= 0:
            m = mods[i]
            if i > 0 and fusable(mods[i - 1], m):
                dy = mods[i - 1].backward_relu(dy, m, ctx)  # ReLU -> BN: the BN's passes
                i -= 2
            else:
                dy = m.backward(dy, ctx)
                i -= 1
            if dy is None:  # below the first weight layer nothing needs an error
                return None
        return dy
