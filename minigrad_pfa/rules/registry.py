"""Rules by name, per-layer rule maps, frozen layers and the shallow baseline.

A *rule spec* (configs, command line) is one of:

* a name: ``"pfa"``; or ``"pfa:expand_ratio=5,feedback_density=0.3"`` (command-line form,
  see :func:`parse_rule`);
* a dict ``{"name": "pfa", "expand_ratio": 5, ...}`` (options of that rule), optionally with
  ``"frozen": true`` (the layer's weight and bias do not learn; the rule still sends the
  error down and its own feedback still learns);

and, at the top level only,

* ``"layers": {pattern: spec or "frozen"}``: per-layer overrides; ``pattern`` is an
  ``fnmatch`` pattern on the layer's qualified name (``"fc"``, ``"layer3.*"``); the first
  matching pattern in the map's order wins; a pattern matching no layer is an error;
  ``"frozen"`` is the top-level rule with ``frozen: true``;
* ``"shallow": true``: the standard control for claims that hidden layers learn: every
  parameter except the last weight layer's ``weight``/``bias`` is frozen, and the last
  layer's input error is not computed (nothing below it runs backward).

Example: ``{"name": "pfa", "expand_ratio": 10, "layers": {"fc": "bp", "conv1": "frozen"}}``.
"""
from __future__ import annotations

import ast
import fnmatch
from collections import OrderedDict

import numpy as np

from .base import BP, Rule
from .dfa import DFA
from .fa import FA
from .kp import KP
from .options import option_defaults
from .pfa import PFA
from .sign import BRSF, FRSF, USF
from .wm import WM

#: every rule by its config / command-line name
RULES: "OrderedDict[str, type[Rule]]" = OrderedDict(
    (cls.name, cls) for cls in (BP, FA, DFA, USF, BRSF, FRSF, KP, WM, PFA))

#: keys of a spec dict that are not rule options
_LAYER_KEYS = ("name", "frozen")
_TOP_KEYS = ("name", "layers", "shallow")


def rule_options(name: str) -> dict:
    """The options of rule ``name`` and their defaults."""
    return option_defaults(_rule_class(name))


def effective_options(name: str, options: dict | None = None) -> dict:
    """The options rule ``name`` runs with when given ``options`` (the others defaulted),
    placeholders resolved: ``effective_options("pfa")["expand_ratio"] == 10``,
    ``effective_options("pfa", {"orthogonal": True})["expand_ratio"] == 1``. The one
    answer to "what does leaving an option out mean" (``minigrad-pfa rules``, report
    labels). Raises ValueError for an unknown rule or invalid options."""
    rule = make_rule(name, **(options or {}))
    resolve = getattr(rule, "effective_options", None)
    return resolve() if resolve is not None else {}


def _rule_class(name) -> type:
    if name not in RULES:
        raise ValueError(f"unknown learning rule {name!r}; choose one of {list(RULES)}")
    return RULES[name]


def make_rule(name: str, **options) -> Rule:
    """Build one rule instance (one per weight layer) with validated options.

    Raises
    ------
    ValueError
        Unknown rule name or option (the message lists the valid ones), or a bad value
        (the rule's constructor names the option and what it expects).
    """
    cls = _rule_class(name)
    valid = option_defaults(cls)
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(f"rule {name!r} does not take option(s) {unknown}; valid options: "
                         f"{list(valid) if valid else 'none'}")
    return cls(**options)


def _parse_value(text: str):
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def parse_rule(text: str) -> dict:
    """Command-line form -> spec dict: ``"pfa:expand_ratio=5,orthogonal=true"`` ->
    ``{"name": "pfa", "expand_ratio": 5, "orthogonal": True}``. Values are Python / YAML-ish
    literals (``true``/``false``/``none``, numbers, bare strings)."""
    name, _, rest = text.partition(":")
    spec = {"name": name.strip()}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"rule option {item!r} in {text!r}: expected key=value")
        spec[key.strip()] = _parse_value(value)
    return spec


def _normalise(spec, where: str, allowed_keys) -> dict:
    """A spec as a dict with a ``name`` (strings go through :func:`parse_rule`)."""
    if isinstance(spec, str):
        spec = parse_rule(spec)
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: a rule spec must be a name or a dict with 'name', "
                         f"got {spec!r}")
    if "name" not in spec:
        raise ValueError(f"{where}: rule spec {spec!r} has no 'name'; choose one of "
                         f"{list(RULES)}")
    extra = [k for k in spec if k not in allowed_keys and k not in rule_options(spec["name"])]
    if extra:
        raise ValueError(f"{where}: rule {spec['name']!r} does not take option(s) {extra}; "
                         f"valid options: {list(rule_options(spec['name']))}, plus "
                         f"{[k for k in allowed_keys if k != 'name']}")
    return dict(spec)


def _layer_rule(spec: dict, where: str) -> tuple[Rule, bool]:
    """(rule instance, frozen?) from a normalised layer spec."""
    frozen = spec.pop("frozen", False)
    if not isinstance(frozen, bool):
        raise ValueError(f"{where}: 'frozen' must be true or false, got {frozen!r}")
    name = spec.pop("name")
    return make_rule(name, **spec), frozen


def _weight_layers(model):
    from ..nn.models import weight_layers  # lazy: minigrad_pfa.nn imports this package
    layers = weight_layers(model)
    if not layers:
        raise ValueError("the model has no weight layers (Linear / Conv2d)")
    return layers


def _layer_input_shapes(model, input_shape) -> dict:
    """Per weight layer, its input shape without the batch axis, from one probe forward.

    The probe runs in eval mode (BatchNorm uses and keeps its running statistics, no
    random numbers are consumed) on a zero batch of one; every module's train/eval flag
    and forward cache are restored/cleared afterwards.
    """
    from ..backend import get_array_module
    params = model.parameters()
    xp = get_array_module(params[0].data) if params else np
    dtype = params[0].data.dtype if params else np.float32
    modes = [(m, m.training) for _, m in model.named_modules()]
    try:
        model.eval()
        model.forward(xp.zeros((1,) + tuple(int(s) for s in input_shape), dtype=dtype))
        shapes = {}
        for name, layer in _weight_layers(model).items():
            c = layer.cache
            shapes[name] = tuple(c["x_shape"] if "x_shape" in c else c["x"].shape)[1:]
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
        model.clear_cache()
    return shapes


def detach_rules(model) -> None:
    """Remove every ``feedback_*`` parameter and buffer and reset every rule to BP."""
    for layer in _weight_layers(model).values():
        for store in (layer._params, layer._buffers):
            for key in [k for k in store if k.startswith("feedback_")]:
                del store[key]
                layer.__dict__.pop(key, None)
        layer.rule = BP()


def attach_rules(model, spec, seed: int, input_shape=None) -> list[tuple[str, str]]:
    """Attach a learning rule to every weight layer of ``model`` and draw its feedback.

    Parameters
    ----------
    model : Module
        Built and initialised (:func:`minigrad_pfa.nn.models.build_model`): ``W_0`` must be
        final (``norm="init"``/``const`` record ``||W_0||``). Meant for a fresh model:
        existing feedback state is removed and weight layers are (un)frozen as the spec
        says, but what a previous ``shallow`` attach froze elsewhere stays frozen.
    spec : str or dict
        A rule spec (module docstring), with optional ``layers`` and ``shallow``.
    seed : int
        Feedback stream: weight layer ``i`` (forward order, all weight layers counted)
        draws from ``np.random.default_rng([seed, 1, i])`` on the host, whatever the other
        layers' rules, so changing one layer's rule never changes another's feedback.
    input_shape : tuple, optional
        The model's input shape without the batch axis, e.g. ``(3, 32, 32)``. Needed by
        ``dfa`` with ``conv="dense"`` (its ``D_l`` spans each conv layer's input grid).

    Returns
    -------
    list of (qualname, description)
        One line per weight layer for the run log, e.g. ``("fc", "bp [frozen]")``.

    Build the optimizer *after* this call (KP's ``feedback_B`` and PFA's ``feedback_R`` are
    new parameters) and check it with :func:`minigrad_pfa.rules.guard.check_optimizer`.
    """
    top = _normalise(spec, "rule spec", _TOP_KEYS)
    layer_map = top.pop("layers", None) or {}
    shallow = top.pop("shallow", False)
    if not isinstance(shallow, bool):
        raise ValueError(f"'shallow' must be true or false, got {shallow!r}")
    if not isinstance(layer_map, dict):
        raise ValueError(f"'layers' must map name patterns to rule specs, got {layer_map!r}")
    base_name, base_opts = top.pop("name"), top
    make_rule(base_name, **base_opts)  # validate even if every layer is overridden

    layers = _weight_layers(model)
    names = list(layers)
    unmatched = [p for p in layer_map if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise ValueError(f"'layers' pattern(s) {unmatched} match no weight layer; the "
                         f"weight layers are {names}")

    chosen = OrderedDict()
    for name in names:
        sub = next((layer_map[p] for p in layer_map if fnmatch.fnmatchcase(name, p)), None)
        where = f"layer {name!r}"
        if sub is None:
            rule, frozen = make_rule(base_name, **base_opts), False
        elif sub == "frozen":
            rule, frozen = make_rule(base_name, **base_opts), True
        else:
            rule, frozen = _layer_rule(_normalise(sub, where, _LAYER_KEYS), where)
        chosen[name] = (rule, frozen)

    shapes = _layer_input_shapes(model, input_shape) if input_shape is not None else {}
    detach_rules(model)
    num_classes = layers[names[-1]].out_features
    summary = []
    for i, name in enumerate(names):
        layer, (rule, frozen) = layers[name], chosen[name]
        rule.bind(layer, {"num_classes": num_classes, "input_shape": shapes.get(name),
                          "layer_index": i, "seed": int(seed)})
        rule.attach(layer, np.random.default_rng([int(seed), 1, i]))
        layer.rule = rule
        for p in (layer.weight, layer.bias):
            if p is not None:
                p.requires_grad = not frozen
        summary.append((name, rule.describe() + (" [frozen]" if frozen else "")))

    if shallow:
        last = layers[names[-1]]
        keep = {id(last.weight), id(last.bias)}
        for _, p in model.named_parameters():
            p.requires_grad = id(p) in keep
        last.needs_input_error = False
        summary = [(n, "frozen (shallow baseline)") for n, _ in summary[:-1]] + \
                  [(names[-1], summary[-1][1] + " [shallow: only trained layer, no input error]")]
    return summary
