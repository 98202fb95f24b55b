"""ImageNet (ILSVRC-2012) and any ImageFolder tree: ``<root>/<split>/<class>/<image>``.

The project never downloads ImageNet (licence): the user points at a tree such as
``train/n01440764/*.JPEG`` and ``val/n01440764/*.JPEG``. Classes are the sub-folder names
in sorted order (index = position), as in torchvision's ``ImageFolder``; files with the
usual image extensions are the samples, sorted by path.

Images are decoded with Pillow (an optional dependency: ``pip install
'minigrad_pfa[images]'``) and converted to RGB. Decoding is per file, so the dataset hands
out *lists* of PIL images and the geometric transforms (:class:`RandomResizedCrop`,
:class:`Resize` + :class:`CenterCrop`) turn them into one uint8 (n, 3, S, S) batch; the
loader runs that in background threads, where Pillow releases the GIL.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DataError, FormatError, MissingDataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
INSTALL_PILLOW = "pip install 'minigrad_pfa[images]'  (or: pip install pillow)"


def require_pillow():
    """The ``PIL.Image`` module, or a :class:`DataError` that says how to install it."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError(None, f"Pillow is needed to decode image folders ({exc})",
                        expected="the Pillow package", fix=INSTALL_PILLOW) from exc
    return Image


def _verify_cmd(root) -> str:
    return f"minigrad-pfa data verify imagenet --data-dir {root}"


class ImageFolderDataset:
    """Samples of an ImageFolder tree, decoded on demand.

    Parameters
    ----------
    folder : path
        ``<root>/<split>``, holding one sub-folder per class.
    meta : dict
        Extra metadata (``name``, ``split``).

    Attributes
    ----------
    paths : list of str
        The image files, sorted by class then name.
    labels : numpy.ndarray of int64
        Their class indices.
    classes : list of str
        Class folder names, sorted; ``classes[label]``.
    """

    def __init__(self, folder, meta: dict | None = None, *, _paths=None, _labels=None,
                 _classes=None):
        self.folder = Path(folder)
        if _paths is None:
            _classes, _paths, _labels = scan_image_folder(self.folder)
        self.classes = list(_classes)
        self.paths = list(_paths)
        self.labels = np.asarray(_labels, dtype=np.int64)
        self.meta = dict(meta or {})
        self.meta.update(source=f"image folder {self.folder}", synthetic=False,
                         num_classes=len(self.classes))
        self.meta.setdefault("name", "imagefolder")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def default_workers(self) -> int:
        """Loader threads by default: JPEG decoding dominates, so use the cores."""
        return min(8, os.cpu_count() or 1)

    @property
    def sample_shape(self):
        return None  # variable: fixed only after a crop transform

    @property
    def synthetic(self) -> bool:
        return False

    def load_image(self, i: int):
        """Decode image ``i`` as an RGB PIL image; clear error naming the file otherwise."""
        Image = require_pillow()
        p = self.paths[i]
        try:
            with Image.open(p) as im:
                return im.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise FormatError(p, f"unreadable image ({type(exc).__name__}: {exc})",
                              expected="a decodable image file (JPEG/PNG/...)",
                              fix=f"replace or remove the file; `{_verify_cmd(self.folder.parent)}`"
                                  " lists every unreadable file") from exc

    def get_batch(self, idx):
        """``(list of RGB PIL images, labels int64)`` for the indices ``idx``."""
        idx = np.asarray(idx, dtype=np.int64)
        return [self.load_image(int(i)) for i in idx], self.labels[idx]

    def subset(self, idx, split: str | None = None, **meta) -> "ImageFolderDataset":
        idx = np.asarray(idx, dtype=np.int64)
        m = dict(self.meta, **meta)
        if split is not None:
            m["split"] = split
        return ImageFolderDataset(self.folder, m, _paths=[self.paths[i] for i in idx],
                                  _labels=self.labels[idx], _classes=self.classes)

    def describe(self) -> str:
        from .dataset import describe
        return describe(self)


def scan_image_folder(folder: Path):
    """``(classes, paths, labels)`` of an ImageFolder split; errors name the bad folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingDataError(folder, "folder not found",
                               expected="<root>/<split>/<class>/<image> (e.g. "
                                        "train/n01440764/n01440764_10026.JPEG)",
                               fix="pass --data-dir pointing at the ImageNet root that "
                                   "holds train/ and val/")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        raise MissingDataError(folder, "no class sub-folders",
                               expected="one sub-folder per class holding images",
                               fix="point --data-dir at the root of an ImageFolder tree "
                                   "(val/ must be sorted into class folders too)")
    paths, labels = [], []
    for k, c in enumerate(classes):
        files = sorted(e.path for e in os.scandir(folder / c)
                       if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS))
        if not files:
            raise MissingDataError(folder / c, "empty class folder (no image files)",
                                   expected="at least one file with extension "
                                            + "/".join(IMG_EXTENSIONS),
                                   fix="remove the folder or add its images; "
                                       f"`{_verify_cmd(folder.parent)}` checks the whole tree")
        paths += files
        labels += [k] * len(files)
    return classes, paths, labels


def imagenet_folder(root, split: str) -> ImageFolderDataset:
    """The ``split`` ("train" or "val") of an ImageNet-style tree under ``root``."""
    root = Path(root)
    return ImageFolderDataset(root / split, dict(name="imagenet", split=split,
                                                 title=f"ImageFolder {root}"))


def verify_image_folder(root, splits=("train", "val"), workers: int | None = None,
                        progress: bool = True) -> list:
    """Decode every image of the tree; ``[(path, ok, detail)]`` with all problems found.

    Unlike loading, this does not stop at the first problem: it reports every empty class
    folder and every unreadable file, so they can all be fixed in one go.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    Image = require_pillow()
    root = Path(root)
    rows = []
    for split in splits:
        folder = root / split
        if not folder.is_dir():
            rows.append((str(folder), False, "missing split folder"))
            continue
        classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        paths, empty = [], 0
        for c in classes:
            files = sorted(e.path for e in os.scandir(folder / c)
                           if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS))
            if not files:
                empty += 1
                rows.append((str(folder / c), False, "empty class folder"))
            paths += files

        def check(p):
            try:
                with Image.open(p) as im:
                    im.convert("RGB").load()
                return None
            except Exception as exc:  # any decoding failure is a finding, not a crash
                return f"unreadable image ({type(exc).__name__}: {exc})"

        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as ex:
            results = list(tqdm(ex.map(check, paths), total=len(paths), file=None,
                                desc=f"verify {split}", disable=(not progress) or None))
        bad = [(p, r) for p, r in zip(paths, results) if r]
        rows += [(p, False, r) for p, r in bad]
        rows.append((str(folder), not bad and not empty and len(paths) > 0,
                     f"{len(classes)} classes ({empty} empty), {len(paths)} images, "
                     f"{len(bad)} unreadable"))
    return rows
