"""Training-mode batch norm in compiled passes (Numba), shared among the engine's threads.

Notation as in :mod:`minigrad_pfa.functional.batchnorm`: F (g, L) the flat input, L = r*c,
column l = j*c + ch holds position j of channel ch; m = g*r values per channel; D the flat
output error; gamma, beta (c,). Block b holds rows [a_b, a_{b+1}) (:func:`block_bounds`,
fixed by g and the work, never by the thread count), n_b = (a_{b+1} - a_b) * r.

Statistics, one read of F. Each row i gives its per-channel mean and squared deviations
(its second pass runs on the row while it is in cache), merged into the block's
(n_b, mu_b, M2_b) row by row, then the blocks into the batch's in block order, with the
exact pairwise update of Chan, Golub & LeVeque (1979) (float64 throughout)::

    mu_i  = sum_j F[i, j*c + ch] / r          q_i = sum_j (F[i, j*c + ch] - mu_i)^2
    merge (n, mu, M2) with (n', mu', M2'):    d = mu' - mu,  N = n + n'
        mu <- mu + d * n' / N                 M2 <- M2 + M2' + d^2 * n * n' / N
    var = M2 / m                              (no E[x^2] - mu^2 cancellation)

Synchronised (``reduce`` sums over the ranks): S = reduce(mu * m, m) gives the global mean
mu_g, and M2 + m * (mu - mu_g)^2 is this rank's sum of squared deviations around mu_g,
reduced the same way: the reference's two reductions.

    forward     y  = (F - mu) * s + t                     s = gamma * inv_std, t = beta
                y  = relu((F - mu) * s + t [+ S])         a BN -> (residual S) -> ReLU tail,
                                                           mask = the ReLU's, same pass
    backward    dbeta = sum D       dgamma = inv_std * sum D * (F - mu)       (sums: blocks)
                dx = k * (D - ((F - mu) * a + b))         k = gamma * inv_std,
                                                           a = inv_std * dgamma / m, b = dbeta / m
                after a ReLU: D = D' * mask read in both passes (D' the ReLU's output error)

The cache keeps F (the layer's input, which nothing writes to afterwards) instead of
xc = F - mu, so the forward writes y alone.

Cost per element, in passes over memory: forward 2 reads + 1 write (NumPy path: 3 reads +
2 writes, plus the einsum's and the shift's temporaries); with the ReLU (and the residual)
in the output pass 2 (3) reads + 1 write + the one-byte mask (the operations one after the
other: 3 (5) reads + 2 (3) writes + the mask); backward 4 reads + 1 write (NumPy:
about 8 reads + 4 writes), after a ReLU the mask read twice more (one after the other: 5
reads + 2 writes + the mask). Arithmetic is in F's dtype (float32 SIMD stays float32), sums
accumulate in float64. Each pass is one call per shard or block without the GIL, so the
shard rule takes the element count itself (no divisor: one hand-off per region).
"""
from __future__ import annotations

import functools

import numpy as np

from ..cpu.threads import block_bounds, map_blocks, map_shards
from ..functional import batchnorm as _ref  # check_count


# Every loop runs over a (rows, r, c) view of its rows sliced first: indices counted from 0
# are known to be non-negative, so the loops carry no negative-index wrap-around test and
# the channel loop vectorises (F[i, j*c + ch] indexed from range(lo, hi) gave 1.2-1.6x
# NumPy's speed, this 1.8-2.0x: minigrad_pfa.jit's docstring).


def _row_moments(F, lo, hi, c):
    """(n, mu, M2) over rows [lo, hi) of F, float64 (c,) each: rows merged one by one."""
    r = F.shape[1] // c
    X = F[lo:hi].reshape(hi - lo, r, c)
    n = 0.0
    mu = np.zeros(c)
    M2 = np.zeros(c)
    mu_i = np.empty(c)
    q_i = np.empty(c)
    for i in range(X.shape[0]):
        mu_i[:] = 0.0
        for j in range(r):
            for ch in range(c):
                mu_i[ch] += X[i, j, ch]
        for ch in range(c):
            mu_i[ch] /= r
        q_i[:] = 0.0
        for j in range(r):
            for ch in range(c):
                d = X[i, j, ch] - mu_i[ch]
                q_i[ch] += d * d
        N = n + r
        for ch in range(c):
            d = mu_i[ch] - mu[ch]
            mu[ch] += d * (r / N)
            M2[ch] += q_i[ch] + d * d * (n * r / N)
        n = N
    return n, mu, M2


def _affine_rows(F, mu, s, t, y, lo, hi):
    """y[lo:hi] = (F[lo:hi] - mu) * s + t, per channel vectors of F's dtype."""
    c = mu.shape[0]
    r = F.shape[1] // c
    X = F[lo:hi].reshape(hi - lo, r, c)
    Y = y[lo:hi].reshape(hi - lo, r, c)
    for i in range(X.shape[0]):
        for j in range(r):
            for ch in range(c):
                Y[i, j, ch] = (X[i, j, ch] - mu[ch]) * s[ch] + t[ch]


def _affine_relu_rows(F, mu, s, t, S, y, mk, zero, lo, hi):
    """y[lo:hi] = relu((F[lo:hi] - mu) * s + t [+ S[lo:hi]]), mk = the ReLU's mask.

    ``S`` (the residual, flat like F) may be None: Numba compiles that case without the
    addition. Per element the same operations in the same order as the affine pass, the
    residual sum and :mod:`.activation`'s ReLU one after the other, so the same bits."""
    c = mu.shape[0]
    r = F.shape[1] // c
    X = F[lo:hi].reshape(hi - lo, r, c)
    if S is not None:
        Z = S[lo:hi].reshape(hi - lo, r, c)
    Y = y[lo:hi].reshape(hi - lo, r, c)
    M = mk[lo:hi].reshape(hi - lo, r, c)
    for i in range(X.shape[0]):
        for j in range(r):
            for ch in range(c):
                v = (X[i, j, ch] - mu[ch]) * s[ch] + t[ch]
                if S is not None:
                    v = v + Z[i, j, ch]
                M[i, j, ch] = v > 0
                Y[i, j, ch] = v if (v > 0 or v != v) else zero


def _error_sums(D, F, mu, mk, zero, lo, hi):
    """(sum D, sum D * (F - mu)) over rows [lo, hi), float64 (c,) each; with a ReLU mask
    ``mk`` (else None) D is first the ReLU's backward, D if mk else D * 0 (its bits)."""
    c = mu.shape[0]
    r = F.shape[1] // c
    X = F[lo:hi].reshape(hi - lo, r, c)
    E = D[lo:hi].reshape(hi - lo, r, c)
    if mk is not None:
        M = mk[lo:hi].reshape(hi - lo, r, c)
    sd = np.zeros(c)
    sdx = np.zeros(c)
    for i in range(X.shape[0]):
        for j in range(r):
            for ch in range(c):
                e = E[i, j, ch]
                if mk is not None:
                    e = e if M[i, j, ch] else e * zero
                sd[ch] += e
                sdx[ch] += e * (X[i, j, ch] - mu[ch])
    return sd, sdx


def _dx_rows(D, F, mu, a, b, k, mk, zero, dx, lo, hi):
    """dx[lo:hi] = k * (D - ((F - mu) * a + b)), per channel vectors of D's dtype; D masked
    as in :func:`_error_sums` when ``mk`` is not None."""
    c = mu.shape[0]
    r = F.shape[1] // c
    X = F[lo:hi].reshape(hi - lo, r, c)
    E = D[lo:hi].reshape(hi - lo, r, c)
    if mk is not None:
        M = mk[lo:hi].reshape(hi - lo, r, c)
    G = dx[lo:hi].reshape(hi - lo, r, c)
    for i in range(X.shape[0]):
        for j in range(r):
            for ch in range(c):
                e = E[i, j, ch]
                if mk is not None:
                    e = e if M[i, j, ch] else e * zero
                G[i, j, ch] = k[ch] * (e - ((X[i, j, ch] - mu[ch]) * a[ch] + b[ch]))


@functools.cache
def _kernels():
    """The loops compiled (once per process; Numba caches the machine code on disk)."""
    import numba

    jit = numba.njit(nogil=True, cache=True)
    return (jit(_row_moments), jit(_affine_rows), jit(_error_sums), jit(_dx_rows),
            jit(_affine_relu_rows))


def _merge(parts):
    """Chan's merge of the blocks' (n, mu, M2), in block order: the batch's (n, mu, M2)."""
    n, mu, M2 = parts[0]
    for n_b, mu_b, M2_b in parts[1:]:
        N = n + n_b
        d = mu_b - mu
        mu = mu + d * (n_b / N)
        M2 = M2 + M2_b + d * d * (n * n_b / N)
        n = N
    return n, mu, M2


def train_forward(F, r, gamma, beta, eps, reduce=None, shape=None, relu=False, add=None):
    """Training forward on a flat (g, r*c) array; with ``relu``, ``relu(y + add)`` instead.

    Parameters
    ----------
    relu : bool
        Apply the ReLU in the output pass (a BN -> ReLU pair, or a ResNet block's tail).
    add : (g, r*c) array like F, optional (only with ``relu``)
        The residual added before the ReLU.

    Returns
    -------
    y : (g, r*c) array, dtype of F.
    mean, var, inv_std : (c,) batch statistics, dtype of F (of the global batch with
        ``reduce``).
    m : int, values per channel the statistics were taken over.
    mask : (g, r*c) bool, the ReLU's ``y > 0`` before the ReLU (None without ``relu``).
    """
    moments, affine, _, _, affine_relu = _kernels()
    F = np.ascontiguousarray(F)  # the loops' row views (a copy only for a strided 2-D input)
    g, L = F.shape
    c = L // r
    dt = F.dtype
    n, mu, M2 = _merge(map_blocks(lambda run: [moments(F, b.start, b.stop, c) for b in run],
                                 block_bounds(g, F.size)))
    m = g * r
    if reduce is not None:
        S = reduce(np.concatenate([mu * m, [float(m)]]))
        m = int(round(float(S[-1])))
        mu_g = S[:-1] / m
        M2 = reduce(M2 + n * (mu - mu_g) ** 2)
        mu = mu_g
    _ref.check_count(m, F.shape if shape is None else shape)
    mean, var = mu.astype(dt), (M2 / m).astype(dt)
    inv_std = 1.0 / np.sqrt(var + dt.type(eps))
    s = gamma * inv_std
    y = np.empty_like(F)
    if not relu:
        map_shards(lambda sl: affine(F, mean, s, beta, y, sl.start, sl.stop), g,
                   elements=F.size)
        return y, mean, var, inv_std, m, None
    mask = np.empty(F.shape, np.bool_)
    S = None if add is None else np.ascontiguousarray(add)
    zero = dt.type(0)
    map_shards(lambda sl: affine_relu(F, mean, s, beta, S, y, mask, zero, sl.start, sl.stop),
               g, elements=F.size)
    return y, mean, var, inv_std, m, mask


def train_backward(D, F, mean, r, inv_std, gamma, m, reduce=None, mask=None):
    """Training backward; returns ``dx`` (g, r*c), ``dgamma``, ``dbeta`` (c,).

    ``F`` and ``mean`` are the forward's input and batch mean. ``dgamma``, ``dbeta`` are this
    process's sums; with ``reduce`` the ``dx`` uses their sums over the ranks. ``mask``
    (g, r*c) bool, optional: the error of a ReLU after the batch norm, D its output error
    (a ReLU -> BN backward in the passes of the BN's, no masked copy of D written).
    """
    _, _, sums, dx_rows, _ = _kernels()
    D, F = np.ascontiguousarray(D), np.ascontiguousarray(F)
    mk = None if mask is None else np.ascontiguousarray(mask)
    g = D.shape[0]
    dt = D.dtype
    zero = dt.type(0)
    parts = map_blocks(lambda run: [sums(D, F, mean, mk, zero, b.start, b.stop) for b in run],
                       block_bounds(g, D.size))
    sd, sdx = parts[0]
    for p, q in parts[1:]:
        sd, sdx = sd + p, sdx + q
    dbeta = sd.astype(dt)
    dgamma = sdx.astype(dt) * inv_std
    sb, sg = dbeta, dgamma
    if reduce is not None:
        both = reduce(np.concatenate([dbeta, dgamma]))
        sb, sg = both[:dbeta.shape[0]], both[dbeta.shape[0]:]
    a, b, k = inv_std * sg / m, sb / m, gamma * inv_std
    dx = np.empty_like(D)
    map_shards(lambda sl: dx_rows(D, F, mean, a, b, k, mk, zero, dx, sl.start, sl.stop), g,
               elements=D.size)
    return dx, dgamma, dbeta
