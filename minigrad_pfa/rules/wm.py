"""Weight mirror, WM (Akrout et al. 2019, "Deep Learning without Weight Transport",
arXiv:1904.05391), in two variants: this engine's ``"ema"`` and Akrout et al.'s own
``"akrout"``.

Notation (row / batch form, PyTorch layouts)
--------------------------------------------
W (out, in) or (oc, ic, kh, kw); b (out,) the layer's bias (0 without one); B learned
feedback of W's shape; eta the mirror learning rate, lam the mirror decay, sigma the
Gaussian noise scale, a the uniform noise amplitude; n_m the mirror batch; N the number
of output positions of the noise batch (n_m for Linear, n_m*oh*ow for conv)::

    delta_in = delta @ B                       (conv: transposed conv with kernel B)

    variant "ema" (default; Linear and conv), after every optimizer step, ``mirror_steps`` times:
        xi   ~ N(0, sigma^2)                   (n_m, in)   conv: (n_m, ic, h, w)
        y    = xi @ W.T                        (n_m, out)  conv: conv(xi, W), W's stride/padding, no bias
        H    = (y.T @ xi) / n_m                conv: weight_grad of (xi, y), each tap (i, j)
                                               divided by n_m * (positions where it reads the image)
        B   <- (1 - eta*lam) * B + eta * H

    variant "akrout" (their reference code, an MLP: Linear only):
        B_0  ~ N(0, 1/(in + out))
        xi   = a * (U[0, 1) - 1/2)             (n_m, in)
        y    = sigmoid(xi @ W.T + b)           (n_m, out)
        B   <- (1 - eta*lam) * B + eta * (y.T @ xi)          (a batch *sum*; lam = 0 in their code)
        ``pretrain_steps`` (468 = 60000 // 128) mirror steps before B is first used,
        then ``mirror_steps`` (1) after every optimizer step.

"ema": ``E[H] = sigma^2 W`` exactly (conv too, thanks to the per-tap count), so ``B`` is an
exponential moving average that converges to ``(sigma^2 / lam) W``; the decay bounds
``||B||``. The estimate's relative noise is about ``sqrt(eta*lam*K / (2*N))`` with K =
W's fan_in, which sets the residual angle between ``B`` and ``W``.

"akrout": to first order in ``xi``, ``y = s(b) + s'(b) * (xi @ W.T)``, so
``E[y.T @ xi] = n_m * (a^2/12) * diag(s'(b)) @ W``: ``B`` grows without bound along
``diag(s'(b)) @ W`` (W's rows weighted by the sigmoid slope at the bias), plus the
zero-mean rank-one term ``s(b) (sum_k xi_k)^T`` whose accumulated size grows like the
square root of the step count: the angle to ``diag(s'(b)) @ W`` falls slowly, the norm
never settles. ``docs/rules.md`` ("WM: the engine's variant and Akrout et al.'s") lists
every difference; :mod:`minigrad_pfa.rules.wm_compare` measures them.

Conventions (choices, documented in docs/rules.md):

* "ema" defaults ``eta = 0.05``, ``lam = 1``, ``sigma = 1``, one mirror step per training
  step, no pre-training phase, ``n_m`` = the training batch size, B Xavier-uniform:
  ``B -> W`` in expectation (norm ratio 1) with a time constant of ``1/(eta*lam) = 20`` steps.
* "akrout" defaults are their code's: ``eta = 0.01``, ``lam = 0``, ``a = 0.1``,
  ``pretrain_steps = 468`` (their ``int(60000 / 128)``: one MNIST epoch of batches of 128),
  ``n_m`` = the training batch size. The pre-training phase runs at the layer's first
  backward pass (the first time the training batch size is known and before ``B`` is
  first used), with the initial ``W``, as theirs runs before the first SGD step. Their
  "prevent feedback weights growing too large" lines rebind a loop variable and change
  nothing; they are not reproduced. Conv layers are rejected (their code has none).
* Conv ("ema"): the Hebbian sum over positions is normalised per kernel tap by the number
  of positions at which that tap reads the image (``n_m*oh*ow`` away from borders), not by
  ``n_m`` alone: the fixed point ``(sigma^2/lam) W`` then depends neither on the image
  size nor on the zero padding (dividing every tap by ``n_m*oh*ow`` would shrink the
  border taps, by up to ~45% for a 3x3 kernel on a 4x4 grid, and bias the angle).
  The noise images have the layer's input size, read from its last forward pass.
* The noise is drawn on the host from a counter-based stream: step ``t`` of the layer's
  mirror uses ``default_rng([key0, key1, t])`` (pre-training steps included); ``key``
  (drawn once from the layer's feedback stream) and ``t`` are buffers, so runs are
  reproducible and checkpointable. Their code draws from NumPy's global stream; only the
  distribution is reproduced, not their numbers.

Cost per mirror step and layer: "ema" Linear ``4*n_m*out*in`` FLOPs (two matmuls);
"akrout" the same plus ``n_m*out`` sigmoids.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module, to_device
from ..functional import conv as F_conv
from .base import Rule
from .draw import draw_key, stream, xavier
from .hostcopy import host_value, increment
from .options import DescribedByOptions, check_choice, check_float, check_int

VARIANTS = ("ema", "akrout")

#: the effective default of every option left at None, per variant
VARIANT_DEFAULTS = {
    "ema": {"mirror_lr": 0.05, "mirror_decay": 1.0, "noise_std": 1.0,
            "noise_amplitude": None, "pretrain_steps": 0},
    "akrout": {"mirror_lr": 0.01, "mirror_decay": 0.0, "noise_std": None,
               "noise_amplitude": 0.1, "pretrain_steps": 468},
}


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


def akrout_hebbian(W, b, xi):
    """Akrout et al.'s mirror signal ``y.T @ xi`` with ``y = sigmoid(xi @ W.T + b)``.

    Parameters
    ----------
    W : array (out, in)
    b : array (out,) or None (treated as 0)
    xi : array (n, in)
        The noise batch, ``a * (U[0, 1) - 1/2)``.

    Returns
    -------
    array (out, in)
        Summed over the batch (not averaged), as their ``noise_x @ noise_y.T``.
    """
    xp = get_array_module(W)
    z = xi @ W.T
    if b is not None:
        z = z + b[None, :]
    y = 1.0 / (1.0 + xp.exp(-z))
    return y.T @ xi


class WM(DescribedByOptions, Rule):
    """Weight mirror: ``M = B``, ``B`` learned by a noise-driven Hebbian mirror phase.

    Parameters
    ----------
    mirror_lr : float > 0, optional
        ``eta``. Default 0.05 ("ema"), 0.01 ("akrout").
    mirror_decay : float >= 0, optional
        ``lam``; ``eta * lam`` must be < 1. Default 1.0 ("ema"), 0.0 ("akrout").
    noise_std : float > 0, optional
        ``sigma`` of the Gaussian noise, "ema" only. Default 1.0.
    mirror_steps : int >= 0
        Mirror steps after every training step (0 disables learning after the
        pre-training phase).
    mirror_batch : int >= 1 or None
        ``n_m``; None uses the batch size of the layer's last forward pass.
    variant : {"ema", "akrout"}
        The engine's mirror or Akrout et al.'s (module docstring).
    noise_amplitude : float > 0, optional
        ``a`` of the uniform noise ``a * (U[0, 1) - 1/2)``, "akrout" only. Default 0.1.
    pretrain_steps : int >= 0, optional
        Mirror steps run once, at the layer's first backward pass, before ``B`` is first
        used. Default 0 ("ema"), 468 ("akrout").

    State on the layer: buffers ``feedback_B`` (W's shape; Xavier-uniform ("ema") or
    ``N(0, 1/(fan_in + fan_out))`` ("akrout") at init), ``feedback_key`` (int64 (2,)) and
    ``feedback_mirror_count`` (int64, mirror steps so far, pre-training included). Host
    draw order: ``B``, then the key. ``B`` is not a Parameter: the optimizer never
    touches it.
    """

    name = "wm"
    #: effective defaults of the options whose signature default is None (``minigrad-pfa rules``)
    option_notes = {k: " / ".join(f"{VARIANT_DEFAULTS[v][k]!r} ({v})" for v in VARIANTS
                                  if VARIANT_DEFAULTS[v][k] is not None)
                    for k in VARIANT_DEFAULTS["ema"]}

    def __init__(self, mirror_lr=None, mirror_decay=None, noise_std=None,
                 mirror_steps: int = 1, mirror_batch=None, variant: str = "ema",
                 noise_amplitude=None, pretrain_steps=None):
        n = self.name
        variant = check_choice(n, "variant", variant, VARIANTS)
        wrong = {"ema": ("noise_amplitude", noise_amplitude),
                 "akrout": ("noise_std", noise_std)}[variant]
        if wrong[1] is not None:
            other = "noise_amplitude" if variant == "akrout" else "noise_std"
            raise ValueError(f"wm: option {wrong[0]!r} belongs to the other variant; "
                             f"variant={variant!r} takes {other!r}")
        given = {"mirror_lr": mirror_lr, "mirror_decay": mirror_decay,
                 "noise_std": noise_std, "noise_amplitude": noise_amplitude,
                 "pretrain_steps": pretrain_steps}
        eff = {k: VARIANT_DEFAULTS[variant][k] if v is None else v for k, v in given.items()}
        noise_key = "noise_std" if variant == "ema" else "noise_amplitude"
        self.options = {
            "mirror_lr": check_float(n, "mirror_lr", eff["mirror_lr"], strict=True),
            "mirror_decay": check_float(n, "mirror_decay", eff["mirror_decay"]),
            "noise_std": None, "mirror_steps": check_int(n, "mirror_steps", mirror_steps, 0),
            "mirror_batch": (None if mirror_batch is None else
                             check_int(n, "mirror_batch", mirror_batch, 1)),
            "variant": variant, "noise_amplitude": None,
            "pretrain_steps": check_int(n, "pretrain_steps", eff["pretrain_steps"], 0)}
        self.options[noise_key] = check_float(n, noise_key, eff[noise_key], strict=True)
        if self.options["mirror_lr"] * self.options["mirror_decay"] >= 1.0:
            raise ValueError("wm: mirror_lr * mirror_decay must be < 1 (B <- (1 - eta*lam) B "
                             f"+ eta H), got {self.options['mirror_lr']} * "
                             f"{self.options['mirror_decay']}")
        self._input_shape = None  # of the layer's last backward (derived, not state)

    def effective_defaults(self) -> dict:
        """The defaults ``describe()`` compares against: those of this instance's variant."""
        d = dict(super().effective_defaults())
        d.update(VARIANT_DEFAULTS[self.options["variant"]])
        return d

    @property
    def akrout(self) -> bool:
        return self.options["variant"] == "akrout"

    def attach(self, layer, rng) -> None:
        if self.akrout:
            if len(layer.weight_shape) != 2:
                raise ValueError(
                    f"wm variant 'akrout' on {layer.qualname or 'a conv layer'}: Akrout et "
                    "al.'s mirror is defined for Linear layers only (their reference code "
                    "is an MLP); use variant 'ema' for conv layers, e.g. with a per-layer "
                    "map {'layers': {'conv*': {'name': 'wm'}}}")
            B = rng.standard_normal(layer.weight_shape) * np.sqrt(
                1.0 / (layer.fan_in + layer.fan_out))
        else:
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
        # the pre-training phase, once, before input_error first uses B (a restored
        # checkpoint's count already covers it)
        while host_value(layer, "feedback_mirror_count") < self.options["pretrain_steps"]:
            self.mirror_step(layer)

    def after_step(self, layer) -> None:
        for _ in range(self.options["mirror_steps"]):
            self.mirror_step(layer)

    def noise(self, layer, t: int):
        """``xi`` of mirror step ``t`` (layer dtype and device; conv: channels-last).

        "ema": ``sigma * N(0, 1)``; "akrout": ``a * (U[0, 1) - 1/2)``.
        """
        if self._input_shape is None:
            raise ValueError(f"wm ({layer.qualname}): the mirror needs the layer's input "
                             "shape; run a forward and backward pass before after_step")
        n = self.options["mirror_batch"] or self._input_shape[0]
        rest = self._input_shape[1:]
        shape = (n,) + tuple(rest[1:]) + (rest[0],) if len(rest) == 3 else (n,) + rest
        g = stream(host_value(layer, "feedback_key"), t)
        if self.akrout:
            xi = g.random(shape, dtype=layer.dtype)
            xi -= 0.5
            xi *= self.options["noise_amplitude"]
        else:
            xi = g.standard_normal(shape, dtype=layer.dtype)
            xi *= self.options["noise_std"]
        xi = to_device(xi, layer.device)
        return xi.transpose(0, 3, 1, 2) if xi.ndim == 4 else xi

    def mirror_step(self, layer) -> None:
        """One mirror update ``B <- (1 - eta*lam) B + eta * H`` (in place); "akrout":
        ``H = y.T @ xi`` summed over the batch (:func:`akrout_hebbian`)."""
        # host copies of the counter and key: no device read per mirror step
        t = increment(layer, "feedback_mirror_count")
        xi = self.noise(layer, t)
        if self.akrout:
            bias = None if layer.bias is None else layer.bias.data
            H = akrout_hebbian(layer.weight.data, bias, xi)
        else:
            H = hebbian(layer, xi)
        eta, lam = self.options["mirror_lr"], self.options["mirror_decay"]
        B = layer.feedback_B
        B *= 1.0 - eta * lam
        H *= eta
        B += H
