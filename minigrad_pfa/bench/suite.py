"""What the benchmark measures: rule labels, model shapes and the configuration lists.

A *rule label* names a rule with its options in one token, as it appears in the
benchmark's records: ``bp``, ``fa``, ``usf``, ``brsf``, ``frsf``, ``dfa``, ``kp``, ``wm``,
``pfa-r10`` (PFA with expansion ratio r = 10, evaluation order chosen per layer by a FLOP
count), ``pfa-r10-literal`` / ``pfa-r10-fast`` (the order forced), ``pfa-o`` (orthogonal
B, r = 1). For ``impl="torch"`` only ``bp`` (autograd) and ``pfa-rN`` (the published
formulation, :mod:`minigrad_pfa.bench.torch_models`) exist.

A *configuration* is a dict that :mod:`minigrad_pfa.bench.worker` runs in a fresh
process: ``kind`` ("step", "gemm", "loader", "profile", "samestep", ...) and its parameters.
"""
from __future__ import annotations

import re

#: model key -> engine model name, constructor options, one sample's input shape.
#: The ``-tiny`` shapes exist for the test suite only (a smoke test in seconds).
MODELS = {
    "resnet20": {"name": "resnet20", "kwargs": {}, "input": (3, 32, 32)},
    "mlp": {"name": "mlp", "kwargs": {"in_features": 784, "hidden": (512, 512)},
            "input": (784,)},
    "resnet20-tiny": {"name": "resnet20", "kwargs": {}, "input": (3, 8, 8)},
    "mlp-tiny": {"name": "mlp", "kwargs": {"in_features": 64, "hidden": (32, 32)},
                 "input": (64,)},
}

NUM_CLASSES = 10

_PFA = re.compile(r"^pfa-r(\d+)(?:-(literal|fast))?$")
_PLAIN = ("bp", "fa", "usf", "brsf", "frsf", "dfa", "kp", "wm")


def rule_spec(label: str) -> dict:
    """Rule label -> the engine's rule spec dict (:func:`minigrad_pfa.rules.attach_rules`).

    >>> rule_spec("pfa-r30-literal")
    {'name': 'pfa', 'expand_ratio': 30, 'order': 'literal'}
    """
    if label in _PLAIN:
        return {"name": label}
    if label == "pfa-o":
        return {"name": "pfa", "orthogonal": True}
    m = _PFA.match(label)
    if m is None:
        raise ValueError(f"unknown rule label {label!r}; expected one of {list(_PLAIN)}, "
                         "'pfa-o', 'pfa-rN', 'pfa-rN-literal' or 'pfa-rN-fast'")
    spec = {"name": "pfa", "expand_ratio": int(m.group(1))}
    if m.group(2):
        spec["order"] = m.group(2)
    return spec


def pfa_ratio(label: str) -> int | None:
    """r of a PFA label (1 for ``pfa-o``), None for other rules."""
    if label == "pfa-o":
        return 1
    m = _PFA.match(label)
    return int(m.group(1)) if m else None


def step_config(model: str, rule: str, impl: str, batch: int, device: str,
                steps: int, warmup: int, group: str) -> dict:
    return {"kind": "step", "model": model, "rule": rule, "impl": impl, "batch": int(batch),
            "device": device, "steps": int(steps), "warmup": int(warmup), "group": group}


# The slow configurations (literal PFA order; the published PyTorch formulation) get one
# warm-up step: their first step already runs every code path once.
_SLOW = ("pfa-r10-literal",)


#: engine variants measured by ``--proposals`` (:mod:`minigrad_pfa.bench.proto`)
PROPOSALS = (("malloc-keep",), ("spin-pool",))

#: size of the float32 GEMM whose speed is the run's peak, per mode
GEMM_SIZE = {"full": 2048, "quick": 2048, "tiny": 256}

#: the rules of the ``samestep`` configuration at the reference batch (:mod:`.samestep`),
#: the reference first: the targets PFA (r = 10) / BP and the PFA spread over r read them
SAMESTEP_RULES = ("bp", "pfa-r1", "pfa-r10", "pfa-r30")
#: PyTorch's autograd BP as a same-process participant: the BP / PyTorch targets read it
SAMESTEP_TORCH = "torch:bp"


def build_suite(mode: str = "full", device: str = "cpu", torch_ok: bool = True,
                profile: bool = False, proposals: bool = False) -> list[dict]:
    """The ordered list of step configurations of one benchmark run.

    Parameters
    ----------
    mode : {"full", "quick", "tiny"}
        ``full``: ResNet-20 at batch 128 under every rule of the issue, the MLP at batch
        64 under every rule, PyTorch BP and published PFA on both, batch scaling 32-256.
        ``quick``: ResNet-20 at batch 32 (bp, pfa-r1/r10/r30, pfa-r10-literal, PyTorch
        bp and published PFA) and the MLP (bp, pfa-r10, PyTorch bp). ``tiny``:
        seconds-long shapes for the tests.
    device : {"cpu", "cuda"}
    torch_ok : bool
        Include the PyTorch configurations.
    profile : bool
        Append cProfile runs of the ResNet-20 BP and PFA (r = 10) steps and (CPU) the
        all-core breakdown of :mod:`.allcore` (kinds ``ops`` and ``scaling``).
    proposals : bool
        Append the ResNet-20 BP and PFA (r = 10) steps and the MLP BP step under each
        prototype variant of :data:`PROPOSALS` (CPU only), right after the same steps
        without one.

    The ResNet-20 group at the reference batch comes first and interleaves the engine
    with PyTorch, so that the headline ratios are measured close together in time.
    """
    if mode not in ("full", "quick", "tiny"):
        raise ValueError(f"mode must be 'full', 'quick' or 'tiny', got {mode!r}")
    resnet, mlp = ("resnet20-tiny", "mlp-tiny") if mode == "tiny" else ("resnet20", "mlp")
    rb = {"full": 128, "quick": 32, "tiny": 4}[mode]
    mb = {"full": 64, "quick": 64, "tiny": 8}[mode]
    # (steps, warm-up) per model; the MLP's steps take milliseconds, so take more of them
    rs, rw = {"full": (5, 2), "quick": (5, 1), "tiny": (5, 1)}[mode]
    ms, mw = {"full": (30, 5), "quick": (15, 3), "tiny": (5, 1)}[mode]

    def R(rule, impl="minigrad", batch=rb, group="resnet", once=False):
        slow = rule in _SLOW or (impl == "torch" and rule != "bp")
        # full mode: the slow ones (seconds a step) time 2 steps a round, 6 over 3 rounds
        c = step_config(resnet, rule, impl, batch, device,
                        2 if slow and mode == "full" and not once else rs,
                        1 if slow else rw, group)
        return dict(c, once=True) if once else c

    def M(rule, impl="minigrad", once=False, steps=None):
        c = step_config(mlp, rule, impl, mb, device, steps or ms, mw, "mlp")
        return dict(c, once=True) if once else c

    torch = (lambda rules, f: [f(r, "torch") for r in rules]) if torch_ok else \
        (lambda rules, f: [])
    if mode == "full":
        # every round: what the targets read; 'once' (first round only): the other rules
        # the published PyTorch PFA (~11 s a step on one core) runs once: its target
        # (<= 0.25x) was met by a factor 2.5, far outside the run-to-run noise
        cfgs = [R("bp"), *torch(["bp"], R), R("pfa-r10"),
                *torch(["pfa-r10"], lambda r, i: R(r, i, once=True)),
                R("pfa-r10-literal"), R("pfa-r1"), R("pfa-r30")]
        cfgs += [R(r, once=True) for r in ("pfa-o", "fa", "usf", "dfa", "kp")]
        # the MLP target's pair: 150 steps (~0.5 s a round), a window long enough for the
        # contention check's clock ticks (worker.timed_steps)
        cfgs += [M("bp", steps=150), *torch(["bp"], lambda r, i: M(r, i, steps=150))]
        cfgs += [M(r, once=True) for r in ("fa", "usf", "brsf", "frsf", "dfa", "kp", "wm",
                                           "pfa-r1", "pfa-r10", "pfa-r30", "pfa-o",
                                           "pfa-r10-literal", "pfa-r10-fast")]
        cfgs += torch(["pfa-r10"], lambda r, i: M(r, i, once=True))
        for b in (32, 64, 256):
            once = b == 64  # the targets read batches 32, 128 and 256
            cfgs += [R("bp", batch=b, group="scaling", once=once),
                     R("pfa-r10", batch=b, group="scaling", once=True),
                     *torch(["bp"], lambda r, i: R(r, i, batch=b, group="scaling",
                                                   once=once))]
    elif mode == "quick":
        cfgs = [R("bp"), *torch(["bp"], R), R("pfa-r10"), *torch(["pfa-r10"], R),
                R("pfa-r10-literal"), R("pfa-r1"), R("pfa-r30")]
        cfgs += [M("bp"), M("pfa-r10"), *torch(["bp"], M)]
    else:
        cfgs = [R("bp"), *torch(["bp"], R), R("pfa-r10"), *torch(["pfa-r10"], R),
                R("pfa-r10-literal"), M("bp"), M("pfa-r10")]
    if proposals and device == "cpu":
        rules = ("bp",) if mode == "tiny" else ("bp", "pfa-r10")
        variants = PROPOSALS[-1:] if mode == "tiny" else PROPOSALS
        for rule in rules:
            cfgs.append(R(rule, group="proposal"))
            for v in variants:
                cfgs.append(dict(R(rule, group="proposal"), variants=list(v)))
        # the MLP's steps are short, many parallel regions a millisecond: where a pool's
        # wake-ups show most
        cfgs.append(dict(M("bp"), group="proposal"))
        for v in variants:
            cfgs.append(dict(M("bp"), group="proposal", variants=list(v)))
    # the reference BP step of the GEMM-fraction target: the runner measures the GEMM peak
    # right before it in every round and regime (``gemm_before``)
    cfgs[0]["gemm_before"] = True
    if device == "cpu":
        # the steps the targets compare as ratios, stepped in one process (.samestep), free
        # of the drift between processes: PFA / BP and the spread over r, and BP / PyTorch's
        # BP at every batch a target reads (the MLP's steps take milliseconds: more a round)
        sr, ss, sw = {"full": (6, 3, 2), "quick": (4, 2, 1), "tiny": (2, 1, 1)}[mode]
        mss = {"full": 50, "quick": 20, "tiny": 2}[mode]
        tb = [SAMESTEP_TORCH] if torch_ok else []

        def S(model, batch, rules, steps=ss):
            return {"kind": "samestep", "model": model, "batch": batch, "device": device,
                    "rules": list(rules), "rounds": sr, "steps": steps, "warmup": sw,
                    "group": "samestep"}
        # with the GEMM peak right before BP's steps in every round: the GEMM-fraction target
        cfgs.append(dict(S(resnet, rb, list(SAMESTEP_RULES) + tb), gemm_size=GEMM_SIZE[mode]))
        if torch_ok:
            cfgs += [S(resnet, b, ["bp"] + tb) for b in ((32, 256) if mode == "full" else ())]
            cfgs.append(S(mlp, mb, ["bp"] + tb, mss))
    if profile:
        for rule in ("bp", "pfa-r10"):
            c = step_config(resnet, rule, "minigrad", rb, device, 3, 1, "profile")
            c["kind"] = "profile"
            cfgs.append(c)
        if device == "cpu":  # the all-core breakdown (.allcore), run in every regime
            c = step_config(resnet, "bp", "minigrad", rb, device, 5, 2, "allcore")
            cfgs.append(dict(c, kind="ops"))
            cfgs.append({"kind": "scaling", "device": "cpu", "group": "allcore",
                         "seconds": 0.2 if mode == "tiny" else 1.0,
                         "rounds": 1 if mode == "tiny" else 3})
    return cfgs


def reference_batches(mode: str) -> dict:
    """The batch sizes at which the targets are evaluated in this mode."""
    return {"resnet": {"full": 128, "quick": 32, "tiny": 4}[mode],
            "mlp": {"full": 64, "quick": 64, "tiny": 8}[mode],
            "resnet_model": "resnet20-tiny" if mode == "tiny" else "resnet20",
            "mlp_model": "mlp-tiny" if mode == "tiny" else "mlp"}
