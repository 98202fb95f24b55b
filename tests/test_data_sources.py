"""Cache location and verified, atomic downloads (file:// URLs stand in for websites)."""
import hashlib
import io
from pathlib import Path

import pytest

from minigrad_pfa.data import store
from minigrad_pfa.data.errors import DownloadError


@pytest.fixture(autouse=True)
def _online_but_local(monkeypatch):
    monkeypatch.delenv("MINIGRAD_PFA_OFFLINE", raising=False)


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIGRAD_PFA_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store.cache_root() == tmp_path / "home" / ".cache" / "minigrad_pfa"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.cache_root() == tmp_path / "xdg" / "minigrad_pfa"
    monkeypatch.setenv("MINIGRAD_PFA_DATA", str(tmp_path / "mine"))
    assert store.cache_root() == tmp_path / "mine"
    assert store.dataset_cache_dir("mnist") == tmp_path / "mine" / "mnist"


def _source(tmp_path, data: bytes):
    src = tmp_path / "server" / "file.bin"
    src.parent.mkdir()
    src.write_bytes(data)
    return src.as_uri(), hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()


def _leftovers(d: Path):
    return [p.name for p in d.iterdir()] if d.exists() else []


def test_verified_download(tmp_path):
    data = bytes(range(256)) * 5000
    url, sha, md5 = _source(tmp_path, data)
    dest = tmp_path / "cache" / "file.bin"
    store.download([url], dest, sha256=sha, md5=md5, size=len(data), progress=False)
    assert dest.read_bytes() == data
    assert _leftovers(dest.parent) == ["file.bin"]


@pytest.mark.parametrize("bad", ["sha256", "md5", "size"])
def test_bad_download_never_lands(tmp_path, bad):
    data = b"x" * 10000
    url, sha, md5 = _source(tmp_path, data)
    kw = dict(sha256=sha, md5=md5, size=len(data))
    kw[bad] = {"sha256": "0" * 64, "md5": "0" * 32, "size": len(data) + 1}[bad]
    dest = tmp_path / "cache" / "file.bin"
    with pytest.raises(DownloadError) as ei:
        store.download([url], dest, progress=False, fix="do X", **kw)
    assert "do X" in str(ei.value) and url in str(ei.value)
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    class Broken(io.BytesIO):
        headers = {"Content-Length": "3000000"}

        def read(self, n=-1):
            if self.tell() >= 2 * 1024 * 1024:
                raise ConnectionResetError("connection reset by peer")
            return super().read(n)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(store.urllib.request, "urlopen",
                        lambda req, timeout: Broken(b"y" * 3000000))
    dest = tmp_path / "cache" / "big.bin"
    with pytest.raises(DownloadError, match="connection reset"):
        store.download(["https://example.invalid/big.bin"], dest, progress=False)
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_second_mirror_used_when_first_fails(tmp_path):
    data = b"payload" * 100
    url, sha, _ = _source(tmp_path, data)
    dest = tmp_path / "cache" / "f"
    store.download([(tmp_path / "missing").as_uri(), url], dest, sha256=sha, progress=False)
    assert dest.read_bytes() == data


def test_offline_forbids_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGRAD_PFA_OFFLINE", "1")
    url, sha, _ = _source(tmp_path, b"abc")
    with pytest.raises(DownloadError, match="downloads are disabled"):
        store.download([url], tmp_path / "cache" / "f", sha256=sha, progress=False)


def test_atomic_write_and_move_aside(tmp_path):
    p = store.atomic_write_bytes(tmp_path / "d" / "f", b"one")
    store.atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two" and _leftovers(p.parent) == ["f"]
    moved = store.move_aside(p)
    assert not p.exists() and moved.read_bytes() == b"two" and ".bad-" in moved.name
