"""Fully connected layer maths (row / batch form, PyTorch layout).

Notation
--------
n : batch size, in : input features, out : output features.
x (n, in), W (out, in), b (out,), y (n, out), delta = dL/dy (n, out).

    forward          y        = x @ W.T + b
    input error      delta_in = delta @ M         (M = W for BP; the rule chooses M)
    weight gradient  gW       = delta.T @ x       gb = delta.sum(0)
"""
from __future__ import annotations

from ..backend import get_array_module
from ..cpu import elementwise as _cpu
from ..cpu.threads import is_sharded


def _sharded(a) -> bool:
    """NumPy with several engine threads: row shards (:mod:`minigrad_pfa.cpu`)."""
    return a.ndim == 2 and is_sharded(get_array_module(a), a.shape[0])


def linear_forward(x, W, b=None):
    """``y = x @ W.T + b``; x (n, in), W (out, in), b (out,) or None -> y (n, out)."""
    y = _cpu.matmul_rows(x, W.T) if _sharded(x) else x @ W.T
    if b is not None:
        y += b
    return y


def linear_input_error(delta, M):
    """``delta_in = delta @ M``; delta (n, out'), M (out', in) -> (n, in)."""
    return _cpu.matmul_rows(delta, M) if _sharded(delta) else delta @ M


def linear_weight_grad(delta, x):
    """``gW = delta.T @ x``; delta (n, out'), x (n, in) -> (out', in)."""
    return _cpu.matmul_tn(delta, x) if _sharded(delta) else delta.T @ x


def linear_bias_grad(delta):
    """``gb = delta.sum(0)``; delta (n, out) -> (out,)."""
    return delta.sum(axis=0)
