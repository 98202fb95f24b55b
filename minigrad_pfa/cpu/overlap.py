"""Parameter gradients beside the rest of the backward pass (NumPy, T > 1, :mod:`.threads`).

Notation
--------
T : the engine's threads, l : a weight layer (the backward pass visits l = L .. 1),
delta_l : the error at l's output, P_l : l's parameter-gradient task, everything the layer
    computes from delta_l that only the optimizer reads::

        P_l = { gW = weight_grad(delta_l),  gb = colsum(delta_l),
                rule.feedback_grads(l, delta_l, gW) }        (KP: gB; PFA fast: gR; BM)

    and E_l = rule.input_error(l, delta_l), the error handed to the layers below.

Schedule. Serially a layer runs P_l then E_l, every operation cut into T batch shards.
Nothing below layer l reads P_l's results before the optimizer, so where the rule allows it
(:meth:`minigrad_pfa.rules.base.Rule.input_error_first`) the layer runs E_l first and hands
P_l to a pool worker as one task (its operations do not shard: they run inside a task)::

    main thread     E_l (shards) | BN / ReLU / adds of the layers below | E_{l-1} ...
    one worker      ............ | P_l ..........................       | P_{l-1} ...

While a task runs, the main thread's operations do not wait for it: their shards are
pulled by whichever thread is free, and a pool helper still queued behind the task when
the calling thread has taken every shard is cancelled (:func:`.threads._run`); once the
task is done the next operation takes every thread again. At the end of the backward pass
(:func:`overlapping`'s exit) the thread that opened the block waits for its tasks.

Cost model. What a serial step leaves idle at T = 2 is the second core during the main
thread's unsharded stretches (BatchNorm and ReLU of the smaller layers, Python between
operations, the loss): measured about a fifth of a ResNet-20 BP step at batch 128
(``python -m minigrad_pfa.bench.allcore``). A deferred P_l fills that time; it costs one
hand-off (25-55 us) and the tail: the main thread waits for the last tasks at the end.
Hence only tasks of at least :data:`.threads.MIN_ELEMENTS` elements of work are deferred,
and never by the network's first weight layer (nothing of the backward pass follows it).

Every block belongs to the Python thread that opened it (two threads training two models
each wait for their own tasks).

Same numbers. P_l is the same code on the same arrays; inside a task a sum over the batch
runs its fixed blocks one after another (:func:`.threads.sum_blocks`), so the gradients
have the bits of the serial step (tests/test_cpu_overlap.py).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

from . import threads

_state = {"deferred": 0,  # tasks submitted in this process (tests count them)
          "off": False}   # see disabled()
#: per Python thread: ``tasks``, the futures of the open overlapping block (None: no block),
#: so two threads training two models at once each wait for their own tasks
_local = threading.local()


def _tasks():
    return getattr(_local, "tasks", None)


@contextmanager
def overlapping(xp):
    """``with overlapping(xp): model.backward(...)``: within, weight layers may defer their
    parameter gradients (NumPy arrays and T > 1 only; else this does nothing). On exit the
    calling thread waits for the block's tasks and raises the first task's error, unless the
    block itself raised: its error propagates, with the task's as a note. Tasks left running
    by an interrupt during that wait are waited for when the thread opens its next block."""
    if xp.__name__ != "numpy" or threads.get_threads() == 1 or _tasks() is not None or \
            _state["off"]:
        yield
        return
    leftover, _local.leftover = getattr(_local, "leftover", None), None
    if leftover:  # an interrupted block's tasks end (and report) before new ones start
        threads.wait_futures(leftover)
    _local.tasks = []
    try:
        yield
    except BaseException as exc:
        # the block's own error wins (a Ctrl-C stays a KeyboardInterrupt); a task's error
        # is attached to it as a note
        try:
            drain()
        except BaseException as task_error:  # noqa: BLE001 (reported, not swallowed)
            exc.add_note(f"a deferred parameter-gradient task also failed: {task_error!r}")
        raise
    else:
        drain()
    finally:
        tasks, _local.tasks = _local.tasks, None
        if tasks:  # interrupted while waiting: the next block waits for them first
            _local.leftover = tasks


@contextmanager
def disabled():
    """Within: no layer defers (every operation of a step runs in the serial order, e.g.
    to time operations one by one, :mod:`minigrad_pfa.bench.allcore`)."""
    was, _state["off"] = _state["off"], True
    try:
        yield
    finally:
        _state["off"] = was


def can_defer(elements: int) -> bool:
    """True inside :func:`overlapping`, on the thread that opened it, for a task of
    ``elements`` of work (:data:`.threads.MIN_ELEMENTS` at least, as for a shard)."""
    return _tasks() is not None and not threads.in_shard() and \
        elements >= threads.min_elements()


def defer(fn) -> None:
    """Run ``fn()`` on a pool worker as one task of the open block (it does not shard)."""
    _tasks().append(threads.submit_task(fn))
    _state["deferred"] += 1


def drain() -> None:
    """Wait for this thread's deferred tasks; raise the first error any of them raised (a
    task still running when an interrupt arrives stays listed and is waited for again)."""
    tasks = _tasks()
    if tasks:
        threads.wait_futures(tasks)


def deferred_count() -> int:
    """Tasks deferred since the process started (for tests and the benchmark)."""
    return _state["deferred"]
