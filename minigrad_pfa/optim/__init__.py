"""Optimizers (torch.optim semantics) and learning-rate / weight-decay schedules.

Typical use::

    opt = build_optimizer("sgd", model.named_parameters(), lr=0.01, momentum=0.9)
    lr_s = build_schedule({"type": "multistep", "base": 0.01, "milestones": [20, 30],
                           "gamma": 0.5})
    wd_s = build_schedule({"type": "piecewise", "values": [0.03, 9e-5], "boundaries": [1]})
    for epoch ...:
        for step ...:
            opt.lr = lr_s.value(epoch, step, steps_per_epoch)
            opt.weight_decay = wd_s.value(epoch, step, steps_per_epoch)
            ...  # forward, backward (writes p.grad)
            opt.step()
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Iterable

from .adam import Adam, AdamW
from .base import Optimizer
from .schedules import (Constant, Cosine, EpochPiecewise, LinearWarmup, MultiStep, Schedule,
                        build_schedule)
from .sgd import SGD

#: optimizer names accepted by :func:`build_optimizer` (configs, command line)
OPTIMIZERS: "OrderedDict[str, type[Optimizer]]" = OrderedDict(sgd=SGD, adam=Adam, adamw=AdamW)


def build_optimizer(name: str, named_params: Iterable, **kw) -> Optimizer:
    """Build an optimizer by name.

    Parameters
    ----------
    name : {"sgd", "adam", "adamw"}
        Case-insensitive.
    named_params : iterable of (str, Parameter)
        Usually ``model.named_parameters()``.
    **kw
        The optimizer's hyper-parameters (e.g. ``lr``, ``momentum``, ``weight_decay``,
        ``nesterov``, ``betas``, ``eps``).

    Raises
    ------
    ValueError
        Unknown name (the message lists the choices), an option the optimizer does not
        take, or a missing required option (the messages name them).
    """
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")
    cls = OPTIMIZERS[key]
    sig = inspect.signature(cls.__init__)
    accepted = [p for p in sig.parameters if p not in ("self", "named_params")]
    unknown = [k for k in kw if k not in accepted]
    if unknown:
        raise ValueError(f"optimizer {key!r} does not take option(s) {unknown}; "
                         f"accepted: {accepted}")
    required = [p.name for p in sig.parameters.values()
                if p.name in accepted and p.default is inspect.Parameter.empty]
    missing = [k for k in required if k not in kw]
    if missing:
        raise ValueError(f"optimizer {key!r} needs option(s) {missing}")
    return cls(named_params, **kw)


__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "OPTIMIZERS", "build_optimizer",
           "Schedule", "Constant", "MultiStep", "Cosine", "LinearWarmup", "EpochPiecewise",
           "build_schedule"]
