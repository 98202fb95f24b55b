"""Pooling maths: max pooling and global average pooling, channels-last internally.

Notation
--------
n : batch size, c : channels, h, w : input height/width, kh, kw : window size,
sh, sw : strides, ph, pw : paddings, oh = (h + 2 ph - kh) // sh + 1 (likewise ow).
x (n, c, h, w) any layout; 4-D results are channels-last (see :mod:`.conv`).

Max pooling (PyTorch's ``max_pool2d``, floor mode, padding with -inf)::

    y[n, c, oy, ox] = max_{i, j} xpad[n, c, oy*sh + i, ox*sw + j]
    k*[n, c, oy, ox] = first (i, j) in row-major order attaining the max
    dx = sum over (oy, ox) of dy[n, c, oy, ox] routed to tap k*  (overlapping windows add)

Global average pooling (``adaptive_avg_pool2d(x, 1)`` flattened)::

    y[n, c] = (1 / (h w)) sum_{y, x} x[n, c, y, x]        dx[n, c, y, x] = dy[n, c] / (h w)
"""
from __future__ import annotations

from ..backend import get_array_module
from .conv import (_check_4d, _pair, channels_last, conv_output_size, fold_windows,
                   pad_channels_last, window_slice)


def maxpool2d_forward(x, kernel, stride, padding):
    """Max pooling over kh x kw windows.

    Parameters
    ----------
    x : array (n, c, h, w), any layout
    kernel, stride, padding : int or (int, int)
        PyTorch's rule applies: padding at most half the window, so that every window
        holds at least one real input (the -inf padding can then only tie, never win).

    Returns
    -------
    y : array (n, c, oh, ow), channels-last, dtype of x
    cache : dict
        The arg-max tap index ``i*kw + j`` per output (int8 for windows of <= 127 taps)
        and the geometry, for :func:`maxpool2d_backward`. A window whose max is NaN
        outputs NaN and routes its gradient to its first tap.
    """
    _check_4d("maxpool2d_forward: x", x)
    xp = get_array_module(x)
    kh, kw = _pair(kernel, "kernel")
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    if 2 * padding[0] > kh or 2 * padding[1] > kw:
        raise ValueError(f"maxpool2d: padding {padding} must be at most half the kernel "
                         f"{(kh, kw)} (as in PyTorch)")
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, w, kh, kw, stride, padding)
    xpad = pad_channels_last(x.transpose(0, 2, 3, 1), padding, value=float("-inf"))
    taps = [xpad[window_slice(k // kw, k % kw, oh, ow, stride)] for k in range(kh * kw)]
    # running maximum (NaN-propagating like PyTorch); in-place ufuncs, no masked copies
    y = xp.array(taps[0], dtype=x.dtype, order="C")
    for v in taps[1:]:
        xp.maximum(y, v, out=y)
    # arg-max = the number of taps before the first one attaining y (PyTorch's first-max
    # rule on ties). ~(v < y) is (v == y) for numbers and True for NaN, so a NaN window
    # routes its gradient to its first tap.
    arg = xp.zeros(y.shape, dtype=xp.int8 if kh * kw <= 127 else xp.int32)
    found = xp.zeros(y.shape, dtype=bool)
    for v in taps[:-1]:
        found |= ~(v < y)
        arg += ~found
    cache = {"arg": arg, "x_shape": (n, c, h, w), "kernel": (kh, kw), "stride": stride,
             "padding": padding}
    return y.transpose(0, 3, 1, 2), cache


def maxpool2d_backward(dy, cache):
    """Route ``dy`` to each window's arg-max; overlapping windows accumulate.

    Parameters
    ----------
    dy : array (n, c, oh, ow), any layout
    cache : dict from :func:`maxpool2d_forward`

    Returns
    -------
    dx : array (n, c, h, w), channels-last, dtype of dy
    """
    _check_4d("maxpool2d_backward: dy", dy)
    xp = get_array_module(dy)
    arg = cache["arg"]
    n, c, h, w = cache["x_shape"]
    kh, kw = cache["kernel"]
    (ph, pw), stride = cache["padding"], cache["stride"]
    if dy.shape != (arg.shape[0], arg.shape[3], arg.shape[1], arg.shape[2]):
        raise ValueError(f"maxpool2d_backward: expected dy of shape "
                         f"{(n, c, arg.shape[1], arg.shape[2])}, got {tuple(dy.shape)}")
    dyl = dy.transpose(0, 2, 3, 1)
    zero = xp.zeros((), dtype=dy.dtype)
    # tap k's block carries dy where k won; fold_windows adds it at that tap's pixels
    return fold_windows(lambda i, j: xp.where(arg == i * kw + j, dyl, zero), (n, c, h, w),
                        (kh, kw), stride, (ph, pw), dy.dtype, xp)


def global_avgpool_forward(x):
    """``y[n, c] = mean over (h, w) of x[n, c]``; x (n, c, h, w) any layout -> (n, c)."""
    _check_4d("global_avgpool_forward: x", x)
    n, c, h, w = x.shape
    return channels_last(x).reshape(n, h * w, c).mean(axis=1)


def global_avgpool_backward(dy, x_shape):
    """``dx[n, c, y, x] = dy[n, c] / (h w)``; dy (n, c) -> (n, c, h, w) channels-last."""
    xp = get_array_module(dy)
    n, c, h, w = (int(s) for s in x_shape)
    if dy.shape != (n, c):
        raise ValueError(f"global_avgpool_backward: expected dy of shape {(n, c)}, "
                         f"got {tuple(dy.shape)}")
    dx = xp.empty((n, h, w, c), dtype=dy.dtype)
    dx[...] = (dy * (1.0 / (h * w)))[:, None, None, :]  # Python float keeps float32
    return dx.transpose(0, 3, 1, 2)
