"""From a resolved config to the objects of a run: model with rules, optimizer, schedules.

Everything here is drawn on the host from the config's seed (forward weights and feedback
from separate streams, :mod:`minigrad_pfa.rules`), so CPU and GPU runs start identical.
"""
from __future__ import annotations

from .nn.models import build_model
from .optim import build_optimizer
from .optim.schedules import build_schedule
from .rules import attach_rules, parse_rule
from .rules.guard import check_optimizer


def model_from_config(cfg: dict, input_shape=None):
    """Build the model, attach the rules and return (model, rule summary) on the host.

    ``input_shape`` (one sample, e.g. (1, 32, 32)) is needed only by rules whose feedback
    spans a layer's whole input grid (``dfa`` with ``conv: dense``).
    """
    m = cfg["model"]
    kwargs = {"num_classes": m["num_classes"]}
    for key in ("hidden", "in_channels", "in_features", "image_size"):
        if m.get(key) is not None:
            kwargs[key] = tuple(m[key]) if key == "hidden" else m[key]
    model = build_model(m["name"], seed=cfg["seed"], dtype=cfg["dtype"], **kwargs)
    spec = cfg["rule"]
    # "pfa" or the command-line form "pfa:expand_ratio=5,orthogonal=true"
    spec = dict(spec) if isinstance(spec, dict) else parse_rule(spec)
    if cfg.get("rule_map"):
        spec["layers"] = dict(cfg["rule_map"])
    if cfg["shallow"]:
        spec["shallow"] = True
    summary = attach_rules(model, spec, seed=cfg["seed"], input_shape=input_shape)
    return model, summary


def optimizer_from_config(cfg: dict, model):
    o = cfg["optim"]
    kw = {"lr": o["lr"], "weight_decay": o["weight_decay"]}
    if o["name"] == "sgd":
        kw.update(momentum=o["momentum"], nesterov=o["nesterov"])
    elif o["betas"] is not None:
        kw["betas"] = tuple(o["betas"])
    opt = build_optimizer(o["name"], list(model.named_parameters(trainable_only=True)), **kw)
    check_optimizer(model, opt, allow_adaptive=o["allow_adaptive_optimizer"])
    return opt


def schedules_from_config(cfg: dict):
    o, s = cfg["optim"], cfg["schedule"]
    def spec(sched, base):
        if not sched:
            return {"type": "constant", "value": base}
        sched = dict(sched)
        if sched.get("type") in ("multistep", "cosine"):
            sched.setdefault("base", base)  # the optimizer's lr / weight_decay
        return sched

    return (build_schedule(spec(s["lr"], o["lr"])),
            build_schedule(spec(s["weight_decay"], o["weight_decay"])))
