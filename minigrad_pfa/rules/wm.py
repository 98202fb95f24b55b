"""Weight mirror, WM (Akrout et al. 2019, "Deep Learning without Weight Transport",
arXiv:1904.05391).

Notation (row / batch form, PyTorch layouts)
--------------------------------------------
W (out, in) or (oc, ic, kh, kw); B learned feedback of W's shape; eta the mirror learning
rate, lam the mirror decay, sigma the noise scale; n_m the mirror batch; N the number of
output positions of the noise batch (n_m for Linear, n_m*oh*ow for conv)::

    delta_in = delta @ B                       (conv: transposed conv with kernel B)

    mirror step (after every optimizer step, ``mirror_steps`` times):
        xi   ~ N(0, sigma^2)                   (n_m, in)   conv: (n_m, ic, h, w)
        y    = xi @ W.T                        (n_m, out)  conv: conv(xi, W), W's stride/padding, no bias
        H    = (y.T @ xi) / n_m                conv: weight_grad of (xi, y), each tap (i, j)
                                               divided by n_m * (positions where it reads the image)
        B   <- (1 - eta*lam) * B + eta * H

``E[H] = sigma^2 W`` exactly (conv too, thanks to the per-tap count), so ``B`` is an
exponential moving average that converges to ``(sigma^2 / lam) W``; the decay bounds
``||B||``. The estimate's relative noise is about ``sqrt(eta*lam*K / (2*N))`` with K =
W's fan_in, which sets the residual angle between ``B`` and ``W``.

Conventions (choices, documented in docs/rules.md):

* Defaults ``eta = 0.05``, ``lam = 1``, ``sigma = 1``, one mirror step per training step,
  ``n_m`` = the training batch size: ``B -> W`` in expectation (norm ratio 1) with a time
  constant of ``1/(eta*lam) = 20`` steps.
* Conv: the Hebbian sum over positions is normalised per kernel tap by the number of
  positions at which that tap reads the image (``n_m*oh*ow`` away from borders), not by
  ``n_m`` alone: the fixed point ``(sigma^2/lam) W`` then depends neither on the image
  size nor on the zero padding (dividing every tap by ``n_m*oh*ow`` would shrink the
  border taps, by up to ~45% for a 3x3 kernel on a 4x4 grid, and bias the angle).
  The noise images have the layer's input size, read from its last forward pass.
* The noise is drawn on the host from a counter-based stream: step ``t`` of the layer's
  mirror uses ``default_rng([key0, key1, t])``; ``key`` (drawn once from the layer's
  feedback stream) and ``t`` are buffers, so runs are reproducible and checkpointable.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_device
from ..functional import conv as F_conv
from .base import Rule
from .draw import draw_key, stream, xavier
from .hostcopy import host_value, increment
from .options import DescribedByOptions, check_float, check_int


def tap_counts(size: int, k: int, stride: int, pad: int, out: int) -> np.ndarray:
    """For each kernel offset ``i < k``: the number of output positions ``o < out`` whose
    tap ``i`` reads a real input pixel, ``0 <= o*stride + i - pad < size`` (not padding)."""
    o = np.arange(out)[:, None] * stride + np.arange(k)[None, :] - pad
    return ((o >= 0) & (o < size)).sum(axis=0)


def hebbian(layer, xi):
    """``H = y.T @ xi / n`` with ``y = op(xi, W)`` (no bias), W's shape.

    Linear: ``y = xi @ W.T`` and ``H = y.T @ xi / n``. Conv: ``y = conv(xi, W)`` with the
    layer's stride and padding, ``G`` = the conv weight gradient of (xi, y), and
    ``H[:, :, i, j] = G[:, :, i, j] / (n * cnt_h[i] * cnt_w[j])`` where ``cnt_h[i]``
    (:func:`tap_counts`) counts the output rows whose tap ``i`` reads the image rather
    than the zero padding: then ``E[H] = sigma^2 W`` exactly, for any image size.
    Computed with the pure functions, never with the layer's ``forward`` (whose cache
    holds the training batch).
    """
    W = layer.weight.data
    if W.ndim == 2:
        y = xi @ W.T
        return (y.T @ xi) / float(xi.shape[0])
    y, cache = F_conv.conv2d_forward(xi, W, None, layer.stride, layer.padding)
    G = F_conv.conv2d_weight_grad(y, cache)
    (n, _, h, w), (oh, ow) = xi.shape, y.shape[2:]
    kh, kw = W.shape[2:]
    cnt = np.outer(tap_counts(h, kh, layer.stride[0], layer.padding[0], oh),
                   tap_counts(w, kw, layer.stride[1], layer.padding[1], ow)) * n
    # a tap that only ever reads padding gets no signal (G is 0 there): avoid 0/0
    scale = 1.0 / np.maximum(cnt, 1).astype(np.float64)
    return G * to_device(scale.astype(G.dtype), layer.device)


class WM(DescribedByOptions, Rule):
    """Weight mirror: ``M = B``, ``B`` learned by a noise-driven Hebbian mirror phase.

    Parameters
    ----------
    mirror_lr : float > 0
        ``eta``.
    mirror_decay : float >= 0
        ``lam``; ``eta * lam`` must be < 1.
    noise_std : float > 0
        ``sigma``.
    mirror_steps : int >= 0
        Mirror steps after every training step (0 disables learning: B stays random, FA).
    mirror_batch : int >= 1 or None
        ``n_m``; None uses the batch size of the layer's last forward pass.

    State on the layer: buffers ``feedback_B`` (W's shape, Xavier-uniform at init),
    ``feedback_key`` (int64 (2,)) and ``feedback_mirror_count`` (int64, mirror steps so
    far). Host draw order: ``B``, then the key. ``B`` is not a Parameter: the optimizer
    never touches it.
    """

    name = "wm"

    def __init__(self, mirror_lr: float = 0.05, mirror_decay: float = 1.0,
                 noise_std: float = 1.0, mirror_steps: int = 1, mirror_batch=None):
        n = self.name
        self.options = {"mirror_lr": check_float(n, "mirror_lr", mirror_lr, strict=True),
                        "mirror_decay": check_float(n, "mirror_decay", mirror_decay),
                        "noise_std": check_float(n, "noise_std", noise_std, strict=True),
                        "mirror_steps": check_int(n, "mirror_steps", mirror_steps, 0),
                        "mirror_batch": (None if mirror_batch is None else
                                         check_int(n, "mirror_batch", mirror_batch, 1))}
        if self.options["mirror_lr"] * self.options["mirror_decay"] >= 1.0:
            raise ValueError("wm: mirror_lr * mirror_decay must be < 1 (B <- (1 - eta*lam) B "
                             f"+ eta H), got {mirror_lr} * {mirror_decay}")
        self._input_shape = None  # of the layer's last backward (derived, not state)

    def attach(self, layer, rng) -> None:
        B = xavier(rng, layer.weight_shape, layer.fan_in, layer.fan_out)
        layer.register_buffer("feedback_B", self._host_to_layer(layer, B))
        layer.register_buffer("feedback_key", to_device(draw_key(rng), layer.device))
        layer.register_buffer("feedback_mirror_count",
                              to_device(np.zeros((), dtype=np.int64), layer.device))

    def input_error(self, layer, delta, ctx):
        """``delta_in = delta @ B`` (conv: ``apply_transpose(delta, B)``)."""
        return layer.apply_transpose(delta, layer.feedback_B)

    def path_matrix(self, layer):
        return layer.feedback_B

    def feedback_grads(self, layer, delta, gW, ctx) -> None:
        # remember the input shape of the training batch: the mirror's noise copies it
        cache = layer.cache
        self._input_shape = tuple(cache["x_shape"] if "x_shape" in cache
                                  else cache["x"].shape)

    def after_step(self, layer) -> None:
        for _ in range(self.options["mirror_steps"]):
            self.mirror_step(layer)

    def noise(self, layer, t: int):
        """``xi`` of mirror step ``t`` (layer dtype and device; conv: channels-last)."""
        if self._input_shape is None:
            raise ValueError(f"wm ({layer.qualname}): the mirror needs the layer's input "
                             "shape; run a forward and backward pass before after_step")
        n = self.options["mirror_batch"] or self._input_shape[0]
        rest = self._input_shape[1:]
        shape = (n,) + tuple(rest[1:]) + (rest[0],) if len(rest) == 3 else (n,) + rest
        xi = stream(host_value(layer, "feedback_key"), t).standard_normal(shape, dtype=layer.dtype)
        xi *= self.options["noise_std"]
        xi = to_device(xi, layer.device)
        return xi.transpose(0, 3, 1, 2) if xi.ndim == 4 else xi

    def mirror_step(self, layer) -> None:
        """One mirror update ``B <- (1 - eta*lam) B + eta * H`` (in place)."""
        # host copies of the counter and key: no device read per mirror step
        t = increment(layer, "feedback_mirror_count")
        H = hebbian(layer, self.noise(layer, t))
        eta, lam = self.options["mirror_lr"], self.options["mirror_decay"]
        B = layer.feedback_B
        B *= 1.0 - eta * lam
        H *= eta
        B += H
