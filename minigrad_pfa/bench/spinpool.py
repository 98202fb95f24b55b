"""A prototype worker pool whose idle helpers spin instead of sleeping (not used by the engine).

Question it answers. PyTorch's OpenMP workers busy-wait between parallel regions, so a
region starts without waking a halted virtual CPU; the engine's pool
(:class:`concurrent.futures.ThreadPoolExecutor` in :mod:`minigrad_pfa.cpu.threads`) lets
its helpers sleep on a condition variable. Would spinning helpers make the engine's
regions, and its steps, cheaper?

Notation
--------
T : the engine's threads; T - 1 helpers here, as in the engine's pool.
q : the task queue (a deque), spin_s : how long an idle helper polls q before it sleeps.

Model. A helper that finishes a task polls ``q`` for ``spin_s`` seconds, calling
``os.sched_yield`` between polls (a system call that releases the interpreter lock), and
only then waits on the condition variable::

    idle helper:  while q empty and t < t_done + spin_s:  sched_yield()
                  then: wait(cv) until q is not empty          (the engine's only state)

Cost model. A spinning helper keeps its core busy, so the first shard of the next region
starts without a wake-up (cold regions: 100-300 us saved on a KVM guest); but every poll
takes the interpreter lock back, so while the main thread runs Python between NumPy calls
the two threads take turns for the lock, and each NumPy call of the main thread may wait
for a turn. Which effect wins is measured, not assumed: ``python -m
minigrad_pfa.bench.dispatch`` (regions) and ``minigrad-pfa bench --proposals`` (whole steps,
variant ``spin-pool``, :mod:`.proto`).

The interface is the part of :class:`~concurrent.futures.ThreadPoolExecutor` the engine
uses: ``submit(fn, *args)`` returning a :class:`~concurrent.futures.Future` (which
``cancel`` can withdraw while queued) and ``shutdown(wait)``.
"""
from __future__ import annotations

import collections
import os
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager

#: seconds an idle helper polls before it sleeps (PyTorch's GNU OpenMP spins for a
#: comparable stretch by default)
SPIN_S = 2e-3


class SpinningPool:
    """``workers`` helper threads that poll for ``spin_s`` seconds before sleeping."""

    def __init__(self, workers: int, spin_s: float = SPIN_S, name: str = "minigrad-spin"):
        self._q = collections.deque()
        self._cv = threading.Condition()
        self._spin_s = float(spin_s)
        self._stop = False
        self._sleeping = 0
        self._threads = [threading.Thread(target=self._loop, daemon=True, name=f"{name}_{i}")
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def _loop(self) -> None:
        q, poll, clock = self._q, os.sched_yield, time.perf_counter
        while True:
            deadline = clock() + self._spin_s
            while not q and not self._stop and clock() < deadline:
                poll()
            with self._cv:
                while not q and not self._stop:
                    self._sleeping += 1
                    self._cv.wait()
                    self._sleeping -= 1
                if not q:  # stopped and drained
                    return
                future, fn, args = q.popleft()
            if future.set_running_or_notify_cancel():  # False: cancelled while queued
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the submitter, as an executor does
                    future.set_exception(exc)

    def submit(self, fn, *args) -> Future:
        """Queue ``fn(*args)``; its future."""
        future = Future()
        with self._cv:
            if self._stop:
                raise RuntimeError("cannot submit to a pool that was shut down")
            self._q.append((future, fn, args))
            if self._sleeping:
                self._cv.notify()
        return future

    def shutdown(self, wait: bool = True) -> None:
        """Run what is queued, then stop the helpers (joined when ``wait``)."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if wait:
            for t in self._threads:
                t.join()


def use_spinning_pool(spin_s: float = SPIN_S) -> None:
    """Make every engine pool created from now on in this process a :class:`SpinningPool`
    (:func:`minigrad_pfa.cpu.threads.set_threads` builds its pool through the module's
    ``ThreadPoolExecutor`` name)."""
    from ..cpu import threads

    def factory(max_workers, thread_name_prefix="minigrad-spin"):
        return SpinningPool(max_workers, spin_s, thread_name_prefix)

    threads.ThreadPoolExecutor = factory


@contextmanager
def spinning_pools(spin_s: float = SPIN_S):
    """``with spinning_pools():`` engine pools created inside the block are
    :class:`SpinningPool` s (:func:`use_spinning_pool`); the engine's executor after it."""
    from ..cpu import threads
    saved = threads.ThreadPoolExecutor
    use_spinning_pool(spin_s)
    try:
        yield
    finally:
        threads.ThreadPoolExecutor = saved
