"""Strict validation of rule options and the one-line description used in run logs.

Every rule takes its options as keyword arguments of its constructor; :func:`make_rule`
(:mod:`minigrad_pfa.rules.registry`) rejects unknown names before construction, and the
constructors call the checkers below, so a bad value is an error naming the rule, the
option and what was expected.
"""
from __future__ import annotations

import inspect
import numbers

import numpy as np


def option_notes(cls) -> dict:
    """Per option, the effective default in words where the constructor's default is a
    placeholder (``None``) resolved by the rule: the class attribute ``option_notes``."""
    return dict(getattr(cls, "option_notes", {}) or {})


def option_defaults(cls) -> dict:
    """The options a rule class accepts (its constructor's keyword arguments) and their defaults."""
    if cls.__init__ is object.__init__:
        return {}
    return {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


class DescribedByOptions:
    """Mixin: ``describe()`` gives the rule's name and its non-default options, e.g.
    ``"pfa(expand_ratio=5, feedback_density=0.3)"``. Subclasses keep the validated
    values in ``self.options`` (a dict keyed like the constructor's arguments)."""

    options: dict = {}

    def effective_options(self) -> dict:
        """Every option as this instance runs with it: ``self.options`` with placeholders
        resolved (a rule whose ``None`` stands for a computed value overrides this, e.g.
        PFA's ``expand_ratio``). :func:`~minigrad_pfa.rules.registry.effective_options`
        is the public entry point."""
        return dict(self.options)

    def effective_defaults(self) -> dict:
        """The values ``describe()`` treats as defaults: the constructor's, unless a rule
        resolves some (e.g. WM's per-variant defaults)."""
        return option_defaults(type(self))

    def describe(self) -> str:
        defaults = self.effective_defaults()
        diff = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                for k, v in self.options.items() if defaults.get(k, object()) != v]
        return f"{self.name}({', '.join(diff)})" if diff else self.name


def check_bool(rule: str, name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{rule}: option {name!r} must be true or false, got {value!r}")
    return bool(value)


def check_density(rule: str, value) -> float:
    """``feedback_density`` must be a number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{rule}: feedback_density must be a number in (0, 1], got {value!r}")
    v = float(value)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{rule}: feedback_density must be in (0, 1], got {value!r}")
    return v


def check_int(rule: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{rule}: option {name!r} must be an integer >= {minimum}, "
                         f"got {value!r}")
    return int(value)


def check_float(rule: str, name: str, value, minimum: float = 0.0,
                strict: bool = False) -> float:
    bad = isinstance(value, bool) or not isinstance(value, numbers.Real)
    if not bad:
        v = float(value)
        bad = not np.isfinite(v) or (v <= minimum if strict else v < minimum)
    if bad:
        rel = ">" if strict else ">="
        raise ValueError(f"{rule}: option {name!r} must be a finite number {rel} {minimum}, "
                         f"got {value!r}")
    return float(value)


def check_choice(rule: str, name: str, value, choices) -> object:
    if value not in choices:
        raise ValueError(f"{rule}: option {name!r} must be one of {list(choices)}, "
                         f"got {value!r}")
    return value
