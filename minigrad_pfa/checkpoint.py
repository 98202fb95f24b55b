"""Atomic, pickle-free ``.npz`` checkpoints with integrity checks.

File format
-----------
One ``.npz`` (a zip of ``.npy`` members, written by ``np.savez``) holding

* every array under its key (e.g. ``"model/layer1.0.conv1.weight"``,
  ``"optim/momentum_buffer/fc.weight"``), always as a host (NumPy) array of a plain
  numeric, bool or unicode dtype, so ``np.load(path, allow_pickle=False)`` reads it and
  PyTorch users can load the weights without this package;
* ``"__meta__"``: a 0-d unicode array holding one JSON document::

      {"format": "minigrad_pfa.checkpoint", "version": 1,
       "arrays": {key: {"dtype": "<f4", "shape": [...], "sha256": "..."}, ...},  # in order
       "meta": <the caller's meta dict>}

  The per-array sha256 catches corruption that the zip CRC does not (a member replaced by
  another valid one); the order of ``"arrays"`` is the order :func:`load_checkpoint`
  returns.

Atomicity: the file is written to a temporary file in the same directory, flushed and
fsync'ed, then moved over the target with ``os.replace`` (atomic on POSIX and Windows) and
the directory is fsync'ed. An interrupted save (crash, kill, full disk, exception) leaves
the previous checkpoint at that path untouched and removes its temporary file when it can.

``meta`` is JSON: config dicts, the training position, and the states of NumPy generators
(:func:`rng_state_to_json`, whose big integers JSON keeps exactly). Tuples come back as
lists and NumPy scalars as Python numbers.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np

from .atomic import temp_file_beside
from .backend import to_numpy

FORMAT = "minigrad_pfa.checkpoint"
VERSION = 1
META_KEY = "__meta__"
# np.savez's own keyword arguments cannot be array names
_RESERVED = (META_KEY, "file", "allow_pickle")
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")   # an .npz is a zip archive (empty: the second)

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_checkpoint_meta",
           "pack_state",
           "unpack_state", "rng_state_to_json", "rng_from_json", "rng_set_state"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or corrupt; the message names the file and the
    problem. What to do depends on the caller (resume, export, ``--init-from``), which
    adds it."""


# ---------------------------------------------------------------------- save / load
def save_checkpoint(path, arrays: Mapping[str, Any], meta: dict | None = None) -> str:
    """Write ``arrays`` and ``meta`` to one ``.npz`` file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file (used as given; conventionally ending in ``.npz``). Its directory
        must exist.
    arrays : mapping of str -> ndarray
        NumPy or CuPy arrays (CuPy arrays are copied to the host), in the order to store.
        Keys are non-empty strings other than ``"__meta__"``, ``"file"``,
        ``"allow_pickle"``; object dtypes are refused (they would need pickling).
    meta : dict, optional
        JSON-serialisable metadata (NumPy scalars are converted).

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ValueError
        A bad key or an object-dtype array.
    TypeError
        ``meta`` is not JSON-serialisable.
    """
    path = os.fspath(path)
    host: "OrderedDict[str, np.ndarray]" = OrderedDict()
    index: "OrderedDict[str, dict]" = OrderedDict()
    for key, a in arrays.items():
        if not isinstance(key, str) or not key or key in _RESERVED:
            raise ValueError(f"checkpoint array key {key!r} is not allowed (non-empty string, "
                             f"not one of {_RESERVED})")
        a = to_numpy(a)
        if a.dtype.hasobject:
            raise ValueError(f"checkpoint array {key!r} has dtype {a.dtype}, which needs "
                             "pickling; store numeric, bool or string arrays only")
        host[key] = a
        index[key] = {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": _sha256(a)}
    doc = {"format": FORMAT, "version": VERSION, "arrays": index,
           "meta": {} if meta is None else meta}
    try:
        text = json.dumps(doc, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint meta is not JSON-serialisable ({exc}); store arrays in "
                        "`arrays` and generator states via rng_state_to_json") from None

    directory = os.path.dirname(os.path.abspath(path))
    # the temporary name matches the repository's .gitignore pattern "*.npz.tmp*"
    f, tmp = temp_file_beside(path, prefix=os.path.basename(path) + ".tmp")
    try:
        with f:
            np.savez(f, allow_pickle=False, **host, **{META_KEY: np.array(text)})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)
    return path


def load_checkpoint(path, verify: bool = True) -> tuple["OrderedDict[str, np.ndarray]", dict]:
    """Read a checkpoint written by :func:`save_checkpoint` (never unpickles anything).

    Parameters
    ----------
    path : str or os.PathLike
    verify : bool
        Check every array's dtype, shape and sha256 against the stored index.

    Returns
    -------
    arrays : OrderedDict of str -> numpy.ndarray
        Host arrays, in the order they were saved.
    meta : dict
        The ``meta`` given to :func:`save_checkpoint`, through JSON.

    Raises
    ------
    CheckpointError
        The file is missing, truncated, corrupt or not a minigrad_pfa checkpoint.
    """
    path = os.fspath(path)
    _check_is_npz(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            doc = _read_doc(z)
            index = doc["arrays"]
            stored = [k for k in z.files if k != META_KEY]
            if sorted(stored) != sorted(index):
                raise _Bad(f"its arrays {sorted(set(stored) ^ set(index))[:10]} disagree "
                           "with its index")
            out: "OrderedDict[str, np.ndarray]" = OrderedDict()
            for key, info in index.items():
                a = z[key]
                if verify:
                    if a.dtype.str != info["dtype"] or list(a.shape) != info["shape"]:
                        raise _Bad(f"array {key!r} is {a.dtype.str}{list(a.shape)}, the "
                                   f"index says {info['dtype']}{info['shape']}")
                    if _sha256(a) != info["sha256"]:
                        raise _Bad(f"array {key!r} fails its sha256 check")
                out[key] = a
    except _Bad as exc:
        raise CheckpointError(f"checkpoint {path!r} is corrupt: {exc}") from None
    except Exception as exc:  # zipfile.BadZipFile, EOFError, ValueError, zlib.error, ...
        raise _truncated(path, exc) from exc
    return out, doc["meta"]


def read_checkpoint_meta(path) -> dict:
    """The ``meta`` of a checkpoint without reading (or verifying) its arrays: cheap, for
    looking at a run's identity and position. Raises :class:`CheckpointError` like
    :func:`load_checkpoint`."""
    path = os.fspath(path)
    _check_is_npz(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return _read_doc(z)["meta"]
    except _Bad as exc:
        raise CheckpointError(f"checkpoint {path!r} is corrupt: {exc}") from None
    except Exception as exc:
        raise _truncated(path, exc) from exc


class _Bad(Exception):
    """Internal: a readable file whose content is wrong."""


def _check_is_npz(path: str) -> None:
    """Refuse what is not a zip archive before NumPy sees it: ``np.load`` would try a
    non-zip file as ``.npy`` or pickle and answer with advice to load it unsafely."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist (or is not a file)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path!r} cannot be read: {exc}") from None
    if head not in _ZIP_MAGIC:
        raise CheckpointError(f"checkpoint {path!r} is corrupt or not a checkpoint: it is not "
                              f"an .npz (zip) archive (it starts with {head!r})")


def _read_doc(z) -> dict:
    """The checked ``__meta__`` document of an open ``.npz``."""
    if META_KEY not in z.files:
        raise _Bad(f"it has no {META_KEY!r} entry (not written by save_checkpoint)")
    doc = json.loads(z[META_KEY].item())
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _Bad("its metadata does not identify a minigrad_pfa checkpoint")
    if doc.get("version") != VERSION:
        raise _Bad(f"format version {doc.get('version')!r} is not the supported {VERSION}")
    return doc


def _truncated(path: str, exc: Exception) -> CheckpointError:
    # NumPy's own messages may advise allow_pickle=True: never pass that advice on
    detail = "" if "pickle" in str(exc) else f" ({type(exc).__name__}: {exc})"
    return CheckpointError(f"checkpoint {path!r} is truncated or corrupt{detail}; an "
                           "interrupted copy or a full disk can cause this")


def _sha256(a: np.ndarray) -> str:
    """sha256 of the array's bytes in C order (dtype and shape are checked separately)."""
    flat = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    return hashlib.sha256(flat).hexdigest()


def _json_default(obj):
    """JSON fallback: NumPy scalars become Python numbers; anything else is an error."""
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON-serialisable")


def _fsync_directory(directory: str) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- model + optimizer
def pack_state(model, optimizer=None, extra_arrays: Mapping[str, Any] | None = None
               ) -> "OrderedDict[str, Any]":
    """Collect the arrays of a training state under prefixes, for :func:`save_checkpoint`.

    Returns ``"model/<name>"`` for ``model.state_dict()`` (parameters, buffers and feedback
    state), ``"optim/<key>"`` for ``optimizer.state_dict()`` and ``"extra/<key>"`` for
    ``extra_arrays``. Values are the live arrays (no copy); save them before the next step.
    """
    out: "OrderedDict[str, Any]" = OrderedDict()
    for k, v in model.state_dict().items():
        out["model/" + k] = v
    if optimizer is not None:
        for k, v in optimizer.state_dict().items():
            out["optim/" + k] = v
    for k, v in (extra_arrays or {}).items():
        out["extra/" + k] = v
    return out


def unpack_state(arrays: Mapping[str, Any], model, optimizer=None, strict: bool = True
                 ) -> "OrderedDict[str, Any]":
    """Load :func:`pack_state`'s arrays into ``model`` and ``optimizer``.

    Parameters
    ----------
    arrays : mapping
        From :func:`load_checkpoint`.
    model : Module
        Receives the ``"model/"`` arrays (converted to its device and dtypes).
    optimizer : Optimizer, optional
        Receives the ``"optim/"`` arrays; ``None`` skips them (e.g. evaluation only).
    strict : bool
        Passed to both ``load_state_dict`` calls; also makes keys without a known prefix
        an error.

    Returns
    -------
    OrderedDict
        The ``"extra/"`` arrays, prefix removed.

    Raises
    ------
    CheckpointError
        No model (or, with an optimizer, no optimizer) state in ``arrays``.
    """
    parts: dict[str, OrderedDict] = {"model": OrderedDict(), "optim": OrderedDict(),
                                     "extra": OrderedDict()}
    unknown = []
    for key, v in arrays.items():
        prefix, _, rest = key.partition("/")
        if prefix in parts and rest:
            parts[prefix][rest] = v
        else:
            unknown.append(key)
    if strict and unknown:
        raise KeyError(f"checkpoint arrays without a model/, optim/ or extra/ prefix: "
                       f"{unknown[:10]}")
    if not parts["model"]:
        raise CheckpointError("the checkpoint holds no 'model/' arrays; it was not written "
                              "with pack_state")
    if optimizer is not None and not parts["optim"]:
        raise CheckpointError("the checkpoint holds no optimizer state ('optim/' arrays), so "
                              "training cannot resume exactly from it; load it without an "
                              "optimizer to evaluate, or start the run afresh")
    model.load_state_dict(parts["model"], strict=strict)
    if optimizer is not None:
        optimizer.load_state_dict(parts["optim"], strict=strict)
    return parts["extra"]


# ---------------------------------------------------------------------- random generators
def rng_state_to_json(gen) -> dict:
    """The state of a NumPy ``Generator`` (or bit generator) as a JSON-ready dict.

    Python ints (PCG64's 128-bit state) are kept as is; arrays (MT19937's key, Philox's
    counter) become ``{"__ndarray__": [...], "dtype": "uint64"}``.
    """
    bg = gen.bit_generator if isinstance(gen, np.random.Generator) else gen
    if not isinstance(bg, np.random.BitGenerator):
        raise TypeError(f"expected a numpy.random.Generator, got {type(gen).__name__}")
    return _encode(bg.state)


def rng_from_json(state: dict) -> np.random.Generator:
    """A new ``Generator`` in the state saved by :func:`rng_state_to_json`."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise ValueError(f"unknown bit generator {name!r} in a saved generator state; "
                         f"expected one of {_BIT_GENERATORS}")
    bg = getattr(np.random, name)()
    bg.state = _decode(state)
    return np.random.Generator(bg)


def rng_set_state(gen: np.random.Generator, state: dict) -> None:
    """Restore a saved state into an existing ``Generator`` (whose references others hold)."""
    name = type(gen.bit_generator).__name__
    if state.get("bit_generator") != name:
        raise ValueError(f"saved generator state is for {state.get('bit_generator')!r}, "
                         f"this generator uses {name!r}")
    gen.bit_generator.state = _decode(state)


def _encode(obj):
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.name}
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _decode(obj):
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: _decode(v) for k, v in obj.items()}
    return obj
