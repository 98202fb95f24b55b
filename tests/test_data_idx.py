"""IDX reader/writer: generated files (good, truncated, wrong magic, ...) and the real
Fashion-MNIST files of the Debian package ``dataset-fashion-mnist``."""
import gzip
import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from minigrad_pfa.data import channel_mean_std, load_dataset
from minigrad_pfa.data.errors import ChecksumError, FormatError, MissingDataError
from minigrad_pfa.data.idx import encode_idx, parse_idx, read_idx, write_idx

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_debian = pytest.mark.skipif(
    not (DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="real Fashion-MNIST files absent: the Debian package dataset-fashion-mnist is not "
           "installed (apt-get install -y dataset-fashion-mnist; .ci/run does it when apt "
           "is available)")

# Published md5 of the *decompressed* Fashion-MNIST files (torchvision's raw_data list)
# and the published per-class counts (6000 / 1000 per class).
FASHION_RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGRAD_PFA_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("MINIGRAD_PFA_OFFLINE", "1")


def _hand_idx_images(a: np.ndarray) -> bytes:
    """IDX bytes built by hand from the format description (independent of encode_idx)."""
    n, h, w = a.shape
    return b"\x00\x00\x08\x03" + struct.pack(">III", n, h, w) + a.astype(np.uint8).tobytes()


def test_encode_matches_hand_built_header_and_roundtrips(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    assert encode_idx(a) == _hand_idx_images(a)
    labels = np.arange(7, dtype=np.uint8)
    assert encode_idx(labels) == b"\x00\x00\x08\x01" + struct.pack(">I", 7) + labels.tobytes()
    for compress in (False, True):
        p = write_idx(tmp_path / f"x{compress}", a, compress=compress)
        assert (p.read_bytes()[:2] == b"\x1f\x8b") == compress
        np.testing.assert_array_equal(read_idx(p, expected_shape=(7, 28, 28)), a)


@pytest.mark.parametrize("code,dtype", [(0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"),
                                        (0x0E, ">f8"), (0x09, "i1")])
def test_other_types_big_endian(code, dtype):
    vals = np.array([[1, -2, 3], [300, -7, 0]]).astype(dtype)
    buf = bytes([0, 0, code, 2]) + struct.pack(">II", 2, 3) + vals.tobytes()
    out = parse_idx(buf)
    assert out.dtype.isnative and out.shape == (2, 3)
    np.testing.assert_array_equal(out, vals.astype(out.dtype))
    assert encode_idx(out) == buf


def _write(tmp_path, name, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_truncated_data_names_file_and_expected_size(tmp_path):
    good = _hand_idx_images(np.zeros((3, 28, 28), np.uint8))
    p = _write(tmp_path, "train-images-idx3-ubyte", good[:-1])
    with pytest.raises(FormatError) as ei:
        read_idx(p, fix="minigrad-pfa data get mnist")
    msg = str(ei.value)
    assert str(p) in msg and "truncated" in msg and "2352 data bytes" in msg
    assert "minigrad-pfa data get mnist" in msg


def test_truncated_header(tmp_path):
    p = _write(tmp_path, "short", b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(FormatError, match="truncated header"):
        read_idx(p)


def test_wrong_magic(tmp_path):
    good = _hand_idx_images(np.zeros((2, 28, 28), np.uint8))
    p = _write(tmp_path, "bad-magic", b"\x01\x02" + good[2:])
    with pytest.raises(FormatError, match="wrong magic number") as ei:
        read_idx(p)
    assert "01 02 08 03" in str(ei.value) and str(p) in str(ei.value)
    # a different file type entirely (a PNG signature), gzip-compressed
    p2 = _write(tmp_path, "png.gz", gzip.compress(b"\x89PNG\r\n\x1a\n" + bytes(100)))
    with pytest.raises(FormatError, match="wrong magic number"):
        read_idx(p2)
    with pytest.raises(FormatError, match="wrong magic number|empty"):
        read_idx(_write(tmp_path, "empty", b""))


def test_unknown_type_code_trailing_bytes_and_shape(tmp_path):
    good = _hand_idx_images(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(FormatError, match="unknown IDX type code 0x07"):
        parse_idx(good[:2] + b"\x07" + good[3:])
    with pytest.raises(FormatError, match="3 unexpected trailing bytes"):
        parse_idx(good + b"abc")
    with pytest.raises(FormatError, match=r"header says shape \(2, 28, 28\)") as ei:
        parse_idx(good, path="f", expected_shape=(60000, 28, 28))
    assert "expected: shape (60000, 28, 28)" in str(ei.value)


def test_truncated_and_corrupt_gzip(tmp_path):
    gz = gzip.compress(_hand_idx_images(np.arange(2 * 784, dtype=np.uint8)
                                        .reshape(2, 28, 28) % 251))
    p = _write(tmp_path, "cut.gz", gz[: len(gz) // 2])
    with pytest.raises(FormatError, match="corrupt or truncated gzip") as ei:
        read_idx(p)
    assert str(p) in str(ei.value)
    bad = bytearray(gz)
    bad[len(bad) // 2] ^= 0xFF
    bad[-8] ^= 0xFF  # and the CRC, so the damage cannot go unnoticed
    with pytest.raises(FormatError, match="corrupt or truncated gzip"):
        read_idx(_write(tmp_path, "flip.gz", bytes(bad)))


def test_missing_file(tmp_path):
    with pytest.raises(MissingDataError, match="file not found"):
        read_idx(tmp_path / "nope")


# ------------------------------------------------------------- real Fashion-MNIST files

@needs_debian
def test_real_fashion_mnist_files():
    sizes = {"train": 60000, "t10k": 10000}
    for prefix, n in sizes.items():
        img_path = DEBIAN_DIR / f"{prefix}-images-idx3-ubyte.gz"
        lab_path = DEBIAN_DIR / f"{prefix}-labels-idx1-ubyte.gz"
        images = read_idx(img_path, expected_shape=(n, 28, 28))
        labels = read_idx(lab_path, expected_shape=(n,))
        assert images.dtype == np.uint8 and labels.dtype == np.uint8
        assert images.min() == 0 and images.max() == 255
        np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                      np.full(10, n // 10))
        for p in (img_path, lab_path):
            raw = gzip.decompress(p.read_bytes())
            assert hashlib.md5(raw).hexdigest() == FASHION_RAW_MD5[p.name[:-3]]


@needs_debian
def test_fashion_mnist_offline_source_then_cache(tmp_path):
    ds = load_dataset("fashion-mnist", "test", download=False, progress=False)
    assert ds.images.shape == (10000, 1, 28, 28) and ds.labels.dtype == np.int64
    assert "system file /usr/share/datasets/fashion-mnist" in ds.meta["source"]
    assert ds.meta["synthetic"] is False
    cached = Path(tmp_path / "cache" / "fashion-mnist" / "t10k-images-idx3-ubyte")
    assert hashlib.md5(cached.read_bytes()).hexdigest() == FASHION_RAW_MD5[cached.name]
    again = load_dataset("fashion-mnist", "test", download=False, progress=False)
    assert again.meta["source"].startswith("cache ")
    np.testing.assert_array_equal(again.images, ds.images)


@needs_debian
def test_user_folder_is_verified_and_never_modified(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(DEBIAN_DIR / f, user / f)
    ds = load_dataset("fashion-mnist", "test", data_dir=user, progress=False)
    assert ds.meta["source"].startswith("user folder")
    # corrupt one label (a valid IDX file, wrong content): checksum error naming the file
    raw = bytearray(gzip.decompress((user / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    (user / "t10k-labels-idx1-ubyte.gz").unlink()
    bad = user / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError) as ei:
        load_dataset("fashion-mnist", "test", data_dir=user, progress=False)
    msg = str(ei.value)
    assert str(bad) in msg and "0402a96d92fd2663" in msg and "fix:" in msg
    assert bad.read_bytes() == bytes(raw)  # the user's file is left exactly as it was
    with pytest.raises(MissingDataError) as ei:
        load_dataset("fashion-mnist", "train", data_dir=user, progress=False)
    assert "train-images-idx3-ubyte" in str(ei.value) and str(user) in str(ei.value)


@needs_debian
def test_fashion_mnist_training_statistics():
    """The commonly quoted Fashion-MNIST normalisation constants: 0.2860 / 0.3530."""
    mean, std = channel_mean_std(load_dataset("fashion-mnist", "train", download=False,
                                              progress=False))
    assert round(mean[0], 4) == 0.2860 and round(std[0], 4) == 0.3530
