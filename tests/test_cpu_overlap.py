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
        cpu_threads.wait_tasks()  # nothing left to raise


def test_an_operation_does_not_wait_for_a_busy_worker():
    """While the only worker runs a long task, a sharded operation finishes on the calling
    thread (its helper is cancelled); with the old push hand-off it would wait for it."""
    release, started = threading.Event(), threading.Event()

    def long_task():
        started.set()
        assert release.wait(30)

    with cpu.using_threads(2, min_rows=1, min_elements=1):
        cpu_threads.submit_task(long_task)
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
        cpu_threads.wait_tasks()
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
