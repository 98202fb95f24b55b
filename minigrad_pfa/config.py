"""Experiment configuration: a strict schema, YAML loading and ``--set KEY=VALUE`` overrides.

A config is a nested dict. Every key must be declared in :data:`SCHEMA`; an unknown key, a
value of the wrong type or out of range is a :class:`ConfigError` that names the key (the
peers' schemas silently ignore most of their sections). The resolved config (defaults
filled in) is what a run saves next to its results.
"""
from __future__ import annotations

import copy
import math
import re
from typing import Any, Callable

import yaml


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads every YAML 1.2 float as a float.

    PyYAML follows YAML 1.1, whose float needs a dot and a *signed* exponent
    (``1.0e+6``): ``lr: 1e-4``, ``1.0e6`` or ``--set optim.lr=2.E3`` would otherwise be
    *strings*. The resolver below adds the YAML 1.2 core-schema float
    ``[-+]? ( . [0-9]+ | [0-9]+ ( . [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`` (with a dot or an
    exponent, so integers stay integers); resolvers are tried in the order they were added,
    so whatever YAML 1.1 already reads keeps its meaning.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"))


def yaml_load(text_or_stream):
    """Parse YAML like ``yaml.safe_load``, reading ``1e-4`` and ``1.0e6`` as floats
    (YAML 1.2)."""
    return yaml.load(text_or_stream, Loader=_Loader)


class ConfigError(ValueError):
    """A config key is unknown, of the wrong type, or out of range (the message names it)."""


class Field:
    """One leaf of the schema.

    Parameters
    ----------
    types : type or tuple of types
        Accepted Python types after YAML parsing (``int`` is accepted where ``float`` is).
    default : Any
        Value used when the key is absent (``REQUIRED`` makes it mandatory).
    check : callable, optional
        ``check(value) -> str | None``; a returned string is the reason it is invalid.
    choices : sequence, optional
        Allowed values.
    """

    def __init__(self, types, default=None, check: Callable[[Any], str | None] | None = None,
                 choices=None, doc: str = ""):
        self.types = types if isinstance(types, tuple) else (types,)
        self.default = default
        self.check = check
        self.choices = tuple(choices) if choices is not None else None
        self.doc = doc

    def validate(self, key: str, value):
        if value is None and type(None) in self.types:
            return None
        types = self.types
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if bool not in types and isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected {_tn(types)}, got a boolean")
        if not isinstance(value, types):
            raise ConfigError(f"config key '{key}': expected {_tn(types)}, "
                              f"got {type(value).__name__} {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(self.choices)}")
        if self.check is not None:
            reason = self.check(value)
            if reason:
                raise ConfigError(f"config key '{key}': {value!r} {reason}")
        return value


class Free:
    """A sub-tree validated elsewhere (rule options, schedules): must be a dict/str/None."""

    def __init__(self, types=(dict, str, type(None)), default=None, doc: str = ""):
        self.types = types
        self.default = default
        self.doc = doc

    def validate(self, key, value):
        if not isinstance(value, self.types):
            raise ConfigError(f"config key '{key}': expected {_tn(self.types)}, "
                              f"got {type(value).__name__}")
        return copy.deepcopy(value)


REQUIRED = object()


def _tn(types) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def positive(v):
    return None if v > 0 else "must be > 0"


def non_negative(v):
    return None if v >= 0 else "must be >= 0"


def finite(v):
    return None if math.isfinite(v) else "must be finite"


def int_list(v):
    return None if all(isinstance(i, int) and not isinstance(i, bool) for i in v) \
        else "must be a list of integers"


def positive_int_list(v):
    return int_list(v) or (None if all(i > 0 for i in v) else
                           "must be a list of positive integers (layer widths)")


def at_least(n):
    def check(v):
        return None if v is None or v >= n else f"must be >= {n}"
    return check


def float_list(v):
    return None if all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in v) \
        else "must be a list of numbers"


SCHEMA: dict[str, Any] = {
    "name": Field(str, "run", doc="run name (directory name under --out)"),
    "seed": Field(int, 0, non_negative, doc="seed of this run (forward and feedback streams)"),
    "seeds": Field((list, type(None)), None, int_list,
                   doc="seeds a grid runs; a single run uses 'seed'"),
    "dtype": Field(str, "float32", choices=("float32", "float64")),
    "device": Field(str, "cpu", choices=("cpu", "cuda")),
    "epochs": Field(int, 1, positive),
    "model": {
        "name": Field(str, REQUIRED),
        "hidden": Field((list, type(None)), None, positive_int_list,
                        doc="MLP hidden widths"),
        "num_classes": Field(int, 10, at_least(2)),
        "in_channels": Field((int, type(None)), None, at_least(1)),
        "in_features": Field((int, type(None)), None, at_least(1)),
        "image_size": Field((int, type(None)), None, at_least(1)),
    },
    "data": {
        "name": Field(str, REQUIRED),
        "data_dir": Field((str, type(None)), None),
        "batch_size": Field(int, 64, positive),
        "eval_batch_size": Field(int, 1000, positive),
        "val_size": Field(int, 0, non_negative,
                          doc="examples held out of the training set for validation (0: none)"),
        "split_seed": Field(int, 0, non_negative),
        "augment": Field(str, "none", choices=("none", "crop_flip")),
        "pad_to": Field((int, type(None)), None, doc="zero-pad images to this size (F1: 32)"),
        "normalize": Field(str, "dataset", choices=("dataset", "none", "train_stats"),
                           doc="'dataset': the published mean/std; 'train_stats': computed on "
                               "the training split"),
        "flatten": Field(bool, False),
        "drop_last": Field(bool, False),
        "limit_train": Field((int, type(None)), None, doc="use only the first N training "
                                                          "examples (smoke runs)"),
        "prefetch": Field(int, 2, non_negative),
    },
    "rule": Free(doc="rule name or {name: ..., options}"),
    "rule_map": Free((dict, type(None)), None, doc="{qualname pattern: rule spec | 'frozen'}"),
    "shallow": Field(bool, False, doc="train only the last layer (baseline)"),
    "optim": {
        "name": Field(str, "sgd", choices=("sgd", "adam", "adamw")),
        "lr": Field(float, 0.01, positive),
        "momentum": Field(float, 0.9, non_negative),
        "nesterov": Field(bool, False),
        "weight_decay": Field(float, 0.0, non_negative),
        "betas": Field((list, type(None)), None, float_list),
        "allow_adaptive_optimizer": Field(bool, False),
    },
    "schedule": {
        "lr": Free((dict, type(None)), None),
        "weight_decay": Free((dict, type(None)), None),
    },
    "metrics": {
        "every_epoch": Field(bool, True),
        "every_n_steps": Field(int, 0, non_negative),
        "probe_size": Field(int, 256, positive),
    },
    "eval": {
        "select_on": Field(str, "auto", choices=("auto", "val", "final"),
                           doc="'val': test the best-validation checkpoint; 'final': the last "
                               "epoch (protocols without a validation split); 'auto': val if "
                               "val_size > 0"),
    },
    "distributed": {
        "sync_bn": Field(bool, False, doc="train --distributed: BatchNorm statistics of the "
                                          "global batch (N ranks = one process); false: "
                                          "each rank's shard (PyTorch DDP's default)"),
    },
    "published": Free((dict, type(None)), None, doc="published reference numbers (report)"),
    "protocol": Field((str, type(None)), None, doc="experiment id (E1, E2, F1, ...)"),
}


def _resolve(schema: dict, cfg: dict, prefix: str) -> dict:
    if not isinstance(cfg, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a "
                          f"mapping, got {type(cfg).__name__} {cfg!r}")
    unknown = [k for k in cfg if k not in schema]
    if unknown:
        where = f"in section '{prefix.rstrip('.')}'" if prefix else "at the top level"
        raise ConfigError(f"unknown config key(s) {', '.join(repr(prefix + k) for k in unknown)} "
                          f"{where}; valid keys: {sorted(schema)}")
    out = {}
    for key, spec in schema.items():
        full = prefix + key
        if isinstance(spec, dict):
            out[key] = _resolve(spec, cfg.get(key, {}) or {}, full + ".")
        elif key in cfg:
            out[key] = spec.validate(full, cfg[key])
        elif spec.default is REQUIRED:
            raise ConfigError(f"config key '{full}' is required")
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


def resolve_config(cfg: dict) -> dict:
    """Validate ``cfg`` against :data:`SCHEMA` and fill in defaults (returns a new dict)."""
    out = _resolve(SCHEMA, cfg, "")
    if out["rule"] is None:
        out["rule"] = "bp"
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``KEY=VALUE`` (dotted key, YAML value): ``optim.lr=0.1`` -> (['optim', 'lr'], 0.1)."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} as YAML "
                          f"({_yaml_problem(exc)}); close brackets and quotes, or quote a "
                          "string") from None
    return key.split("."), value


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line: the problem and where it is."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def apply_overrides(cfg: dict, overrides) -> dict:
    """Return a copy of ``cfg`` with every ``KEY=VALUE`` override applied (before validation)."""
    cfg = copy.deepcopy(cfg)
    for text in overrides or ():
        path, value = parse_override(text)
        node = cfg
        for part in path[:-1]:
            if not isinstance(node.get(part, {}), dict):
                node[part] = {"name": node[part]} if part == "rule" else {}
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return cfg


def load_config(path: str, overrides=None) -> dict:
    """Read a YAML config, apply ``--set`` overrides, validate and fill defaults."""
    hint = "give a YAML config file, e.g. experiments/e1/pfa.yaml"
    try:
        with open(path, "r", encoding="utf-8") as fh:
            raw = yaml_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (configs live in experiments/)") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a directory; {hint}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not UTF-8 text (a binary file?); {hint}") from None
    except OSError as exc:
        raise ConfigError(f"config {path} cannot be read ({exc.strerror or exc}); {hint}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} holds a YAML {type(raw).__name__}, not a mapping of "
                          f"keys; {hint}")
    return resolve_config(apply_overrides(raw, overrides))
