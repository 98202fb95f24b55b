"""Sparse feedback: fixed Bernoulli masks whose zeros stay exactly zero forever.

Published protocol (Li & Benna 2024, arXiv:2405.20594; algorithms.md "Sparse feedback"):
a mask of density ``rho`` (``P(entry kept) = rho``) is drawn once per feedback matrix.

* FA, DFA and the sign-concordant rules: the mask multiplies their single feedback
  matrix, **without rescaling** (``B <- B * mask``; SF: ``M <- M * mask`` every step).
  Stored as ``feedback_mask``.
* PFA: one mask for ``B`` (``feedback_mask_B``, applied at init; ``B``'s gain has the
  ``1/density`` term instead) and one for ``R`` (``feedback_mask_R``): ``R`` is masked at
  init, its gradient is masked (``gR <- gR * mask_R``) and ``R`` is re-masked after every
  optimizer step (``R <- R * mask_R``). Masking the gradient alone already keeps the zeros
  under SGD/momentum/Nesterov/Adam (their state at a masked entry stays zero and weight
  decay of a zero is zero); re-masking makes it hold for any optimizer.

Masks are boolean buffers on the layer (checkpointed, moved with the model). A density
of 1 draws nothing and stores nothing, so dense runs consume the same random numbers
whether or not the option is spelled out.
"""
from __future__ import annotations

from ..backend import to_device
from .draw import bernoulli_mask


def draw_mask(layer, rng, shape, density: float, name: str):
    """Draw a boolean mask on the host, register it on ``layer`` (on the layer's device)
    as buffer ``name`` and return the *host* copy (to mask host-drawn arrays).

    Returns ``None`` (and draws nothing) when ``density == 1``.
    """
    if density >= 1.0:
        return None
    mask = bernoulli_mask(rng, shape, density)
    layer.register_buffer(name, to_device(mask, layer.device))
    return mask


def get_mask(layer, name: str):
    """The mask buffer ``name`` of ``layer``, or ``None`` if the layer has none."""
    return layer._buffers.get(name)


def masked(a, mask):
    """``a * mask`` as a new array (``a`` itself when ``mask`` is None); dtype of ``a``."""
    if mask is None:
        return a
    return a * mask


def mask_(a, mask) -> None:
    """In place: ``a <- a * mask`` (no-op when ``mask`` is None)."""
    if mask is not None:
        a *= mask
