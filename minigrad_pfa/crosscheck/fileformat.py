"""The language-neutral files: one ``.npz`` per case and a ``manifest.json``.

Layout of an export directory::

    manifest.json                  schema, layout conventions, every case's metadata + sha256
    cases/0000-<case id>.npz       inputs/<name>.npy and expected/<name>.npy members

Each ``.npz`` is a plain (stored, uncompressed) zip of ``.npy`` files (NPY format 1.0,
C order, little-endian, no object arrays), readable by ``numpy.load``, cnpy (C++) or any
zip + NPY reader. Files are byte-identical for the same engine version: the zip entries
carry a fixed timestamp (1980-01-01 00:00:00), fixed permissions and sorted names, and
``manifest.json`` is written with sorted keys.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from collections import OrderedDict

import numpy as np

from .. import __version__
from .adapter import Case
from .catalogue import Entry

SCHEMA = "minigrad-pfa-crosscheck"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

#: layout conventions written into the manifest
LAYOUT = {
    "activations": "PyTorch NCHW (n, c, h, w) or (n, features)",
    "linear_weight": "(out_features, in_features)",
    "conv_weight": "(out_channels, in_channels, kh, kw)",
    "pfa_B": "(out, mid): the 1x1 kernel (out, mid, 1, 1) flattened",
    "pfa_R": "(mid, in) or (mid, in_channels, kh, kw)",
    "dfa_D": "(classes, in) / (classes, in_channels, kh, kw) (conv='conv') / "
             "(classes, in_channels*h*w) (conv='dense', (c, h, w) order)",
    "masks": "bool, the shape of the matrix they mask",
    "trajectory": "per-step inputs and outputs stacked on a leading axis of length steps",
    "byte_order": "little-endian",
    "names": "docs/crosscheck.md",
}


class CaseFileError(ValueError):
    """An unreadable export: wrong schema, hash mismatch, missing file (one line)."""


def _npy_bytes(a: np.ndarray) -> bytes:
    a = np.array(a, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def npz_bytes(groups: dict) -> bytes:
    """A deterministic ``.npz``: ``{group: {name: array}}`` -> members ``group/name.npy``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for group in sorted(groups):
            for name in sorted(groups[group]):
                info = zipfile.ZipInfo(f"{group}/{name}.npy", date_time=_ZIP_TIME)
                info.external_attr = 0o644 << 16
                info.create_system = 3
                zf.writestr(info, _npy_bytes(groups[group][name]))
    return buf.getvalue()


def _slug(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", case_id.replace("/", "__"))


def _describe(arrays: dict) -> list:
    """``[{"name", "shape", "dtype"}]`` in the case's order (a list: JSON objects are
    written with sorted keys, and the order is the order of the report)."""
    return [OrderedDict(name=k, shape=list(v.shape), dtype=v.dtype.str)
            for k, v in arrays.items()]


def export(entries, directory: str) -> dict:
    """Write ``entries`` as case files and ``manifest.json`` under ``directory``.

    Returns
    -------
    dict with ``cases`` (count), ``bytes`` (total size of the files) and ``manifest``.
    """
    os.makedirs(os.path.join(directory, "cases"), exist_ok=True)
    records, total = [], 0
    for i, entry in enumerate(entries):
        c = entry.case
        rel = f"cases/{i:04d}-{_slug(c.id)}.npz"
        data = npz_bytes({"inputs": c.inputs, "expected": entry.expected})
        with open(os.path.join(directory, rel), "wb") as fh:
            fh.write(data)
        total += len(data)
        records.append(OrderedDict(
            id=c.id, file=rel, sha256=hashlib.sha256(data).hexdigest(), kind=c.kind,
            rule=c.rule, options=c.options, spec=c.spec, dtype=c.dtype,
            tolerance=entry.tolerance, equations=entry.equations,
            inputs=_describe(c.inputs), expected=_describe(entry.expected)))
    manifest = OrderedDict(schema=SCHEMA, schema_version=SCHEMA_VERSION,
                           engine_version=__version__, layout=LAYOUT,
                           tolerance_rule="pass when max|got - expected| <= atol + rtol * "
                                          "max|expected| (per quantity)",
                           cases=records)
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as fh:
        fh.write(text)
    return {"cases": len(records), "bytes": total + len(text.encode("utf-8")),
            "manifest": os.path.join(directory, MANIFEST)}


def read_manifest(directory: str) -> dict:
    """The manifest of an export, with its schema checked (one-line errors)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"crosscheck: case directory {directory!r} does not exist; "
                                "write one with 'minigrad-pfa crosscheck export DIR'")
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"crosscheck: {directory!r} has no {MANIFEST}; not a "
                                "directory written by 'minigrad-pfa crosscheck export'")
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CaseFileError(f"crosscheck: {path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise CaseFileError(f"crosscheck: {path}: not a crosscheck manifest (schema "
                            f"{manifest.get('schema') if isinstance(manifest, dict) else None!r}, "
                            f"expected {SCHEMA!r})")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CaseFileError(f"crosscheck: {path}: schema version {version!r}, this checker "
                            f"reads version {SCHEMA_VERSION}; re-export the cases with this "
                            "version ('minigrad-pfa crosscheck export DIR')")
    return manifest


def load(directory: str, rules=None) -> list[Entry]:
    """Read an export back into entries, verifying every file's sha256 first.

    Raises
    ------
    FileNotFoundError
        The directory, its manifest or a case file is missing.
    CaseFileError
        Wrong schema or version, a hash mismatch, or a file that does not match the
        manifest.
    """
    manifest = read_manifest(directory)
    entries = []
    for rec in manifest["cases"]:
        if rules is not None and rec["rule"] not in rules:
            continue
        path = os.path.join(directory, rec["file"])
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"crosscheck: case file {path} listed in the manifest "
                                    "is missing") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != rec["sha256"]:
            raise CaseFileError(f"crosscheck: {path}: sha256 {digest[:12]}... does not match "
                                f"the manifest's {rec['sha256'][:12]}... (file changed or "
                                "corrupt; re-export)")
        groups = {"inputs": OrderedDict(), "expected": OrderedDict()}
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            for key in npz.files:
                group, _, name = key.partition("/")
                groups[group][name] = npz[key]
        for group in ("inputs", "expected"):
            ordered = OrderedDict()
            for name in (item["name"] for item in rec[group]):
                if name not in groups[group]:
                    raise CaseFileError(f"crosscheck: {path}: member {group}/{name} listed "
                                        "in the manifest is missing")
                ordered[name] = groups[group][name]
                ordered[name].setflags(write=False)
            groups[group] = ordered
        case = Case(rec["id"], rec["kind"], rec["rule"], rec["options"], rec["spec"],
                    rec["dtype"], groups["inputs"])
        entries.append(Entry(case, groups["expected"], rec["tolerance"], rec["equations"]))
    return entries
