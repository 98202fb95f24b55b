"""CIFAR-10 in its two distributed formats.

Binary version (preferred; ``cifar-10-binary.tar.gz``, folder ``cifar-10-batches-bin``):
``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin``, each 10000 records
of 3073 bytes::

    byte 0        label (0..9)
    bytes 1..3072 the image, channel planes R, G, B, each 32 rows of 32 bytes

so a file reshapes to (10000, 3073) and the pixels to (n, c=3, h=32, w=32) directly.

Python version (``cifar-10-python.tar.gz``, folder ``cifar-10-batches-py``): the same
batches (no ``.bin``), each a pickled dict with ``b"data"`` uint8 (10000, 3072) in the same
pixel order and ``b"labels"`` a list of 10000 ints. Pickles execute code, so they go
through :mod:`.safe_pickle`, which admits NumPy arrays only.

Archives are read member by member from the ``.tar.gz`` (never extracted to disk, so a
hostile archive cannot write outside the cache). Pinned archive checksums: the md5 values
are the ones published on the dataset's page; the sha256 values are the ones other
projects pin for the same archives (Keras for the Python one).
"""
from __future__ import annotations

import gzip
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import store
from .dataset import ArrayDataset
from .errors import ChecksumError, DataError, FormatError, MissingDataError
from .safe_pickle import restricted_loads

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
           "ship", "truck")
RECORD = 1 + 3 * 32 * 32
PER_FILE = 10000
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)


@dataclass(frozen=True)
class Archive:
    fmt: str            # "binary" or "python"
    filename: str
    folder: str         # top folder inside the archive
    suffix: str         # ".bin" or ""
    urls: tuple
    size: int
    md5: str
    sha256: str


BINARY = Archive("binary", "cifar-10-binary.tar.gz", "cifar-10-batches-bin", ".bin",
                 ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
                 170052171, "c32a1d4ab5d03f1284b67883e8d87530",
                 "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd")
PYTHON = Archive("python", "cifar-10-python.tar.gz", "cifar-10-batches-py", "",
                 ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                 170498071, "c58f30108f718f92721af3b95e74349a",
                 "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce")
ARCHIVES = (BINARY, PYTHON)
GET_CMD = "minigrad-pfa data get cifar10"


def _split_files(split: str):
    if split == "train":
        return TRAIN_FILES
    if split == "test":
        return TEST_FILES
    raise ValueError(f"cifar10 has splits 'train' and 'test' (make_splits gives the 45k/5k "
                     f"validation split), got {split!r}")


# ------------------------------------------------------------------------------ parsers

def parse_binary_batch(buf, *, path=None, records: int | None = PER_FILE, fix: str = ""):
    """One binary batch file -> (images uint8 (n, 3, 32, 32), labels int64 (n,)).

    Raises
    ------
    FormatError
        Size not a whole number of 3073-byte records (truncated), a record count other
        than ``records``, or a label byte above 9 (corrupt or not CIFAR-10).
    """
    n_bytes = len(buf)
    if n_bytes == 0 or n_bytes % RECORD:
        raise FormatError(path, f"{n_bytes} bytes is not a whole number of {RECORD}-byte "
                                "records (truncated or not a CIFAR-10 binary batch)",
                          expected=f"{(records or 1) * RECORD} bytes "
                                   f"({records or 'n'} records of 1 label + 3072 pixels)",
                          fix=fix)
    rec = np.frombuffer(buf, dtype=np.uint8).reshape(-1, RECORD)
    if records is not None and rec.shape[0] != records:
        raise FormatError(path, f"{rec.shape[0]} records", expected=f"{records} records "
                          f"({records * RECORD} bytes)", fix=fix)
    labels = rec[:, 0]
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise FormatError(path, f"record {bad[0]} has label byte {labels[bad[0]]}",
                          expected="labels 0..9 (the file is corrupt or not CIFAR-10)",
                          fix=fix)
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels.astype(np.int64)


def parse_python_batch(buf, *, path=None, records: int | None = PER_FILE, fix: str = ""):
    """One pickled batch -> (images uint8 (n, 3, 32, 32), labels int64 (n,)).

    Unpickled with the restricted unpickler; the dict must hold ``b"data"`` uint8
    (n, 3072) and ``b"labels"`` (n ints in 0..9).
    """
    d = restricted_loads(bytes(buf), path=path, encoding="bytes")
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise FormatError(path, "not a CIFAR-10 batch dict",
                          expected="a dict with b'data' and b'labels'", fix=fix)
    data, labels = d[b"data"], np.asarray(d[b"labels"])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072 and labels.shape == (data.shape[0],)
            and labels.dtype.kind in "iu"):
        raise FormatError(path, f"b'data' {getattr(data, 'dtype', type(data))} "
                                f"{getattr(data, 'shape', '')}, {labels.shape[0]} labels",
                          expected="b'data' uint8 (n, 3072) and n integer labels", fix=fix)
    if records is not None and data.shape[0] != records:
        raise FormatError(path, f"{data.shape[0]} images", expected=f"{records}", fix=fix)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise FormatError(path, "labels outside 0..9", expected="labels 0..9", fix=fix)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _parse(fmt: str, buf, **kw):
    return (parse_binary_batch if fmt == "binary" else parse_python_batch)(buf, **kw)


# ------------------------------------------------------------------------------ readers

def read_archive(path, fmt: str, names, *, records: int | None = PER_FILE, fix: str = ""):
    """Batches ``names`` (without suffix) read from a ``.tar.gz`` without extracting it.

    Returns
    -------
    images uint8 (n, 3, 32, 32), labels int64 (n,) -- the batches concatenated in order.
    """
    arch = BINARY if fmt == "binary" else PYTHON
    wanted = {f"{arch.folder}/{nm}{arch.suffix}": nm for nm in names}
    found = {}
    try:
        with gzip.open(path, "rb") as gz:
            with tarfile.open(fileobj=gz, mode="r|") as tf:  # sequential, nothing extracted
                for m in tf:
                    key = m.name.lstrip("./")
                    if key in wanted and m.isfile():
                        found[wanted[key]] = tf.extractfile(m).read()
            # tar stops at its end-of-archive block; read on to the end of the gzip stream
            # so that gzip checks its CRC-32 (a corrupted byte must not pass unnoticed)
            while gz.read(1 << 20):
                pass
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise FormatError(path, f"truncated or corrupt archive ({type(exc).__name__}: {exc})",
                          expected=f"a complete {arch.filename}", fix=fix) from exc
    missing = [k for k, nm in wanted.items() if nm not in found]
    if missing:
        raise FormatError(path, f"archive lacks {', '.join(missing)}",
                          expected=f"the members of {arch.filename}", fix=fix)
    parts = [_parse(fmt, found[nm], path=f"{path}!{arch.folder}/{nm}{arch.suffix}",
                    records=records, fix=fix) for nm in names]
    return _concat(parts)


def read_folder(folder, fmt: str, names, *, records: int | None = PER_FILE, fix: str = ""):
    """Batches ``names`` from an extracted folder (``cifar-10-batches-bin`` or ``-py``)."""
    arch = BINARY if fmt == "binary" else PYTHON
    parts = []
    for nm in names:
        p = Path(folder) / (nm + arch.suffix)
        try:
            buf = p.read_bytes()
        except FileNotFoundError:
            raise MissingDataError(p, "file not found",
                                   expected=f"the six batch files of {arch.folder}",
                                   fix=fix) from None
        parts.append(_parse(fmt, buf, path=p, records=records, fix=fix))
    return _concat(parts)


def _concat(parts):
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


# ---------------------------------------------------------------------------- resolving

def find_in_folder(d: Path):
    """What CIFAR-10 a user folder holds: ``(kind, fmt, path)`` or None.

    ``kind`` is "folder" (extracted batches) or "archive"; binary is preferred.
    """
    for arch in ARCHIVES:
        for sub in (d / arch.folder, d):
            if (sub / ("test_batch" + arch.suffix)).is_file() and \
                    (sub / ("data_batch_1" + arch.suffix)).is_file():
                return "folder", arch.fmt, sub
        if (d / arch.filename).is_file():
            return "archive", arch.fmt, d / arch.filename
    return None


def verify_archive(path: Path, arch: Archive, fix: str) -> None:
    """Size and sha256 of an archive against the pinned values."""
    size = path.stat().st_size
    if size != arch.size:
        raise ChecksumError(path, f"{size} bytes (a partial or different file)",
                            expected=f"{arch.filename}, {arch.size} bytes", fix=fix)
    store.check_digest(path, store.file_digest(path), arch.sha256, arch.filename, fix)


def resolve(*, data_dir=None, download: bool = True, progress: bool = True,
            force: bool = False):
    """Locate a verified CIFAR-10: ``(kind, fmt, path, description)``.

    Order: ``data_dir``; the cache (``<cache>/cifar10/<archive>``); download of the binary
    archive (there is no offline source on machines without internet).
    """
    if data_dir is not None:
        d = Path(data_dir)
        hit = find_in_folder(d)
        if hit is None:
            raise MissingDataError(
                d, "no CIFAR-10 here",
                expected=f"{BINARY.folder}/ (data_batch_1.bin ... test_batch.bin), "
                         f"{BINARY.filename}, {PYTHON.folder}/ or {PYTHON.filename}",
                fix=f"download {BINARY.urls[0]} into this folder, or drop --data-dir "
                    f"and run `{GET_CMD}`")
        kind, fmt, path = hit
        if kind == "archive":
            arch = BINARY if fmt == "binary" else PYTHON
            verify_archive(path, arch, fix=f"download {arch.urls[0]} again into {d}")
        return kind, fmt, path, f"user {kind} {path}"
    cache = store.dataset_cache_dir("cifar10")
    if not force:
        for arch in ARCHIVES:
            p = cache / arch.filename
            if p.is_file():
                verify_archive(p, arch, fix=f"`{GET_CMD} --force` (moves the bad file "
                                            "aside and downloads a verified copy)")
                return "archive", arch.fmt, p, f"cache {p}"
    if not download:
        raise MissingDataError(cache / BINARY.filename, "CIFAR-10 is not in the cache",
                               expected=f"{BINARY.filename} (sha256 {BINARY.sha256})",
                               fix=_fix(cache))
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / BINARY.filename
    new = cache / (BINARY.filename + ".download")
    store.download(BINARY.urls, new, sha256=BINARY.sha256, md5=BINARY.md5,
                   size=BINARY.size, progress=progress, fix=_fix(cache))
    if dest.exists():  # only now that a verified copy is here: keep a bad one aside
        try:
            verify_archive(dest, BINARY, fix="")
        except DataError:
            store.move_aside(dest)
    os.replace(new, dest)
    return "archive", "binary", dest, f"cache {dest} (from {BINARY.urls[0]})"


def _fix(cache) -> str:
    return (f"`{GET_CMD}` on a machine with internet, or download {BINARY.urls[0]} "
            f"(md5 {BINARY.md5}) and copy it into {cache}, or pass --data-dir to a folder "
            "holding it")


def load_cifar10(split: str, *, data_dir=None, download: bool = True,
                 progress: bool = True) -> ArrayDataset:
    """CIFAR-10 ``split`` ("train" 50k, "test" 10k) as an ArrayDataset.

    Returns
    -------
    ArrayDataset
        ``images`` uint8 (n, 3, 32, 32) (channels-last memory), ``labels`` int64.
    """
    names = _split_files(split)
    kind, fmt, path, desc = resolve(data_dir=data_dir, download=download, progress=progress)
    fix = (f"replace {path} with an intact copy" if data_dir is not None
           else f"`{GET_CMD} --force`")
    reader = read_archive if kind == "archive" else read_folder
    images, labels = reader(path, fmt, names, fix=fix)
    meta = dict(name="cifar10", split=split, title="CIFAR-10 (Krizhevsky 2009)",
                synthetic=False, num_classes=10, classes=CLASSES, source=desc, format=fmt)
    return ArrayDataset(images, labels, meta)


def verify_cifar10(data_dir=None) -> list:
    """``[(path, ok, detail)]`` for the CIFAR-10 copy the loader would use; fetches nothing."""
    try:
        kind, fmt, path, desc = resolve(data_dir=data_dir, download=False, progress=False)
    except DataError as exc:
        return [(exc.path, False, exc.problem)]
    rows = [(str(path), True, f"{desc}: " + ("size and sha256 ok" if kind == "archive"
                                            else "extracted folder"))]
    for split in ("train", "test"):
        try:
            reader = read_archive if kind == "archive" else read_folder
            images, _ = reader(path, fmt, _split_files(split))
            rows.append((f"{path} [{split}]", True, f"{images.shape[0]} images parsed"))
        except DataError as exc:
            rows.append((exc.path, False, exc.problem))
    return rows
