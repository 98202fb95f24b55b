"""Elementwise operations and row-wise GEMMs over batch shards (NumPy, :mod:`.threads`).

Notation: x, y, dy, dx arrays whose first axis is the batch (n, ...), any memory layout;
shard k = x[a_k:a_{k+1}]. Outputs are allocated like the input (``empty_like`` keeps a
channels-last layout) and each shard writes its own rows::

    ReLU      y[k]  = max(x[k], 0),   mask[k] = x[k] > 0,   dx[k] = dy[k] * mask[k]
    GEMM      out[k] = A[k] @ B       (rows of A; :mod:`minigrad_pfa.functional.linear`
                                       shards the features: A = delta.T)
              out[:, k] = a @ B[:, k] (columns of B: B = W.T or M, C-ordered out)

Each equals its serial reference (:mod:`minigrad_pfa.functional.activation`,
:mod:`minigrad_pfa.functional.linear`) row for row.
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

