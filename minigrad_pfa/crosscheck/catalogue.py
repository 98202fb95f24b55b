"""The catalogue: which cases exist, with which geometry, options, dtype and tolerance.

Cases are enumerated from the rule registry: every rule (:data:`~minigrad_pfa.rules.RULES`)
and every option of it (:func:`~minigrad_pfa.rules.rule_options`) found in
:data:`OPTIONS`, one option changed from its default at a time. **Adding a rule option
to the crosscheck is one line in** :data:`OPTIONS` (its non-default values and the case
kinds it changes); an option missing there is an error naming that fix, so a new option
cannot go unchecked.

======================  =====================================================================
kind                    enumerated as
======================  =====================================================================
layer                   every rule variant x :data:`LAYER_GEOMETRIES` (Linear with and
                        without bias, a strided padded conv on a non-square image, an
                        odd-channel conv without bias, a non-square kernel) x both dtypes;
                        plus the conv sweep: kernels 1/3/5/7 x strides 1/2 x paddings 0-3
                        for :data:`SWEEP_RULES`, dtypes alternating
mirror                  WM variants x Linear / two convs x both dtypes
module                  BatchNorm1d/2d train and eval; BasicBlock option A and B under every
                        rule, identity shortcut (float64)
network                 a whole MLP step and a whole small CIFAR ResNet step, every rule
trajectory              every rule variant x Linear / conv x both dtypes, SGD with momentum;
                        the learned-feedback rules' defaults also under plain SGD, Nesterov
                        and a per-epoch weight-decay schedule, KP under AdamW
======================  =====================================================================

Seeds come from the case id (CRC-32), so adding a case never changes another one.
"""
from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

from ..rules import RULES, rule_options
from ..rules.registry import effective_options
from . import engine_runs as E
from .adapter import Case

LAYER, MIRROR, TRAJ = ("layer",), ("mirror",), ("trajectory",)

#: rule option -> (non-default values checked, case kinds whose equations it changes).
#: One line per option; every option of every registered rule must appear here.
OPTIONS = OrderedDict([
    ("feedback_density", ([0.5], LAYER + TRAJ)),
    ("conv", (["dense"], LAYER + TRAJ)),
    ("norm", (["sn", "init"], LAYER + TRAJ)),
    ("const", ([True], TRAJ)),
    ("batch_manhattan", ([True], TRAJ)),
    ("fixed_sign", ([True], TRAJ)),
    ("expand_ratio", ([1, 3], LAYER + TRAJ)),
    ("orthogonal", ([True], LAYER + TRAJ)),
    ("identity", ([True], LAYER + TRAJ)),
    ("order", (["literal", "fast"], LAYER)),
    ("mirror_lr", ([0.2], MIRROR + TRAJ)),
    ("mirror_decay", ([0.5], MIRROR + TRAJ)),
    ("noise_std", ([0.5], MIRROR)),
    ("mirror_steps", ([2], MIRROR + TRAJ)),
    ("mirror_batch", ([3], MIRROR)),
    # WM's "akrout" variant and its options: cases from their own source (no kind here)
    ("variant", (["akrout"], ())),
    ("noise_amplitude", ([0.2], ())),
    ("pretrain_steps", ([2], ())),
])

#: rules whose feedback the optimizer or the mirror learns
LEARNED = ("kp", "wm", "pfa")

DTYPES = ("float64", "float32")

#: (rtol, atol) by dtype and kind: pass when max|got - expected| <= atol + rtol * max|expected|
TOLERANCES = {
    "float64": {"layer": (1e-10, 1e-13), "mirror": (1e-10, 1e-13), "module": (1e-9, 1e-12),
                "network": (1e-9, 1e-12), "trajectory": (1e-9, 1e-12)},
    "float32": {"layer": (2e-5, 1e-7), "mirror": (2e-5, 1e-7), "module": (1e-4, 1e-6),
                "network": (2e-4, 1e-6), "trajectory": (2e-4, 1e-6)},
}

_RULES_MD = "docs/rules.md#equations-and-the-functions-that-compute-them"
#: the rows of docs/rules.md's equation table each rule's cases check
EQUATIONS = {
    "bp": "BP: M = W",
    "fa": "FA: M = B",
    "dfa": "DFA: delta_in = e @ D_l; DFA conv",
    "usf": "uSF; SN/Init; Const; Batch Manhattan",
    "frsf": "frSF; SN/Init; Const; Batch Manhattan",
    "brsf": "brSF; SN/Init; Const; Batch Manhattan",
    "kp": "KP: M = B, gB = gW",
    "wm": "WM: mirror step",
    "pfa": "PFA: delta_mid, delta_in, gR, M = B @ R",
}
_EXTRA_EQUATIONS = {
    "layer": ["gW = delta.T @ x, gb = delta.sum(0)"],
    "mirror": ["WM: B <- (1 - eta_B lam_B) B + eta_B H", "docs/rules.md#conventions-choices-this-project-fixes (WM schedule)"],
    "module": ["minigrad_pfa/functional/batchnorm.py (BatchNorm)", "minigrad_pfa/nn/resnet.py (BasicBlock)"],
    "network": ["minigrad_pfa/functional/loss.py (softmax cross-entropy)"],
    "trajectory": ["minigrad_pfa/optim/sgd.py, adam.py (torch.optim semantics)",
                   "docs/rules.md#why-the-learned-feedback-aligns-the-decay-laws"],
}


@dataclass
class Entry:
    """A case with what the adapter does not see: expected outputs, tolerance, equations."""

    case: Case
    expected: dict = field(repr=False)
    tolerance: dict
    equations: list


# ------------------------------------------------------------------------------ geometries
def linear(i: int, o: int, bias: bool = True) -> dict:
    return {"layer": "linear", "in_features": i, "out_features": o, "bias": bias}


def conv(ic: int, oc: int, k, s, p, bias: bool = True) -> dict:
    pair = lambda v: [int(v), int(v)] if isinstance(v, int) else [int(v[0]), int(v[1])]
    return {"layer": "conv2d", "in_channels": ic, "out_channels": oc, "kernel_size": pair(k),
            "stride": pair(s), "padding": pair(p), "bias": bias}


def geometry_name(spec: dict) -> str:
    if spec["layer"] == "linear":
        return f"linear{spec['in_features']}x{spec['out_features']}" + \
            ("" if spec["bias"] else "-nobias")
    k, s, p = (spec[key] for key in ("kernel_size", "stride", "padding"))
    fmt = lambda v: str(v[0]) if v[0] == v[1] else f"{v[0]}x{v[1]}"
    return (f"conv{spec['in_channels']}x{spec['out_channels']}-k{fmt(k)}-s{fmt(s)}-p{fmt(p)}"
            + ("" if spec["bias"] else "-nobias"))


#: (layer spec, input shape) of the per-variant layer cases
LAYER_GEOMETRIES = [
    (linear(7, 5), (6, 7)),
    (linear(6, 9, bias=False), (4, 6)),
    (conv(3, 5, 3, 2, 1), (2, 3, 9, 8)),
    (conv(4, 3, 5, 1, 2, bias=False), (2, 4, 7, 6)),
    (conv(3, 4, (3, 5), (2, 1), (1, 2)), (2, 3, 8, 7)),
]
#: the conv sweep: kernel x stride x padding on a non-square image, odd channels
SWEEP = [(conv(3, 5, k, s, p), (2, 3, 9, 8)) for k in (1, 3, 5, 7) for s in (1, 2)
         for p in (0, 1, 2, 3)]
SWEEP_RULES = (("bp", {}), ("fa", {}), ("dfa", {}), ("pfa", {"expand_ratio": 3}))
#: geometries of mirror and trajectory cases
MIRROR_GEOMETRIES = [(linear(7, 5), (6, 7)), (conv(3, 5, 3, 2, 1), (2, 3, 9, 8)),
                     (conv(2, 3, 5, 1, 2, bias=False), (2, 2, 6, 5))]
TRAJ_GEOMETRIES = [(linear(7, 5), (6, 7)), (conv(3, 4, 3, 2, 1), (2, 3, 7, 6))]

#: optimizers of trajectories: name -> (optimizer spec, lr per step, weight decay per step)
OPTIMIZERS = OrderedDict([
    ("momentum", ({"name": "sgd", "momentum": 0.9, "dampening": 0.0, "nesterov": False},
                  [0.1] * 3, [0.05] * 3)),
    ("sgd", ({"name": "sgd", "momentum": 0.0, "dampening": 0.0, "nesterov": False},
             [0.1] * 3, [0.05] * 3)),
    ("nesterov", ({"name": "sgd", "momentum": 0.9, "dampening": 0.0, "nesterov": True},
                  [0.1] * 3, [0.05] * 3)),
    # a per-epoch schedule with 2 steps per epoch, written out per step (lr multistep,
    # weight decay piecewise 0.1 -> 0.01 as the published 0.03 -> 9e-5, scaled up)
    ("momentum-schedule", ({"name": "sgd", "momentum": 0.9, "dampening": 0.1,
                            "nesterov": False}, [0.1, 0.1, 0.05, 0.05], [0.1, 0.1, 0.01, 0.01])),
    ("adamw", ({"name": "adamw", "betas": [0.9, 0.999], "eps": 1e-8},
               [0.01] * 3, [0.05] * 3)),
])

MLP_SPEC = {"model": "mlp", "in_features": 12, "hidden": [10, 8], "num_classes": 5}
RESNET_SPEC = {"model": "cifar_resnet", "in_channels": 3, "widths": [4, 8, 16],
               "blocks_per_stage": 1, "shortcut": "A", "num_classes": 5}


# ------------------------------------------------------------------------------ variants
def rule_variants(rule: str, kind: str) -> list[dict]:
    """The option sets of ``rule`` checked in cases of ``kind``: ``{}`` (the defaults)
    first, then one option at a time from :data:`OPTIONS`.

    Raises
    ------
    ValueError
        The rule has an option :data:`OPTIONS` does not list.
    """
    variants = [{}]
    for option in rule_options(rule):
        if option not in OPTIONS:
            raise ValueError(
                f"crosscheck: option {option!r} of rule {rule!r} has no entry in "
                "minigrad_pfa/crosscheck/catalogue.py OPTIONS; add one line "
                f"('{option}': ([non-default values], kinds)) so its cases are generated")
        values, kinds = OPTIONS[option]
        if kind in kinds:
            variants.extend({option: v} for v in values)
    return variants


def variant_name(rule: str, options: dict) -> str:
    if not options:
        return rule
    return rule + "[" + ",".join(f"{k}={v}" for k, v in options.items()) + "]"


def _seed(case_id: str) -> int:
    return zlib.crc32(case_id.encode("utf-8"))


@dataclass(frozen=True)
class Pending:
    """A case not yet computed: its id, rule, and ``build() -> Entry``."""

    id: str
    rule: str
    build: object = field(repr=False)


def _pending(case_id, kind, rule, options, spec, dtype, run) -> Pending:
    """A case whose engine run is ``run(seed) -> (inputs, expected)``."""
    return Pending(case_id, rule,
                   lambda: _entry(case_id, kind, rule, options, spec, dtype, run))


def _entry(case_id, kind, rule, options, spec, dtype, run) -> Entry:
    """Run the engine for one case and pack it."""
    inputs, expected = run(_seed(case_id))
    full = effective_options(rule, options)  # defaults resolved (PFA's r = 10)
    inputs = OrderedDict((k, E.stored(v, dtype)) for k, v in inputs.items())
    for v in inputs.values():
        v.setflags(write=False)
    expected = OrderedDict((k, E.stored(v, dtype)) for k, v in expected.items())
    rtol, atol = TOLERANCES[dtype][kind]
    equations = [f"{_RULES_MD} ({EQUATIONS[rule]})"] + _EXTRA_EQUATIONS[kind]
    return Entry(Case(case_id, kind, rule, full, spec, dtype, inputs), expected,
                 {"rtol": rtol, "atol": atol}, equations)


# ------------------------------------------------------------------------------ enumeration
def _layer_cases():
    for rule in RULES:
        for options in rule_variants(rule, "layer"):
            for spec, x_shape in LAYER_GEOMETRIES:
                for dtype in DTYPES:
                    yield _layer_case(rule, options, spec, x_shape, dtype)
    for i, (spec, x_shape) in enumerate(SWEEP):
        for j, (rule, options) in enumerate(SWEEP_RULES):
            dtype = DTYPES[(i + j) % 2]
            yield _layer_case(rule, options, spec, x_shape, dtype, prefix="layer-sweep")


def _layer_case(rule, options, spec, x_shape, dtype, prefix="layer"):
    cid = f"{prefix}/{variant_name(rule, options)}/{geometry_name(spec)}/{dtype}"
    # sign-concordant rules: W_t = 1.25 W_0, so norm="init" differs from "sn"
    scale = 1.25 if rule in ("usf", "frsf", "brsf") else 1.0
    return _pending(cid, "layer", rule, options, spec, dtype,
                    lambda s: E.run_layer(rule, options, spec, dtype, s, x_shape, scale))


def _mirror_cases():
    for options in rule_variants("wm", "mirror"):
        for spec, x_shape in MIRROR_GEOMETRIES:
            for dtype in DTYPES:
                yield _mirror_case(options, spec, x_shape, dtype)


def _mirror_case(options, spec, x_shape, dtype):
    cid = f"mirror/{variant_name('wm', options)}/{geometry_name(spec)}/{dtype}"
    return _pending(cid, "mirror", "wm", options, spec, dtype,
                    lambda s: E.run_mirror(options, spec, dtype, s, x_shape))


def _trajectory_cases():
    for rule in RULES:
        for options in rule_variants(rule, "trajectory"):
            names = ["momentum"]
            if not options and rule in LEARNED:
                names = ["momentum", "sgd", "nesterov", "momentum-schedule"]
            if rule == "kp" or (rule == "pfa" and options.get("identity")):
                names = names + ["adamw"]  # exact under AdamW (rules/guard.py)
            for opt_name in names:
                for spec, x_shape in TRAJ_GEOMETRIES:
                    for dtype in DTYPES:
                        yield _trajectory_case(rule, options, opt_name, spec, x_shape, dtype)


def _trajectory_case(rule, options, opt_name, spec, x_shape, dtype):
    optimizer, lr, wd = OPTIMIZERS[opt_name]
    cid = (f"trajectory/{variant_name(rule, options)}/{opt_name}/{geometry_name(spec)}/"
           f"{dtype}")
    full_spec = dict(spec, steps=len(lr), optimizer=optimizer)
    return _pending(cid, "trajectory", rule, options, full_spec, dtype,
                    lambda s: E.run_trajectory(rule, options, spec, dtype, s, x_shape,
                                               optimizer, lr, wd))


def _module_cases():
    for dim, x_shape in (("1d", (6, 4)), ("2d", (3, 4, 5, 3))):
        for training in (True, False):
            for dtype in DTYPES:
                spec = {"module": f"batchnorm{dim}", "num_features": 4, "eps": 1e-5,
                        "momentum": 0.1, "training": training}
                mode = "train" if training else "eval"
                yield _module_case("bp", spec, x_shape, dtype, f"batchnorm{dim}-{mode}")
    for rule in RULES:
        for shortcut, stride, planes in (("A", 2, 8), ("B", 2, 8), ("A", 1, 4)):
            for dtype in (DTYPES if planes == 8 else DTYPES[:1]):
                spec = {"module": "basic_block", "in_planes": 4, "planes": planes,
                        "stride": stride, "shortcut": shortcut, "training": True}
                name = f"block-{shortcut}-s{stride}" if planes == 8 else "block-identity"
                yield _module_case(rule, spec, (2, 4, 6, 5), dtype, name)


def _module_case(rule, spec, x_shape, dtype, name):
    cid = f"module/{name}/{rule}/{dtype}"
    return _pending(cid, "module", rule, {}, spec, dtype,
                    lambda s: E.run_module(rule, {}, spec, dtype, s, x_shape))


def _network_cases():
    for spec, x_shape, name in ((MLP_SPEC, (6, 12), "mlp"),
                                (RESNET_SPEC, (3, 3, 8, 8), "resnet8-w4")):
        for rule in RULES:
            for dtype in DTYPES:
                yield _network_case(rule, spec, x_shape, dtype, name)


def _network_case(rule, spec, x_shape, dtype, name):
    cid = f"network/{name}/{rule}/{dtype}"
    return _pending(cid, "network", rule, {}, spec, dtype,
                    lambda s: E.run_network(rule, {}, spec, dtype, s, x_shape))


_SOURCES = OrderedDict(layer=_layer_cases, mirror=_mirror_cases, module=_module_cases,
                       network=_network_cases, trajectory=_trajectory_cases)


def register_source(name: str, source) -> None:
    """Add a case source to the catalogue: a zero-argument callable yielding
    :class:`Pending` cases (build them with :func:`pending`), e.g. WM's ``akrout``
    variant. Names must be unique."""
    if name in _SOURCES:
        raise ValueError(f"crosscheck: a case source named {name!r} already exists")
    _SOURCES[name] = source


#: public name of the case constructor for extra sources
pending = _pending


def pending_cases(rules=None) -> list[Pending]:
    """Every case, not yet computed, in catalogue order, optionally only of ``rules``
    (unknown rule names are an error); ids are checked to be unique."""
    if rules is not None:
        rules = list(rules)
        unknown = [r for r in rules if r not in RULES]
        if unknown:
            raise ValueError(f"crosscheck: unknown rule(s) {unknown}; choose from {list(RULES)}")
    cases, seen = [], set()
    for source in _SOURCES.values():
        for p in source():
            if p.id in seen:
                raise ValueError(f"crosscheck: duplicate case id {p.id!r}")
            seen.add(p.id)
            if rules is None or p.rule in rules:
                cases.append(p)
    return cases


def build_catalogue(rules=None, progress=False) -> list[Entry]:
    """Run the engine for every case (about a few seconds) and return the entries.

    Parameters
    ----------
    rules : iterable of str, optional
        Keep only the cases of these rules (unknown names are an error).
    progress : bool
        Show a tqdm progress bar on stderr.
    """
    from tqdm.auto import tqdm
    todo = pending_cases(rules)
    return [p.build() for p in tqdm(todo, desc="crosscheck: generate", disable=not progress,
                                    unit="case", leave=False)]


# WM akrout cases (their own module registers them as a source; imported last: it uses
# register_source and the helpers above)
from . import akrout_cases  # noqa: E402,F401
