"""Adam (coupled L2 weight decay) and AdamW (decoupled weight decay).

Notation (per parameter, elementwise; torch.optim.Adam / AdamW semantics)
--------------------------------------------------------------------------
``p`` parameter, ``g`` its gradient, ``lr`` learning rate, ``lam`` weight decay,
``b1, b2`` the betas, ``eps``, ``m``/``v`` the first/second moment estimates
(``exp_avg``/``exp_avg_sq``, zero before the first update) and ``t`` the parameter's own
update count (a parameter skipped in a step does not advance its ``t``)::

    Adam:   g = g + lam * p                       (L2, enters the moments)
    AdamW:  p = p * (1 - lr * lam)                (decoupled, Loshchilov & Hutter,
                                                   arXiv:1711.05101)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - (lr / (1 - b1**t)) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)

The update is elementwise-adaptive, hence not linear in the gradient: the cancellation
that makes KP and PFA align needs an explicit opt-in with these optimizers (AdamW keeps
KP exact, see the decay laws in the docs).
"""
from __future__ import annotations

import math
from typing import Iterable

from ..backend import get_array_module
from ..cpu.elementwise import update_chunks
from ..functional.fused import kernels
from .base import Optimizer, _nonneg, _number


class Adam(Optimizer):
    """Adam with coupled (L2) weight decay, like torch.optim.Adam (no AMSGrad).

    Parameters
    ----------
    named_params : iterable of (str, Parameter)
    lr : float
    betas : (float, float)
        ``(b1, b2)``, each in [0, 1).
    eps : float
        ``>= 0``, added to ``sqrt(v_hat)``.
    weight_decay : float
        ``lam >= 0``. Adam: ``lam * p`` is added to the gradient; AdamW: ``p`` is scaled by
        ``1 - lr * lam`` before the step.
    """

    name = "adam"
    is_linear_in_gradient = False
    decoupled_weight_decay = False
    array_slots = ("exp_avg", "exp_avg_sq")
    count_slots = ("step",)

    def __init__(self, named_params: Iterable, lr: float = 1e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        self.betas = betas
        self.eps = eps
        super().__init__(named_params, lr, weight_decay)

    def hyperparameters(self):
        hp = super().hyperparameters()
        hp.update(betas=self.betas, eps=self.eps)
        return hp

    def _validate(self) -> None:
        super()._validate()
        try:
            b1, b2 = self.betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {self.betas!r}") from None
        b1, b2 = _number("betas[0]", b1), _number("betas[1]", b2)
        for i, b in enumerate((b1, b2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {b!r}")
        self.betas = (b1, b2)
        self.eps = _nonneg("eps", self.eps)

    def _update(self, name, w, g, lr, wd):
        xp = get_array_module(w)
        b1, b2 = self.betas
        st = self.state[name]
        m = self._array_state(name, "exp_avg", w)
        v = self._array_state(name, "exp_avg_sq", w)
        if m is None:
            m = st["exp_avg"] = xp.zeros_like(w)
            v = st["exp_avg_sq"] = xp.zeros_like(w)
            st["step"] = 0
        st["step"] += 1
        t = st["step"]
        # bias corrections as Python floats, so float32 stays float32
        step_size = lr / (1.0 - b1 ** t)
        fused = kernels(xp)
        if fused is not None:  # GPU: decay, moments and update in one kernel (in place)
            decoupled = self.decoupled_weight_decay and wd != 0.0
            fused.adam(w, g, m, v, step_size, math.sqrt(1.0 - b2 ** t), self.eps, b1, b2,
                       0.0 if self.decoupled_weight_decay else wd,
                       1.0 - lr * wd if decoupled else 1.0)
            return
        # CPU: the chain below on L2-sized pieces (cpu.elementwise.update_chunks; same bits)
        for wq, gq, mq, vq in update_chunks(xp, w, g, m, v):
            self._chain(xp, wq, gq, mq, vq, lr, wd, step_size, math.sqrt(1.0 - b2 ** t))

    def _chain(self, xp, w, g, m, v, lr, wd, step_size, c2) -> None:
        """The update of the notation block on one piece (``c2 = sqrt(1 - b2**t)``)."""
        b1, b2 = self.betas
        if wd != 0.0:
            if self.decoupled_weight_decay:
                w *= 1.0 - lr * wd            # AdamW: p = p (1 - lr lam)
            else:
                g = g + wd * w                # Adam: L2 term in the gradient (new array)
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        gg = g * g
        gg *= 1.0 - b2
        v += gg
        denom = xp.sqrt(v, out=gg)            # reuse the g*g scratch
        denom /= c2
        denom += self.eps
        upd = xp.divide(m, denom, out=denom)  # m / (sqrt(v_hat) + eps)
        upd *= step_size
        w -= upd


class AdamW(Adam):
    """Adam with decoupled weight decay, like torch.optim.AdamW (default ``lam = 0.01``)."""

    name = "adamw"
    decoupled_weight_decay = True

    def __init__(self, named_params: Iterable, lr: float = 1e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(named_params, lr, betas, eps, weight_decay)
