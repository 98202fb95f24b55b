"""The sum of two paths: a residual block's ``branch(x) + shortcut(x)`` and, backward, its
input error ``dbranch + dshort``.

Notation
--------
a, b, y : arrays of one shape (n, ...), the batch first, any memory layout::

    y = a + b

A ufunc sum: the result keeps the layout of its inputs (order 'K'), channels-last stays
channels-last. With several engine threads (:mod:`minigrad_pfa.cpu.threads`) and inputs of
one layout the sum runs in batch shards, each writing its rows (the same additions, so the
same bits); ResNet-20's first-stage sums are 8 MB per operand at batch 128, which one thread
otherwise streams while the other waits. Cost: 2 reads + 1 write per element either way.
"""
from __future__ import annotations

from ..backend import get_array_module
from ..cpu import elementwise as _cpu
from ..cpu.threads import is_sharded


def add(a, b):
    """``a + b``.

    Parameters
    ----------
    a, b : arrays of one shape (n, ...) and dtype (others: NumPy's broadcasting and
        promotion, serially).

    Returns
    -------
    y : array, ``a + b`` (a new array: neither input is written, since a layer's cache may
        hold one of them).
    """
    xp = get_array_module(a)
    if getattr(a, "ndim", 0) and is_sharded(xp, a.shape[0], a.size):
        y = _cpu.add(a, b)
        if y is not None:
            return y
    return a + b
