"""Mechanism diagnostics of the learned-feedback rules (PFA, KP) and their decay laws.

Notation
--------
W (out, in) or (oc, ic, kh, kw): forward weight.  PFA: B (out, mid) fixed, R (mid, in) or
(mid, ic, kh, kw) learned.  KP: B (same shape as W) learned.  lr, lam (weight decay), mu
(momentum), tau (dampening) of the optimizer; t counts optimizer steps.

The mismatch whose decay is the mechanism of each rule::

    PFA:  D = R - B.T @ W          reported as  ||D|| / ||B.T @ W||     ("pfa_mismatch")
    KP:   D = W - B                reported as  ||D|| / ||W||           ("kp_mismatch")

(conv: ``B.T @ W`` contracts B's ``out`` with W's first axis, i.e. B is PFA's 1x1 kernel).
Because ``gR = B.T @ gW`` (PFA) and ``gB = gW`` (KP), the data-driven parts of the two
updates cancel in ``D`` for any optimizer that is linear in the gradient, and ``D`` obeys
the optimizer alone (the decay laws)::

    plain SGD:            D <- (1 - lr*lam) D
    momentum (PyTorch):   V <- mu V + (1 - tau) lam D   (V = lam D on the first step),
                          D <- D - lr V                                  (heavy ball)
                          D <- D - lr (lam D + mu V)                     (Nesterov)
    AdamW, KP only:       D <- (1 - lr*lam) D   (identical moments since gB = gW;
                                                 also PFA with B = I, which is KP)
    Adam (L2), KP only:   D constant while lam = 0; no law once lam > 0

Starting from empty optimizer buffers, ``V_t`` and ``D_t`` stay proportional to ``D_0``,
so a two-number simulation (:class:`MismatchPredictor`) predicts ``||D_t|| / ||D_0||``
exactly, for any lr / weight-decay schedule. Only ``D`` itself follows the law: the
*normalised* mismatch also moves with its denominator (``||B.T W||``, ``||W||``), so the
logs show measured ``||D_t|| / ||D_0||`` beside the prediction (:class:`MechanismTracker`).
No law holds for KP under Adam with L2 decay on, nor for PFA (B != I) under any
elementwise-adaptive optimizer (the normalisation does not commute with ``B.T``): the
prediction is then ``None``. In
finite precision each update rounds ``W`` and the feedback separately (float32: about 1e-7
of their size per step), which sets a floor under which the measured decay stops
following the law.
With sparse PFA masks the masked entries of ``R`` stay 0 while ``B.T @ W`` does not, so
only ``D`` on the mask's support follows the law.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from ..nn.models import weight_layers
from ..nn.module import Parameter
from .measures import as_array, none_if_nan, ratio_from, sq_norms


# ----------------------------------------------------------------------------- diagnostics
def layer_mismatch(layer):
    """``(kind, ||D||^2, ||reference||^2)`` for a PFA or KP layer, ``None`` for other rules.

    The rule is recognised from the feedback state on the layer (the contract's names), not
    from its name: a learned ``feedback_R`` with a fixed ``feedback_B`` is PFA (PFA-o and
    PFA with ``B = I`` included); a learned :class:`Parameter` ``feedback_B`` without ``R``
    is KP (WM's ``feedback_B`` is a buffer, FA's too).
    """
    W = layer.weight.data
    R, B = getattr(layer, "feedback_R", None), getattr(layer, "feedback_B", None)
    if R is not None and B is not None:
        R, B = as_array(R), as_array(B)
        out = W.shape[0]
        if B.ndim != 2 or B.shape[0] != out or R.shape[0] != B.shape[1] \
                or tuple(R.shape[1:]) != tuple(W.shape[1:]):
            raise ValueError(f"{layer.qualname}: PFA feedback shapes B {tuple(B.shape)}, "
                             f"R {tuple(R.shape)} do not fit W {tuple(W.shape)}; expected "
                             f"B (out, mid) and R (mid, *W.shape[1:])")
        BtW = (B.T @ W.reshape(out, -1)).reshape(R.shape)
        d, ref = sq_norms(R - BtW, BtW)
        return "pfa", d, ref
    if isinstance(B, Parameter) and R is None:
        d, ref = sq_norms(W - B.data, W)
        return "kp", d, ref
    return None


def mechanism_diagnostics(model) -> "OrderedDict[str, dict]":
    """Mismatch of every PFA / KP layer of ``model`` (other layers are absent).

    Returns
    -------
    OrderedDict
        ``{qualname: {"pfa_mismatch": ||R - B.T W|| / ||B.T W||, "mismatch_norm": ||D||}}``
        or ``{qualname: {"kp_mismatch": ||W - B|| / ||W||, "mismatch_norm": ||D||}}``;
        undefined ratios are ``None``.
    """
    out: "OrderedDict[str, dict]" = OrderedDict()
    for name, layer in weight_layers(model).items():
        m = layer_mismatch(layer)
        if m is None:
            continue
        kind, d, ref = m
        out[name] = {f"{kind}_mismatch": none_if_nan(ratio_from(d, ref)),
                     "mismatch_norm": none_if_nan(math.sqrt(d) if math.isfinite(d) else math.nan)}
    return out


# ----------------------------------------------------------------------------- decay law
class MismatchPredictor:
    """Scalar simulation of the decay law: predicts ``||D_t|| / ||D_0||``.

    Parameters
    ----------
    law : {"sgd", "decoupled", "l2_adaptive", "none"}
        "sgd": (momentum) SGD with coupled weight decay, PyTorch semantics;
        "decoupled": AdamW on KP (or PFA with ``B = I``), ``D <- (1 - lr*lam) D``;
        "l2_adaptive": Adam with L2 decay on KP: exact (``D`` constant) only while the
        weight decay is 0, undefined from the first step with decay on;
        "none": no law holds (PFA under an adaptive optimizer): prediction ``None``.
    momentum, dampening : float
        ``mu`` and ``tau`` of SGD (0 and 0: plain SGD).
    nesterov : bool

    Call :meth:`step` once per optimizer step, with the ``lr`` and ``weight_decay`` that step
    used, starting from the optimizer's first step (empty momentum buffers).
    """

    LAWS = ("sgd", "decoupled", "l2_adaptive", "none")

    def __init__(self, law: str = "sgd", momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False):
        if law not in self.LAWS:
            raise ValueError(f"unknown decay law {law!r}; choose one of {self.LAWS}")
        self.law = law
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.nesterov = bool(nesterov)
        self.d, self.v, self.steps = 1.0, 0.0, 0
        self.defined = law != "none"

    @classmethod
    def for_optimizer(cls, optimizer, exact_with_decoupled_adaptive: bool = False
                      ) -> "MismatchPredictor":
        """The law under ``optimizer`` (an engine optimizer), from its class attributes
        ``is_linear_in_gradient`` / ``decoupled_weight_decay`` and its ``momentum``,
        ``dampening``, ``nesterov``.

        ``exact_with_decoupled_adaptive``: the rule's attribute of that name (True for KP
        and PFA with ``B = I``, whose two arrays receive identical gradients).
        """
        if getattr(optimizer, "is_linear_in_gradient", False):
            return cls("sgd", getattr(optimizer, "momentum", 0.0),
                       getattr(optimizer, "dampening", 0.0), getattr(optimizer, "nesterov", False))
        if exact_with_decoupled_adaptive:
            return cls("decoupled" if getattr(optimizer, "decoupled_weight_decay", False)
                       else "l2_adaptive")
        return cls("none")

    @property
    def ratio(self):
        """Predicted ``||D_t|| / ||D_0||`` after the steps so far (``None`` without a law)."""
        return abs(self.d) if self.defined else None

    def step(self, lr: float, weight_decay: float):
        """Advance one optimizer step with its ``lr`` and ``weight_decay``.

        Returns :attr:`ratio`."""
        lr, lam = float(lr), float(weight_decay)
        if self.law == "l2_adaptive":
            # L2 decay enters the gradients, whose moments then differ between the arrays
            self.defined = self.defined and lam == 0.0
        elif self.law == "decoupled" or (self.law == "sgd" and self.momentum == 0.0):
            self.d *= 1.0 - lr * lam
        elif self.law == "sgd":
            mu = self.momentum
            g = lam * self.d                      # the data terms cancel: only lam D is left
            # PyTorch: the buffer is the plain gradient on the first step, no dampening
            self.v = g if self.steps == 0 else mu * self.v + (1.0 - self.dampening) * g
            self.d -= lr * (g + mu * self.v if self.nesterov else self.v)
        self.steps += 1
        return self.ratio

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        return OrderedDict(d=np.array(self.d), v=np.array(self.v),
                           steps=np.array(self.steps, dtype=np.int64),
                           defined=np.array(self.defined))

    def load_state_dict(self, state) -> None:
        self.d, self.v = float(state["d"]), float(state["v"])
        self.steps, self.defined = int(state["steps"]), bool(state["defined"])


class MechanismTracker:
    """Measured ``||D_t|| / ||D_0||`` of every PFA / KP layer beside the law's prediction.

    Create it right before the first optimizer step (it stores ``||D_0||``), call
    :meth:`step` after every optimizer step with that step's ``lr`` and ``weight_decay``,
    and :meth:`report` when logging. :meth:`state_dict` / :meth:`load_state_dict` resume it.
    A layer whose ``W`` or feedback is frozen does not follow the law (one side of ``D``
    does not move).

    Parameters
    ----------
    model : Module
    optimizer : engine optimizer
        Decides the law (:meth:`MismatchPredictor.for_optimizer`), with each layer's rule
        attribute ``exact_with_decoupled_adaptive`` (default: True for KP).
    """

    def __init__(self, model, optimizer):
        self.d0: "OrderedDict[str, float]" = OrderedDict()
        self.law_of: "OrderedDict[str, str]" = OrderedDict()
        self.predictors: "OrderedDict[str, MismatchPredictor]" = OrderedDict()
        for name, layer in weight_layers(model).items():
            m = layer_mismatch(layer)
            if m is None:
                continue
            exact = getattr(layer.rule, "exact_with_decoupled_adaptive", m[0] == "kp")
            p = MismatchPredictor.for_optimizer(optimizer, bool(exact))
            self.predictors.setdefault(p.law, p)
            self.law_of[name] = p.law
            self.d0[name] = math.sqrt(m[1])

    def step(self, lr: float, weight_decay: float) -> None:
        for p in self.predictors.values():
            p.step(lr, weight_decay)

    def report(self, model) -> "OrderedDict[str, dict]":
        """:func:`mechanism_diagnostics` plus ``mismatch_decay`` (measured ``||D_t||/||D_0||``)
        and ``mismatch_decay_predicted`` per layer (``None`` where undefined)."""
        out = mechanism_diagnostics(model)
        for name, d in out.items():
            d0, law = self.d0.get(name), self.law_of.get(name)
            dt = d["mismatch_norm"]
            d["mismatch_decay"] = none_if_nan(dt / d0) if dt is not None and d0 else None
            d["mismatch_decay_predicted"] = self.predictors[law].ratio if law else None
        return out

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Flat, ``.npz``-storable: ``d0/<layer>`` and ``<law>/<field>`` entries."""
        out: "OrderedDict[str, np.ndarray]" = OrderedDict(
            (f"d0/{name}", np.array(v)) for name, v in self.d0.items())
        for law, p in self.predictors.items():
            out.update((f"{law}/{k}", v) for k, v in p.state_dict().items())
        return out

    def load_state_dict(self, state) -> None:
        missing = [f"d0/{n}" for n in self.d0 if f"d0/{n}" not in state]
        if missing:
            raise KeyError(f"mechanism tracker state lacks {missing}; it was saved for "
                           f"another model or rule")
        for name in self.d0:
            self.d0[name] = float(state[f"d0/{name}"])
        for law, p in self.predictors.items():
            p.load_state_dict({k: state[f"{law}/{k}"] for k in ("d", "v", "steps", "defined")})
