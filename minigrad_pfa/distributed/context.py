"""The data-parallel group active during a training step (read by BatchNorm).

Layers and rules never import MPI: a :class:`~minigrad_pfa.distributed.parallel.DataParallel`
makes itself *active* around a training step (``with dp.active(): ...``) and the layers
whose arithmetic spans the batch ask :func:`current` for it: BatchNorm with ``sync_bn``
adds its per-channel sums over the ranks.

Outside a training step (evaluation, the metrics' probe pass) nothing is active and every
layer computes on its own data, so probes stay local and need no collective.
"""
from __future__ import annotations

import contextlib

_active = None


def current():
    """The active data-parallel group, or None (single process, or outside a step)."""
    return _active


@contextlib.contextmanager
def activate(group):
    """Make ``group`` the active group for the duration of the ``with`` block."""
    global _active
    previous, _active = _active, group
    try:
        yield group
    finally:
        _active = previous
