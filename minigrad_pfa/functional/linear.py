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


def linear_forward(x, W, b=None):
    """``y = x @ W.T + b``; x (n, in), W (out, in), b (out,) or None -> y (n, out)."""
    y = x @ W.T
    if b is not None:
        y += b
    return y


def linear_input_error(delta, M):
    """``delta_in = delta @ M``; delta (n, out'), M (out', in) -> (n, in)."""
    return delta @ M


def linear_weight_grad(delta, x):
    """``gW = delta.T @ x``; delta (n, out'), x (n, in) -> (out', in)."""
    return delta.T @ x


def linear_bias_grad(delta):
    """``gb = delta.sum(0)``; delta (n, out) -> (out,)."""
    return delta.sum(axis=0)
