"""Softmax cross-entropy loss and its output error; accuracy counts.

Notation
--------
n : batch size, k : number of classes.
logits z (n, k), labels y (n,) integers in [0, k), onehot Y (n, k).

    p_i   = softmax(z_i) = exp(z_i - max z_i) / sum_j exp(z_ij - max z_i)
    loss  = (1/n) sum_i [ log sum_j exp(z_ij - max z_i) - (z_i,y_i - max z_i) ]
    e     = dloss/dz = (p - Y) / n                    (the output error of every rule;
                                                       |e| < tiny/eps set to 0, below)

Subtracting the row maximum (log-sum-exp) keeps every exponent <= 0, so logits of any
magnitude give finite values.

Flush to zero: entries of e smaller in magnitude than ``tiny / eps`` of the dtype
(:func:`flush_threshold`; float32 9.9e-32, float64 1.0e-292) are set to 0. Without it a
confident network (logit gaps above 87 in float32) sends subnormal numbers, and products of
tiny normal ones, into the GEMMs that carry e back through the network, each costing the x86
core a microcode assist. Flushing only the subnormal entries (below ``tiny``) leaves the
products: an entry of 1e-37 times a weight of 0.1 is subnormal again; below ``tiny / eps``
every product with a value of at least ``eps`` stays normal. An entry changes by less than
1e-31, against output errors of order 1/n. Measured on FA, MNIST 784-256-256-10, batch 64,
one thread, CPU time per step (median of 150 steps; median of 3 interleaved rounds), at
initialisation and with the weights after the 3 quickstart epochs (254 of 5120 training
probabilities subnormal): no flush 1.87 / 11.1 ms, flushing below ``tiny`` 1.96 / 4.5 ms,
below ``tiny / eps`` 1.85 / 1.95 ms. The same flush runs on the GPU, so both devices compute
the same e.
"""
from __future__ import annotations

from ..backend import device_of, get_array_module


def _check_pair(logits, labels, where: str) -> None:
    if logits.ndim != 2:
        raise ValueError(f"{where}: expected logits of shape (n, k), got {tuple(logits.shape)}")
    if logits.dtype.kind != "f":
        raise ValueError(f"{where}: expected floating-point logits, got {logits.dtype}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{where}: expected labels of shape ({logits.shape[0]},) to match "
                         f"logits {tuple(logits.shape)}, got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{where}: expected integer class labels, got dtype {labels.dtype}")
    if device_of(labels) != device_of(logits):
        raise ValueError(f"{where}: logits are on {device_of(logits)} but labels on "
                         f"{device_of(labels)}; move both to the same device")


def flush_threshold(xp, dtype) -> float:
    """``tiny / eps`` of ``dtype``: the output-error entries below it are set to 0
    (float32: 9.9e-32; float64: 1.0e-292). See "Flush to zero" in the module docstring."""
    fi = xp.finfo(dtype)
    return float(fi.tiny / fi.eps)


def softmax_cross_entropy(logits, labels, *, check_labels: bool | None = None):
    """Mean softmax cross-entropy over the batch and its gradient w.r.t. the logits.

    Parameters
    ----------
    logits : (n, k) float array.
    labels : (n,) integer array on the same device, values in [0, k).
    check_labels : bool or None
        Raise ValueError for label values outside [0, k). None (default): check on the CPU
        only; on the GPU an invalid label makes the loss NaN instead (no host sync).

    Returns
    -------
    loss : 0-d array, dtype of ``logits``, on the logits' device (read it with
        ``float(loss)`` only when needed: on the GPU that is a sync).
    e : (n, k) array, dtype of ``logits``: ``(softmax(logits) - onehot(labels)) / n``, its
        entries below :func:`flush_threshold` in magnitude set to 0.

    Raises
    ------
    ValueError
        Wrong shapes or dtypes, arrays on different devices, an empty batch, or (when
        checked) a label out of range.
    """
    _check_pair(logits, labels, "softmax_cross_entropy")
    n, k = logits.shape
    if n == 0:
        raise ValueError("softmax_cross_entropy: expected a non-empty batch")
    xp = get_array_module(logits)
    if check_labels is None:
        check_labels = xp.__name__ == "numpy"
    if check_labels:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= k:
            raise ValueError(f"softmax_cross_entropy: labels must lie in [0, {k - 1}] for "
                             f"{k} classes, got values in [{lo}, {hi}]")

    z = logits - logits.max(axis=1, keepdims=True)
    ez = xp.exp(z)
    s = ez.sum(axis=1, keepdims=True)
    # gather z_{i, y_i}; clipping keeps the gather in bounds (CuPy would wrap an index
    # silently), invalid labels are caught by the check or poison the loss below
    picked = xp.take_along_axis(z, xp.clip(labels, 0, k - 1)[:, None], axis=1)[:, 0]
    loss = xp.asarray((xp.log(s[:, 0]) - picked).mean())
    onehot = labels[:, None] == xp.arange(k)  # (n, k) bool; all-False row for a bad label
    if not check_labels:
        nan = xp.full((), float("nan"), dtype=logits.dtype)
        loss = xp.where(onehot.any(axis=1).all(), loss, nan)

    e = ez
    e /= s
    e -= onehot
    e /= n
    e *= xp.abs(e) >= flush_threshold(xp, e.dtype)  # flush to zero (module docstring)
    return loss, e


def accuracy_counts(logits, labels):
    """Number of samples whose arg-max logit equals the label.

    Parameters
    ----------
    logits : (n, k) float array.
    labels : (n,) integer array on the same device.

    Returns
    -------
    0-d integer array on the logits' device (no host sync); ties go to the lowest index.
    """
    _check_pair(logits, labels, "accuracy_counts")
    xp = get_array_module(logits)
    return xp.asarray((logits.argmax(axis=1) == labels).sum())
