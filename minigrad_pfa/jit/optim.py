"""SGD's update chain as one compiled pass per parameter, in shards on Numba's threads.

Notation as in :mod:`minigrad_pfa.optim.sgd`: ``p`` parameter, ``g`` gradient, ``buf``
momentum buffer, ``lr``, ``lam`` (weight decay), ``mu`` (momentum), ``tau`` (dampening),
all flat (N,) arrays of one dtype and the scalars cast to it; per element i::

    d      = g[i]                      lam == 0
    d      = p[i] * lam + g[i]         otherwise (two roundings, as NumPy's two passes)
    buf[i] = d                         first step
    buf[i] = buf[i] * mu + c * d       otherwise, c = 1 - tau (the product skipped at tau = 0)
    d      = mu * buf[i] + d           Nesterov          (mu != 0)
    d      = buf[i]                    heavy ball        (mu != 0)
    p[i]   = p[i] - lr * d

Same numbers: every element gets the NumPy chain's operations (:meth:`minigrad_pfa.optim.
sgd.SGD._chain`) in its order and dtype, each rounded (Numba compiles without fast-math, so
no multiply-add is fused); tests compare the parameters and buffers bit for bit. The
elements are independent, so the shards do not change them.

Cost per element: 3 reads and 2 writes (NumPy's chain with momentum and weight decay: six
passes, 9 reads and 6 writes, on L2-sized pieces, :func:`minigrad_pfa.cpu.elementwise.
update_chunks`), in one region per parameter with S = :func:`.parallel.num_shards` shards.
"""
from __future__ import annotations

import functools

import numpy as np

from ..cpu.threads import shard_bounds
from . import parallel

#: dtypes with a compiled update
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _sgd_rows(p, g, buf, lr, lam, mu, c, decay, momentum, first, nesterov, damp, lo, hi):
    """The update of elements lo .. hi-1 (``buf`` ignored without ``momentum``). ``decay``
    and ``momentum`` say whether lam and mu are non-zero *as given* (a float that rounds to
    0 in float32 still takes its branch, as in NumPy's chain)."""
    # sliced first: an index counted from 0 is known to be non-negative, so the loop has no
    # negative-index wrap-around test and vectorises (range(lo, hi) ran 5x slower here)
    p, g = p[lo:hi], g[lo:hi]
    if momentum:
        buf = buf[lo:hi]
    for i in range(p.shape[0]):
        d = g[i]
        if decay:
            d = p[i] * lam + g[i]
        if momentum:
            if first:
                b = d
            elif damp:
                b = buf[i] * mu + c * d
            else:
                b = buf[i] * mu + d
            buf[i] = b
            d = mu * b + d if nesterov else b
        p[i] = p[i] - lr * d


@functools.cache
def _kernels():
    """(serial, driver), compiled once per process (cached on disk by Numba)."""
    import numba

    rows = numba.njit(nogil=True, cache=True)(_sgd_rows)

    @numba.njit(nogil=True, parallel=True, cache=True)
    def shards(p, g, buf, lr, lam, mu, c, decay, momentum, first, nesterov, damp, bounds):
        for k in numba.prange(bounds.shape[0] - 1):
            rows(p, g, buf, lr, lam, mu, c, decay, momentum, first, nesterov, damp,
                 bounds[k], bounds[k + 1])

    return rows, shards


def supports(*arrays) -> bool:
    """True when the arrays (None skipped) are C-contiguous, of one compiled dtype and size."""
    present = [a for a in arrays if a is not None]
    return (present[0].dtype in DTYPES and all(
        a.dtype == present[0].dtype and a.size == present[0].size and a.flags.c_contiguous
        for a in present))


def sgd_update(p, g, buf, lr, lam, mu, tau, first, nesterov) -> None:
    """One SGD step of a parameter, in place on ``p`` and ``buf`` (see the notation).

    Parameters
    ----------
    p, g : C-contiguous arrays of one shape and dtype (float32 / float64)
    buf : like ``p``, or None when mu == 0; written (filled on the first step)
    lr, lam, mu, tau : float
    first : bool, the parameter's first step (``buf`` is filled, not read)
    nesterov : bool
    """
    rows, shards = _kernels()
    t = p.dtype.type
    pf, gf = p.reshape(-1), g.reshape(-1)
    bf = pf[:0] if buf is None else buf.reshape(-1)  # an empty stand-in (mu == 0)
    lr, lam, mu, tau = float(lr), float(lam), float(mu), float(tau)
    args = (pf, gf, bf, t(lr), t(lam), t(mu), t(1.0 - tau), lam != 0.0, mu != 0.0, bool(first),
            bool(nesterov), tau != 0.0)
    n = pf.shape[0]
    s = parallel.num_shards(n, n)
    if s == 1:
        rows(*args, 0, n)
        return
    parallel.use_threads(s)
    shards(*args, parallel.bounds_array(shard_bounds(n, s)))
