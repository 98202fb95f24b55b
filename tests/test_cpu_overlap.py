"""Parameter gradients beside the backward pass (minigrad_pfa.cpu.overlap) and the pool's
pulled shards (minigrad_pfa.cpu.threads._run).

That the overlapped steps give the same numbers as serial ones is checked for every rule
by tests/test_cpu_parallel.py (float64 to 1e-12 with 3 threads, float32 bit for bit with
2): their steps run the train step's backward inside ``overlapping``. This file checks
that the overlap really happens where a rule allows it, never where it does not, and that
an error or a busy worker cannot turn into a wrong or hung step.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from minigrad_pfa import cpu
from minigrad_pfa.cpu import overlap
from minigrad_pfa.cpu import threads as cpu_threads
from minigrad_pfa.nn.models import build_model, weight_layers
from minigrad_pfa.optim import build_optimizer
from minigrad_pfa.rules import attach_rules
from minigrad_pfa.train import train_step


def _deferred_per_step(spec, threads=2):
    """Tasks deferred by one ResNet-20 (8 x 8 input, batch 4) step, and its weight layers."""
    model = build_model("resnet20", 0, "float64", num_classes=4)
    attach_rules(model, spec, 0, input_shape=(3, 8, 8))
    layers = list(weight_layers(model).values())
    opt = build_optimizer("sgd", list(model.named_parameters(trainable_only=True)), lr=0.05)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 4, size=4)
    with cpu.using_threads(threads, min_rows=1, min_elements=1):
        before = overlap.deferred_count()
        train_step(model, layers, opt, x, y)
        return overlap.deferred_count() - before, len(layers)


@pytest.mark.parametrize("spec", ["bp", "fa", "usf", "kp", "dfa",
                                  {"name": "pfa", "expand_ratio": 2, "order": "fast"}],
                         ids=["bp", "fa", "usf", "kp", "dfa", "pfa_fast"])
def test_every_weight_layer_but_the_first_defers_where_the_rule_allows(spec):
    deferred, n_layers = _deferred_per_step(spec)
    assert deferred == n_layers - 1  # the first layer has no input error to compute first


@pytest.mark.parametrize("spec", ["wm", {"name": "pfa", "expand_ratio": 2, "order": "literal"}],
                         ids=["wm", "pfa_literal"])
def test_rules_whose_input_error_reads_their_feedback_grads_never_defer(spec):
    assert _deferred_per_step(spec)[0] == 0


def test_nothing_is_deferred_on_one_thread():
    assert _deferred_per_step("bp", threads=1)[0] == 0


def test_a_deferred_error_is_raised_by_the_step_after_every_task_ended():
    finished = []

    def ok():
        finished.append(1)

    with cpu.using_threads(2, min_elements=1):
        with pytest.raises(ZeroDivisionError):
            with overlap.overlapping(np):
                assert overlap.can_defer(1)
                overlap.defer(lambda: 1 / 0)
                overlap.defer(ok)
        assert finished == [1]
        assert not overlap.can_defer(1)  # the block is over


def test_an_operation_does_not_wait_for_a_busy_worker():
    """While the only worker runs a long task, a sharded operation finishes on the calling
    thread (its helper is cancelled); with the old push hand-off it would wait for it."""
    release, started = threading.Event(), threading.Event()

    def long_task():
        started.set()
        assert release.wait(30)

    with cpu.using_threads(2, min_rows=1, min_elements=1):
        task = cpu_threads.submit_task(long_task)
        assert started.wait(10)
        seen = []
        done = threading.Event()

        def op():
            seen.extend(cpu_threads.map_shards(lambda sl: (sl.start, sl.stop), 8))
            done.set()

        runner = threading.Thread(target=op)
        runner.start()
        finished_while_busy = done.wait(10)
        release.set()
        runner.join(10)
        task.result(10)
    assert finished_while_busy
    assert seen == [(0, 4), (4, 8)]  # every shard once, in shard order


def test_pulled_shards_run_once_each_in_order_and_raise_errors():
    with cpu.using_threads(3, min_rows=1, min_elements=1):
        calls = []
        out = cpu_threads.map_shards(lambda sl: calls.append(sl.start) or sl.start * 10, 9)
        assert out == [0, 30, 60] and sorted(calls) == [0, 3, 6]

        def bad(sl):
            if sl.start == 3:
                raise ValueError("shard 1")
            return sl.start

        with pytest.raises(ValueError, match="shard 1"):
            cpu_threads.map_shards(bad, 9)


def test_the_backward_error_wins_over_a_task_error_and_tasks_end_first():
    """A KeyboardInterrupt in the backward stays a KeyboardInterrupt (the task's error is a
    note), and no task is still running when it propagates."""
    release = threading.Event()
    state = []

    def slow_failing_task():
        release.wait(5)
        state.append("task ended")
        raise RuntimeError("task failed")

    with cpu.using_threads(2, min_elements=1):
        with pytest.raises(KeyboardInterrupt) as info:
            with overlap.overlapping(np):
                overlap.defer(slow_failing_task)
                threading.Timer(0.2, release.set).start()
                raise KeyboardInterrupt
        assert state == ["task ended"]
        assert any("task failed" in note for note in getattr(info.value, "__notes__", []))


def test_an_interrupted_wait_leaves_its_tasks_to_the_next_block(monkeypatch):
    """If the wait at the block's end is interrupted, the unfinished tasks stay listed and
    the thread's next block waits for them (and raises their error) before deferring more."""
    release = threading.Event()

    def slow_failing_task():
        assert release.wait(10)
        raise RuntimeError("left over")

    real_wait = cpu_threads.wait_futures
    calls = []

    def interrupted_once(futures):
        calls.append(len(futures))
        if len(calls) == 1:
            raise KeyboardInterrupt  # as if Ctrl-C arrived during the wait
        return real_wait(futures)

    monkeypatch.setattr(cpu_threads, "wait_futures", interrupted_once)
    with cpu.using_threads(2, min_elements=1):
        with pytest.raises(KeyboardInterrupt):
            with overlap.overlapping(np):
                overlap.defer(slow_failing_task)
        release.set()
        with pytest.raises(RuntimeError, match="left over"):
            with overlap.overlapping(np):
                pass
        assert calls == [1, 1]
        with overlap.overlapping(np):  # and then nothing is left
            pass


def test_two_python_threads_training_at_once_each_wait_for_their_own_tasks():
    """Two threads each running train_step on their own model get the parameters of the
    same steps run alone (before per-thread blocks, one thread's gradients could be read
    before its tasks had ended)."""
    def run(results, key, steps=4):
        model = build_model("resnet20", 0, "float64", num_classes=4)
        attach_rules(model, "bp", 0, input_shape=(3, 8, 8))
        layers = list(weight_layers(model).values())
        opt = build_optimizer("sgd", list(model.named_parameters(trainable_only=True)),
                              lr=0.05, momentum=0.9)
        rng = np.random.default_rng(key)
        for _ in range(steps):
            x, y = rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 4, size=4)
            train_step(model, layers, opt, x, y)
        results[key] = model.state_dict()

    with cpu.using_threads(3, min_rows=1, min_elements=1):
        alone = {}
        run(alone, 0)
        run(alone, 1)
        together = {}
        workers = [threading.Thread(target=run, args=(together, k)) for k in (0, 1)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
    for k in (0, 1):
        for name in alone[k]:
            assert np.array_equal(alone[k][name], together[k][name]), (k, name)


def test_a_failing_shard_on_the_calling_thread_waits_for_the_running_helpers():
    ended = []

    def fn(sl):
        if sl.start == 0:
            raise ValueError("shard 0")
        threading.Event().wait(0.2)
        ended.append(sl.start)
        return sl.start

    with cpu.using_threads(3, min_rows=1, min_elements=1):
        with pytest.raises(ValueError, match="shard 0"):
            cpu_threads.map_shards(fn, 9)
        assert len(ended) <= 2 and all(s in (3, 6) for s in ended)
        snapshot = list(ended)
        threading.Event().wait(0.5)
        assert ended == snapshot  # nothing ran on after the error was raised
