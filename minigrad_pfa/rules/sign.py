"""Sign-concordant feedback: uSF, frSF, brSF (Liao, Leibo & Poggio 2016, arXiv:1510.05067;
Moskovitz, Litwin-Kumar & Abbott 2018, arXiv:1812.06488; names as in BioTorch).

Notation (row / batch form, PyTorch layouts)
--------------------------------------------
W_t the current forward weight (out, in) or (oc, ic, kh, kw); fan_in/fan_out PyTorch's;
mask (W's shape, bool) when ``feedback_density < 1``; ``||.||`` the Frobenius norm.
The feedback is rebuilt at every use from state that never changes in place, so it
always has the sign of the *current* ``W_t``::

    uSF    A = s * sign(W_t),        s = sqrt(2 / (fan_in + fan_out))   (the Xavier std)
    frSF   A = |M0| * sign(W_t),     M0 Xavier-uniform, drawn once and fixed
    brSF   A = |M_t| * sign(W_t),    M_t Xavier-uniform, redrawn every training step
                                      from a counter-based stream (key, t)

    norm=None    M = A * mask
    norm="sn"    M = (||W_t|| / ||A||) * A * mask        (tracks the current norm)
    norm="init"  M = (||W_0|| / ||A||) * A * mask        (scale frozen at init)

    delta_in = delta @ M      (conv: transposed conv with kernel M)

For uSF, ``||W|| * A / ||A|| = ||W|| * sign(W) / ||sign(W)||``: exactly Moskovitz et
al.'s "SN" and "Init" as reconstructed in algorithms.md. For frSF/brSF the same
rescaling of ``A`` is this project's extension. The mask is applied after the
rescaling, without rescaling itself (as published for sparse SF).

Options that change the *forward* learning (all reconstructions, unconfirmed):

* ``const``: after every optimizer step, ``W <- W * ||W_0|| / ||W||`` *in place*
  (Moskovitz et al.'s "Const"). The rule's ``after_step`` runs right after
  ``optimizer.step()``, before anything reads ``W``; in place, the optimizer keeps
  updating the same array (BioTorch's ``constrain_weights`` replaced the tensor, which
  is where it broke).
* ``batch_manhattan``: Liao et al.'s "Batch Manhattan": the optimizer receives
  ``sign(gW)`` and ``sign(gb)`` instead of the batch gradients (the recorded ``gW`` of
  the metrics stays the true one).
* ``fixed_sign``: Moskovitz et al.'s "E/I" condition (fixed-sign forward weights): every
  entry of ``W`` keeps the sign of ``W_0``. After every optimizer step, in place::

      W <- W * [sign(W) == sign(W_0)]        (sign(W_0) recorded at attach)

  An entry the update pushed across zero is clipped to 0; a later update may grow it again,
  in its original sign only (the other sign is clipped again). The feedback stays the
  rule's usual ``sign(W_t)``-based matrix, which therefore never changes sign (a clipped
  entry feeds back 0): no sign information travels from the forward path. A weight with
  ``W_0 = 0`` stays 0 (probability 0 under the Xavier-uniform initialisation). With
  ``const`` as well, the clipping runs first and the rescaling second (the rescaling keeps
  signs). Only ``W`` is constrained; biases are free.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module, to_device, to_numpy
from .base import Rule
from .draw import draw_key, stream, xavier
from .hostcopy import host_value, increment
from .options import DescribedByOptions, check_bool, check_choice, check_density
from .sparse import draw_mask, get_mask, masked

_NORMS = {None: None, "none": None, "sn": "sn", "init": "init"}


def _fro(a):
    """Frobenius norm as a 0-d array on ``a``'s device (no host sync)."""
    xp = get_array_module(a)
    return xp.sqrt(xp.sum(a * a))


class SignConcordant(DescribedByOptions, Rule):
    """Base of the sign-concordant rules: ``M = normalise(|magnitude| * sign(W_t)) * mask``.

    Parameters
    ----------
    feedback_density : float in (0, 1]
        Bernoulli mask multiplying ``M`` (no rescaling).
    norm : {None, "sn", "init"}
        Rescale the feedback to ``||W_t||`` ("sn") or ``||W_0||`` ("init").
    const : bool
        Keep ``||W||`` at ``||W_0||`` after every update (see the module docstring).
    batch_manhattan : bool
        The optimizer receives ``sign(gW)``, ``sign(gb)``.
    fixed_sign : bool
        E/I: every forward weight keeps the sign of ``W_0`` (see the module docstring).

    Subclasses define :meth:`_attach_magnitude` and :meth:`magnitude`. Host draw order:
    the subclass's draws, then the mask.
    """

    def __init__(self, feedback_density: float = 1.0, norm=None, const: bool = False,
                 batch_manhattan: bool = False, fixed_sign: bool = False):
        norm = check_choice(self.name, "norm", norm, tuple(_NORMS))
        self.options = {"feedback_density": check_density(self.name, feedback_density),
                        "norm": _NORMS[norm],
                        "const": check_bool(self.name, "const", const),
                        "batch_manhattan": check_bool(self.name, "batch_manhattan",
                                                      batch_manhattan),
                        "fixed_sign": check_bool(self.name, "fixed_sign", fixed_sign)}

    # state ------------------------------------------------------------------------
    def attach(self, layer, rng) -> None:
        self._attach_magnitude(layer, rng)
        draw_mask(layer, rng, layer.weight_shape, self.options["feedback_density"],
                  "feedback_mask")
        if self.options["norm"] == "init" or self.options["const"]:
            w0 = to_numpy(layer.weight.data).astype(np.float64)
            layer.register_buffer("feedback_w0_norm",
                                  self._host_to_layer(layer, np.linalg.norm(w0)))
        if self.options["fixed_sign"]:
            # sign(W_0) in W's dtype: the clip is one elementwise compare and multiply
            layer.register_buffer("feedback_w0_sign",
                                  get_array_module(layer.weight.data).sign(layer.weight.data))

    def _attach_magnitude(self, layer, rng) -> None:
        """Draw the rule's own magnitude state (nothing for uSF)."""

    def magnitude(self, layer):
        """``|magnitude|`` multiplying ``sign(W_t)``: a float or an array of W's shape."""
        raise NotImplementedError

    # the feedback matrix ----------------------------------------------------------
    def feedback_matrix(self, layer):
        """``M`` (W's shape): ``A = magnitude * sign(W_t)``, normalised, masked."""
        W = layer.weight.data
        xp = get_array_module(W)
        A = self.magnitude(layer) * xp.sign(W)
        norm = self.options["norm"]
        if norm is not None:
            target = _fro(W) if norm == "sn" else layer.feedback_w0_norm
            A = A * (target / _fro(A))
        return masked(A, get_mask(layer, "feedback_mask"))

    def input_error(self, layer, delta, ctx):
        """``delta_in = delta @ M`` (conv: ``apply_transpose(delta, M)``)."""
        return layer.apply_transpose(delta, self.feedback_matrix(layer))

    def input_error_first(self, layer, delta) -> bool:
        return True  # M reads W's values; Batch Manhattan rewrites only the gradients

    def path_matrix(self, layer):
        return self.feedback_matrix(layer)

    # forward-learning options -----------------------------------------------------
    def feedback_grads(self, layer, delta, gW, ctx) -> None:
        if not self.options["batch_manhattan"]:
            return
        xp = get_array_module(delta)
        # new arrays: gW itself may be recorded by the metrics and must stay the true gradient
        if layer.weight.grad is not None:
            layer.weight.grad = xp.sign(layer.weight.grad)
        if layer.bias is not None and layer.bias.grad is not None:
            layer.bias.grad = xp.sign(layer.bias.grad)

    def after_step(self, layer) -> None:
        W = layer.weight.data
        # both in place: the optimizer keeps updating this array
        if self.options["fixed_sign"]:
            W *= get_array_module(W).sign(W) == layer.feedback_w0_sign
        if self.options["const"]:
            W *= layer.feedback_w0_norm / _fro(W)


class USF(SignConcordant):
    """Uniform sign-concordant feedback: ``A = s * sign(W_t)``, ``s = sqrt(2/(fan_in+fan_out))``.

    No state beyond ``W`` (plus the optional mask and ``feedback_w0_norm``). This is the
    "SF" of Li & Benna (2024).
    """

    name = "usf"

    def magnitude(self, layer):
        return math.sqrt(2.0 / (layer.fan_in + layer.fan_out))


class FRSF(SignConcordant):
    """Fixed random-magnitude sign-concordant feedback: ``A = |M0| * sign(W_t)``.

    State: buffer ``feedback_M0`` (W's shape, Xavier-uniform, drawn first, never changed).
    Its alignment must be measured with the signed ``M`` (:meth:`path_matrix`), not with
    ``|M0|`` (a BioTorch reporting bug that reads ~90 degrees by construction).
    """

    name = "frsf"

    def _attach_magnitude(self, layer, rng) -> None:
        M0 = xavier(rng, layer.weight_shape, layer.fan_in, layer.fan_out)
        layer.register_buffer("feedback_M0", self._host_to_layer(layer, M0))

    def magnitude(self, layer):
        xp = get_array_module(layer.feedback_M0)
        return xp.abs(layer.feedback_M0)


class BRSF(SignConcordant):
    """Batchwise random-magnitude sign-concordant feedback: ``A = |M_t| * sign(W_t)``.

    ``M_t = Xavier-uniform(default_rng([key0, key1, t]))``: a pure function of the
    layer's key (drawn from its feedback stream at attach) and the step counter
    ``t``, which :meth:`before_step` increments once per training step. State: buffers
    ``feedback_key`` (int64 (2,)) and ``feedback_draws`` (int64 0-d, = t), so a restored
    checkpoint continues the same sequence of draws. ``M_t`` is drawn on the host (CPU and
    GPU runs see the same draws) and cached per ``t`` in the layer's forward cache.
    """

    name = "brsf"

    def _attach_magnitude(self, layer, rng) -> None:
        # integer buffers live with the model like every buffer (moved by Module.to)
        layer.register_buffer("feedback_key", to_device(draw_key(rng), layer.device))
        layer.register_buffer("feedback_draws",
                              to_device(np.zeros((), dtype=np.int64), layer.device))

    def before_step(self, layer) -> None:
        increment(layer, "feedback_draws")

    def draw(self, layer, t: int):
        """``M_t`` on the layer's device (W's shape, layer dtype)."""
        M = xavier(stream(host_value(layer, "feedback_key"), t), layer.weight_shape,
                   layer.fan_in, layer.fan_out)
        return self._host_to_layer(layer, M)

    def magnitude(self, layer):
        # t and key from their host copies (no device read per step); the draw itself is
        # on the host, so on the GPU each step costs one host->device copy of M_t per layer
        # (W's size, asynchronous) and no synchronisation
        t = host_value(layer, "feedback_draws")
        cached = layer.cache.get("brsf_M")
        if cached is None or cached[0] != t:
            M = self.draw(layer, t)
            cached = layer.cache["brsf_M"] = (t, get_array_module(M).abs(M))
        return cached[1]
