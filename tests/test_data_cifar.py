"""CIFAR-10 readers on files written in both real formats (binary records and pickled
batches, loose or in the .tar.gz layout), including truncated, corrupt and hostile ones."""
import io
import os
import pickle
import random
import tarfile

import numpy as np
import pytest

from minigrad_pfa.data import cifar, load_dataset, make_splits, split_indices
from minigrad_pfa.data.errors import (ChecksumError, FormatError, MissingDataError,
                                      UnsafePickleError)

N = 20  # records per generated batch file (the real files have 10000)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGRAD_PFA_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("MINIGRAD_PFA_OFFLINE", "1")


def _batches(seed=0, n=N):
    """Six batches of random images (n, 3, 32, 32) uint8 and labels 0..9."""
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8),
                   rng.integers(0, 10, size=n))
            for name in cifar.TRAIN_FILES + cifar.TEST_FILES}


def _binary_bytes(images, labels) -> bytes:
    """The documented record layout, built record by record: <label><R plane><G><B>."""
    return b"".join(bytes([int(l)]) + img.tobytes() for img, l in zip(images, labels))


def _pickle_bytes(images, labels, name) -> bytes:
    d = {b"batch_label": f"{name} of 5".encode(), b"labels": [int(v) for v in labels],
         b"data": images.reshape(len(images), 3072), b"filenames": [b"x.png"] * len(labels)}
    return pickle.dumps(d, protocol=2)


def _write_tree(root, batches, fmt):
    arch = cifar.BINARY if fmt == "binary" else cifar.PYTHON
    d = root / arch.folder
    d.mkdir(parents=True)
    for name, (x, y) in batches.items():
        data = _binary_bytes(x, y) if fmt == "binary" else _pickle_bytes(x, y, name)
        (d / (name + arch.suffix)).write_bytes(data)
    return d


def _write_tar(root, batches, fmt):
    d = _write_tree(root / "src", batches, fmt)
    arch = cifar.BINARY if fmt == "binary" else cifar.PYTHON
    path = root / arch.filename
    with tarfile.open(path, "w:gz") as tf:
        tf.add(d, arcname=arch.folder)
    return path


def _expected(batches, names):
    return (np.concatenate([batches[n][0] for n in names]),
            np.concatenate([batches[n][1] for n in names]))


@pytest.mark.parametrize("fmt", ["binary", "python"])
def test_folder_and_archive_readers(tmp_path, fmt):
    batches = _batches()
    folder = _write_tree(tmp_path / "f", batches, fmt)
    tar = _write_tar(tmp_path / "t", batches, fmt)
    for names in (cifar.TRAIN_FILES, cifar.TEST_FILES):
        ex_x, ex_y = _expected(batches, names)
        for x, y in (cifar.read_folder(folder, fmt, names, records=N),
                     cifar.read_archive(tar, fmt, names, records=N)):
            assert x.shape == (len(names) * N, 3, 32, 32) and x.dtype == np.uint8
            assert y.dtype == np.int64
            np.testing.assert_array_equal(x, ex_x)
            np.testing.assert_array_equal(y, ex_y)


def test_binary_pixel_layout():
    """Byte 1 + 1024*c + 32*i + j of a record is channel c, row i, column j."""
    rec = bytearray(cifar.RECORD)
    rec[0] = 7
    rec[1 + 1024 * 2 + 32 * 5 + 9] = 200  # blue, row 5, column 9
    x, y = cifar.parse_binary_batch(bytes(rec), records=1)
    assert y.tolist() == [7] and x[0, 2, 5, 9] == 200 and int(x.sum()) == 200


def test_binary_truncated_and_corrupt(tmp_path):
    x, y = _batches()["test_batch"]
    good = _binary_bytes(x, y)
    with pytest.raises(FormatError, match="not a whole number of 3073-byte records") as ei:
        cifar.parse_binary_batch(good[:-100], path="test_batch.bin", records=N)
    assert "test_batch.bin" in str(ei.value) and f"{N * 3073} bytes" in str(ei.value)
    with pytest.raises(FormatError, match=f"{N - 1} records"):
        cifar.parse_binary_batch(good[:-3073], records=N)
    bad = bytearray(good)
    bad[3 * 3073] = 200  # label byte of record 3
    with pytest.raises(FormatError, match="record 3 has label byte 200"):
        cifar.parse_binary_batch(bytes(bad), records=N)
    with pytest.raises(FormatError):
        cifar.parse_binary_batch(b"", records=N)


def test_python_batch_bad_content():
    x, y = _batches()["test_batch"]
    with pytest.raises(FormatError, match="not a readable pickle"):
        cifar.parse_python_batch(_pickle_bytes(x, y, "t")[:500], records=N)
    with pytest.raises(FormatError, match="not a CIFAR-10 batch dict"):
        cifar.parse_python_batch(pickle.dumps({b"nope": 1}, protocol=2), records=N)
    d = {b"data": x.reshape(N, 3072).astype(np.float32), b"labels": list(y)}
    with pytest.raises(FormatError, match=r"uint8 \(n, 3072\)"):
        cifar.parse_python_batch(pickle.dumps(d, protocol=2), records=N)
    d = {b"data": x.reshape(N, 3072), b"labels": [11] * N}
    with pytest.raises(FormatError, match="labels outside 0..9"):
        cifar.parse_python_batch(pickle.dumps(d, protocol=2), records=N)


class _Evil:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    d = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil(marker)}
    with pytest.raises(UnsafePickleError) as ei:
        cifar.parse_python_batch(pickle.dumps(d, protocol=2), path="data_batch_1", records=1)
    assert "mkdir" in str(ei.value) and "data_batch_1" in str(ei.value)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["binary", "python"])
def test_truncated_and_corrupt_archives(tmp_path, fmt):
    tar = _write_tar(tmp_path, _batches(), fmt)
    data = tar.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="truncated or corrupt archive") as ei:
        cifar.read_archive(cut, fmt, cifar.TRAIN_FILES, records=N)
    assert str(cut) in str(ei.value)
    flipped = bytearray(data)
    for k in range(len(data) // 3, len(data) // 3 + 64):
        flipped[k] ^= 0x5A
    bad = tmp_path / "flip.tar.gz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(FormatError):
        cifar.read_archive(bad, fmt, cifar.TRAIN_FILES + cifar.TEST_FILES, records=N)


def test_archive_without_the_members(tmp_path):
    p = tmp_path / "other.tar.gz"
    with tarfile.open(p, "w:gz") as tf:
        info = tarfile.TarInfo("readme.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(FormatError, match="archive lacks cifar-10-batches-bin/test_batch.bin"):
        cifar.read_archive(p, "binary", cifar.TEST_FILES)


def test_load_from_full_size_user_folder(tmp_path):
    """load_dataset on a user folder of real-size (10000-record) binary batches."""
    rng = np.random.default_rng(1)
    d = tmp_path / "user" / cifar.BINARY.folder
    d.mkdir(parents=True)
    labels = {}
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
        rec = rng.integers(0, 256, size=(10000, cifar.RECORD), dtype=np.uint8)
        rec[:, 0] %= 10
        labels[name] = rec[:, 0].copy()
        (d / (name + ".bin")).write_bytes(rec.tobytes())
    ds = load_dataset("cifar10", "test", data_dir=tmp_path / "user", progress=False)
    assert ds.images.shape == (10000, 3, 32, 32) and ds.meta["format"] == "binary"
    np.testing.assert_array_equal(ds.labels, labels["test_batch"])
    assert ds.images.transpose(0, 2, 3, 1).flags.c_contiguous  # channels-last memory
    train = load_dataset("cifar10", "train", data_dir=tmp_path / "user", progress=False)
    assert len(train) == 50000
    # a truncated batch in the user's folder: named, and left in place
    p = d / "data_batch_3.bin"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(FormatError) as ei:
        load_dataset("cifar10", "train", data_dir=tmp_path / "user", progress=False)
    assert str(p) in str(ei.value) and p.exists()


def test_missing_and_wrong_archives_are_explained(tmp_path):
    with pytest.raises(MissingDataError) as ei:
        load_dataset("cifar10", "train", progress=False)
    msg = str(ei.value)
    assert "cifar-10-binary.tar.gz" in msg and "minigrad-pfa data get cifar10" in msg
    user = tmp_path / "user"
    user.mkdir()
    with pytest.raises(MissingDataError, match="no CIFAR-10 here"):
        load_dataset("cifar10", "train", data_dir=user, progress=False)
    (user / "cifar-10-binary.tar.gz").write_bytes(b"partial download")
    with pytest.raises(ChecksumError, match="a partial or different file"):
        load_dataset("cifar10", "train", data_dir=user, progress=False)
    assert (user / "cifar-10-binary.tar.gz").exists()


def test_published_45k_5k_split():
    """The authors' protocol: random.seed(0); random.sample(range(50000), 5000)."""
    random.seed(0)
    published_val = random.sample(range(50000), 5000)
    train_idx, val_idx = split_indices(50000, 5000, 0, method="python-random")
    assert val_idx.tolist() == published_val
    assert train_idx.tolist() == sorted(set(range(50000)) - set(published_val))


def test_make_splits_on_a_dataset():
    ds = load_dataset("synthetic-images", "train", n=100)
    tr, va = make_splits(ds, 20, seed=3)
    assert len(tr) == 80 and len(va) == 20 and va.meta["split"] == "val"
    joined = np.concatenate([tr.images, va.images]).reshape(100, -1)
    assert len({row.tobytes() for row in joined}) == len({r.tobytes() for r in
                                                          ds.images.reshape(100, -1)})
    tr2, va2 = make_splits(ds, 20, seed=3)
    np.testing.assert_array_equal(va.labels, va2.labels)
    assert va.meta["synthetic"] is True


def test_download_into_cache_is_verified_and_keeps_a_bad_copy_aside(tmp_path, monkeypatch):
    """The download path, with a file:// URL standing in for the dataset's website."""
    import dataclasses
    import hashlib
    monkeypatch.delenv("MINIGRAD_PFA_OFFLINE")
    tar = _write_tar(tmp_path / "site", _batches(), "binary")
    data = tar.read_bytes()
    fake = dataclasses.replace(cifar.BINARY, urls=(tar.as_uri(),), size=len(data),
                               md5=hashlib.md5(data).hexdigest(),
                               sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(cifar, "BINARY", fake)
    monkeypatch.setattr(cifar, "ARCHIVES", (fake, cifar.PYTHON))
    cache = tmp_path / "cache" / "cifar10"
    cache.mkdir(parents=True)
    (cache / fake.filename).write_bytes(data[:1000])  # e.g. a copy cut short by the user
    with pytest.raises(ChecksumError, match="--force"):
        cifar.resolve(progress=False)
    kind, fmt, path, desc = cifar.resolve(progress=False, force=True)
    assert path.read_bytes() == data and "from file://" in desc
    aside = list(cache.glob(fake.filename + ".bad-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == data[:1000]
    assert sorted(p.name for p in cache.iterdir()) == sorted([fake.filename, aside[0].name])
    assert cifar.resolve(progress=False, download=False)[3].startswith("cache ")
