"""Fused elementwise kernels of the GPU path (``cupy.fuse``): one kernel per formula.

Notation (symbols of the modules they serve; every operand broadcasts elementwise)
-------------------------------------------------------------------------------
    relu        y = max(x, 0),  mask = [x > 0]                  activation.relu_forward
    bn_affine   y = xc * s + t                                  batchnorm, train forward
                (s = tile(gamma * inv_std), t = tile(beta): per-channel rows)
    bn_dx       dx = (D - (xc * a + b)) * k                     batchnorm, train backward
                (a = tile(inv_std * dgamma / m), b = tile(dbeta / m), k = tile(gamma * inv_std))
    sgd         buf <- mu * buf + (g + lam * p)                 optim.sgd, heavy ball,
                p   <- p - lr * buf                             dampening 0, after step 1
    sgd_nesterov d = g + lam * p;  buf <- mu * buf + d;         the same with Nesterov
                p  <- p - lr * (d + mu * buf)
    adam        p <- p * decay;  d = g + lam * p                optim.adam, Adam and AdamW
                m <- b1 * m + (1 - b1) * d                      (Adam: decay 1, lam the L2
                v <- b2 * v + (d * d) * (1 - b2)                 decay; AdamW: decay
                p <- p - m / (sqrt(v) / c2 + eps) * step         1 - lr * lam, lam 0;
                                                                 step = lr / (1 - b1**t),
                                                                 c2 = sqrt(1 - b2**t))

Why: on a GPU every ufunc is one kernel launch and one pass over memory, and these
formulas are memory-bound; CuPy compiles each function below into ONE kernel, reading
each operand once (e.g. the BN backward's dx: 4 passes and 2 temporaries -> 1 pass).
The optimizer kernels update ``buf`` and ``p`` in place (``cupy.fuse`` writes in-place
operations on its array arguments back).

Where: only when the array module is not NumPy (:func:`kernels` returns None for NumPy:
the CPU path keeps its own tuned in-place sequences, :mod:`minigrad_pfa.cpu`). The SAME
Python source runs on the CuPy stand-in, whose ``fuse`` runs it eagerly, so the tests
compare these bodies with the literal equations on the CPU. ``MINIGRAD_PFA_FUSED=0``
switches them off (the reference sequences run instead) if a CuPy version ever compiles
one wrongly; ``doctor --device cuda`` compares both against NumPy.
"""
from __future__ import annotations

import functools
import os
import types

#: environment switch: "0" runs the unfused reference sequences on the GPU too
FUSED_ENV = "MINIGRAD_PFA_FUSED"


def _bodies(xp):
    """The kernels' Python bodies, with ``xp``'s ufuncs (traced by ``xp.fuse``)."""

    def relu(x):
        return xp.maximum(x, 0), x > 0

    def bn_affine(xc, s, t):
        return xc * s + t

    def bn_dx(D, xc, a, b, k):
        return (D - (xc * a + b)) * k

    def sgd(p, g, buf, lr, lam, mu):
        buf *= mu
        buf += g + lam * p
        p -= lr * buf

    def sgd_nesterov(p, g, buf, lr, lam, mu):
        d = g + lam * p
        buf *= mu
        buf += d
        p -= lr * (d + mu * buf)

    def adam(p, g, m, v, step, c2, eps, b1, b2, lam, decay):
        # the operations in the order of optim.adam's reference sequence (same rounding)
        p *= decay
        d = g + lam * p
        m *= b1
        m += (1.0 - b1) * d
        v *= b2
        v += d * d * (1.0 - b2)
        p -= m / (xp.sqrt(v) / c2 + eps) * step

    return {"relu": relu, "bn_affine": bn_affine, "bn_dx": bn_dx, "sgd": sgd,
            "sgd_nesterov": sgd_nesterov, "adam": adam}


@functools.lru_cache(maxsize=None)
def _compiled(xp):
    return types.SimpleNamespace(**{name: xp.fuse(kernel_name=f"minigrad_{name}")(f)
                                    for name, f in _bodies(xp).items()})


def kernels(xp):
    """The fused kernels for array module ``xp``; None for NumPy or when switched off."""
    if xp.__name__ == "numpy" or os.environ.get(FUSED_ENV, "1") == "0":
        return None
    return _compiled(xp)
