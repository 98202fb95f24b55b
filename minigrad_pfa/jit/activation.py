"""ReLU forward and backward as one compiled pass each, in shards on the engine's threads.

Notation as in :mod:`minigrad_pfa.functional.activation`: x, y, dy, dx arrays of one shape
and layout, m the bool mask; per element, flat in memory order::

    forward    m = x > 0             y = x  if x > 0 or x is NaN, else +0
    backward   dx = dy  if m, else dy * 0

which are NumPy's ``maximum(x, 0)`` (NaN passes through; -0.0 becomes +0.0, the second
operand), ``x > 0`` and ``dy * m`` (a bool multiplies as 1 or 0, so dy * 0 keeps NaN and gives
the signed zero of dy's sign): the same bits (tests, with NaN, infinities and signed zeros).

Why: NumPy's forward is two passes (``maximum``, ``greater``) and two interpreter-lock turns
per shard; here one pass reads x once and writes y and m, without the lock. Arrays whose
memory is one dense block in any axis order (C-ordered, channels-last) are processed as flat
views in memory order (``ravel(order="K")`` is then a view, and ``empty_like`` gives the
outputs the same strides); anything else takes the NumPy path.

Cost per element: forward 1 read + 2 writes (NumPy: 2 reads + 2 writes), backward 2 reads +
1 write (the same as NumPy's, in one call per shard).
"""
from __future__ import annotations

import functools

import numpy as np

from ..cpu.threads import map_shards

#: dtypes with a compiled pass
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _forward_rows(x, y, m, zero, lo, hi):
    """y, m over flat elements lo .. hi-1 (sliced first: indices from 0 vectorise)."""
    x, y, m = x[lo:hi], y[lo:hi], m[lo:hi]
    for i in range(x.shape[0]):
        v = x[i]
        m[i] = v > 0
        y[i] = v if (v > 0 or v != v) else zero


def _backward_rows(d, m, dx, zero, lo, hi):
    """dx over flat elements lo .. hi-1."""
    d, m, dx = d[lo:hi], m[lo:hi], dx[lo:hi]
    for i in range(d.shape[0]):
        dx[i] = d[i] if m[i] else d[i] * zero


@functools.cache
def _kernels():
    """(forward, backward), compiled once per process (cached on disk by Numba)."""
    import numba

    jit = numba.njit(nogil=True, cache=True)
    return jit(_forward_rows), jit(_backward_rows)


def _flat(a):
    """``a``'s elements as a 1-D view in memory order, or None when they are not one dense
    block (``ravel(order="K")`` copied: its memory is new, so the cheap bounds test tells)."""
    if not a.size:
        return None
    f = a.ravel(order="K")
    return f if np.may_share_memory(f, a) else None


def _elements(strides, a) -> tuple:
    """Strides in elements of ``a`` (the memory order of its axes, whatever its dtype)."""
    return tuple(st // a.itemsize for st in strides)


def relu_forward(x):
    """``(max(x, 0), x > 0)``, outputs in the layout of ``x``; None (the caller takes NumPy's
    path) unless ``x`` is a non-empty float32 / float64 array in one dense block."""
    xf = _flat(x) if x.dtype in DTYPES else None
    if xf is None:
        return None
    fwd, _ = _kernels()
    y, m = np.empty_like(x), np.empty_like(x, dtype=bool)
    yf, mf = _flat(y), _flat(m)
    zero = x.dtype.type(0)
    map_shards(lambda sl: fwd(xf, yf, mf, zero, sl.start, sl.stop), xf.shape[0],
               elements=xf.shape[0])
    return y, m


def relu_backward(dy, mask):
    """``dy * mask`` for a ``dy`` as :func:`relu_forward` takes and a mask in the same memory
    order (else None: the caller takes NumPy's path)."""
    df = _flat(dy) if dy.dtype in DTYPES else None
    mf = _flat(mask) if df is not None and mask.dtype == np.bool_ else None
    if df is None or mf is None or _elements(dy.strides, dy) != _elements(mask.strides, mask):
        return None  # not one dense block each, or two memory orders
    _, bwd = _kernels()
    dx = np.empty_like(dy)
    xf = _flat(dx)
    zero = dy.dtype.type(0)
    map_shards(lambda sl: bwd(df, mf, xf, zero, sl.start, sl.stop), df.shape[0],
               elements=df.shape[0])
    return dx
