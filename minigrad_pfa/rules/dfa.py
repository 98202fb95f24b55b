"""Direct feedback alignment (Nøkland 2016, arXiv:1609.01596).

Notation (row / batch form, PyTorch layouts)
--------------------------------------------
n batch, k classes (out features of the network's last weight layer),
e = dL/dlogits (n, k) the output error (``ctx.output_error``), delta (n, out[, oh, ow])
the error at this layer's output, D_l the layer's fixed feedback, mask (D_l's shape).

Linear layer, x (n, in)::

    D_l      = Xavier-uniform(fan_in = in, fan_out = k) * mask        (k, in)
    delta_in = e @ D_l                                                 (n, in)

Conv layer, x (n, ic, h, w), W (oc, ic, kh, kw), stride/padding of W:

* ``conv="conv"`` (default; the convention of the published code)::

      D_l      (k, ic, kh, kw), Xavier fans (ic*kh*kw, k*kh*kw)
      e_grid   = e broadcast over the layer's output grid          (n, k, oh, ow)
      delta_in = transposed conv of e_grid with kernel D_l          (n, ic, h, w)

* ``conv="dense"`` (Nøkland's fully connected projection)::

      D_l      (k, ic*h*w), Xavier fans (ic*h*w, k), columns in PyTorch's (c, h, w) order
      delta_in = (e @ D_l).reshape(n, ic, h, w)

The layer's own ``gW`` still uses the local ``delta`` arriving from above (it is the
exact gradient for the output layer, whose ``delta`` is ``e``); ReLU, BatchNorm, pooling
and residual additions keep their exact local derivatives. ``delta`` is ignored by the
input error, which is why DFA has no path matrix (its weight alignment is undefined).
"""
from __future__ import annotations

from ..backend import get_array_module
from .base import Rule
from .draw import xavier
from .options import DescribedByOptions, check_choice, check_density
from .sparse import draw_mask


class DFA(DescribedByOptions, Rule):
    """Direct feedback alignment: ``delta_in = e @ D_l`` with ``D_l`` fixed random.

    Parameters
    ----------
    feedback_density : float in (0, 1]
        Bernoulli mask on ``D_l`` (no rescaling, as published).
    conv : {"conv", "dense"}
        Convention for conv layers (see the module docstring). ``"dense"`` needs the
        layer's input shape: pass ``input_shape`` to
        :func:`~minigrad_pfa.rules.registry.attach_rules`. Linear layers are the same
        under both.

    State on the layer: buffer ``feedback_D`` and, if sparse, ``feedback_mask``.
    Host draw order: ``D_l``, then the mask.
    """

    name = "dfa"

    def __init__(self, feedback_density: float = 1.0, conv: str = "conv"):
        self.options = {"feedback_density": check_density(self.name, feedback_density),
                        "conv": check_choice(self.name, "conv", conv, ("conv", "dense"))}
        self._num_classes = None
        self._input_shape = None

    def bind(self, layer, facts: dict) -> None:
        self._num_classes = int(facts["num_classes"])
        self._input_shape = facts.get("input_shape")

    def _dense_conv(self, layer) -> bool:
        return len(layer.weight_shape) == 4 and self.options["conv"] == "dense"

    def feedback_shape(self, layer) -> tuple:
        """Shape of ``D_l`` and its Xavier fans: ``((k, ...), fan_in, fan_out)``."""
        k = self._num_classes
        if k is None:
            raise ValueError("dfa: the number of classes is unknown; attach the rule with "
                             "minigrad_pfa.rules.attach_rules(model, 'dfa', seed)")
        if self._dense_conv(layer):
            if self._input_shape is None:
                raise ValueError(
                    f"dfa with conv='dense' on conv layer {layer.qualname!r} needs the "
                    "model's input shape: call attach_rules(model, spec, seed, "
                    "input_shape=(c, h, w))")
            size = 1
            for s in self._input_shape:
                size *= int(s)
            return (k, size), size, k
        shape = (k,) + tuple(layer.weight_shape[1:])
        return shape, layer.fan_in, k * layer.receptive

    def attach(self, layer, rng) -> None:
        shape, fan_in, fan_out = self.feedback_shape(layer)
        D = xavier(rng, shape, fan_in, fan_out)
        mask = draw_mask(layer, rng, shape, self.options["feedback_density"],
                         "feedback_mask")
        if mask is not None:
            D = D * mask
        layer.register_buffer("feedback_D", self._host_to_layer(layer, D))

    def input_error_first(self, layer, delta) -> bool:
        return True  # reads e and the fixed D_l only

    def input_error(self, layer, delta, ctx):
        """``delta_in = e @ D_l`` (conv: see the module docstring); ``delta`` only sets the grid."""
        e = getattr(ctx, "output_error", None)
        if e is None:
            raise ValueError(f"dfa ({layer.qualname}): the backward context has no output "
                             "error; set BackwardContext(output_error=e) with e = dL/dlogits")
        D = layer.feedback_D
        if D.ndim == 4:
            xp = get_array_module(e)
            n, k = e.shape
            # a broadcast view: conv2d_input_error makes it contiguous once
            e_grid = xp.broadcast_to(e[:, :, None, None], (n, k) + tuple(delta.shape[2:]))
            return layer.apply_transpose(e_grid, D)
        if delta.ndim == 4:  # dense convention on a conv layer
            xp = get_array_module(e)
            n = e.shape[0]
            c, h, w = (int(s) for s in self._input_shape)
            flat = e @ D                                  # (n, c*h*w) in (c, h, w) order
            # re-store channels-last, the engine's layout for 4-D activations
            cl = xp.ascontiguousarray(flat.reshape(n, c, h, w).transpose(0, 2, 3, 1))
            return cl.transpose(0, 3, 1, 2)
        return layer.apply_transpose(e, D)
