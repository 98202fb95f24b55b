"""Host copies of small integer rule buffers (step counters, stream keys), read once.

Why: brSF and WM draw on the host from ``default_rng([key0, key1, t])``, with ``key`` and
the counter ``t`` kept as *buffers* (checkpointed, moved by ``Module.to``). On the GPU
reading them back every step costs a device->host synchronisation per layer and step.
Here each buffer is read once per buffer *object* and the host copy is kept beside it:

    host_value(layer, name)   -> the buffer's host copy (one read when the buffer object
                                 is new: after attach, ``load_state_dict`` or ``.to``)
    increment(layer, name)    -> buffer += 1 on its device, host copy += 1; returns the
                                 new count (no read)

The copy is keyed by the buffer object itself (held, so the identity cannot be reused):
code that replaces a buffer invalidates it; the only in-place change of these buffers is
:func:`increment`.
"""
from __future__ import annotations

from ..backend import to_numpy

_ATTR = "_rule_host_copies"


def _copies(layer) -> dict:
    d = layer.__dict__.get(_ATTR)
    if d is None:
        d = {}
        object.__setattr__(layer, _ATTR, d)
    return d


def host_value(layer, name: str):
    """The host copy (NumPy array; a Python int for 0-d integer buffers) of buffer ``name``."""
    buf = getattr(layer, name)
    copies = _copies(layer)
    entry = copies.get(name)
    if entry is None or entry[0] is not buf:
        value = to_numpy(buf)  # the one device->host read of this buffer object
        value = int(value) if value.ndim == 0 else value.copy()
        entry = copies[name] = [buf, value]
    return entry[1]


def increment(layer, name: str) -> int:
    """``buffer += 1`` (in place, on its device) and its host copy; returns the new value."""
    t = host_value(layer, name) + 1
    buf = getattr(layer, name)
    buf += 1
    _copies(layer)[name] = [buf, t]
    return t
