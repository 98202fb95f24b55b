"""The stand-in's ``cupy`` namespace: what ``get_array_module(D)`` returns for a device array.

Every ``xp.<name>`` resolves to NumPy's function of that name, run on unwrapped device data
(:func:`~minigrad_pfa.standin.core.unwrap`: host arrays raise) with the result wrapped
again — but only when the installed CuPy has ``<name>`` too, so code that runs under the
stand-in uses nothing a GPU run lacks (without CuPy installed, NumPy's names are accepted:
the stand-in is then only as strict as the data rules). Explicit pieces below:

    asarray / array      host -> device (counted in ``counters.h2d``); device data passes
    asnumpy              device -> host (one counted sync)
    fuse                 runs the Python function eagerly (CuPy compiles it to one kernel)
    ElementwiseKernel,   refuse to run: CUDA C cannot execute here
    ReductionKernel
    cuda                 one fake device: runtime queries, null stream, Device.synchronize
    get_default_memory_pool / get_default_pinned_memory_pool: pools that hold nothing
    random, linalg, lib.stride_tricks.as_strided: NumPy's, wrapped the same way
"""
from __future__ import annotations

import functools
import types

import numpy as np

from .core import _DEVICE, DeviceArray, counters, host_array_error, unwrap, wrap

__version__ = "standin (NumPy %s)" % np.__version__
ndarray = DeviceArray


@functools.lru_cache(maxsize=None)
def real_cupy():
    """The installed ``cupy`` module (for its namespace only), or None."""
    from ..backend import cupy_module, DeviceError
    try:
        return cupy_module()
    except DeviceError:
        return None


def _check_name(owner_path: str, name: str) -> None:
    cp = real_cupy()
    if cp is None:
        return
    obj = cp
    for part in owner_path.split(".")[1:] + [name]:
        if not hasattr(obj, part):
            raise AttributeError(f"{owner_path}.{name} does not exist in CuPy "
                                 f"{cp.__version__}; the stand-in refuses it too")
        obj = getattr(obj, part)


def _delegate(np_func, where: str):
    @functools.wraps(np_func)
    def f(*args, **kwargs):
        kwargs = {k: unwrap(v, where) for k, v in kwargs.items()}
        out = kwargs.get("out")
        res = np_func(*unwrap(args, where), **kwargs)
        if isinstance(out, np.ndarray) and res is out:
            return DeviceArray(res)
        return wrap(res)
    return f


def _namespace_getattr(np_owner, owner_path: str):
    """A module-level ``__getattr__`` that serves NumPy's names as device functions."""
    def getattr_(name):
        if name.startswith("__"):
            raise AttributeError(name)
        _check_name(owner_path, name)
        try:
            obj = getattr(np_owner, name)
        except AttributeError:
            raise AttributeError(f"the CuPy stand-in has no {owner_path}.{name} "
                                 "(NumPy lacks it)") from None
        if isinstance(obj, type) or not callable(obj):
            return obj  # dtypes (float32, ...) and constants (pi, newaxis, ...)
        return _delegate(obj, f"{owner_path}.{name}")
    return getattr_


__getattr__ = _namespace_getattr(np, "cupy")


# ---------------------------------------------------------------------------- crossings
def asarray(a, dtype=None, order=None):
    """Device data passes (cast if ``dtype`` differs); host data is transferred."""
    if isinstance(a, DeviceArray):
        if dtype is None or np.dtype(dtype) == a.dtype:
            return a
        return DeviceArray(a._a.astype(dtype))
    counters.h2d += 1
    return DeviceArray(np.array(a, dtype=dtype, order=order or "K", copy=True))


def array(obj, dtype=None, copy=True, order="K", ndmin=0):
    if isinstance(obj, DeviceArray):
        return DeviceArray(np.array(obj._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    counters.h2d += 1
    return DeviceArray(np.array(obj, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, DeviceArray):
        if isinstance(a, np.ndarray):
            raise host_array_error("cupy.ascontiguousarray")
        return asarray(a, dtype=dtype, order="C")
    return DeviceArray(np.ascontiguousarray(a._a, dtype=dtype))


def asnumpy(a, stream=None, order="C", out=None):
    """Device -> host copy (one counted sync); host data passes through."""
    if isinstance(a, DeviceArray):
        return a.get(order=order)
    return np.asarray(a, order=order)


def get_array_module(*args):
    return _this if any(isinstance(a, DeviceArray) for a in args) else np


# ---------------------------------------------------------------------------- kernels
def fuse(*args, **kwargs):
    """``@fuse`` / ``@fuse(kernel_name=...)``: the function itself, run eagerly.

    CuPy compiles the body (ufuncs and arithmetic on its arguments) into one kernel; its
    numbers are the eager ones up to rounding, which is what the tests compare."""
    def deco(f):
        @functools.wraps(f)
        def fused(*a, **kw):
            return f(*a, **kw)
        fused.is_standin_fused = True
        return fused
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return deco(args[0])
    return deco


class _CudaSourceKernel:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(
            f"{type(self).__name__}: the CuPy stand-in cannot run CUDA C; write the kernel "
            "with cupy.fuse (a Python function of ufuncs) to test it on the CPU")


class ElementwiseKernel(_CudaSourceKernel):
    pass


class ReductionKernel(_CudaSourceKernel):
    pass


# ---------------------------------------------------------------------------- memory, cuda
class MemoryPool:
    """Holds nothing (NumPy allocates); the byte counts CuPy reports are 0 here."""

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_bytes(self):
        return 0

    def n_free_blocks(self):
        return 0

    def free_all_blocks(self, stream=None):
        pass

    def set_limit(self, size=None, fraction=None):
        pass

    def get_limit(self):
        return 0


_pool, _pinned_pool = MemoryPool(), MemoryPool()


def get_default_memory_pool():
    return _pool


def get_default_pinned_memory_pool():
    return _pinned_pool


class _Stream:
    def synchronize(self):
        pass


class _StreamType:
    null = _Stream()


class _Runtime:
    @staticmethod
    def getDeviceCount():
        return 1

    @staticmethod
    def getDeviceProperties(i):
        return {"name": b"CuPy stand-in (CPU, test-only)", "totalGlobalMem": 0,
                "major": 0, "minor": 0, "multiProcessorCount": 0}

    @staticmethod
    def runtimeGetVersion():
        return 0

    @staticmethod
    def driverGetVersion():
        return 0


cuda = types.SimpleNamespace(runtime=_Runtime(), Stream=_StreamType,
                             Device=lambda i=0: _DEVICE,
                             get_current_stream=lambda: _StreamType.null)


# ---------------------------------------------------------------------------- submodules
class _Generator:
    """``cupy.random.Generator``: NumPy's generator, results on the device."""

    def __init__(self, np_gen):
        self._g = np_gen

    def __getattr__(self, name):
        _check_name("cupy.random.Generator", name)
        return _delegate(getattr(self._g, name), f"cupy.random.Generator.{name}")


def _default_rng(seed=None):
    return _Generator(np.random.default_rng(unwrap(seed, "cupy.random.default_rng")))


random = types.ModuleType("minigrad_pfa.standin.cupy.random")
random.__getattr__ = _namespace_getattr(np.random, "cupy.random")
random.default_rng = _default_rng
random.Generator = _Generator

linalg = types.ModuleType("minigrad_pfa.standin.cupy.linalg")
linalg.__getattr__ = _namespace_getattr(np.linalg, "cupy.linalg")


def _as_strided(x, shape=None, strides=None):
    return DeviceArray(np.lib.stride_tricks.as_strided(
        unwrap(x, "cupy.lib.stride_tricks.as_strided"), shape=shape, strides=strides))


lib = types.SimpleNamespace(stride_tricks=types.SimpleNamespace(as_strided=_as_strided))

import sys as _sys  # noqa: E402
_this = _sys.modules[__name__]
