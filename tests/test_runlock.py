"""One writer per run directory: ``run.lock`` under races, kills and stale files.

The race harness starts two processes at the same instant (a barrier) against a run
directory holding a *stale* lock file (a dead pid's, as a killed run leaves it). Each
process tries to take the lock; a winner records itself in a shared "holders" counter,
keeps the lock for a few milliseconds, then leaves. A trial where the counter ever reaches
2 is a double holder. The two workers live for all trials (forked once), so a trial costs
a barrier and a few milliseconds, not two interpreter start-ups.
"""
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time

import pytest

from minigrad_pfa.runlock import LOCK_NAME, RunLock, RunLockedError, lock_owner


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _stale_lock(run_dir: str, pid: int) -> None:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, LOCK_NAME), "w") as fh:
        json.dump({"pid": pid, "host": platform.node(), "since": "long ago"}, fh)


def _contender(dirs, start, end, holders, peak, wins, guard):
    for d in dirs:
        start.wait()
        try:
            lock = RunLock(d).__enter__()
        except RunLockedError:
            lock = None
        if lock is not None:
            with guard:
                holders.value += 1
                peak.value = max(peak.value, holders.value)
                wins.value += 1
            time.sleep(0.003)          # hold it while the other one is still trying
            with guard:
                holders.value -= 1
            lock.__exit__(None, None, None)
        end.wait()


def race(tmp_path, trials: int) -> tuple[int, int]:
    """(trials with two simultaneous holders, trials with no holder at all)."""
    ctx = mp.get_context("fork")
    pid = _dead_pid()
    dirs = [str(tmp_path / f"t{i}") for i in range(trials)]
    for d in dirs:
        _stale_lock(d, pid)
    start, end = ctx.Barrier(3), ctx.Barrier(3)   # the two workers and this process
    guard = ctx.Lock()
    holders, peak, wins = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [ctx.Process(target=_contender, args=(dirs, start, end, holders, peak, wins, guard))
             for _ in range(2)]
    for p in procs:
        p.start()
    double = none = 0
    try:
        for _ in dirs:
            peak.value = wins.value = 0       # reset before the workers may start
            start.wait(timeout=60)
            end.wait(timeout=60)
            double += peak.value >= 2
            none += wins.value == 0
    finally:
        for p in procs:
            p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    return double, none


def _report(trials, double, none):
    # printed so that `pytest -s` shows the count (the issue asks for it)
    print(f"\nrun.lock race: {trials} trials, {double} with two holders, {none} with none")


def test_two_processes_racing_for_a_stale_lock_never_both_win(tmp_path):
    """200 trials (a few seconds). The delete-and-recreate protocol this replaced let both
    processes win in some trials of this harness (more often on a busy machine)."""
    double, none = race(tmp_path, 200)
    _report(200, double, none)
    assert double == 0
    assert none == 0                 # a stale lock never blocks both


def test_live_holder_is_named_and_release_frees_the_lock(tmp_path):
    d = str(tmp_path / "run")
    held = RunLock(d).__enter__()
    try:
        info = lock_owner(d)
        assert info is not None and info["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match=f"process {os.getpid()}.*{LOCK_NAME}"):
            RunLock(d).__enter__()
    finally:
        held.__exit__(None, None, None)
    assert lock_owner(d) is None
    with RunLock(d):
        pass


def test_lock_dies_with_its_process(tmp_path):
    """A holder killed with SIGKILL leaves the file; the lock itself is gone with it."""
    d = str(tmp_path / "run")
    code = ("import sys, time; from minigrad_pfa.runlock import RunLock; "
            f"RunLock({d!r}).__enter__(); print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        assert lock_owner(d)["pid"] == p.pid
        with pytest.raises(RunLockedError, match=str(p.pid)):
            RunLock(d).__enter__()
    finally:
        p.kill()
        p.wait()
    assert os.path.exists(os.path.join(d, LOCK_NAME))
    assert lock_owner(d) is None
    with RunLock(d):
        assert lock_owner(d)["pid"] == os.getpid()
