"""The stand-in's device array and its crossing counters (rules in the package docstring).

Every operation unwraps its device operands to their NumPy data, runs NumPy (so dtype
promotion, broadcasting and views are NumPy's), and wraps the result again; a host
``numpy.ndarray`` met on the way is a ``TypeError``, like in CuPy. NumPy scalars and Python
numbers are accepted (CuPy takes them as kernel scalars); NumPy scalar *results*
(reductions, full indexing) come back as 0-d device arrays, as in CuPy.
"""
from __future__ import annotations

import collections
import contextlib
import operator
import traceback

import numpy as np

#: frames skipped when a sync's site is traced: the stand-in and the explicit crossings
_PASS_THROUGH = ("/standin/core.py", "/standin/cupy.py", "/minigrad_pfa/backend.py")


class HostSyncCounter:
    """Counts device -> host reads (``syncs``) and host -> device transfers (``h2d``).

    With ``trace = True`` each sync also records the engine line that caused it in
    ``sites`` (``"file:line (kind)"`` -> count): the first frame outside the stand-in and
    the backend's explicit crossings (``to_numpy``).
    """

    def __init__(self):
        self.syncs = 0
        self.h2d = 0
        self.trace = False
        self.sites = collections.Counter()

    def sync(self, what: str) -> None:
        self.syncs += 1
        if self.trace:
            for fr in reversed(traceback.extract_stack()[:-2]):
                if not fr.filename.replace("\\", "/").endswith(_PASS_THROUGH):
                    self.sites[f"{fr.filename}:{fr.lineno} ({what})"] += 1
                    break


#: the process-wide counters (tests and ``bench`` read differences of them)
counters = HostSyncCounter()


@contextlib.contextmanager
def count_syncs(trace: bool = False):
    """``with count_syncs() as c: ...`` -> ``c["syncs"]``, ``c["h2d"]`` (and ``c["sites"]``)
    of the block."""
    s0, h0, t0 = counters.syncs, counters.h2d, counters.trace
    sites0 = collections.Counter(counters.sites)
    counters.trace = trace or t0
    out = {}
    try:
        yield out
    finally:
        counters.trace = t0
        out["syncs"] = counters.syncs - s0
        out["h2d"] = counters.h2d - h0
        out["sites"] = counters.sites - sites0


def host_array_error(where: str) -> TypeError:
    return TypeError(
        f"{where}: a host numpy.ndarray met a device array (CuPy stand-in). CuPy does not mix "
        "them; move it explicitly with minigrad_pfa.backend.to_device(x, 'cuda') or read the "
        "device array back with to_numpy()/.get().")


def unwrap(obj, where: str):
    """Device arrays -> their NumPy data (recursing into lists/tuples); host arrays raise."""
    if isinstance(obj, DeviceArray):
        return obj._a
    if isinstance(obj, np.ndarray):
        raise host_array_error(where)
    if isinstance(obj, (list, tuple)):
        return type(obj)(unwrap(o, where) for o in obj) if type(obj) in (list, tuple) \
            else obj
    return obj


def wrap(obj):
    """NumPy results -> device arrays (NumPy scalars become 0-d device arrays)."""
    if isinstance(obj, np.ndarray):
        return DeviceArray(obj)
    if isinstance(obj, np.generic):
        return DeviceArray(np.asarray(obj))
    if isinstance(obj, tuple):
        items = [wrap(o) for o in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [wrap(o) for o in obj]
    return obj


def _binary(op, name):
    def method(self, other):
        return wrap(op(self._a, unwrap(other, f"ndarray.{name}")))
    method.__name__ = name
    return method


def _reflected(op, name):
    def method(self, other):
        return wrap(op(unwrap(other, f"ndarray.{name}"), self._a))
    method.__name__ = name
    return method


def _inplace(op, name):
    def method(self, other):
        op(self._a, unwrap(other, f"ndarray.{name}"))
        return self
    method.__name__ = name
    return method


def _unary(op, name):
    def method(self):
        return wrap(op(self._a))
    method.__name__ = name
    return method


def _counted(kind: str, read):
    """A method that reads device data to the host: one counted sync, then ``read(data)``."""
    def method(self, *args):
        counters.sync(kind)
        return read(self._a, *args)
    method.__name__ = kind
    return method


def _cupy_ndarray_has(name: str) -> bool:
    """Whether real ``cupy.ndarray`` has ``name`` (NumPy's ndarray when CuPy is absent)."""
    from .cupy import real_cupy
    cp = real_cupy()
    return hasattr(cp.ndarray if cp is not None else np.ndarray, name)


class DeviceArray:
    """A stand-in ``cupy.ndarray``: NumPy data that refuses implicit host crossings."""

    __slots__ = ("_a", "__weakref__")
    # NumPy ufuncs and binary operators with a host array on the left hand us back
    # (NotImplemented -> our reflected method raises); numpy.<ufunc>(D) raises TypeError
    __array_ufunc__ = None

    def __init__(self, data: np.ndarray):
        if not isinstance(data, np.ndarray):
            raise TypeError(f"DeviceArray wraps a numpy.ndarray, got {type(data).__name__}")
        self._a = data

    # ------------------------------------------------------------ implicit conversion
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed (CuPy stand-in). "
                        "Please use .get() / minigrad_pfa.backend.to_numpy() to construct a "
                        "NumPy array explicitly.")

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} was called on a device array (CuPy stand-in); "
                        "use the array module of the data: "
                        "xp = minigrad_pfa.backend.get_array_module(x); xp."
                        f"{func.__name__}(...)")

    # ------------------------------------------------------------ counted crossings
    def get(self, stream=None, order="C", out=None):
        """Device -> host copy (one counted sync)."""
        counters.sync("get")
        return np.array(self._a, order=order, copy=True)

    def __format__(self, spec):
        counters.sync("format")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __repr__(self):
        counters.sync("repr")
        return "standin." + repr(self._a)

    __str__ = __repr__

    def __reduce__(self):  # pickling copies to the host, as CuPy's does
        counters.sync("pickle")
        return (_from_host, (np.array(self._a),))

    def __copy__(self):
        return DeviceArray(self._a.copy())

    def __deepcopy__(self, memo):
        return DeviceArray(self._a.copy())

    # ------------------------------------------------------------ attributes (no sync)
    shape = property(lambda self: self._a.shape)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    dtype = property(lambda self: self._a.dtype)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: DeviceArray(self._a.T))
    device = property(lambda self: _DEVICE)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        for i in range(len(self._a)):
            yield wrap(self._a[i])

    # ------------------------------------------------------------ indexing
    def __getitem__(self, key):
        return wrap(self._a[unwrap(key, "ndarray.__getitem__")])

    def __setitem__(self, key, value):
        self._a[unwrap(key, "ndarray.__setitem__")] = unwrap(value, "ndarray.__setitem__")

    # ------------------------------------------------------------ methods
    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        return DeviceArray(self._a.astype(dtype, order=order, copy=copy))

    def reshape(self, *shape, order="C"):
        return DeviceArray(self._a.reshape(*shape, order=order))

    def __getattr__(self, name):
        """Other ``ndarray`` methods CuPy also has, on device data (results on device)."""
        if name.startswith("_") or not hasattr(np.ndarray, name):
            raise AttributeError(f"stand-in device array has no attribute {name!r}")
        if not _cupy_ndarray_has(name):
            raise AttributeError(f"cupy.ndarray has no attribute {name!r} (CuPy stand-in)")
        attr = getattr(self._a, name)
        if not callable(attr):
            return wrap(attr)

        def method(*args, **kwargs):
            where = f"ndarray.{name}"
            kwargs = {k: unwrap(v, where) for k, v in kwargs.items()}
            out = kwargs.get("out")
            res = attr(*unwrap(args, where), **kwargs)
            if out is not None and res is out:
                return DeviceArray(res)
            return wrap(res)
        method.__name__ = name
        return method


def _from_host(a):
    counters.h2d += 1
    return DeviceArray(a)


class _Device:
    id = 0

    def __repr__(self):
        return "<CUDA Device 0 (CuPy stand-in on the CPU)>"

    def synchronize(self):
        pass


_DEVICE = _Device()

_BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
           "truediv": operator.truediv, "floordiv": operator.floordiv, "mod": operator.mod,
           "pow": operator.pow, "matmul": operator.matmul, "and": operator.and_,
           "or": operator.or_, "xor": operator.xor, "lshift": operator.lshift,
           "rshift": operator.rshift}
_INPLACE = {"add": operator.iadd, "sub": operator.isub, "mul": operator.imul,
            "truediv": operator.itruediv, "floordiv": operator.ifloordiv,
            "mod": operator.imod, "pow": operator.ipow, "and": operator.iand,
            "or": operator.ior, "xor": operator.ixor, "lshift": operator.ilshift,
            "rshift": operator.irshift}
_COMPARE = {"lt": operator.lt, "le": operator.le, "eq": operator.eq, "ne": operator.ne,
            "gt": operator.gt, "ge": operator.ge}
_UNARY = {"neg": operator.neg, "pos": operator.pos, "abs": operator.abs,
          "invert": operator.invert}

_READS = {"item": np.ndarray.item, "tolist": np.ndarray.tolist, "__float__": float,
          "__int__": int, "__complex__": complex, "__bool__": bool,
          "__index__": operator.index}
for _n, _op in _READS.items():
    setattr(DeviceArray, _n, _counted(_n.strip("_"), _op))
for _n, _op in {**_BINARY, **_COMPARE}.items():
    setattr(DeviceArray, f"__{_n}__", _binary(_op, f"__{_n}__"))
for _n, _op in _BINARY.items():
    setattr(DeviceArray, f"__r{_n}__", _reflected(_op, f"__r{_n}__"))
for _n, _op in _INPLACE.items():
    setattr(DeviceArray, f"__i{_n}__", _inplace(_op, f"__i{_n}__"))
for _n, _op in _UNARY.items():
    setattr(DeviceArray, f"__{_n}__", _unary(_op, f"__{_n}__"))
DeviceArray.__hash__ = None
del _n, _op
