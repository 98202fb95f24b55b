"""Weight / path alignment, and gradient / error alignment against a BP twin on a probe batch.

Notation
--------
W : a layer's forward weight, (out, in) or (oc, ic, kh, kw).
M : the matrix the layer's rule actually propagates with, ``rule.path_matrix(layer)``:
    BP ``W``; FA ``B``; uSF ``s sign(W)``; frSF/brSF ``|M0| sign(W)`` / ``|M_t| sign(W)``
    (signed, as used); KP/WM ``B``; PFA ``B @ R`` (conv: contracted over ``mid``);
    DFA ``None`` (its ``D_l`` maps the output error, not ``delta``: no angle with ``W``).
delta : error at a layer's output (n, out[, oh, ow]); gW = its weight gradient.

Metrics::

    path angle       angle(M, W)                path norm ratio   ||M|| / ||W||
    gradient angle   angle(gW_rule, gW_BP)      error angle       angle(delta_rule, delta_BP)

the last two on one probe batch, with the same weights and the same forward pass.
"""
from __future__ import annotations

from collections import OrderedDict

from ..backend import to_device
from ..functional.loss import softmax_cross_entropy
from ..nn.models import weight_layers
from ..nn.module import BackwardContext
from ..rules.base import BP
from .measures import angle_from, inner_products, none_if_nan, ratio_from


def _angle_and_ratio(A, C) -> tuple:
    """(angle(A, C), ||A|| / ||C||), ``None`` where undefined."""
    ac, aa, cc = inner_products(A, C)
    return none_if_nan(angle_from(ac, aa, cc)), none_if_nan(ratio_from(aa, cc))


# ----------------------------------------------------------------------------- weights
def weight_alignment(model) -> "OrderedDict[str, dict]":
    """Path alignment of every weight layer: the matrix the rule uses against ``W``.

    Returns
    -------
    OrderedDict
        ``{qualname: {"rule": name, "angle": deg or None, "norm_ratio": float or None,
        "first_layer_feedback_unused": bool}}`` in forward order. ``angle``/``norm_ratio``
        are ``None`` when the rule has no such matrix (DFA) or the value is undefined (a
        zero matrix). BP gives exactly 0 and 1. ``first_layer_feedback_unused`` is True for
        the network's first weight layer, whose feedback never propagates anything: its
        numbers are reported but are not a measure of learning.

    Raises
    ------
    ValueError
        A rule's path matrix does not have ``W``'s shape.
    """
    out: "OrderedDict[str, dict]" = OrderedDict()
    for name, layer in weight_layers(model).items():
        W = layer.weight.data
        M = layer.rule.path_matrix(layer)
        if M is None:
            ang = ratio = None
        else:
            if tuple(M.shape) != tuple(W.shape):
                raise ValueError(f"{name}: rule {layer.rule.name!r} returned a path matrix of "
                                 f"shape {tuple(M.shape)}, expected W's {tuple(W.shape)}")
            ang, ratio = _angle_and_ratio(M, W)
        out[name] = {"rule": layer.rule.name, "angle": ang, "norm_ratio": ratio,
                     "first_layer_feedback_unused": not layer.needs_input_error}
    return out


# ----------------------------------------------------------------------------- probe
class _ProbeGuard:
    """Context manager: everything a probe pass may touch is restored on exit.

    * every BatchNorm (any module with ``update_running_stats``) normalises with the batch
      statistics of the probe (in train mode) but leaves its running statistics and
      ``num_batches_tracked`` alone;
    * every parameter's ``.grad`` is restored: the same array object, with its original
      contents (a backward writes new arrays, but a rule may write in place);
    * every module's forward cache is restored to what it held before (the probe's caches
      are dropped);
    * every rule object's attributes are restored (shallowly): a rule may remember facts of
      the last backward (WM its input shape, PFA the evaluation order it resolved), which
      must stay those of the training batches.
    """

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        modules = [m for _, m in self.model.named_modules()]
        self.bn = [(m, m.update_running_stats) for m in modules
                   if hasattr(m, "update_running_stats")]
        self.caches = [(m, dict(m.cache)) for m in modules]
        rules = {id(m.rule): m.rule for m in modules if hasattr(m, "rule")}
        self.rules = [(r, dict(vars(r))) for r in rules.values() if hasattr(r, "__dict__")]
        self.grads = [(p, p.grad, None if p.grad is None else p.grad.copy())
                      for _, p in self.model.named_parameters()]
        for m, _ in self.bn:
            m.update_running_stats = False
        return self

    def __exit__(self, *exc):
        for m, flag in self.bn:
            m.update_running_stats = flag
        for m, saved in self.caches:
            m.cache.clear()
            m.cache.update(saved)
        for r, saved in self.rules:
            vars(r).clear()
            vars(r).update(saved)
        for p, g, saved in self.grads:
            p.grad = g
            if g is not None:
                try:
                    g[...] = saved
                except ValueError:  # a read-only array cannot have been written either
                    pass
        return False


def probe_records(model, x, y) -> tuple[dict, dict]:
    """One forward pass on the probe batch and two backward passes over the same cache.

    The first backward uses every layer's own rule, the second ``BP()`` for all layers
    (``ctx.rule_override``); both record ``{"delta", "gW"}`` per weight layer. Nothing of the
    model's state changes (see :class:`_ProbeGuard`) and no random number is drawn: rules
    draw only in ``before_step``/``after_step``, which the probe never calls.

    Parameters
    ----------
    model : Module
        Used in its current mode (train: batch statistics; eval: running statistics).
    x : array (n, ...) ; y : integer array (n,)
        Moved to the model's device if needed.

    Returns
    -------
    (rule_record, bp_record) : dict, dict
        ``{qualname: {"delta": array, "gW": array}}`` each.
    """
    dev = model.device
    x, y = to_device(x, dev), to_device(y, dev)
    with _ProbeGuard(model):
        logits = model.forward(x)
        _, e = softmax_cross_entropy(logits, y)
        rule_rec: dict = {}
        bp_rec: dict = {}
        # a fresh copy of e for each pass, so neither can see the other's in-place work
        model.backward(e.copy(), BackwardContext(output_error=e.copy(), record=rule_rec))
        model.backward(e.copy(), BackwardContext(output_error=e.copy(), rule_override=BP(),
                                                 record=bp_rec))
    return rule_rec, bp_rec


def probe_alignment(model, x, y) -> "OrderedDict[str, dict]":
    """Gradient and error alignment of the model's rules against exact BP on a probe batch.

    Returns
    -------
    OrderedDict
        ``{qualname: {"grad_angle", "grad_norm_ratio", "error_angle", "error_norm_ratio"}}``
        in forward order: angle between the rule's ``gW`` (before weight decay and the
        optimizer) and BP's, and between the rule's ``delta`` and BP's on the whole
        flattened batch array, with ``||rule|| / ||BP||`` beside each. Layers whose error is
        BP's by construction (the output layer: ``delta = e``) give exactly 0 and 1.
        Undefined values (a zero error, e.g. all ReLUs off) are ``None``.
    """
    rule_rec, bp_rec = probe_records(model, x, y)
    out: "OrderedDict[str, dict]" = OrderedDict()
    for name in weight_layers(model):
        if name not in rule_rec or name not in bp_rec:
            continue
        r, b = rule_rec[name], bp_rec[name]
        g_ang, g_ratio = _angle_and_ratio(r["gW"], b["gW"])
        e_ang, e_ratio = _angle_and_ratio(r["delta"], b["delta"])
        out[name] = {"grad_angle": g_ang, "grad_norm_ratio": g_ratio,
                     "error_angle": e_ang, "error_norm_ratio": e_ratio}
    return out
