"""Kolen-Pollack learning (Kolen & Pollack 1994; Akrout et al. 2019, arXiv:1904.05391).

Notation (row / batch form, PyTorch layouts)
--------------------------------------------
W (out, in) or (oc, ic, kh, kw); B learned feedback of W's shape; delta (n, out[, oh, ow]);
gW the layer's forward-weight gradient (``weight_grad(delta)``); lr, lam the optimizer's
learning rate and weight decay::

    B_0      = Xavier-uniform(fan_in, fan_out of W)    (first draw of the layer's stream)
    delta_in = delta @ B          (conv: transposed conv with kernel B)
    gB       = gW                 (then the *same* optimizer, with the same weight decay)

Why it aligns (algorithms.md, "Decay laws"): ``W`` and ``B`` receive the same gradient,
so in ``D = W - B`` the data-driven terms cancel for any optimizer linear in the
gradient; plain SGD gives ``D <- (1 - lr*lam) D``, momentum ``V <- mu V + lam D;
D <- D - lr V``. AdamW keeps this exact (identical moments, decoupled decay shrinks ``D``
by ``1 - lr*lam``); Adam with L2 decay does not (``gW + lam W`` and ``gB + lam B`` give
different moments). Without weight decay ``D`` never shrinks: KP does not align.

KP is PFA with ``B = I`` and ``mid = out``; ``B_0`` is drawn exactly as PFA's ``R``, so
``pfa(identity=True)`` and ``kp`` agree bitwise.
"""
from __future__ import annotations

from .base import Rule
from .draw import xavier


class KP(Rule):
    """Kolen-Pollack: ``M = B``, ``B`` learned with ``gB = gW``.

    State on the layer: Parameter ``feedback_B`` (W's shape), updated by the optimizer
    (build it from ``model.named_parameters()`` after :func:`attach_rules`).
    """

    name = "kp"
    needs_linear_optimizer = True
    #: AdamW (decoupled decay) keeps KP's cancellation exact: identical gradients give
    #: identical moments (checked by :func:`minigrad_pfa.rules.guard.check_optimizer`)
    exact_with_decoupled_adaptive = True

    def attach(self, layer, rng) -> None:
        B = xavier(rng, layer.weight_shape, layer.fan_in, layer.fan_out)
        layer.register_parameter("feedback_B", self._host_to_layer(layer, B))

    def feedback_grads(self, layer, delta, gW, ctx) -> None:
        """``gB = gW``: a copy of the same values (an optimizer may modify a gradient in
        place, and ``W``'s and ``B``'s must stay independent arrays)."""
        B = layer.feedback_B
        if not B.requires_grad:
            B.grad = None
            return
        if gW is None:  # W frozen: B still learns from the forward gradient
            gW = layer.weight_grad(delta)
        B.grad = gW.copy()

    def input_error(self, layer, delta, ctx):
        """``delta_in = delta @ B`` (conv: ``apply_transpose(delta, B)``)."""
        return layer.apply_transpose(delta, layer.feedback_B.data)

    def input_error_first(self, layer, delta) -> bool:
        return True  # reads B's values; feedback_grads writes only B.grad

    def path_matrix(self, layer):
        return layer.feedback_B.data

    def mismatch(self, layer):
        """``D = W - B``, the quantity the decay laws act on."""
        return layer.weight.data - layer.feedback_B.data
