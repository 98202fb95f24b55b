"""Host-side draws of feedback arrays (Xavier, Haar-orthogonal, Bernoulli, stream keys).

Every feedback array (B, R, M0, D, masks, the keys of per-step streams) is drawn on the
host from the layer's own generator ``np.random.default_rng([seed, 1, layer_index])``
(see :func:`minigrad_pfa.rules.registry.attach_rules`), in a fixed order documented by
each rule's :meth:`attach`, then cast to the layer's dtype and moved to its device. The
forward weights come from a different stream (``default_rng([seed, 0])``), so a seed
gives the same forward initialisation under every rule.

Notation: ``fan_in``/``fan_out`` are PyTorch's (a kernel (oc, ic, kh, kw) has
``fan_in = ic*kh*kw`` and ``fan_out = oc*kh*kw``).
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy


def xavier(rng: np.random.Generator, shape, fan_in: int, fan_out: int,
           gain: float = 1.0) -> np.ndarray:
    """Xavier/Glorot-uniform host array ``U(-a, a)``, ``a = gain * sqrt(6 / (fan_in + fan_out))``.

    The same function (and hence the same stream consumption) as the forward weights'
    initialiser :func:`minigrad_pfa.nn.layers.xavier_uniform`; drawn in float64 and cast
    later by the rule (``Rule._host_to_layer``), so a float32 and a float64 model get
    the same feedback up to the cast.
    """
    # imported here: minigrad_pfa.nn imports minigrad_pfa.rules.base at import time
    from ..nn.layers import xavier_uniform
    return xavier_uniform(rng, shape, fan_in, fan_out, gain=gain, dtype=np.float64)


def haar_orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A Haar-distributed random orthogonal (n, n) matrix.

    ``Q, R_qr = qr(G)`` with ``G`` standard normal, then ``Q <- Q * sign(diag(R_qr))``: the
    sign fix makes the factorisation unique, without it ``Q`` is not Haar-distributed
    (Mezzadri 2007, arXiv:math-ph/0609050).
    """
    g = rng.standard_normal((n, n))
    q, r = np.linalg.qr(g)
    d = np.sign(np.diag(r))
    d[d == 0] = 1.0
    return q * d[None, :]


def bernoulli_mask(rng: np.random.Generator, shape, density: float) -> np.ndarray:
    """Boolean host mask with ``P(True) = density``: ``rng.random(shape) < density``."""
    return rng.random(shape) < density


def draw_key(rng: np.random.Generator) -> np.ndarray:
    """Two 62-bit integers that seed a per-step counter-based stream (int64 (2,))."""
    return rng.integers(0, 2 ** 62, size=2, dtype=np.int64)


def stream(key, counter: int) -> np.random.Generator:
    """The generator of step ``counter`` of the stream ``key``: a pure function of both,
    so a draw can be recomputed after a checkpoint restore without any stored RNG state."""
    k = to_numpy(key).astype(np.int64).tolist()  # (a 2-element copy if on the GPU)
    return np.random.default_rng([int(k[0]), int(k[1]), int(counter)])
