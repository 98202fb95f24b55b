"""The spinning-pool prototype (minigrad_pfa.bench.spinpool) behaves as the executor the
engine's pool is, and the engine computes the same numbers on it."""
import threading
import time

import numpy as np
import pytest

from minigrad_pfa.bench.spinpool import SpinningPool, use_spinning_pool
from minigrad_pfa.cpu import threads as cpu_threads


def test_results_errors_cancel_and_shutdown():
    pool = SpinningPool(1, spin_s=1e-3)
    try:
        assert pool.submit(lambda a, b: a * b, 6, 7).result(timeout=5) == 42
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(timeout=5)
        # the one helper is held by a task, so the next one waits in the queue: it can be
        # cancelled, and is then never run
        gate, ran = threading.Event(), []
        busy = pool.submit(gate.wait, 5)
        queued = pool.submit(ran.append, "ran")
        assert queued.cancel()
        gate.set()
        assert busy.result(timeout=5) is True
        time.sleep(0.01)  # past the spin: the helper sleeps, and a submit must wake it
        assert pool.submit(lambda: "woken").result(timeout=5) == "woken"
        assert ran == []
    finally:
        pool.shutdown(wait=True)
    assert not any(t.is_alive() for t in pool._threads)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)


def test_engine_pool_can_be_a_spinning_pool_with_the_same_numbers(monkeypatch):
    from test_cpu_parallel import _rel, _train
    from minigrad_pfa.nn.models import build_model

    make = lambda: build_model("resnet20", 0, "float64", num_classes=4)  # noqa: E731
    serial = _train(make, "bp", 1, (3, 8, 8))
    # monkeypatch restores the engine's executor after the test
    monkeypatch.setattr(cpu_threads, "ThreadPoolExecutor", cpu_threads.ThreadPoolExecutor)
    use_spinning_pool(1e-3)
    made = []
    real = cpu_threads.ThreadPoolExecutor
    monkeypatch.setattr(cpu_threads, "ThreadPoolExecutor",
                        lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    sharded = _train(make, "bp", 3, (3, 8, 8))
    assert made and isinstance(made[0], SpinningPool)   # the engine really used it
    for k in serial:
        assert _rel(sharded[k], serial[k]) <= 1e-12, k
