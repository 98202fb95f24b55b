"""Elementwise operations and row-wise GEMMs over batch shards (NumPy, :mod:`.threads`).

Notation: x, y, dy, dx arrays whose first axis is the batch (n, ...), any memory layout;
shard k = x[a_k:a_{k+1}]. Outputs are allocated like the input (``empty_like`` keeps a
channels-last layout) and each shard writes its own rows::

    ReLU      y[k]  = max(x[k], 0),   mask[k] = x[k] > 0,   dx[k] = dy[k] * mask[k]
    sum       y[k]  = a[k] + b[k]     (a residual block's two paths, forward and backward)
    GEMM      out[k] = A[k] @ B       (rows of A; :mod:`minigrad_pfa.functional.linear`
                                       shards the features: A = delta.T)
              out[:, k] = a @ B[:, k] (columns of B: B = W.T or M, C-ordered out)

Each equals its serial reference (:mod:`minigrad_pfa.functional.activation`,
:mod:`minigrad_pfa.functional.linear`) row for row.

Update chains (the optimizers): a chain of k in-place elementwise passes over parameter-
sized arrays (SGD with momentum and weight decay: 6; Adam: 11) runs on flat pieces of
:data:`UPDATE_CHUNK` elements (:func:`update_chunks`), so the chain's passes after the first
read a piece from the L2 cache instead of memory; every element gets the same operations
in the same order, so the bits do not change::

    for piece q:   chain(p[q], g[q], state[q])        (q: UPDATE_CHUNK consecutive elements)
"""
from __future__ import annotations

import numpy as np

from .threads import map_shards


def relu_forward(x):
    """``(max(x, 0), x > 0)`` by shards; outputs in the layout of ``x``."""
    y = np.empty_like(x)
    mask = np.empty_like(x, dtype=bool)

    def rows(sl):
        np.maximum(x[sl], 0.0, out=y[sl])
        np.greater(x[sl], 0.0, out=mask[sl])

    map_shards(rows, x.shape[0], elements=x.size)
    return y, mask


def relu_backward(dy, mask):
    """``dy * mask`` by shards."""
    dx = np.empty_like(dy)
    map_shards(lambda sl: np.multiply(dy[sl], mask[sl], out=dx[sl]), dy.shape[0],
               elements=dy.size)
    return dx


def add(a, b):
    """``a + b`` by shards for two arrays of one shape and one memory layout (strides), the
    result in that layout; None otherwise (the caller adds them serially: NumPy then picks
    the result's layout from both)."""
    if a.shape != b.shape or a.strides != b.strides or a.dtype != b.dtype:
        return None
    y = np.empty_like(a)
    map_shards(lambda sl: np.add(a[sl], b[sl], out=y[sl]), a.shape[0], elements=a.size)
    return y


def matmul_cols(a, B, elements=None):
    """``a @ B`` for 2-D ``a`` (n, k) and ``B`` (k, m), shards of B's columns, each written into
    its columns of one C-ordered (n, m) result (the serial product's orientation and layout;
    ``elements``: the GEMM's work, :func:`.threads.num_shards`)."""
    out = np.empty((a.shape[0], B.shape[1]), dtype=np.result_type(a, B))

    def cols(sl):
        out[:, sl] = a @ B[:, sl]

    map_shards(cols, B.shape[1], elements=elements, gemm_rows=1)
    return out


def matmul_rows(a, B, elements=None):
    """``a @ B`` for a 2-D ``a`` (n, k) of any layout, shards of its rows (``elements``: the
    GEMM's work, :func:`.threads.num_shards`); (n, m) C-contiguous."""
    out = np.empty((a.shape[0], B.shape[1]), dtype=np.result_type(a, B))
    map_shards(lambda sl: np.matmul(a[sl], B, out=out[sl]), a.shape[0], elements=elements)
    return out


#: elements per piece of an optimizer's update chain (:func:`update_chunks`): 256 KB per
#: float32 operand, so SGD's chain (parameter, gradient, buffer, one scratch: 1 MB) and
#: Adam's (up to seven arrays: 1.8 MB) stay within a 2 MB L2 (float64: twice that, the
#: larger L3 then). Measured on the MLP
#: 784-512-512-10's SGD step (momentum 0.9, weight decay, 670 K parameters, one thread,
#: Intel Xeon VM): 919 us whole, 697 / 597 / 523 / 499 / 509 us in pieces of 8 / 16 / 32 /
#: 64 / 128 Ki elements
UPDATE_CHUNK = 1 << 16


def update_chunks(xp, *arrays):
    """Matching pieces of ``arrays`` for an in-place update chain: a list of tuples.

    NumPy arrays that are all C-contiguous and of one size above :data:`UPDATE_CHUNK`:
    their flat views cut into pieces of :data:`UPDATE_CHUNK` elements (the last shorter),
    one tuple per piece (writes to a piece write the array). Otherwise (another array
    module, a strided array, a small parameter) the one tuple ``arrays``. ``None`` entries
    (absent state) stay None in every tuple.
    """
    present = [a for a in arrays if a is not None]
    n = present[0].size if present else 0
    if xp.__name__ != "numpy" or n <= UPDATE_CHUNK or \
            any(a.size != n or not a.flags.c_contiguous for a in present):
        return [arrays]
    flat = [None if a is None else a.reshape(-1) for a in arrays]
    return [tuple(None if f is None else f[i:i + UPDATE_CHUNK] for f in flat)
            for i in range(0, n, UPDATE_CHUNK)]
