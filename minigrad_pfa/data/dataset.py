"""In-memory datasets and train/validation splits.

Notation: n samples, c channels, h x w pixels.

Images are kept as the original bytes (``uint8``) until the transform pipeline turns them
into float32 (``bytes / 255``, then per-channel normalisation), so a dataset costs one byte
per pixel in memory and every split/augmentation works on exact integers.

4-D image arrays have the public (n, c, h, w) shape and *channels-last* memory (a
transposed view of a contiguous (n, h, w, c) buffer), the engine's layout convention;
:func:`take` keeps that layout when selecting samples.
"""
from __future__ import annotations

import random

import numpy as np


def channels_last(images: np.ndarray) -> np.ndarray:
    """Return (n, c, h, w) ``images`` with channels-last memory (a copy only if needed)."""
    if images.ndim != 4:
        return images
    nhwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    return nhwc.transpose(0, 3, 1, 2)


def take(images: np.ndarray, idx) -> np.ndarray:
    """``images[idx]`` along the sample axis; 4-D results keep channels-last memory.

    Gathering from the (n, h, w, c) view copies whole contiguous pixel rows, which is both
    faster than gathering from the (n, c, h, w) view and gives the layout we want.
    """
    if images.ndim == 4:
        return images.transpose(0, 2, 3, 1)[idx].transpose(0, 3, 1, 2)
    return images[idx]


class ArrayDataset:
    """A dataset held in memory as arrays.

    Parameters
    ----------
    images : numpy.ndarray
        ``uint8`` images (n, c, h, w) (channels-last memory), or features (n, d).
    labels : numpy.ndarray
        ``int64`` class indices (n,).
    meta : dict
        ``name``, ``split``, ``source`` (where the data came from), ``synthetic`` (bool),
        ``num_classes``, ``classes`` and anything else worth logging.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, meta: dict | None = None):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images {images.shape} and labels {labels.shape} do not "
                             "describe the same number of samples")
        self.images = channels_last(images)
        self.labels = labels.astype(np.int64, copy=False)
        self.meta = dict(meta or {})
        self.meta.setdefault("synthetic", False)
        self.meta.setdefault("num_classes", int(self.labels.max()) + 1 if len(labels) else 0)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def sample_shape(self) -> tuple:
        return tuple(self.images.shape[1:])

    @property
    def synthetic(self) -> bool:
        return bool(self.meta.get("synthetic", False))

    def get_batch(self, idx):
        """``(images[idx], labels[idx])`` for an index array ``idx``."""
        return take(self.images, idx), self.labels[idx]

    def subset(self, idx, split: str | None = None, **meta) -> "ArrayDataset":
        """A new dataset with the samples ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        m = dict(self.meta, **meta)
        if split is not None:
            m["split"] = split
        images, labels = self.get_batch(idx)
        return ArrayDataset(images, labels, m)

    def describe(self) -> str:
        """One line for logs; synthetic data always says so."""
        return describe(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def describe(dataset) -> str:
    """``"[SYNTHETIC] name/split: n samples of shape ... (source)"`` for logs."""
    m = dataset.meta
    tag = "[SYNTHETIC — not a real dataset] " if m.get("synthetic") else ""
    shape = getattr(dataset, "sample_shape", None)
    return (f"{tag}{m.get('name', '?')}/{m.get('split', '?')}: {len(dataset)} samples"
            + (f" of shape {shape}" if shape else "")
            + f", {m.get('num_classes', '?')} classes (source: {m.get('source', '?')})")


def channel_mean_std(dataset) -> tuple:
    """Per-channel mean and standard deviation of ``bytes / 255`` over a whole dataset.

    For "normalise with the training set's statistics" (F1). Population statistics
    (divide by N), accumulated in float64 over the uint8 images, one channel at a time.

    Returns
    -------
    (mean, std) : tuples of floats, one entry per channel.
    """
    x = dataset.images
    if x.ndim != 4:
        raise ValueError(f"expected (n, c, h, w) images, got shape {x.shape}")
    mean, std = [], []
    for ch in range(x.shape[1]):  # a loop over channels keeps float64 temporaries small
        v = x[:, ch].astype(np.float64) / 255.0
        m = float(v.mean())
        mean.append(m)
        std.append(float(np.sqrt(((v - m) ** 2).mean())))
    return tuple(mean), tuple(std)


def split_indices(n: int, val_size: int, seed: int, method: str = "numpy"):
    """Indices of a train/validation split of ``n`` samples.

    Parameters
    ----------
    n : int
        Number of samples in the training data.
    val_size : int
        Size of the held-out validation set (0 < val_size < n).
    seed : int
    method : {"numpy", "python-random"}
        ``"numpy"``: ``val = numpy.random.default_rng(seed).permutation(n)[:val_size]``.
        ``"python-random"``: the published CIFAR-10 protocol of the authors' repository
        (biotorch ``CIFAR10Benchmark``): ``random.seed(seed);
        val = random.sample(range(n), val_size)``; reproduced exactly with
        ``random.Random(seed)``.

    Returns
    -------
    train_idx, val_idx : numpy.ndarray of int64
        ``train_idx`` in increasing order (what ``numpy.delete(data, val)`` keeps);
        ``val_idx`` in draw order.
    """
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in (0, {n}), got {val_size}")
    if method == "numpy":
        val = np.random.default_rng(seed).permutation(n)[:val_size]
    elif method == "python-random":
        val = np.asarray(random.Random(seed).sample(range(n), val_size))
    else:
        raise ValueError(f"unknown split method {method!r}; use 'numpy' or 'python-random'")
    val = val.astype(np.int64)
    keep = np.ones(n, dtype=bool)
    keep[val] = False
    return np.flatnonzero(keep).astype(np.int64), val


def make_splits(dataset, val_size: int, seed: int, method: str = "numpy"):
    """Hold out a validation set from a training set.

    Returns
    -------
    (train, val)
        Two datasets of the same kind as ``dataset`` (``subset``), sizes
        ``len(dataset) - val_size`` and ``val_size``; their ``meta`` records the split
        (``split``, ``val_size``, ``split_seed``, ``split_method``).
    """
    train_idx, val_idx = split_indices(len(dataset), val_size, seed, method)
    info = dict(val_size=int(val_size), split_seed=int(seed), split_method=method,
                split_parent=dataset.meta.get("split", "train"))
    return (dataset.subset(train_idx, split="train-minus-val", **info),
            dataset.subset(val_idx, split="val", **info))
