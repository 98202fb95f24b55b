"""Optimizer guard: KP and PFA align only under optimizers linear in the gradient.

Why (algorithms.md, "Decay laws"). KP learns ``B`` with ``gB = gW``; PFA learns ``R``
with ``gR = B.T @ gW``. In the mismatch ``D = W - B`` (KP) or ``D = R - B.T @ W`` (PFA)
the data-driven parts of the two updates cancel only if the update is a *linear*
function of the gradient (SGD, heavy-ball momentum, Nesterov, with coupled or decoupled
weight decay): then ``D`` follows the optimizer's own dynamics, e.g.
``D <- (1 - lr*lam) D`` for plain SGD, whatever the data. An elementwise-adaptive
optimizer (Adam, AdamW, RMSprop) divides each entry by its own running scale, and that
normalisation does not commute with ``B.T``: the cancellation, and with it the
guarantee that ``R -> B.T @ W``, is lost. KP is the exception under AdamW (decoupled
decay): ``W`` and ``B`` see identical gradients, hence identical moments, and the decay
shrinks ``D`` by ``1 - lr*lam`` (``pfa(identity=True)`` is KP and shares the exception);
Adam with L2 decay adds ``lam*W`` and ``lam*B`` to the gradients, the moments differ, and
KP breaks too.
"""
from __future__ import annotations

import warnings

#: the config key of the opt-in
OPT_IN = "allow_adaptive_optimizer"


def _exact_under(rule, optimizer) -> bool:
    """True when ``rule``'s mismatch cancellation survives ``optimizer``."""
    if not getattr(rule, "needs_linear_optimizer", False):
        return True
    if getattr(optimizer, "is_linear_in_gradient", False):
        return True
    if getattr(rule, "exact_with_decoupled_adaptive", False):
        # identical gradients -> identical moments; only L2 decay (which enters the
        # gradient) separates them
        return bool(getattr(optimizer, "decoupled_weight_decay", False)) or \
            float(getattr(optimizer, "weight_decay", 0.0)) == 0.0
    return False


def check_optimizer(model, optimizer, allow_adaptive: bool = False) -> list[str]:
    """Refuse (or, with the opt-in, warn about) an optimizer that breaks KP/PFA alignment.

    Parameters
    ----------
    model : Module with rules attached (:func:`~minigrad_pfa.rules.registry.attach_rules`).
    optimizer : an optimizer of :mod:`minigrad_pfa.optim` (reads its class attributes
        ``is_linear_in_gradient``, ``decoupled_weight_decay`` and ``weight_decay``).
    allow_adaptive : bool
        The config flag ``allow_adaptive_optimizer: true``.

    Returns
    -------
    list of str
        Qualified names of the layers whose rule's mechanism the optimizer breaks (empty
        when all is well).

    Raises
    ------
    ValueError
        Some layer needs a linear optimizer and ``allow_adaptive`` is False; the message
        says why and names the opt-in flag. With the flag, :func:`warnings.warn` gives the
        same reason instead.
    """
    from ..nn.models import weight_layers  # lazy: minigrad_pfa.nn imports this package
    opt_name = getattr(optimizer, "name", type(optimizer).__name__)
    broken, no_decay = [], []
    for qualname, layer in weight_layers(model).items():
        rule = layer.rule
        if not _exact_under(rule, optimizer):
            broken.append(f"{qualname} ({rule.describe()})")
        elif getattr(rule, "needs_linear_optimizer", False) and \
                float(getattr(optimizer, "weight_decay", 0.0)) == 0.0:
            no_decay.append(qualname)
    if no_decay:
        warnings.warn(
            f"weight_decay is 0 for layers {no_decay} whose rule needs it: the mismatch "
            "D (KP: W - B; PFA: R - B.T @ W) only decays through weight decay, so the "
            "feedback will not align with W (unless a schedule raises weight_decay later)",
            stacklevel=2)
    if not broken:
        return []
    reason = (
        f"optimizer {opt_name!r} is not linear in the gradient, but layers {broken} use a "
        "rule whose feedback aligns with W only because, in the mismatch D = R - B.T @ W "
        "(KP: D = W - B), the data-driven parts of the updates of W and of the feedback "
        "cancel; that cancellation needs an update linear in the gradient (SGD, momentum, "
        "Nesterov). An elementwise-adaptive normalisation (Adam/AdamW) does not commute "
        "with B.T, so D no longer decays and the feedback need not align (KP alone stays "
        "exact under AdamW with decoupled weight decay; Adam with L2 decay breaks it).")
    if not allow_adaptive:
        raise ValueError(reason + f" To run it anyway, set `{OPT_IN}: true` in the config "
                         f"(check_optimizer(..., allow_adaptive=True)).")
    warnings.warn(reason + f" Running anyway because {OPT_IN} is set.", stacklevel=2)
    return [b.split(" ")[0] for b in broken]
