"""Product feedback alignment, PFA (Li & Benna 2024, "Deep Learning without Weight
Symmetry", arXiv:2405.20594).

Notation (row / batch form, PyTorch layouts)
--------------------------------------------
n batch; out, in W's features (conv: oc, ic; kh, kw taps; oh, ow output grid);
r expansion ratio, mid = r * out intermediate units; rho the feedback density;
N = n*oh*ow output positions (n for Linear), K = in*kh*kw = W's fan_in.

    W  (out, in) / (oc, ic, kh, kw)          forward weight
    B  (out, mid)                            fixed; conv: the 1x1 kernel (oc, mid, 1, 1) flattened
    R  (mid, in) / (mid, ic, kh, kw)         learned, same stride/padding as W

    literal order (the paper's equations):
        delta_mid = delta @ B                             channel_mix(delta, B)    (n, mid[, oh, ow])
        delta_in  = delta_mid @ R                         apply_transpose(delta_mid, R)
        gR        = delta_mid.T @ x                       weight_grad(delta_mid)
    fast order (the same numbers, since B is 1x1):
        M         = B @ R      (contract over mid)        (out, in[, kh, kw])
        delta_in  = delta @ M                             apply_transpose(delta, M)
        gR        = B.T @ gW   (contract over out)        gW = weight_grad(delta), shared with W

    R's gradient is masked (gR <- gR * mask_R) and R re-masked after every step when sparse;
    R is updated by the same optimizer, with the same weight decay, as W.

Initialisation (host, from the layer's feedback stream, in this order):
R Xavier-uniform gain 1 with its own fans (K, mid*kh*kw); then B: Xavier-uniform with gain
``sqrt((1 + 1/r) / 2 / rho)`` (fans mid, out: ``Var(B) = 1/(rho*mid)``, so
``E[B @ B.T] = I`` after masking); PFA-o: Haar-orthogonal (out, out); identity: ``I``
(nothing drawn); then ``mask_B``, then ``mask_R``.

Why it aligns (algorithms.md, "Decay laws"): with ``D = R - B.T @ W``, ``gR = B.T @ gW``
makes the data-driven terms of the two updates cancel for any optimizer linear in the
gradient; plain SGD gives ``D <- (1 - lr*lam) D``. So ``R -> B.T @ W`` and the path
``B @ R -> B @ B.T @ W``: exactly ``W`` for PFA-o and ``B = I`` (KP), close to ``W`` for
large ``r`` (Marchenko-Pastur: 17.5 degrees at r = 10 for 100 x 256).

Cost of the two orders per layer and step, in multiply-adds x 2 (FLOPs), beyond BP's
shared ``gW`` (``L`` = 1 if R learns, ``I`` = 1 if the layer's input error is needed)::

    literal = 2*N*mid*out*(L or I)  +  2*N*mid*K*L  +  2*N*mid*K*I
    fast    = 2*out*mid*K*I  +  2*mid*out*K*L  +  2*N*out*K*I

``order="auto"`` evaluates both at the layer's first backward (N from that batch and
grid) and keeps the cheaper one (:func:`pfa_flops`). ResNet-20 convs at batch 128 pick
the fast order (~20x fewer FLOPs); the MNIST MLP at batch 64 picks the literal one.
"""
from __future__ import annotations

import math

import numpy as np

from .base import Rule
from .draw import haar_orthogonal, xavier
from .options import (DescribedByOptions, check_bool, check_choice, check_density,
                      check_int)
from .sparse import draw_mask, get_mask, mask_, masked

ORDERS = ("auto", "fast", "literal")


def contract_first(A, C):
    """``A @ C`` over ``C``'s first axis: A (p, q), C (q, ...) -> (p, ...).

    ``B @ R`` (conv: ``M[o, c, i, j] = sum_m B[o, m] R[m, c, i, j]``) and ``B.T @ gW``.
    """
    out = A @ C.reshape(C.shape[0], -1)
    return out.reshape((A.shape[0],) + tuple(C.shape[1:]))


def pfa_flops(N: int, out: int, mid: int, K: int, input_error: bool = True,
              learn_R: bool = True) -> dict:
    """FLOPs of PFA's two evaluation orders for one layer and step (see the module docstring).

    Parameters
    ----------
    N : int
        Output positions per step, ``n * oh * ow`` (``n`` for Linear).
    out, mid, K : int
        W's out features, the intermediate units, W's fan_in (``in * kh * kw``).
    input_error, learn_R : bool
        Whether ``delta_in`` is needed (False for the first layer) and whether ``R`` learns.

    Returns
    -------
    dict with keys ``"literal"`` and ``"fast"`` (int FLOPs).
    """
    I, L = int(bool(input_error)), int(bool(learn_R))
    literal = 2 * N * mid * out * int(bool(I or L)) + 2 * N * mid * K * (L + I)
    fast = 2 * out * mid * K * (I + L) + 2 * N * out * K * I
    return {"literal": literal, "fast": fast}


class PFA(DescribedByOptions, Rule):
    """Product feedback alignment: ``delta_in = (delta @ B) @ R``, ``gR = (delta @ B).T @ x``.

    Parameters
    ----------
    expand_ratio : int >= 1, optional
        ``r``; ``mid = r * out``. Default 10 (every published run); PFA-o and identity
        fix ``mid = out`` (r = 1) and reject any other value.
    orthogonal : bool
        PFA-o: ``B`` a fixed Haar-random orthogonal (out, out) matrix. An error together
        with ``feedback_density < 1``.
    identity : bool
        ``B = I`` (mid = out): bitwise the same numbers as ``kp``.
    feedback_density : float in (0, 1]
        Bernoulli masks on ``B`` (fixed) and ``R`` (kept exactly zero).
    order : {"auto", "fast", "literal"}
        Evaluation order (same results up to rounding; see the module docstring).

    State on the layer: buffer ``feedback_B`` (out, mid), Parameter ``feedback_R``
    ((mid, in) / (mid, ic, kh, kw)), and if sparse buffers ``feedback_mask_B``,
    ``feedback_mask_R`` (bool).
    """

    name = "pfa"
    needs_linear_optimizer = True
    #: r when ``expand_ratio`` is not given (and neither PFA-o nor identity): every
    #: published PFA run uses 10
    DEFAULT_RATIO = 10
    #: effective default of ``expand_ratio`` (``minigrad-pfa rules``)
    option_notes = {"expand_ratio": "10 (1 with orthogonal or identity)"}

    def __init__(self, expand_ratio: int | None = None, orthogonal: bool = False,
                 identity: bool = False, feedback_density: float = 1.0,
                 order: str = "auto"):
        name = self.name
        orthogonal = check_bool(name, "orthogonal", orthogonal)
        identity = check_bool(name, "identity", identity)
        density = check_density(name, feedback_density)
        if expand_ratio is not None:
            expand_ratio = check_int(name, "expand_ratio", expand_ratio, 1)
        if orthogonal and identity:
            raise ValueError("pfa: 'orthogonal' and 'identity' exclude each other "
                             "(PFA-o draws an orthogonal B; identity sets B = I)")
        if (orthogonal or identity) and expand_ratio not in (None, 1):
            raise ValueError(f"pfa: {'orthogonal' if orthogonal else 'identity'} fixes "
                             f"mid = out (expand_ratio 1), got expand_ratio={expand_ratio}")
        if orthogonal and density < 1.0:
            raise ValueError("pfa: 'orthogonal' with feedback_density < 1 is not defined "
                             "(a masked orthogonal matrix is no longer orthogonal); "
                             f"got feedback_density={density}")
        if identity and density < 1.0:
            raise ValueError("pfa: 'identity' (B = I, i.e. KP) does not take a "
                             f"feedback_density < 1, got {density}")
        self.options = {"expand_ratio": expand_ratio, "orthogonal": orthogonal,
                        "identity": identity, "feedback_density": density,
                        "order": check_choice(name, "order", order, ORDERS)}
        #: r: 10 by default, 1 for PFA-o and identity
        self.ratio = expand_ratio if expand_ratio is not None else (
            1 if (orthogonal or identity) else self.DEFAULT_RATIO)
        # B = I is KP exactly, so AdamW keeps it exact too; any other B does not commute
        # with an elementwise normalisation
        self.exact_with_decoupled_adaptive = identity
        #: the order used, fixed at the first backward ("auto" is resolved then)
        self.resolved_order = None if order == "auto" else order

    def effective_options(self) -> dict:
        """Options with ``expand_ratio`` resolved to the r in use (10, or 1 for PFA-o and
        identity)."""
        return dict(self.options, expand_ratio=self.ratio)

    # state ------------------------------------------------------------------------
    def attach(self, layer, rng) -> None:
        out, r, rho = layer.weight_shape[0], self.ratio, self.options["feedback_density"]
        mid = r * out
        R_shape = (mid,) + tuple(layer.weight_shape[1:])
        # R first: with B = I nothing else is drawn and R is exactly KP's B
        R = xavier(rng, R_shape, layer.fan_in, mid * layer.receptive)
        if self.options["identity"]:
            B = np.eye(out)
        elif self.options["orthogonal"]:
            B = haar_orthogonal(rng, out)
        else:
            B = xavier(rng, (out, mid), mid, out, gain=math.sqrt((1.0 + 1.0 / r) / 2.0 / rho))
        mask_B = draw_mask(layer, rng, B.shape, rho, "feedback_mask_B")
        mask_R = draw_mask(layer, rng, R_shape, rho, "feedback_mask_R")
        if mask_B is not None:
            B = B * mask_B
            R = R * mask_R
        layer.register_buffer("feedback_B", self._host_to_layer(layer, B))
        layer.register_parameter("feedback_R", self._host_to_layer(layer, R))
        if self.options["order"] == "auto":
            self.resolved_order = None  # re-resolved at the next first backward

    # evaluation order ---------------------------------------------------------------
    def choose_order(self, layer, delta) -> str:
        """The order for this layer: fixed, or the cheaper by :func:`pfa_flops` at the
        first backward (N = n*oh*ow of that ``delta``)."""
        if self.resolved_order is None:
            R = layer.feedback_R
            N = int(delta.size // delta.shape[1])
            cost = pfa_flops(N, layer.weight_shape[0], R.data.shape[0], layer.fan_in,
                             layer.needs_input_error, R.requires_grad)
            self.resolved_order = "fast" if cost["fast"] < cost["literal"] else "literal"
        return self.resolved_order

    # backward ---------------------------------------------------------------------
    def feedback_grads(self, layer, delta, gW, ctx) -> None:
        """``gR = weight_grad(delta @ B)`` (literal) or ``B.T @ gW`` (fast), masked."""
        R = layer.feedback_R
        if self.choose_order(layer, delta) == "literal":
            if not (R.requires_grad or layer.needs_input_error):
                R.grad = None
                return
            delta_mid = layer.channel_mix(delta, layer.feedback_B)
            if layer.needs_input_error:  # shared with input_error, called next by backward
                layer.cache["pfa_delta_mid"] = (delta, delta_mid)
            gR = layer.weight_grad(delta_mid) if R.requires_grad else None
        elif R.requires_grad:
            if gW is None:  # W frozen: R still learns from the forward gradient
                gW = layer.weight_grad(delta)
            gR = contract_first(layer.feedback_B.T, gW)
        else:
            gR = None
        R.grad = None if gR is None else masked(gR, get_mask(layer, "feedback_mask_R"))

    def input_error_first(self, layer, delta) -> bool:
        """Fast order only: the literal order's ``feedback_grads`` computes the
        ``delta_mid`` that its ``input_error`` then reuses."""
        return self.choose_order(layer, delta) == "fast"

    def input_error(self, layer, delta, ctx):
        """Literal: ``apply_transpose(delta @ B, R)``; fast: ``apply_transpose(delta, B @ R)``."""
        if self.choose_order(layer, delta) == "literal":
            cached = layer.cache.pop("pfa_delta_mid", None)
            if cached is not None and cached[0] is delta:
                delta_mid = cached[1]
            else:
                delta_mid = layer.channel_mix(delta, layer.feedback_B)
            return layer.apply_transpose(delta_mid, layer.feedback_R.data)
        return layer.apply_transpose(delta, self.path_matrix(layer))

    def after_step(self, layer) -> None:
        mask_(layer.feedback_R.data, get_mask(layer, "feedback_mask_R"))

    # diagnostics --------------------------------------------------------------------
    def path_matrix(self, layer):
        """``M = B @ R`` contracted over mid: (out, in) / (oc, ic, kh, kw)."""
        return contract_first(layer.feedback_B, layer.feedback_R.data)

    def mismatch(self, layer):
        """``D = R - B.T @ W``, the quantity the decay laws act on."""
        return layer.feedback_R.data - contract_first(layer.feedback_B.T, layer.weight.data)
