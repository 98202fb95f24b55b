"""Training-mode batch norm in fixed blocks of the batch, shared among threads (NumPy,
:mod:`.threads`).

Notation as in :mod:`minigrad_pfa.functional.batchnorm`: F (g, r*c) the flat input (rows of
r positions x c channels), m = g*r values per channel, xc = F - mu, inv_std, k = gamma *
inv_std; block b holds rows [a_b, a_{b+1}) of every flat array (:func:`.threads.block_bounds`,
fixed by g and the work, never by the thread count).

    statistics   s   = sum_b colsum(F[b])        sq = sum_b colsum(xc[b] * xc[b])
                 mu  = s / m,  var = sq / m      (optional ``reduce`` adds them over ranks)
    forward      xc[b] = F[b] - mu               y[k] = xc[k] * (gamma * inv_std) + beta
    backward     dbeta = sum_b colsum(D[b])      dgamma = inv_std * sum_b colsum(D[b] * xc[b])
                 dx[k] = k * (D[k] - (xc[k] * (inv_std * dgamma / m) + dbeta / m))

The same equations as the serial reference (the one definition for CuPy and for a batch
too small to cut): the column sums are the partials of the blocks added in block order
(:func:`.threads.sum_blocks`), so they have the same bits on any number of threads; the
elementwise maps (y, dx) run in row shards (k), which cannot change a bit. ``colsum`` is
the reference's two-stage sum (rows first, then the r positions), applied per block.

Passes over memory per shard: forward 3 reads + 2 writes (sum; xc and its squares in one
task; the affine map), backward 2 reads (both sums in one task) + 1 write.
"""
from __future__ import annotations

import numpy as np

from ..functional import batchnorm as _ref  # the serial reference (check_count)
from .threads import block_bounds, map_shards, sum_blocks

#: BN's passes run as several short parallel regions with serial steps in between, so a
#: shard needs 4x the pool's smallest work (:mod:`.threads`, "Cost of a shard")
WORK_DIVISOR = 4


def work(F) -> int:
    """Elements of work of a training BN on the flat array ``F``, for the shard rule."""
    return F.size // WORK_DIVISOR


def _colsum(F, r, G=None):
    """Per-row-position column sums of one shard (length r*c, not yet folded over r)."""
    return F.sum(axis=0) if G is None else np.einsum("gl,gl->l", F, G)


def _fold(v, r):
    """(r*c,) position sums -> (c,) channel sums."""
    return v.reshape(r, -1).sum(axis=0)


def train_forward(F, r, gamma, beta, eps, reduce=None, shape=None):
    """Sharded training forward on a flat (g, r*c) array.

    Returns
    -------
    y, xc : (g, r*c) arrays
    mean, var, inv_std : (c,) batch statistics (of the global batch with ``reduce``)
    m : int, values per channel the statistics were taken over
    """
    g = F.shape[0]
    m = g * r
    blocks = block_bounds(g, work(F))
    s = _fold(sum_blocks(lambda run: [_colsum(F[b], r) for b in run], blocks), r)
    if reduce is not None:
        s = reduce(np.concatenate([s, np.full((1,), m, dtype=s.dtype)]))
        s, m = s[:-1], int(round(float(s[-1])))
    _ref.check_count(m, F.shape if shape is None else shape)
    mean = s / m
    mean_t = np.tile(mean, r)
    xc = np.empty_like(F)

    def center(run):  # xc = F - mu and its squared sums, block by block
        for b in run:
            np.subtract(F[b], mean_t, out=xc[b])
        return [_colsum(xc[b], r, xc[b]) for b in run]

    sq = _fold(sum_blocks(center, blocks), r)
    var = (sq if reduce is None else reduce(sq)) / m
    inv_std = 1.0 / np.sqrt(var + eps)
    scale_t, beta_t = np.tile(gamma * inv_std, r), np.tile(beta, r)
    y = np.empty_like(F)

    def affine(sl):
        np.multiply(xc[sl], scale_t, out=y[sl])
        y[sl] += beta_t

    map_shards(affine, g, elements=work(F))
    return y, xc, mean, var, inv_std, m


def train_backward(D, xc, r, inv_std, gamma, m, reduce=None):
    """Sharded training backward; returns ``dx`` (g, r*c), ``dgamma``, ``dbeta`` (c,).

    ``dgamma``, ``dbeta`` are this process's sums; with ``reduce`` the ``dx`` uses their
    sums over the ranks (as the reference does).
    """
    g = D.shape[0]
    sb_t, sg_t = sum_blocks(lambda run: [(_colsum(D[b], r), _colsum(D[b], r, xc[b]))
                                         for b in run], block_bounds(g, work(D)))
    dbeta = _fold(sb_t, r)
    dgamma = _fold(sg_t, r) * inv_std
    sb, sg = dbeta, dgamma
    if reduce is not None:
        both = reduce(np.concatenate([dbeta, dgamma]))
        sb, sg = both[:dbeta.shape[0]], both[dbeta.shape[0]:]
    a_t, b_t = np.tile(inv_std * sg / m, r), np.tile(sb / m, r)
    k_t = np.tile(gamma * inv_std, r)
    dx = np.empty_like(D)

    def rows(sl):  # dx = k * (D - (xc * a + b)), in one buffer
        out = dx[sl]
        np.multiply(xc[sl], a_t, out=out)
        out += b_t
        np.subtract(D[sl], out, out=out)
        out *= k_t

    map_shards(rows, g, elements=work(D))
    return dx, dgamma, dbeta
