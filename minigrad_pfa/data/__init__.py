"""Datasets, splits, augmentation and the mini-batch loader.

Quick use::

    from minigrad_pfa.data import load_dataset, make_splits, DataLoader, transforms as T
    train = load_dataset("mnist", "train")            # uint8 (60000, 1, 28, 28), verified
    train, val = make_splits(train, val_size=6000, seed=0)
    tf = T.Compose([T.ToFloat(), T.Normalize(T.MNIST_MEAN, T.MNIST_STD), T.Flatten()])
    loader = DataLoader(train, 64, shuffle=True, seed=0, transform=tf)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader: ...

Where data comes from, the cache, and the ``minigrad-pfa data`` commands: docs/data.md.
"""
from . import transforms
from .cifar import load_cifar10
from .dataset import ArrayDataset, channel_mean_std, describe, make_splits, split_indices
from .errors import (ChecksumError, DataError, DownloadError, FormatError, MissingDataError,
                     UnsafePickleError)
from .imagefolder import ImageFolderDataset, imagenet_folder, verify_image_folder
from .loader import DataLoader
from .registry import (DATASETS, VALIDATION_PROTOCOLS, canonical_name, dataset_path,
                       get_dataset, load_dataset, load_splits, verify_dataset)
from .store import cache_root
from .synthetic import load_synthetic
from .transforms import (CenterCrop, Compose, Flatten, Normalize, Pad, RandomCrop,
                         RandomHorizontalFlip, RandomResizedCrop, Resize, ToFloat)

__all__ = [
    "transforms", "load_dataset", "load_splits", "load_cifar10", "load_synthetic",
    "imagenet_folder", "verify_image_folder", "ImageFolderDataset", "ArrayDataset",
    "describe", "channel_mean_std", "make_splits", "split_indices", "DataLoader", "cache_root", "DATASETS",
    "VALIDATION_PROTOCOLS", "canonical_name", "dataset_path", "get_dataset",
    "verify_dataset", "DataError", "ChecksumError", "DownloadError", "FormatError",
    "MissingDataError", "UnsafePickleError", "Compose", "Pad", "RandomCrop",
    "RandomHorizontalFlip", "RandomResizedCrop", "Resize", "CenterCrop", "ToFloat",
    "Normalize", "Flatten",
]
