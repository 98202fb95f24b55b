"""Module, Parameter and the backward context: the skeleton every layer builds on.

There is no autograd tape. A module maps ``x -> y`` in :meth:`Module.forward` (keeping
what its backward needs in ``self.cache``) and maps the error at its output to the
error at its input in :meth:`Module.backward`. Under feedback-alignment-type rules the
value returned by ``backward`` is *not* the gradient of anything, which is why errors
are called ``dy``/``dx``/``delta`` here and never ``grad``.

Memory layout
-------------
Public shapes are PyTorch's: ``(n, c, h, w)``. Internally 4-D activations are stored
*channels-last* (the ``(n, c, h, w)`` array is a transposed view of a contiguous
``(n, h, w, c)`` buffer), like PyTorch's ``channels_last`` memory format: convolutions
then hand BLAS contiguous GEMMs. Every op accepts any memory layout.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..backend import check_device, device_of, to_device


class Parameter:
    """A learned array and its gradient slot.

    Attributes
    ----------
    data : ndarray
        The value; optimizers update it *in place* so references stay valid.
    grad : ndarray or None
        Written (not accumulated) by the owning module's backward.
    requires_grad : bool
        ``False`` freezes the array: optimizers built from
        :meth:`Module.named_parameters` with ``trainable_only=True`` skip it.
    """

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data, requires_grad: bool = True):
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self) -> str:
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


@dataclass
class BackwardContext:
    """Information shared by every module during one backward pass.

    Attributes
    ----------
    output_error : ndarray or None
        ``e = dL/dlogits``, shape (n, classes). Direct feedback alignment projects it
        straight to every weight layer's input.
    rule_override : object or None
        When set, every weight layer uses this rule instead of its own (the metrics'
        BP twin passes the exact-gradient rule here). Layers never look at rule names.
    record : dict or None
        When a dict, weight layers store ``{"delta": delta, "gW": gW}`` under their
        qualified name (used by gradient/error alignment metrics).
    """

    output_error: Any = None
    rule_override: Any = None
    record: dict | None = None
    extras: dict = field(default_factory=dict)


class Module:
    """Base class: registered parameters, buffers and children, in insertion order.

    Assigning a :class:`Parameter` or a :class:`Module` to an attribute registers it;
    buffers (running statistics, fixed feedback matrices, masks) are registered with
    :meth:`register_buffer` and read back as attributes.
    """

    def __init__(self):
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "cache", {})

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._params[name] = value
            self._buffers.pop(name, None)
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
            return
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # only called when normal lookup fails: buffers live in self._buffers
        buffers = self.__dict__.get("_buffers")
        if buffers is not None and name in buffers:
            return buffers[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def register_buffer(self, name: str, value) -> None:
        """Register a non-learned array that belongs to the module's state."""
        if name in self.__dict__:
            object.__delattr__(self, name)
        self._buffers[name] = value

    def register_parameter(self, name: str, value) -> Parameter:
        """Register (or replace) a learned array; returns its :class:`Parameter`."""
        p = value if isinstance(value, Parameter) else Parameter(value)
        setattr(self, name, p)
        return p

    def add_module(self, name: str, module: "Module") -> None:
        setattr(self, name, module)

    # ------------------------------------------------------------------ traversal
    def children(self) -> Iterator["Module"]:
        return iter(self._modules.values())

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "", trainable_only: bool = False
                         ) -> Iterator[tuple[str, Parameter]]:
        for mname, m in self.named_modules(prefix):
            for pname, p in m._params.items():
                if trainable_only and not p.requires_grad:
                    continue
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self, trainable_only: bool = False) -> list[Parameter]:
        return [p for _, p in self.named_parameters(trainable_only=trainable_only)]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        for mname, m in self.named_modules(prefix):
            for bname, b in m._buffers.items():
                yield (f"{mname}.{bname}" if mname else bname), b

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "Module":
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # ------------------------------------------------------------------ compute
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy, ctx: BackwardContext | None = None):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def clear_cache(self) -> None:
        """Drop every forward cache (frees activation memory after a step)."""
        for _, m in self.named_modules():
            m.cache.clear()

    # ------------------------------------------------------------------ devices
    @property
    def device(self) -> str:
        for _, p in self.named_parameters():
            return device_of(p.data)
        for _, b in self.named_buffers():
            return device_of(b)
        return "cpu"

    def to(self, device: str) -> "Module":
        """Move every parameter, gradient and buffer to ``device`` (in place).

        Raises
        ------
        ValueError
            Unknown device name.
        DeviceError
            ``"cuda"`` without CuPy or a usable CUDA device (checked before anything moves).
        """
        check_device(device)
        for _, m in self.named_modules():
            for p in m._params.values():
                p.data = to_device(p.data, device)
                if p.grad is not None:
                    p.grad = to_device(p.grad, device)
            for k, b in list(m._buffers.items()):
                if b is not None and hasattr(b, "shape"):
                    m._buffers[k] = to_device(b, device)
            m.cache.clear()
            m._moved_to(device)
        return self

    def _moved_to(self, device: str) -> None:
        """Hook for modules holding device objects outside params/buffers (e.g. a rule's RNG)."""

    # ------------------------------------------------------------------ state
    def state_dict(self, include_feedback: bool = True) -> "OrderedDict[str, Any]":
        """Parameters then buffers of every module, by qualified name (torchvision style).

        Parameters
        ----------
        include_feedback : bool
            ``False`` drops feedback state (names containing ``"feedback_"``), leaving
            exactly the arrays a PyTorch model of the same architecture has.
        """
        out: "OrderedDict[str, Any]" = OrderedDict()
        for mname, m in self.named_modules():
            for pname, p in m._params.items():
                out[f"{mname}.{pname}" if mname else pname] = p.data
            for bname, b in m._buffers.items():
                if b is None:
                    continue
                out[f"{mname}.{bname}" if mname else bname] = b
        if not include_feedback:
            out = OrderedDict((k, v) for k, v in out.items() if "feedback_" not in k)
        return out

    def load_state_dict(self, state, strict: bool = True) -> None:
        """Copy arrays into the module's parameters and buffers (shape-checked).

        Values are converted to each target's device and dtype. With ``strict`` a missing
        or unexpected key is an error that lists the keys. Every value is checked before
        any is assigned, so a failed load leaves the module unchanged.

        Raises
        ------
        KeyError
            ``strict`` and keys missing from ``state`` or unknown to the module.
        ValueError
            A value's shape differs from the module's array (every mismatch is listed).
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict mismatch: missing={missing[:10]}"
                           f"{'...' if len(missing) > 10 else ''} "
                           f"unexpected={unexpected[:10]}{'...' if len(unexpected) > 10 else ''}")
        bad = [f"{k}: shape {_shape(state[k])} does not match the model's "
               f"{tuple(v.shape)}" for k, v in own.items()
               if k in state and _shape(state[k]) != tuple(v.shape)]
        if bad:
            raise ValueError("state_dict shape mismatch: " + "; ".join(bad[:10])
                             + ("..." if len(bad) > 10 else ""))
        new = OrderedDict((k, _coerce_like(state[k], v, k)) for k, v in own.items() if k in state)
        for mname, m in self.named_modules():
            for pname, p in m._params.items():
                key = f"{mname}.{pname}" if mname else pname
                if key in new:
                    p.data = new[key]
            for bname, b in list(m._buffers.items()):
                key = f"{mname}.{bname}" if mname else bname
                if key in new and b is not None:
                    m._buffers[bname] = new[key]


def _shape(value) -> tuple:
    """Shape of an array on any device, or of a nested list / scalar (no host copy)."""
    return tuple(value.shape) if hasattr(value, "shape") else tuple(np.shape(value))


def _coerce_like(value, like, key: str):
    # device arrays stay where they are (CuPy, or the stand-in, which has no CUDA interface)
    value_np = value if device_of(value) == "cuda" else np.asarray(value)
    if tuple(value_np.shape) != tuple(like.shape):
        raise ValueError(f"{key}: shape {tuple(value_np.shape)} does not match the "
                         f"model's {tuple(like.shape)}")
    out = to_device(value_np, device_of(like))
    return out.astype(like.dtype, copy=True)
