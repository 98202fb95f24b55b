"""Small deterministic synthetic datasets for tests and smoke runs.

They are *never* a stand-in for a real dataset: their ``meta["synthetic"]`` is True, their
names start with ``synthetic-`` and :func:`~minigrad_pfa.data.dataset.describe` prefixes
them with ``[SYNTHETIC — not a real dataset]`` in every log line.

* ``synthetic-mlp``: MNIST-shaped (n, 1, 28, 28) uint8, 10 classes: each class has a fixed
  random binary prototype (20% of pixels on), a sample is its prototype plus Gaussian noise
  (std 60 grey levels), clipped to bytes. Learnable by an MLP within an epoch or two.
* ``synthetic-images``: CIFAR-shaped (n, 3, 32, 32) uint8, 10 classes: each class has a
  fixed random 3x8x8 colour pattern upsampled 4x; a sample is that pattern shifted by up to
  2 pixels (circularly), plus noise (std 40). Exercises convolutions and augmentation.

Prototypes come from a fixed seed shared by train and test; samples of "train" and
"test" come from different streams, so the test set is held out.
"""
from __future__ import annotations

import numpy as np

from .dataset import ArrayDataset

SYNTHETIC = ("synthetic-mlp", "synthetic-images")
DEFAULT_SIZES = {"train": 2048, "test": 512}
_SPLIT_CODE = {"train": 1, "test": 2}


def _labels(rng, n: int, k: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % k).astype(np.int64)


def synthetic_mlp(n: int, rng: np.random.Generator, proto_rng: np.random.Generator):
    protos = np.where(proto_rng.random((10, 784)) < 0.2, 220.0, 20.0)
    y = _labels(rng, n, 10)
    x = protos[y] + rng.normal(0.0, 60.0, size=(n, 784))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(n, 1, 28, 28), y


def synthetic_images(n: int, rng: np.random.Generator, proto_rng: np.random.Generator):
    low = proto_rng.uniform(0.0, 255.0, size=(10, 3, 8, 8))
    protos = low.repeat(4, axis=2).repeat(4, axis=3)                      # (10, 3, 32, 32)
    y = _labels(rng, n, 10)
    shift = rng.integers(-2, 3, size=(n, 2))
    # circular shift of each sample: index arithmetic instead of a per-sample np.roll
    rows = (np.arange(32)[None, :] - shift[:, :1]) % 32                   # (n, 32)
    cols = (np.arange(32)[None, :] - shift[:, 1:]) % 32
    x = protos[y[:, None, None, None], np.arange(3)[None, :, None, None],
               rows[:, None, :, None], cols[:, None, None, :]]
    x = x + rng.normal(0.0, 40.0, size=x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), y


def load_synthetic(name: str, split: str, n: int | None = None, seed: int = 0) -> ArrayDataset:
    """A synthetic dataset (see module docstring); deterministic in (name, split, n, seed)."""
    if name not in SYNTHETIC:
        raise ValueError(f"unknown synthetic dataset {name!r}; choose one of {SYNTHETIC}")
    if split not in _SPLIT_CODE:
        raise ValueError(f"synthetic datasets have splits 'train' and 'test', got {split!r}")
    n = int(n or DEFAULT_SIZES[split])
    proto_rng = np.random.default_rng([seed, 0, 0, 0])
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], 0, 0])
    make = synthetic_mlp if name == "synthetic-mlp" else synthetic_images
    x, y = make(n, rng, proto_rng)
    meta = dict(name=name, split=split, synthetic=True, num_classes=10,
                classes=tuple(str(i) for i in range(10)),
                source=f"generated in memory (seed {seed}); NOT a real dataset",
                title=f"SYNTHETIC {name}")
    return ArrayDataset(x, y, meta)
