"""Feedback alignment (Lillicrap et al. 2016, arXiv:1411.0247).

Notation (row / batch form, PyTorch layouts)
--------------------------------------------
n batch, out/in the layer's features (conv: oc/ic channels, kh, kw kernel taps).
W (out, in) or (oc, ic, kh, kw) forward weight; B fixed feedback of W's shape;
mask (W's shape, bool) when ``feedback_density < 1``; delta (n, out[, oh, ow]).

    B        = Xavier-uniform(fan_in, fan_out of W) * mask     (drawn once, never learned)
    delta_in = delta @ B          (conv: transposed conv with kernel B, W's stride/padding)
"""
from __future__ import annotations

from .base import Rule
from .draw import xavier
from .options import DescribedByOptions, check_density
from .sparse import draw_mask


class FA(DescribedByOptions, Rule):
    """Feedback alignment: ``M = B``, ``B`` fixed random (Xavier-uniform, like ``W``).

    Parameters
    ----------
    feedback_density : float in (0, 1]
        Keep each entry of ``B`` with this probability; the others are exactly zero
        (no rescaling, as published).

    State on the layer: buffer ``feedback_B`` (W's shape) and, if sparse,
    ``feedback_mask`` (bool). Host draw order: ``B``, then the mask.
    """

    name = "fa"

    def __init__(self, feedback_density: float = 1.0):
        self.options = {"feedback_density": check_density(self.name, feedback_density)}

    def attach(self, layer, rng) -> None:
        B = xavier(rng, layer.weight_shape, layer.fan_in, layer.fan_out)
        mask = draw_mask(layer, rng, B.shape, self.options["feedback_density"],
                         "feedback_mask")
        if mask is not None:
            B = B * mask
        layer.register_buffer("feedback_B", self._host_to_layer(layer, B))

    def input_error(self, layer, delta, ctx):
        """``delta_in = delta @ B`` (conv: ``apply_transpose(delta, B)``)."""
        return layer.apply_transpose(delta, layer.feedback_B)

    def input_error_first(self, layer, delta) -> bool:
        return True  # reads the fixed B only

    def path_matrix(self, layer):
        return layer.feedback_B
