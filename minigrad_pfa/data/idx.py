"""The IDX file format (MNIST, Fashion-MNIST), read and written with NumPy.

Layout (all integers big-endian)::

    byte 0-1   0x00 0x00                     (magic, always zero)
    byte 2     type code                     0x08 uint8, 0x09 int8, 0x0B int16,
                                             0x0C int32, 0x0D float32, 0x0E float64
    byte 3     ndim                          (1 for labels, 3 for images)
    4*ndim     the dimensions, uint32 each   (60000, 28, 28)
    rest       prod(dims) items, row-major

So ``train-images-idx3-ubyte`` starts with ``00 00 08 03`` (= 2051) and labels files with
``00 00 08 01`` (= 2049). Files may be gzip-compressed (``.gz``, magic ``1f 8b``); the
decompressed bytes are what the pinned checksums describe.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import FormatError, MissingDataError

IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_TYPE_CODES = {dt.newbyteorder(">") if dt.itemsize > 1 else dt: code
               for code, dt in IDX_TYPES.items()}
GZIP_MAGIC = b"\x1f\x8b"


def read_file_bytes(path, *, fix: str = "") -> bytes:
    """The (decompressed when gzip) bytes of a file, with clear errors.

    Raises
    ------
    MissingDataError
        The file does not exist.
    FormatError
        A gzip stream is truncated or corrupt.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MissingDataError(path, "file not found", fix=fix) from None
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise FormatError(path, f"corrupt or truncated gzip stream ({exc})",
                          expected="a complete gzip file", fix=fix) from exc


def parse_idx(buf, *, path=None, expected_shape=None, fix: str = "") -> np.ndarray:
    """Decode IDX bytes to an array (native byte order).

    Parameters
    ----------
    buf : bytes-like
        The whole (decompressed) file.
    path : for error messages.
    expected_shape : tuple of int, optional
        When given, the header's dimensions must equal it.

    Returns
    -------
    numpy.ndarray
        Shape ``dims`` from the header; a read-only view of ``buf`` for uint8 data.

    Raises
    ------
    FormatError
        Wrong magic number, unknown type code, truncated data, trailing bytes, or a shape
        other than ``expected_shape``.
    """
    mv = memoryview(buf)
    n = len(mv)
    if n < 4 or mv[0] != 0 or mv[1] != 0:
        got = bytes(mv[:4]).hex(" ") if n else "an empty file"
        raise FormatError(path, f"wrong magic number ({got})",
                          expected="an IDX file starting with 00 00 <type> <ndim> "
                                   "(e.g. 00 00 08 03 for images, 00 00 08 01 for labels)",
                          fix=fix)
    code, ndim = mv[2], mv[3]
    if code not in IDX_TYPES:
        raise FormatError(path, f"unknown IDX type code 0x{code:02x}",
                          expected="one of " + ", ".join(f"0x{c:02x}" for c in IDX_TYPES),
                          fix=fix)
    header = 4 + 4 * ndim
    if n < header:
        raise FormatError(path, f"truncated header ({n} bytes)",
                          expected=f"{header} header bytes for {ndim} dimensions", fix=fix)
    dims = struct.unpack(f">{ndim}I", mv[4:header])
    if expected_shape is not None and tuple(dims) != tuple(expected_shape):
        raise FormatError(path, f"header says shape {tuple(dims)}",
                          expected=f"shape {tuple(expected_shape)}", fix=fix)
    dtype = IDX_TYPES[code]
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = n - header
    if have < need:
        raise FormatError(path, f"truncated: {have} data bytes after the header",
                          expected=f"{need} data bytes for shape {tuple(dims)} "
                                   f"({dtype.name})", fix=fix)
    if have > need:
        raise FormatError(path, f"{have - need} unexpected trailing bytes",
                          expected=f"exactly {need} data bytes for shape {tuple(dims)}",
                          fix=fix)
    arr = np.frombuffer(mv, dtype=dtype, count=need // dtype.itemsize, offset=header)
    arr = arr.reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.itemsize > 1 else arr


def read_idx(path, *, expected_shape=None, fix: str = "") -> np.ndarray:
    """Read an IDX file (plain or gzip) from disk; see :func:`parse_idx`."""
    return parse_idx(read_file_bytes(path, fix=fix), path=path,
                     expected_shape=expected_shape, fix=fix)


def encode_idx(array) -> bytes:
    """The IDX bytes of ``array`` (the inverse of :func:`parse_idx`)."""
    a = np.asarray(array)
    key = a.dtype.newbyteorder(">") if a.dtype.itemsize > 1 else a.dtype
    if key not in _TYPE_CODES:
        raise ValueError(f"IDX cannot store dtype {a.dtype}; use uint8, int8, int16, "
                         "int32, float32 or float64")
    head = bytes([0, 0, _TYPE_CODES[key], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + np.ascontiguousarray(a, dtype=key).tobytes()


def write_idx(path, array, compress: bool = False) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``compress``)."""
    data = encode_idx(array)
    path = Path(path)
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path
