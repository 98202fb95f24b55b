"""The learning-rule interface and backpropagation, the reference rule.

Notation (row / batch form, PyTorch layouts)
--------------------------------------------
A weight layer computes ``y = x @ W.T + b`` (conv: the same with im2col), ``W`` of shape
(out, in) or (oc, ic, kh, kw). ``delta = dL/dy`` arrives at its output. Every rule
computes the forward-weight gradient identically,

    gW = delta.T @ x,    gb = delta.sum(0)          (conv: the conv weight gradient),

which the layer does itself. A rule supplies only

(a) the operator that sends an error to the layer's input,
    ``delta_in = delta @ M``  (conv: transposed convolution with kernel ``M``), and
(b) its feedback state and how that state learns.

A rule object is attached to exactly one layer (:meth:`Rule.attach`), stores its arrays
*on that layer* (buffers and parameters whose names start with ``feedback_``, so they are
model state: checkpointed, moved between devices, updated by the optimizer with the same
weight decay as ``W`` when learned) and keeps only hyper-parameters on itself.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_device


class Rule:
    """Base class of every learning rule (one instance per weight layer).

    Subclasses override :meth:`input_error` and, where they have feedback state,
    :meth:`attach`, :meth:`feedback_grads`, :meth:`before_step`, :meth:`after_step` and
    :meth:`path_matrix`. Layers call these methods and never branch on a rule's name.
    """

    #: name used in configs and on the command line
    name = "rule"
    #: True when the rule's learned feedback follows the optimizer's linear dynamics
    #: (KP, PFA): an adaptive optimizer breaks the mechanism (see :mod:`minigrad_pfa.rules.guard`)
    needs_linear_optimizer = False

    def bind(self, layer, facts: dict) -> None:
        """Receive facts about the whole model before :meth:`attach` (called by
        :func:`~minigrad_pfa.rules.registry.attach_rules`): ``num_classes`` (out features
        of the last weight layer), ``input_shape`` (the layer's input shape without the
        batch axis, or None when unknown), ``layer_index``, ``seed``. DFA needs them."""

    def attach(self, layer, rng: np.random.Generator) -> None:
        """Create the feedback state on ``layer`` from the host generator ``rng``."""

    def input_error(self, layer, delta, ctx):
        """Return the error sent to the layer's input, ``delta_in = delta @ M``."""
        raise NotImplementedError

    def feedback_grads(self, layer, delta, gW, ctx) -> None:
        """Write ``.grad`` of the learned feedback parameters (KP: gB, PFA: gR)."""

    def input_error_first(self, layer, delta) -> bool:
        """True when :meth:`input_error` reads nothing :meth:`feedback_grads` (or the
        layer's gradients) write, so the layer may compute its input error first and its
        parameter gradients later, on another thread (:mod:`minigrad_pfa.cpu.overlap`).
        False unless a rule declares it (WM's first ``feedback_grads`` trains ``B``)."""
        return False

    def before_step(self, layer) -> None:
        """Called once per training step before the forward pass (e.g. brSF redraw)."""

    def after_step(self, layer) -> None:
        """Called once per training step after the optimizer update (masks, mirror)."""

    def path_matrix(self, layer):
        """The matrix ``M`` the rule actually propagates with (metrics), or ``None``."""
        return None

    def describe(self) -> str:
        return self.name

    # helpers shared by subclasses --------------------------------------------------
    @staticmethod
    def _host_to_layer(layer, host_array: np.ndarray):
        """Cast a host-drawn array to the layer's dtype and move it to its device."""
        w = layer.weight.data
        return to_device(np.asarray(host_array, dtype=w.dtype), layer.device)


class BP(Rule):
    """Backpropagation: ``M = W``, so ``delta_in = delta @ W`` (conv: transposed conv with W).

    No feedback state. This is the exact gradient of the loss.
    """

    name = "bp"

    def input_error(self, layer, delta, ctx):
        return layer.apply_transpose(delta, layer.weight.data)

    def input_error_first(self, layer, delta) -> bool:
        return True  # reads W only

    def path_matrix(self, layer):
        return layer.weight.data
