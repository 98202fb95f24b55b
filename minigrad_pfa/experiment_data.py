"""Turn the ``data`` section of a config into loaders (train / validation / test) and a probe batch.

Protocol details encoded here:

* images are bytes / 255, then normalised per channel (the published mean/std of the
  dataset, or the training split's own statistics for F1, or nothing);
* ``pad_to`` zero-pads smaller images first (F1: Fashion-MNIST 28 -> 32), so random crops
  work on the padded size;
* ``augment: crop_flip`` is random crop with padding 4 plus horizontal flip (CIFAR style);
  ImageNet uses random-resized crop 224 + flip for training and resize 256 + centre crop 224
  for evaluation;
* the validation split is held out of the training set (``val_size``; CIFAR-10 draws it as
  the authors' code does); the test set is only evaluated as the protocol says (trainer).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import to_device
from .data import DataLoader, canonical_name, channel_mean_std, load_splits
from .data import transforms as T

#: published per-channel statistics used when ``data.normalize`` is "dataset"
DATASET_STATS = {
    "mnist": (T.MNIST_MEAN, T.MNIST_STD),
    "cifar10": (T.CIFAR10_MEAN, T.CIFAR10_STD),
    "imagenet": (T.IMAGENET_MEAN, T.IMAGENET_STD),
}


class AsType(T.Transform):
    """Cast a float batch to ``dtype`` (float64 runs; a float32 batch is returned as is)."""
    device_ok = True

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def __call__(self, x, rng=None):
        return x if x.dtype == self.dtype else x.astype(self.dtype)


@dataclass
class DataBundle:
    """Loaders of one run; ``val`` is None when the protocol has no validation split."""
    train: DataLoader
    val: DataLoader | None
    test: DataLoader
    probe: tuple
    description: str
    num_classes: int
    sample_shape: tuple


def _stats(name, d, train):
    if d["normalize"] == "none":
        return None
    if d["normalize"] == "train_stats":
        mean, std = channel_mean_std(train)
        return tuple(np.atleast_1d(mean)), tuple(np.atleast_1d(std))
    if name not in DATASET_STATS:
        raise ValueError(f"data.normalize='dataset' has no published statistics for {name!r}; "
                         "use data.normalize=train_stats or none")
    return DATASET_STATS[name]


def build_transforms(name: str, d: dict, train, dtype: str):
    """(train transform, eval transform) for the config's data section."""
    stats = _stats(name, d, train)
    pre = [T.Pad((d["pad_to"] - train.sample_shape[-1]) // 2)] if d["pad_to"] else []
    if d["pad_to"] and (d["pad_to"] - train.sample_shape[-1]) % 2:
        raise ValueError(f"data.pad_to={d['pad_to']} must exceed the image size "
                         f"{train.sample_shape[-1]} by an even number")
    post = [T.ToFloat()]
    if stats is not None:
        post.append(T.Normalize(*stats))
    if d["flatten"]:
        post.append(T.Flatten())
    if dtype != "float32":
        post.append(AsType(dtype))
    if name == "imagenet":
        train_aug = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
        eval_pre = [T.Resize(256), T.CenterCrop(224)]
    else:
        size = d["pad_to"] or train.sample_shape[-1]
        train_aug = ([T.RandomCrop(size, 4), T.RandomHorizontalFlip()]
                     if d["augment"] == "crop_flip" else [])
        eval_pre = []
    return T.Compose(pre + train_aug + post), T.Compose(pre + eval_pre + post)


def build_data(cfg: dict, progress: bool = True) -> DataBundle:
    """Load the datasets of ``cfg['data']`` and build the loaders on ``cfg['device']``."""
    d, device = cfg["data"], cfg["device"]
    name = canonical_name(d["name"])
    train, val, test = load_splits(name, val_size=d["val_size"], seed=d["split_seed"],
                                   data_dir=d["data_dir"])
    if d["limit_train"] is not None:
        train = train.subset(np.arange(min(d["limit_train"], len(train))))
    tf_train, tf_eval = build_transforms(name, d, train, cfg["dtype"])
    common = dict(device=device, prefetch=d["prefetch"])
    train_loader = DataLoader(train, d["batch_size"], shuffle=True, drop_last=d["drop_last"],
                              seed=cfg["seed"], transform=tf_train, **common)
    eval_loader = lambda ds: DataLoader(ds, d["eval_batch_size"], shuffle=False,  # noqa: E731
                                        transform=tf_eval, **common)
    probe_n = min(cfg["metrics"]["probe_size"], len(train))
    px, py = train.get_batch(np.arange(probe_n))
    px = tf_eval(px, np.random.default_rng(0))
    probe = (to_device(px, device), to_device(py, device))
    parts = [f"train {train.describe()}"]
    if val is not None:
        parts.append(f"val {len(val)}")
    parts.append(f"test {test.describe()}")
    n_classes = int(train.meta.get("num_classes", cfg["model"]["num_classes"]))
    return DataBundle(train_loader, eval_loader(val) if val is not None else None,
                      eval_loader(test), probe, "; ".join(parts), n_classes,
                      tuple(px.shape[1:]))
