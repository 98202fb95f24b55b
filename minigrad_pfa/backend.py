"""NumPy / CuPy backend selection.

This is the only module of the engine that imports CuPy. Everything else obtains the
array module from the data it is given (``xp = get_array_module(x)``), never from a
global switch, so NumPy and CuPy arrays can coexist in one process and one test run.

Conventions
-----------
* ``device`` is the string ``"cpu"`` or ``"cuda"``.
* Initial weights and feedback matrices are always drawn on the host (NumPy,
  seeded ``numpy.random.Generator``) and then transferred with :func:`to_device`, so a
  CPU run and a GPU run with the same seed start from identical arrays.
* Asking for ``"cuda"`` where CuPy or a device is missing raises :class:`DeviceError`
  naming the fix; there is never a silent fallback to the CPU.
* TEST-ONLY: with the CuPy stand-in switched on (:func:`use_standin`, or the environment
  variable ``MINIGRAD_PFA_CUPY_STANDIN=1``), ``"cuda"`` means the strict CPU stand-in of
  :mod:`minigrad_pfa.standin`, and :func:`device_description` says so in every run's log.
  Stand-in arrays are recognised here whether or not it is switched on.
"""
from __future__ import annotations

import os
import sys

import numpy as np

DEVICES = ("cpu", "cuda")

_cupy = None
_cupy_import_error: Exception | None = None
try:  # CuPy is optional: ``pip install minigrad_pfa[gpu]``
    import cupy as _cupy  # type: ignore
except Exception as exc:  # pragma: no cover - depends on the machine
    _cupy = None
    _cupy_import_error = exc


class DeviceError(RuntimeError):
    """The requested device cannot be used; the message says how to fix it."""


#: TEST-ONLY switch: "1" makes ``--device cuda`` run on the CPU stand-in of CuPy
STANDIN_ENV = "MINIGRAD_PFA_CUPY_STANDIN"
_standin_on = os.environ.get(STANDIN_ENV, "") == "1"


def use_standin(on: bool = True) -> bool:
    """Switch the CuPy stand-in on or off (tests); returns the previous setting."""
    global _standin_on
    before, _standin_on = _standin_on, bool(on)
    return before


def standin_active() -> bool:
    return _standin_on


def _standin():
    from .standin import cupy as standin_cupy
    return standin_cupy


def _is_standin(x) -> bool:
    # only look when the stand-in module was ever imported: no import cost otherwise
    core = sys.modules.get("minigrad_pfa.standin.core")
    return core is not None and isinstance(x, core.DeviceArray)


def device_module():
    """The array module ``"cuda"`` means now: the stand-in (tests) or ``cupy``."""
    return _standin() if _standin_on else cupy_module()


def device_description(device: str) -> str:
    """One line naming what ``device`` runs on (logged by ``train``, ``bench``, ``doctor``)."""
    if device != "cuda":
        return device
    if _standin_on:
        return (f"cuda = the CuPy STAND-IN on the CPU (TEST-ONLY, {STANDIN_ENV}=1): no GPU "
                "is used and timings mean nothing")
    cp = cupy_module()
    name = cp.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return f"cuda ({name}, CuPy {cp.__version__})"


def cupy_module():
    """Return the ``cupy`` module or raise :class:`DeviceError` if it is not installed.

    Used by code that needs CuPy's *API* (e.g. tests that check every ``xp.<name>``
    the engine uses exists in CuPy) without needing a device.
    """
    if _cupy is None:
        raise DeviceError(
            "CuPy is not installed (import failed: %r). Install the GPU extra: "
            "pip install 'minigrad_pfa[gpu]' (CUDA 12.x), or run with --device cpu."
            % (_cupy_import_error,))
    return _cupy


def cuda_available() -> bool:
    """True when CuPy is importable *and* at least one CUDA device can be used (the
    stand-in does not count: this asks about real hardware)."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def check_device(device: str) -> str:
    """Validate a device name and make sure it is usable.

    Parameters
    ----------
    device : {"cpu", "cuda"}

    Returns
    -------
    str
        The device name, unchanged.

    Raises
    ------
    ValueError
        Unknown device name.
    DeviceError
        ``"cuda"`` requested without CuPy or without a visible CUDA device.
    """
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {DEVICES}")
    if device == "cuda" and _standin_on:
        _announce_standin()
    elif device == "cuda":
        cp = cupy_module()
        try:
            n = cp.cuda.runtime.getDeviceCount()
        except Exception as exc:
            raise DeviceError(
                f"--device cuda was requested but no CUDA device is usable ({exc}). "
                "Check the NVIDIA driver (nvidia-smi) and that cupy-cuda12x matches it, "
                "or run with --device cpu.") from exc
        if n == 0:
            raise DeviceError("--device cuda was requested but CUDA reports 0 devices; "
                              "run with --device cpu.")
    return device


_announced = False


def _announce_standin():
    global _announced
    if not _announced:
        _announced = True
        print(f"minigrad_pfa: {device_description('cuda')}", file=sys.stderr)


def get_array_module(*arrays):
    """Return ``numpy`` or ``cupy`` according to the arrays given (NumPy if none is CuPy)."""
    for a in arrays:
        if _is_standin(a):
            return _standin()
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def device_of(x) -> str:
    """``"cuda"`` for a CuPy array, ``"cpu"`` otherwise."""
    if _is_standin(x):
        return "cuda"
    return "cuda" if (_cupy is not None and isinstance(x, _cupy.ndarray)) else "cpu"


def to_device(x, device: str):
    """Move an array (or a Python scalar) to ``device``; no copy when already there."""
    if device == "cpu":
        return to_numpy(x)
    if device == "cuda":
        return device_module().asarray(x)
    raise ValueError(f"unknown device {device!r}; choose one of {DEVICES}")


def to_numpy(x):
    """Return a NumPy array for ``x`` (a device-to-host copy for CuPy arrays)."""
    if _is_standin(x):
        return _standin().asnumpy(x)
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def synchronize(x=None) -> None:
    """Block until queued GPU work is done (no-op on the CPU); used by timers."""
    if _standin_on or _is_standin(x):
        return  # the stand-in runs synchronously
    if _cupy is not None and (x is None or isinstance(x, _cupy.ndarray)):
        try:
            _cupy.cuda.Stream.null.synchronize()
        except Exception:
            pass


DTYPES = {"float32": np.float32, "float64": np.float64}


def resolve_dtype(dtype) -> np.dtype:
    """Map ``"float32"``/``"float64"`` (or a NumPy dtype) to a NumPy dtype; others are errors."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; choose float32 or float64")
        return np.dtype(DTYPES[dtype])
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"unsupported dtype {dt}; choose float32 or float64")
    return dt
