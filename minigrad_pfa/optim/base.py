"""The optimizer base class: named parameters, per-parameter state, flat state dicts.

Conventions shared by every optimizer of :mod:`minigrad_pfa.optim` (torch.optim's):

* An optimizer is built from ``named_params``, a list of ``(name, Parameter)`` pairs
  (``model.named_parameters()``); the names key its state, so the state dict of a model
  is stable across runs and readable in a checkpoint.
* :meth:`Optimizer.step` skips every parameter whose ``grad`` is ``None`` or whose
  ``requires_grad`` is ``False``; its state (and, for Adam, its step count) is left alone.
* Updates are *in place* on ``p.data``: layers, rules and views keep references.
* ``lr`` and ``weight_decay`` are plain attributes that schedules overwrite every epoch or
  step. They are read as Python floats at each step: a float32 parameter then stays
  float32 (NumPy 2 / NEP 50 promotes ``float32 * np.float64`` to float64, but not
  ``float32 * float``).
* :meth:`Optimizer.state_dict` is flat, ordered and ``.npz``-storable (no objects):
  ``"type"``, the hyper-parameters as 0-d arrays, ``"step"`` and ``"<slot>/<param name>"``
  for every piece of per-parameter state. :meth:`Optimizer.load_state_dict` restores it
  exactly (bitwise resume).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Iterable

import numpy as np

from ..backend import device_of, get_array_module, to_device
from ..cpu.threads import for_each_balanced
from ..nn.module import Parameter


class Optimizer:
    """Base class: subclasses implement :meth:`_update` for one parameter.

    Parameters
    ----------
    named_params : iterable of (str, Parameter)
        The parameters to optimize, by unique name (order fixes the state-dict order).
    lr : float
        Learning rate, ``>= 0``.
    weight_decay : float
        Weight-decay coefficient ``lambda >= 0`` (coupled L2 or decoupled, per subclass).
    """

    #: name used by :func:`minigrad_pfa.optim.build_optimizer` and stored in the state dict
    name = "optimizer"
    #: True when the update is a linear function of the gradient stream (SGD, momentum,
    #: Nesterov). KP/PFA rely on it: their feedback mismatch then decays whatever the data.
    is_linear_in_gradient = False
    #: True when weight decay shrinks ``p`` directly (AdamW) instead of entering the gradient
    decoupled_weight_decay = False
    #: per-parameter array state, in state-dict order (e.g. ``("momentum_buffer",)``)
    array_slots: tuple[str, ...] = ()
    #: per-parameter integer counters (Adam's per-parameter ``"step"``)
    count_slots: tuple[str, ...] = ()

    def __init__(self, named_params: Iterable, lr: float, weight_decay: float = 0.0):
        self.named_params: "OrderedDict[str, Parameter]" = _check_named_params(named_params)
        self.lr = lr
        self.weight_decay = weight_decay
        #: number of :meth:`step` calls so far
        self.step_count = 0
        #: per-parameter state: ``state[name][slot]`` -> array or int
        self.state: "OrderedDict[str, dict]" = OrderedDict(
            (name, {}) for name in self.named_params)
        self._validate()

    # ------------------------------------------------------------------ hyper-parameters
    def hyperparameters(self) -> "OrderedDict[str, Any]":
        """Hyper-parameters in state-dict order (floats, bools or tuples of floats)."""
        return OrderedDict(lr=self.lr, weight_decay=self.weight_decay)

    def _validate(self) -> None:
        """Check the hyper-parameters and store them as Python floats/bools; errors name
        the offending one. Subclasses extend it for their own hyper-parameters."""
        self.lr = _nonneg("lr", self.lr)
        self.weight_decay = _nonneg("weight_decay", self.weight_decay)

    # ------------------------------------------------------------------ stepping
    def zero_grad(self) -> None:
        """Drop every gradient (``grad = None``): a parameter without a fresh gradient is
        then skipped by the next :meth:`step` instead of reusing a stale one."""
        for p in self.named_params.values():
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient (in place on ``p.data``)."""
        # Python floats: schedules may have stored NumPy scalars, which would promote
        # float32 arrays to float64 (NEP 50)
        lr, wd = float(self.lr), float(self.weight_decay)
        todo = []
        for name, p in self.named_params.items():
            g = p.grad
            if g is None or not p.requires_grad:
                continue
            if g.shape != p.data.shape or g.dtype != p.data.dtype:
                raise ValueError(
                    f"parameter {name!r}: gradient has shape {tuple(g.shape)} and dtype "
                    f"{g.dtype}, expected the parameter's {tuple(p.data.shape)} and "
                    f"{p.data.dtype}")
            todo.append((name, p.data, g))
        # parameters are independent: with several engine threads (NumPy) the updates run
        # in groups of about equal size on the pool (minigrad_pfa.cpu.threads)
        for_each_balanced(todo, lambda t: t[1].size,
                          lambda t: self._update(t[0], t[1], t[2], lr, wd),
                          get_array_module(todo[0][1]) if todo else None)
        self.step_count += 1

    def _update(self, name: str, w, g, lr: float, wd: float) -> None:
        """Update the array ``w`` (in place) from its gradient ``g``."""
        raise NotImplementedError

    def _array_state(self, name: str, slot: str, like):
        """The state array ``slot`` of parameter ``name`` (or ``None`` before its first
        update), moved to ``like``'s device if the model was moved since (``Module.to``)."""
        st = self.state[name]
        a = st.get(slot)
        if a is not None and device_of(a) != device_of(like):
            a = st[slot] = to_device(a, device_of(like))
        return a

    # ------------------------------------------------------------------ state
    def state_dict(self) -> "OrderedDict[str, Any]":
        """Flat ordered state: ``type``, hyper-parameters, ``step``, then per parameter
        ``"<slot>/<name>"``.

        Per-parameter arrays are the live arrays (no copy, on the parameters' device), like
        :meth:`Module.state_dict`; scalars are fresh 0-d NumPy arrays. Everything is a
        plain numeric or unicode array, so ``np.savez`` stores it without pickling.
        """
        out: "OrderedDict[str, Any]" = OrderedDict()
        out["type"] = np.array(self.name)
        for k, v in self.hyperparameters().items():
            out[k] = np.array(v, dtype=np.bool_ if isinstance(v, bool) else np.float64)
        out["step"] = np.array(self.step_count, dtype=np.int64)
        for name in self.named_params:
            st = self.state[name]
            for slot in self.count_slots:
                if slot in st:
                    out[f"{slot}/{name}"] = np.array(st[slot], dtype=np.int64)
            for slot in self.array_slots:
                if st.get(slot) is not None:
                    out[f"{slot}/{name}"] = st[slot]
        return out

    def load_state_dict(self, state, strict: bool = True) -> None:
        """Restore a :meth:`state_dict` exactly (arrays copied to each parameter's device
        and dtype).

        Parameters
        ----------
        state : mapping of str -> array
            As produced by :meth:`state_dict` (NumPy or CuPy arrays).
        strict : bool
            Unknown keys (a slot this optimizer does not have, or a parameter it does not
            optimize) are an error; with ``False`` they are ignored.

        Raises
        ------
        ValueError
            The state belongs to another optimizer type, or an array's shape differs from
            its parameter's.
        KeyError
            A required entry is missing, or (``strict``) unexpected entries exist.
        """
        if "type" not in state:
            raise KeyError("optimizer state has no 'type' entry; expected the output of "
                           "Optimizer.state_dict()")
        kind = str(np.asarray(to_device(state["type"], "cpu")).item())
        if kind != self.name:
            raise ValueError(f"optimizer state was saved by {kind!r} but this optimizer is "
                             f"{self.name!r}; build the same optimizer type to resume")
        hyper = self.hyperparameters()
        missing = [k for k in list(hyper) + ["step"] if k not in state]
        if missing:
            raise KeyError(f"optimizer state lacks {missing}")
        new_state: "OrderedDict[str, dict]" = OrderedDict((n, {}) for n in self.named_params)
        unexpected = []
        for key, value in state.items():
            if key in hyper or key in ("type", "step"):
                continue
            slot, _, pname = key.partition("/")
            if pname not in self.named_params or slot not in self.array_slots + self.count_slots:
                unexpected.append(key)
                continue
            if slot in self.count_slots:
                new_state[pname][slot] = int(to_device(value, "cpu"))
                continue
            like = self.named_params[pname].data
            if tuple(value.shape) != tuple(like.shape):
                raise ValueError(f"optimizer state {key!r}: shape {tuple(value.shape)} does "
                                 f"not match the parameter's {tuple(like.shape)}")
            new_state[pname][slot] = to_device(value, device_of(like)).astype(like.dtype,
                                                                              copy=True)
        if strict and unexpected:
            raise KeyError(f"optimizer state has entries for unknown slots or parameters: "
                           f"{unexpected[:10]}{'...' if len(unexpected) > 10 else ''}; known "
                           f"parameters: {list(self.named_params)[:10]}")
        for k, cur in hyper.items():
            v = np.asarray(to_device(state[k], "cpu"))
            if isinstance(cur, bool):
                setattr(self, k, bool(v))
            elif isinstance(cur, tuple):
                setattr(self, k, tuple(float(x) for x in v.reshape(-1)))
            else:
                setattr(self, k, float(v))
        self._validate()
        self.step_count = int(to_device(state["step"], "cpu"))
        self.state = new_state

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({len(self.named_params)} params, {hp})"


def _check_named_params(named_params) -> "OrderedDict[str, Parameter]":
    """Validate ``(name, Parameter)`` pairs: unique names, no parameter listed twice."""
    out: "OrderedDict[str, Parameter]" = OrderedDict()
    seen: set[int] = set()
    for item in named_params:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError("optimizers take (name, Parameter) pairs, e.g. "
                            f"list(model.named_parameters()); got {item!r}")
        name, p = item
        if not isinstance(name, str) or not name:
            raise TypeError(f"parameter names must be non-empty strings, got {name!r}")
        if not isinstance(p, Parameter):
            raise TypeError(f"{name!r}: expected a Parameter, got {type(p).__name__}")
        if name in out:
            raise ValueError(f"parameter name {name!r} appears twice")
        if id(p) in seen:
            raise ValueError(f"parameter {name!r} is listed twice under different names")
        seen.add(id(p))
        out[name] = p
    if not out:
        raise ValueError("optimizer got an empty parameter list")
    return out


def _number(name: str, value) -> float:
    """``value`` as a finite Python float (bools and non-numbers are errors naming ``name``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _nonneg(name: str, value) -> float:
    """``value`` as a Python float ``>= 0``."""
    v = _number(name, value)
    if v < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v

