"""Activation functions.

Notation
--------
x, y, dy, dx : arrays of one shape, e.g. (n, c) or (n, c, h, w), any memory layout.

    ReLU    y = max(x, 0)        dx = dy * [x > 0]

Outputs are elementwise ufunc results, which keep the memory layout of their inputs
(order 'K'), so channels-last activations stay channels-last.
"""
from __future__ import annotations

from ..backend import get_array_module
from ..cpu import elementwise as _cpu
from ..cpu.threads import is_sharded
from ..jit import activation as _jit_act
from ..jit import active as _jit_active
from .fused import kernels


def relu_forward(x):
    """``y = max(x, 0)``.

    Parameters
    ----------
    x : array, any shape and layout.

    Returns
    -------
    y : array like ``x`` (same shape, dtype and memory layout).
    cache : bool array like ``x``, the mask ``x > 0``.

    Notes
    -----
    The cache is a bool mask rather than ``y``: one byte per value instead of keeping a
    float array alive, and the backward pass is then a single multiply. Measured on
    (128, 16, 32, 32) float32 channels-last: forward + backward 2.7 ms with the mask,
    3.0 ms with ``dy * (y > 0)``.
    """
    xp = get_array_module(x)
    if _jit_active(xp):  # --cpu-kernels numba: one pass, where it applies
        out = _jit_act.relu_forward(x)
        if out is not None:
            return out
    if x.ndim and is_sharded(xp, x.shape[0], x.size):  # NumPy, several engine threads
        return _cpu.relu_forward(x)
    fused = kernels(xp)  # GPU: y and the mask in one kernel
    if fused is not None:
        return fused.relu(x)
    return xp.maximum(x, 0.0), x > 0


def relu_backward(dy, cache):
    """``dx = dy * [x > 0]`` (the subgradient 0 is taken at x = 0, as in PyTorch).

    Parameters
    ----------
    dy : array of the shape of the forward input.
    cache : the mask from :func:`relu_forward`.

    Returns
    -------
    dx : array like ``dy`` (float times bool keeps the dtype of ``dy``).
    """
    if dy.shape != cache.shape:
        raise ValueError(f"relu: expected dy of shape {tuple(cache.shape)}, got {tuple(dy.shape)}")
    xp = get_array_module(dy)
    if _jit_active(xp):  # --cpu-kernels numba: one pass, where it applies
        dx = _jit_act.relu_backward(dy, cache)
        if dx is not None:
            return dx
    if dy.ndim and is_sharded(xp, dy.shape[0], dy.size):
        return _cpu.relu_backward(dy, cache)
    return dy * cache

