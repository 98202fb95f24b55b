"""Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay.

Notation (per parameter, elementwise; torch.optim.SGD semantics)
-----------------------------------------------------------------
``p`` parameter, ``g`` its gradient, ``lr`` learning rate, ``lam`` weight decay,
``mu`` momentum, ``tau`` dampening, ``buf`` momentum buffer, ``t`` the parameter's update
count (1 on its first update)::

    d   = g + lam * p                          coupled (L2) weight decay
    buf = d                                    if t == 1 (no dampening on the first step)
    buf = mu * buf + (1 - tau) * d             otherwise
    d   = d + mu * buf   (Nesterov)   or   d = buf   (heavy ball)     [only if mu != 0]
    p   = p - lr * d

Every step is linear in the gradient stream, which is what KP and PFA need: the
data-driven parts of the updates of ``W`` and of the learned feedback cancel in their
mismatch ``D``, which then follows ``V <- mu V + lam D; D <- D - lr V`` whatever the data
(see the decay laws in the docs).
"""
from __future__ import annotations

from typing import Iterable

from ..backend import get_array_module
from ..cpu.elementwise import update_chunks
from ..functional.fused import kernels
from ..jit import active as _jit_active
from ..jit import optim as _jit_optim  # Numba is imported on first use
from .base import Optimizer, _nonneg, _number


class SGD(Optimizer):
    """SGD with optional (Nesterov) momentum and coupled weight decay, like torch.optim.SGD.

    Parameters
    ----------
    named_params : iterable of (str, Parameter)
    lr : float
        Learning rate.
    momentum : float
        ``mu >= 0``; 0 gives plain SGD and keeps no state.
    dampening : float
        ``tau`` in [0, 1]; scales the new gradient in the buffer after the first step.
    weight_decay : float
        ``lam >= 0``, added to the gradient as ``lam * p`` (L2), as in PyTorch.
    nesterov : bool
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0`` (as PyTorch).
    """

    name = "sgd"
    is_linear_in_gradient = True
    decoupled_weight_decay = False
    array_slots = ("momentum_buffer",)

    def __init__(self, named_params: Iterable, lr: float, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        self.momentum = momentum
        self.dampening = dampening
        self.nesterov = nesterov
        super().__init__(named_params, lr, weight_decay)

    def hyperparameters(self):
        hp = super().hyperparameters()
        hp.update(momentum=self.momentum, dampening=self.dampening, nesterov=self.nesterov)
        return hp

    def _validate(self) -> None:
        super()._validate()
        self.momentum = _nonneg("momentum", self.momentum)
        self.dampening = _number("dampening", self.dampening)
        if not 0.0 <= self.dampening <= 1.0:
            raise ValueError(f"dampening must be in [0, 1], got {self.dampening!r}")
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"nesterov must be True or False, got {self.nesterov!r}")
        if self.nesterov and (self.momentum <= 0.0 or self.dampening != 0.0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening == 0 "
                             f"(got momentum={self.momentum}, dampening={self.dampening})")

    def _update(self, name, w, g, lr, wd):
        xp = get_array_module(w)
        # Python floats, as step() does for lr and wd: a NumPy scalar set on the optimizer
        # after construction would promote the float32 chain to float64 (NEP 50)
        mu = float(self.momentum)
        fused = kernels(xp)
        buf = self._array_state(name, "momentum_buffer", w) if mu != 0.0 else None
        if fused is not None and buf is not None and self.dampening == 0.0:
            # GPU, after the first step: d, buf and p in one kernel (in place)
            (fused.sgd_nesterov if self.nesterov else fused.sgd)(w, g, buf, lr, wd, mu)
            return
        first = mu != 0.0 and buf is None
        if first:  # filled by the first update; stored only once it is whole
            buf = xp.empty_like(w)
        if _jit_active(xp) and _jit_optim.supports(w, g, buf):
            # --cpu-kernels numba: the chain in one compiled pass (jit.optim; same bits)
            _jit_optim.sgd_update(w, g, buf, lr, wd, mu, float(self.dampening), first,
                                    self.nesterov)
        else:
            # CPU: the chain below on L2-sized pieces (cpu.elementwise.update_chunks; same
            # bits)
            for wq, gq, bq in update_chunks(xp, w, g, buf):
                self._chain(xp, wq, gq, bq, first, lr, wd)
        if first:
            self.state[name]["momentum_buffer"] = buf

    def _chain(self, xp, w, g, buf, first: bool, lr: float, wd: float) -> None:
        """The update of the notation block on one piece (``buf``: None without momentum;
        ``first``: its first step, ``buf`` to be filled)."""
        mu, tau = float(self.momentum), float(self.dampening)
        # ``d`` is either the caller's gradient (never written to) or a scratch array
        # owned here, which may then be modified in place.
        if wd != 0.0:
            d = xp.multiply(w, wd)      # lam * p
            d += g                      # d = g + lam * p
            owned = True
        else:
            d, owned = g, False
        if mu != 0.0:
            if first:
                buf[...] = d            # buf = d (no dampening on the first step)
            else:
                buf *= mu
                buf += d if tau == 0.0 else (1.0 - tau) * d
            if self.nesterov:
                step_dir = mu * buf
                step_dir += d           # d + mu * buf
            else:
                step_dir = buf
            d, owned = step_dir, step_dir is not buf
        if owned:
            d *= lr
            w -= d
        else:
            w -= lr * d

