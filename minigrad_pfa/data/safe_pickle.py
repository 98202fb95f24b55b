"""A restricted unpickler for the two pickled datasets we read (MNIST ``mnist.pkl.gz`` and
CIFAR-10's Python batches).

Unpickling runs code: a pickle can name any importable callable (``os.system``...) and call
it. The files we read contain only containers (tuple, list, dict), strings, numbers and
NumPy arrays, and NumPy arrays are rebuilt through exactly three globals::

    numpy.core.multiarray._reconstruct   (numpy._core.multiarray in NumPy 2 pickles)
    numpy.ndarray
    numpy.dtype

(plus ``multiarray.scalar`` for NumPy scalars such as ``np.int64`` labels, and
``_codecs.encode``, with which Python 3 protocol-2 pickles rebuild ``bytes``).
:class:`RestrictedUnpickler` resolves those and refuses every other global with
:class:`~minigrad_pfa.data.errors.UnsafePickleError` *before* anything is called. Arrays of
Python objects (dtype ``object``) are refused as well, since their elements would come
back from the same pickle stream as arbitrary objects.

We still only unpickle files whose checksum matched a pinned value, where one exists; the
restriction is the second line of defence (and the only one for user-supplied files).
"""
from __future__ import annotations

import codecs
import io
import pickle

import numpy as np

from .errors import FormatError, UnsafePickleError

try:  # NumPy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.multiarray import scalar as _np_scalar

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    # NumPy scalars (e.g. labels written as np.int64) rebuild from (dtype, raw bytes)
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 pickles at protocol 2 rebuild ``bytes`` (an array's raw data) this way;
    # it only converts a str to bytes with a named codec.
    ("_codecs", "encode"): codecs.encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only NumPy array reconstruction (see module docstring)."""

    def __init__(self, file, *, path=None, encoding: str = "latin1"):
        super().__init__(file, encoding=encoding)
        self._path = path

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                self._path, f"refused to unpickle: the pickle asks for {module}.{name}",
                expected="a pickle of plain containers and NumPy arrays only "
                         "(numpy _reconstruct / ndarray / dtype)",
                fix="this file is not the dataset it claims to be; delete it and fetch "
                    "the dataset again (minigrad-pfa data get NAME)") from None


def restricted_loads(data: bytes, *, path=None, encoding: str = "latin1"):
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; refuse object arrays.

    ``encoding="latin1"`` reads Python 2 pickles of NumPy arrays byte-exactly; CIFAR-10's
    dict keys are then ``str``; pass ``encoding="bytes"`` to keep them ``bytes``.
    """
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), path=path, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated / corrupt stream
        raise FormatError(path, f"is not a readable pickle ({type(exc).__name__}: {exc})",
                          expected="a complete pickle stream",
                          fix="fetch the file again (minigrad-pfa data get NAME)") from exc
    _refuse_object_arrays(obj, path)
    return obj


def _refuse_object_arrays(obj, path, depth: int = 0) -> None:
    if depth > 8:
        return
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafePickleError(path, "refused: the pickle holds an array of Python "
                                    "objects", expected="numeric NumPy arrays",
                                    fix="delete the file and fetch the dataset again")
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            if isinstance(item, (np.ndarray, list, tuple, dict)):
                _refuse_object_arrays(item, path, depth + 1)
    elif isinstance(obj, dict):
        for item in obj.values():
            _refuse_object_arrays(item, path, depth + 1)
