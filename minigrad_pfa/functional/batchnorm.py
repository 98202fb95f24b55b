"""Batch normalisation maths (Ioffe & Szegedy 2015, arXiv:1502.03167), PyTorch conventions.

Notation
--------
n : batch size, c : channels, h, w : spatial size (absent for 2-D inputs).
m = n*h*w (or n) : number of values per channel the statistics are taken over.
x (n, c) or (n, c, h, w), gamma, beta, running_mean, running_var (c,).
mu, var : batch mean and *biased* batch variance per channel.
inv_std = 1 / sqrt(var + eps), xc = x - mu, xhat = xc * inv_std.

    forward (train)   y = gamma * xhat + beta
    running stats     running_mean <- (1 - momentum) * running_mean + momentum * mu
                      running_var  <- (1 - momentum) * running_var  + momentum * var * m / (m - 1)
    forward (eval)    y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta
    backward          dbeta  = sum(dy)            dgamma = sum(dy * xhat)   (sums over n, h, w)
                      train: dx = gamma * inv_std / m * (m * dy - dbeta - xhat * dgamma)
                      eval:  dx = gamma * inv_std * dy      (the statistics are constants)

Like PyTorch, the running variance takes the *unbiased* estimate while the normalisation
uses the biased one; eps = 1e-5 and momentum = 0.1 are the layer defaults.

Layout: every array is handled as a 2-D "flat" array F (g, r*c) whose rows hold r
consecutive positions of c channels, so channel j is every c-th column (see :func:`_flat`).
4-D arrays use their channels-last buffer, (n, h*w*c): a free view for channels-last memory
(the engine's internal layout), one copy otherwise; 4-D outputs are channels-last. 2-D arrays
are used as they are (r = 1), in any memory layout. Per-channel vectors are tiled r times to
match the rows (:func:`_tile`).

Why flat rows: NumPy broadcasts a (c,) vector over an (m, c) array with an inner loop only c
long; with rows of r*c values the same elementwise ops run 3-4x faster (0.55 ms instead of
1.5 ms on (128, 16, 32, 32) float32), and column sums are plain fast axis-0 reductions.

Precision: statistics are accumulated in the input dtype (float32 stays float32; no float64
array is created). :func:`_channel_sum` adds over the g rows first and the r positions after,
two short float32 accumulations instead of one of length m (see there).

Where the training passes run: NumPy arrays with enough work go to the batch-sharded
:mod:`minigrad_pfa.cpu.batchnorm` (same equations, same bits on any thread count); with
``--cpu-kernels numba`` every NumPy training batch norm goes to the compiled passes of
:mod:`minigrad_pfa.jit.batchnorm` instead (float64 sums, one read of x for the statistics;
equal to this module to float32 / float64 rounding, tests/test_jit.py).
"""
from __future__ import annotations

from ..backend import get_array_module
from ..cpu import batchnorm as _cpu_bn
from ..cpu.threads import is_blocked
from ..jit import active as _jit_active
from . import activation as F_act
from . import elementwise as F_ew
from .fused import kernels

_FLOAT_DTYPES = ("float32", "float64")


def _flat(a):
    """Return ``(F, r)``: ``a`` as a (g, r*c) array of rows of r positions x c channels.

    (n, c) -> ``(a, 1)`` unchanged (any layout). (n, c, h, w) -> (n, h*w*c) view of the
    channels-last buffer ``a.transpose(0, 2, 3, 1)`` (made contiguous first if it is not),
    with r = h*w.
    """
    if a.ndim == 2:
        return a, 1
    xp = get_array_module(a)
    n, c, h, w = a.shape
    return xp.ascontiguousarray(a.transpose(0, 2, 3, 1)).reshape(n, h * w * c), h * w


def _unflat(F, shape):
    """Inverse of :func:`_flat`: (n, h*w*c) -> (n, c, h, w) channels-last view; 2-D unchanged."""
    if len(shape) == 2:
        return F
    n, c, h, w = shape
    return F.reshape(n, h, w, c).transpose(0, 3, 1, 2)


def _tile(v, r):
    """(c,) per-channel vector -> (r*c,) matching a row of a flat array."""
    if r == 1:
        return v
    return get_array_module(v).tile(v, r)


def _channel_sum(F, r, G=None):
    """Per-channel sum of the flat array ``F`` (or of the product ``F * G``).

    Parameters
    ----------
    F, G : (g, r*c) flat arrays from :func:`_flat`.
    r : int, positions per row.

    Returns
    -------
    (c,) array, dtype of the inputs.

    Notes
    -----
    Sums over the g rows first (``einsum`` forms the product without a temporary), then
    over the r positions. Two float32 accumulations of lengths g and r instead of one of
    length m = g*r: on (128, 16, 32, 32) the relative error against a float64 sum drops
    from ~1e-5 (a plain (m, c).sum(axis=0)) to ~1e-6, without any float64 array.
    """
    if G is None:
        partial = F.sum(axis=0)
    else:
        partial = get_array_module(F).einsum("gl,gl->l", F, G)
    return partial.reshape(r, -1).sum(axis=0)


def _check_vector(name, v, c, dtype):
    if v.shape != (c,) or v.dtype != dtype:
        raise ValueError(f"batchnorm: expected {name} of shape ({c},) and dtype {dtype}, "
                         f"got shape {tuple(v.shape)} and dtype {v.dtype}")


def _train_forward(F, r, gamma, beta, eps, reduce, shape):
    """Training statistics and output of the flat ``F``: (y, xc, mean, var, inv_std, m)."""
    xp = get_array_module(F)
    m = F.shape[0] * r
    s = _channel_sum(F, r)
    if reduce is not None:
        s = reduce(xp.concatenate([s, xp.full((1,), m, dtype=s.dtype)]))
        s, m = s[:-1], int(round(float(s[-1])))
    check_count(m, shape)
    mean = s / m
    # two-pass variance (sum of squared deviations): no cancellation, unlike E[x^2]-mu^2
    xc = F - _tile(mean, r)
    sq = _channel_sum(xc, r, xc)
    var = (sq if reduce is None else reduce(sq)) / m
    inv_std = 1.0 / xp.sqrt(var + eps)
    # y = gamma * xhat + beta, with gamma * inv_std folded into one per-channel scale
    fused = kernels(xp)
    if fused is not None:  # GPU: one kernel
        return fused.bn_affine(xc, _tile(gamma * inv_std, r), _tile(beta, r)), xc, mean, \
            var, inv_std, m
    y = xc * _tile(gamma * inv_std, r)
    y += _tile(beta, r)
    return y, xc, mean, var, inv_std, m


def check_count(m: int, shape) -> None:
    """Training needs more than one value per channel (the variance is undefined)."""
    if m < 2:
        raise ValueError(f"batchnorm: expected more than 1 value per channel when "
                         f"training, got input of shape {tuple(shape)}")


def batchnorm_forward(x, gamma, beta, running_mean, running_var, *, training: bool,
                      momentum: float = 0.1, eps: float = 1e-5, update_stats: bool = True,
                      reduce=None):
    """Batch-norm forward pass.

    Parameters
    ----------
    x : (n, c) or (n, c, h, w) array, float32 or float64, any memory layout.
    gamma, beta : (c,) arrays, dtype of ``x``; scale and shift.
    running_mean, running_var : (c,) arrays, dtype of ``x``, owned by the caller. Updated
        **in place** when ``training and update_stats``. May be None when they are neither
        read nor updated (``training=True, update_stats=False``).
    training : bool
        True: normalise with the batch statistics (mu, biased var). False: with the
        running statistics.
    momentum : float
        ``running <- (1 - momentum) * running + momentum * batch`` (PyTorch's convention).
    eps : float
        Added to the variance before the square root.
    update_stats : bool
        In training mode, whether to update the running statistics (False for probe passes
        that must leave the model state untouched). Ignored in eval mode.
    reduce : callable, optional
        Synchronised BatchNorm (data parallelism): ``reduce(v)`` returns the sum of the
        1-D array ``v`` over the ranks. In training mode the per-channel sums (with the
        count m) and the sums of squared deviations are added over the ranks, so every
        rank normalises with the statistics of the global batch; the backward pass adds
        ``dbeta`` and ``dgamma`` over the ranks the same way. None: this batch only.

    Returns
    -------
    y : array of the shape of ``x``, dtype of ``x``; channels-last memory when 4-D.
    cache : dict for :func:`batchnorm_backward`.

    Raises
    ------
    ValueError
        Wrong ranks, shapes or dtypes, or a single value per channel in training mode
        (the variance would be undefined; PyTorch raises too).
    """
    y, cache, _ = _forward(x, gamma, beta, running_mean, running_var, training, momentum,
                           eps, update_stats, reduce)
    return y, cache


def batchnorm_relu_forward(x, gamma, beta, running_mean, running_var, *, add=None,
                           training: bool, momentum: float = 0.1, eps: float = 1e-5,
                           update_stats: bool = True, reduce=None):
    """``relu(batchnorm(x) + add)``: a BN -> ReLU pair, or a ResNet block's tail with ``add``.

    Parameters as :func:`batchnorm_forward`, and ``add``, an array of the shape of ``x``
    (None: no residual; another shape, dtype or memory layout than the batch norm's output
    takes the three functions, whose addition broadcasts, promotes and lays out as NumPy's).

    Returns
    -------
    y : array of the shape of ``x``, in the layout of ``batchnorm_forward``'s output (channels-
        last when 4-D) or, with ``add``, of that output plus ``add``.
    cache : dict for :func:`batchnorm_backward`.
    mask : bool array like ``y``, the cache of :func:`activation.relu_backward`.

    Notes
    -----
    With the compiled kernels (``--cpu-kernels numba``) in training mode, the output pass
    computes the normalisation, the residual sum and the ReLU of each value in one go: the
    same operations in the same order, so the bits of the three functions one after the
    other, without writing and reading back one (two) intermediate arrays. Otherwise it is
    exactly those three functions.
    """
    xp = get_array_module(x)
    if training and _jit_active(xp) and (add is None or _fits_output(add, x)):
        y, cache, mask = _forward(x, gamma, beta, running_mean, running_var, training,
                                  momentum, eps, update_stats, reduce, relu=True, add=add)
        return y, cache, _unflat(mask, x.shape)
    y, cache = batchnorm_forward(x, gamma, beta, running_mean, running_var,
                                 training=training, momentum=momentum, eps=eps,
                                 update_stats=update_stats, reduce=reduce)
    if add is not None:
        y = F_ew.add(y, add)
    y, mask = F_act.relu_forward(y)
    return y, cache, mask


def _fits_output(add, x) -> bool:
    """``add`` is an array of x's shape and dtype laid out as the batch norm's output
    (channels-last when 4-D, C-ordered when 2-D): then the sum has that layout both ways, and
    the fused pass gives what the three functions give (another layout: NumPy's sum of two
    layouts is C-ordered)."""
    if getattr(add, "shape", None) != tuple(x.shape) or add.dtype != x.dtype:
        return False
    return (add.transpose(0, 2, 3, 1) if add.ndim == 4 else add).flags.c_contiguous


def _forward(x, gamma, beta, running_mean, running_var, training, momentum, eps,
             update_stats, reduce, relu=False, add=None):
    """:func:`batchnorm_forward`'s work: (y, cache, mask). ``relu`` / ``add`` only on the
    compiled training path (the ReLU's mask, else None)."""
    if x.ndim not in (2, 4):
        raise ValueError(f"batchnorm: expected x of shape (n, c) or (n, c, h, w), "
                         f"got {tuple(x.shape)}")
    if x.dtype.name not in _FLOAT_DTYPES:
        raise ValueError(f"batchnorm: expected x of dtype float32 or float64, got {x.dtype}")
    c = x.shape[1]
    for name, v in (("gamma", gamma), ("beta", beta)):
        _check_vector(name, v, c, x.dtype)
    uses_running = (not training) or update_stats
    if uses_running:
        if running_mean is None or running_var is None:
            raise ValueError("batchnorm: running_mean and running_var are required in eval "
                             "mode and when update_stats=True")
        _check_vector("running_mean", running_mean, c, x.dtype)
        _check_vector("running_var", running_var, c, x.dtype)

    F, r = _flat(x)
    m = F.shape[0] * r
    xp = get_array_module(x)
    mask = None
    if training:
        if _jit_active(xp):  # --cpu-kernels numba: compiled passes (jit.batchnorm)
            from ..jit import batchnorm as _jit_bn
            S = None if add is None else _flat(add)[0]
            y, mean, var, inv_std, m, mask = _jit_bn.train_forward(
                F, r, gamma, beta, eps, reduce, x.shape, relu=relu, add=S)
            # F itself rather than xc (the compiled backward forms F - mu on the fly): the
            # forward writes y alone; F is this layer's input, which nothing changes later
            saved = {"jit": True, "x": F, "mean": mean}
        else:
            # NumPy with enough work: sums in fixed blocks, shared among the engine's
            # threads (cpu.batchnorm; the same bits with any thread count)
            blocked = is_blocked(xp, F.shape[0], _cpu_bn.work(F))
            y, xc, mean, var, inv_std, m = (_cpu_bn.train_forward if blocked else
                                            _train_forward)(F, r, gamma, beta, eps, reduce,
                                                            x.shape)
            # xc rather than xhat: saves a pass here; backward uses xhat = xc * inv_std
            saved = {"xc": xc}
        if update_stats:
            running_mean *= 1.0 - momentum
            running_mean += momentum * mean
            running_var *= 1.0 - momentum
            running_var += (momentum * m / (m - 1)) * var  # unbiased variance
        cache = {"training": True, "r": r, "inv_std": inv_std, "m": m, "reduce": reduce,
                 "gamma": gamma.copy(), "shape": tuple(x.shape), **saved}
    else:
        inv_std = 1.0 / xp.sqrt(running_var + eps)
        scale = gamma * inv_std
        y = F * _tile(scale, r)
        y += _tile(beta - running_mean * scale, r)
        # keep x (not xc): eval forward passes are frequent, eval backward passes rare.
        # (c,) vectors are copied so that later in-place updates cannot change the backward
        cache = {"training": False, "x": F, "r": r, "mean": running_mean.copy(),
                 "inv_std": inv_std, "gamma": gamma.copy(), "shape": tuple(x.shape)}
    return _unflat(y, x.shape), cache, mask


def relu_batchnorm_backward(dy, mask, cache):
    """The backward of BN -> ReLU: ``batchnorm_backward(relu_backward(dy, mask), cache)``.

    Parameters
    ----------
    dy : error at the ReLU's output, the shape of the forward input.
    mask : the ReLU's cache (:func:`batchnorm_relu_forward` or ``activation.relu_forward``).
    cache : dict from :func:`batchnorm_forward` or :func:`batchnorm_relu_forward`.

    Returns
    -------
    dx, dgamma, dbeta as :func:`batchnorm_backward`.

    Notes
    -----
    When the forward ran the compiled passes, the batch norm's two passes read ``dy`` and the
    mask themselves (``dy if mask else dy * 0``, the ReLU's bits): the masked error is never
    written (a ``dy`` of another shape or dtype raises :func:`batchnorm_backward`'s error).
    Otherwise the two functions one after the other.
    """
    if cache.get("jit") and tuple(mask.shape) == cache["shape"] and mask.dtype == bool:
        return _backward(dy, cache, mask)
    return batchnorm_backward(F_act.relu_backward(dy, mask), cache)


def batchnorm_backward(dy, cache):
    """Exact batch-norm backward pass.

    Parameters
    ----------
    dy : array of the shape of the forward input, any memory layout; error at the output.
    cache : dict from :func:`batchnorm_forward`.

    Returns
    -------
    dx : array of the shape of ``dy``, dtype of the forward input (channels-last when 4-D).
    dgamma, dbeta : (c,) arrays.

    Notes
    -----
    With ``xhat = xc * inv_std`` and ``k = gamma * inv_std``::

        dbeta  = sum(dy)
        dgamma = sum(dy * xhat) = inv_std * sum(dy * xc)
        train: dx = k / m * (m * dy - dbeta - xhat * dgamma)
                  = k * (dy - dbeta / m - xc * (inv_std * dgamma / m))
        eval:  dx = k * dy

    The train-mode ``dx`` includes the paths through mu and var (the statistics depend on
    every sample of the batch), even when the running statistics were not updated.

    Synchronised (the forward's ``reduce``): ``dx`` uses ``dbeta`` and ``dgamma`` added over
    the ranks and the global m; the returned ``dgamma``, ``dbeta`` stay this rank's share
    (the parameter gradients are averaged with the others afterwards).
    """
    return _backward(dy, cache)


def _backward(dy, cache, mask=None):
    """:func:`batchnorm_backward`'s work; ``mask`` (a ReLU's, only for a compiled forward's
    cache) is read inside the compiled passes (:func:`relu_batchnorm_backward`)."""
    shape = cache["shape"]
    if tuple(dy.shape) != shape:
        raise ValueError(f"batchnorm: expected dy of shape {shape}, got {tuple(dy.shape)}")
    if dy.dtype != cache["inv_std"].dtype:
        raise ValueError(f"batchnorm: expected dy of dtype {cache['inv_std'].dtype} like the "
                         f"forward input, got {dy.dtype}")
    D, r = _flat(dy)
    inv_std, gamma = cache["inv_std"], cache["gamma"]
    if cache.get("jit"):  # the forward ran the compiled passes (jit.batchnorm)
        from ..jit import batchnorm as _jit_bn
        dx, dgamma, dbeta = _jit_bn.train_backward(D, cache["x"], cache["mean"], r, inv_std,
                                                   gamma, cache["m"], cache["reduce"],
                                                   mask=None if mask is None else
                                                   _flat(mask)[0])
        return _unflat(dx, shape), dgamma, dbeta
    if cache["training"] and is_blocked(get_array_module(D), D.shape[0], _cpu_bn.work(D)):
        dx, dgamma, dbeta = _cpu_bn.train_backward(D, cache["xc"], r, inv_std, gamma,
                                                   cache["m"], cache["reduce"])
        return _unflat(dx, shape), dgamma, dbeta
    if cache["training"]:
        xc = cache["xc"]
    else:
        xc = cache["x"] - _tile(cache["mean"], r)
    dbeta = _channel_sum(D, r)
    dgamma = _channel_sum(D, r, xc) * inv_std
    k = gamma * inv_std
    if cache["training"]:
        m = cache["m"]
        xp = get_array_module(D)
        sb, sg = dbeta, dgamma
        if cache["reduce"] is not None:
            both = cache["reduce"](xp.concatenate([dbeta, dgamma]))
            sb, sg = both[:dbeta.shape[0]], both[dbeta.shape[0]:]
        # dx = k * (dy - (xc * a + b)): one kernel on the GPU, one buffer on the CPU
        fused = kernels(xp)
        if fused is not None:
            dx = fused.bn_dx(D, xc, _tile(inv_std * sg / m, r), _tile(sb / m, r), _tile(k, r))
            return _unflat(dx, shape), dgamma, dbeta
        dx = xc * _tile(inv_std * sg / m, r)
        dx += _tile(sb / m, r)
        xp.subtract(D, dx, out=dx)
        dx *= _tile(k, r)
    else:
        dx = D * _tile(k, r)
    return _unflat(dx, shape), dgamma, dbeta
