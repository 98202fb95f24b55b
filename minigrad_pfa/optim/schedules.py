"""Learning-rate and weight-decay schedules as pure functions of the training position.

A schedule maps a position ``(epoch, step, steps_per_epoch)`` (``epoch`` counted from 0,
``step`` the index of the mini-batch inside that epoch) to a Python float. It keeps no
state, so a resumed run needs nothing but its position, and values can be computed in any
order. The trainer sets ``optimizer.lr`` / ``optimizer.weight_decay`` from them before each
step (or once per epoch for per-epoch schedules).

Schedules and their spec dicts (:func:`build_schedule`)
------------------------------------------------------
=============  ===============================================  ============================
type           value at epoch ``e``                             spec keys
=============  ===============================================  ============================
constant       ``value``                                        value
multistep      ``base * gamma ** #{milestones <= e}``           base, milestones, gamma=0.1
               (torch ``MultiStepLR``)
cosine         ``min + (base - min) (1 + cos(pi T / total))/2``, base, total_epochs,
               ``T = e`` (or ``e + step/steps_per_epoch``       min_value=0, per_step=False
               with ``per_step``), ``min`` once ``T >= total``
               (torch ``CosineAnnealingLR``)
warmup         ``inner * (s + 1) / warmup_steps`` for the       inner, warmup_steps
               global step ``s = e * steps_per_epoch + step <
               warmup_steps``, then ``inner``
piecewise      ``values[#{boundaries <= e}]``                   values, boundaries
=============  ===============================================  ============================

The published PFA/KP weight decay "0.03 -> 9e-5" (0.03 during epoch 0, 9e-5 from epoch 1
on) is ``{"type": "piecewise", "values": [0.03, 9e-5], "boundaries": [1]}``; the E1 learning
rate is ``{"type": "multistep", "base": 0.01, "milestones": [20, 30], "gamma": 0.5}``.
A bare number is a constant schedule.
"""
from __future__ import annotations

import bisect
import math
from numbers import Integral, Real

__all__ = ["Schedule", "Constant", "MultiStep", "Cosine", "LinearWarmup", "EpochPiecewise",
           "SCHEDULES", "build_schedule"]


class Schedule:
    """Base class: a pure function of the training position."""

    #: the ``"type"`` of the schedule's spec dict
    type_name = "schedule"

    def value(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """The scheduled value at mini-batch ``step`` of ``epoch`` (both from 0)."""
        raise NotImplementedError

    def __call__(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        return self.value(epoch, step, steps_per_epoch)

    def to_spec(self) -> dict:
        """The spec dict that :func:`build_schedule` turns back into this schedule."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_spec().items() if k != "type")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.to_spec() == other.to_spec()


class Constant(Schedule):
    """The same value at every position."""

    type_name = "constant"

    def __init__(self, value: float):
        self.value_ = _nonneg_number("value", value)

    def value(self, epoch, step=0, steps_per_epoch=1):
        _check_position(epoch, step, steps_per_epoch)
        return self.value_

    def to_spec(self):
        return {"type": self.type_name, "value": self.value_}


class MultiStep(Schedule):
    """``base * gamma ** k`` with ``k`` the number of milestones ``<= epoch``.

    Same values as ``torch.optim.lr_scheduler.MultiStepLR`` stepped once per epoch (a
    milestone listed twice counts twice). The factor is applied by repeated
    multiplication, as PyTorch's chained updates do, so the values agree bitwise.

    Parameters
    ----------
    base : float
        Value during the epochs before the first milestone.
    milestones : list of int
        Epochs (>= 0) from which one more factor ``gamma`` applies.
    gamma : float
        Factor per milestone, > 0.
    """

    type_name = "multistep"

    def __init__(self, base: float, milestones, gamma: float = 0.1):
        self.base = _nonneg_number("base", base)
        self.milestones = sorted(_int_list("milestones", milestones, minimum=0))
        self.gamma = _number("gamma", gamma)
        if self.gamma <= 0.0:
            raise ValueError(f"gamma must be > 0, got {gamma!r}")

    def value(self, epoch, step=0, steps_per_epoch=1):
        _check_position(epoch, step, steps_per_epoch)
        v = self.base
        for _ in range(bisect.bisect_right(self.milestones, epoch)):
            v *= self.gamma
        return v

    def to_spec(self):
        return {"type": self.type_name, "base": self.base, "milestones": list(self.milestones),
                "gamma": self.gamma}


class Cosine(Schedule):
    """Cosine annealing from ``base`` to ``min_value`` over ``total_epochs``.

    ``value = min + (base - min) * (1 + cos(pi * T / total_epochs)) / 2`` with ``T = epoch``
    (per epoch, the closed form of ``torch.optim.lr_scheduler.CosineAnnealingLR`` with
    ``T_max = total_epochs``) or ``T = epoch + step / steps_per_epoch`` (``per_step``: the
    same curve sampled at every mini-batch, i.e. CosineAnnealingLR stepped per batch with
    ``T_max = total_epochs * steps_per_epoch``). For ``T >= total_epochs`` the value stays
    at ``min_value`` (PyTorch's would climb back up the cosine).
    """

    type_name = "cosine"

    def __init__(self, base: float, total_epochs: int, min_value: float = 0.0,
                 per_step: bool = False):
        self.base = _nonneg_number("base", base)
        self.total_epochs = _int("total_epochs", total_epochs, minimum=1)
        self.min_value = _nonneg_number("min_value", min_value)
        if not isinstance(per_step, bool):
            raise ValueError(f"per_step must be true or false, got {per_step!r}")
        self.per_step = per_step

    def value(self, epoch, step=0, steps_per_epoch=1):
        _check_position(epoch, step, steps_per_epoch)
        t = epoch + step / steps_per_epoch if self.per_step else float(epoch)
        if t >= self.total_epochs:
            return self.min_value
        return self.min_value + (self.base - self.min_value) * (
            1.0 + math.cos(math.pi * t / self.total_epochs)) / 2.0

    def to_spec(self):
        return {"type": self.type_name, "base": self.base, "total_epochs": self.total_epochs,
                "min_value": self.min_value, "per_step": self.per_step}


class LinearWarmup(Schedule):
    """Linear warm-up over the first ``warmup_steps`` optimizer steps, then ``inner``.

    With ``s = epoch * steps_per_epoch + step`` the global step,
    ``value = inner(position) * (s + 1) / warmup_steps`` while ``s < warmup_steps``: from
    ``inner / warmup_steps`` at the first step up to ``inner`` (the same factors as
    ``torch.optim.lr_scheduler.LinearLR(start_factor=1/W, end_factor=1, total_iters=W-1)``).
    For a schedule evaluated once per epoch (``steps_per_epoch=1``) the steps are epochs.
    """

    type_name = "warmup"

    def __init__(self, inner, warmup_steps: int):
        self.inner = build_schedule(inner)
        self.warmup_steps = _int("warmup_steps", warmup_steps, minimum=0)

    def value(self, epoch, step=0, steps_per_epoch=1):
        v = self.inner.value(epoch, step, steps_per_epoch)
        s = epoch * steps_per_epoch + step
        if s < self.warmup_steps:
            v = v * (s + 1) / self.warmup_steps
        return v

    def to_spec(self):
        return {"type": self.type_name, "inner": self.inner.to_spec(),
                "warmup_steps": self.warmup_steps}


class EpochPiecewise(Schedule):
    """Piecewise-constant per epoch: ``values[i]`` for ``boundaries[i-1] <= epoch <
    boundaries[i]``.

    Used for the published multistep weight-decay schedules of PFA/KP runs: "wd 0.03 ->
    9e-5" is ``EpochPiecewise([0.03, 9e-5], [1])`` (0.03 in epoch 0, 9e-5 from epoch 1).

    Parameters
    ----------
    values : list of float
        ``len(boundaries) + 1`` values (>= 0).
    boundaries : list of int
        Strictly increasing epochs (>= 1) at which the next value starts.
    """

    type_name = "piecewise"

    def __init__(self, values, boundaries):
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"values must be a non-empty list of numbers, got {values!r}")
        self.values = [_nonneg_number(f"values[{i}]", v) for i, v in enumerate(values)]
        self.boundaries = _int_list("boundaries", boundaries, minimum=1)
        if any(b >= c for b, c in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"boundaries must be strictly increasing, got {boundaries!r}")
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(f"values needs len(boundaries) + 1 = {len(self.boundaries) + 1} "
                             f"entries, got {len(self.values)}")

    def value(self, epoch, step=0, steps_per_epoch=1):
        _check_position(epoch, step, steps_per_epoch)
        return self.values[bisect.bisect_right(self.boundaries, epoch)]

    def to_spec(self):
        return {"type": self.type_name, "values": list(self.values),
                "boundaries": list(self.boundaries)}


#: spec ``"type"`` -> schedule class
SCHEDULES = {cls.type_name: cls for cls in (Constant, MultiStep, Cosine, LinearWarmup,
                                            EpochPiecewise)}
# spec keys of each type (Constant's is "value"; every other key is its argument name)
_SPEC_KEYS = {"constant": ("value",), "multistep": ("base", "milestones", "gamma"),
              "cosine": ("base", "total_epochs", "min_value", "per_step"),
              "warmup": ("inner", "warmup_steps"), "piecewise": ("values", "boundaries")}
_REQUIRED = {"constant": ("value",), "multistep": ("base", "milestones"),
             "cosine": ("base", "total_epochs"), "warmup": ("inner", "warmup_steps"),
             "piecewise": ("values", "boundaries")}


def build_schedule(spec) -> Schedule:
    """Build a schedule from a config value.

    Parameters
    ----------
    spec : dict, number or Schedule
        A dict with ``"type"`` (one of :data:`SCHEDULES`) and that type's keys (see the
        module docstring), a bare number (a constant), or a schedule (returned as is).

    Raises
    ------
    ValueError
        Missing ``type``, an unknown type, a missing or unknown key, or a bad value; the
        message names the key.
    """
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, Real) and not isinstance(spec, bool):
        return Constant(spec)
    if not isinstance(spec, dict):
        raise ValueError(f"a schedule spec must be a dict with a 'type' key or a number, "
                         f"got {spec!r}")
    if "type" not in spec:
        raise ValueError(f"schedule spec {spec!r} has no 'type' key; choose one of "
                         f"{list(SCHEDULES)}")
    kind = spec["type"]
    if kind not in SCHEDULES:
        raise ValueError(f"schedule spec: unknown 'type' {kind!r}; choose one of "
                         f"{list(SCHEDULES)}")
    keys = {k: v for k, v in spec.items() if k != "type"}
    unknown = [k for k in keys if k not in _SPEC_KEYS[kind]]
    if unknown:
        raise ValueError(f"schedule {kind!r}: unknown key(s) {unknown}; allowed: "
                         f"{list(_SPEC_KEYS[kind])}")
    missing = [k for k in _REQUIRED[kind] if k not in keys]
    if missing:
        raise ValueError(f"schedule {kind!r}: missing key(s) {missing}")
    try:
        return SCHEDULES[kind](**keys)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"schedule {kind!r}: {exc}") from None


# ---------------------------------------------------------------------- validation
def _number(key: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(float(v)):
        raise ValueError(f"{key} must be a finite number, got {v!r}")
    return float(v)


def _nonneg_number(key: str, v) -> float:
    x = _number(key, v)
    if x < 0.0:
        raise ValueError(f"{key} must be >= 0, got {v!r}")
    return x


def _int(key: str, v, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, Integral) or v < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _int_list(key: str, v, minimum: int) -> list[int]:
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"{key} must be a list of integers, got {v!r}")
    return [_int(f"{key}[{i}]", x, minimum) for i, x in enumerate(v)]


def _check_position(epoch, step, steps_per_epoch) -> None:
    if epoch < 0 or step < 0 or steps_per_epoch < 1:
        raise ValueError(f"bad training position epoch={epoch!r}, step={step!r}, "
                         f"steps_per_epoch={steps_per_epoch!r}: need epoch >= 0, step >= 0, "
                         "steps_per_epoch >= 1")
