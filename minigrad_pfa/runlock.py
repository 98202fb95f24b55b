"""One writer per run directory: a lock file held while a run trains.

Two processes training into the same run directory (a grid started twice, a manual
``--resume`` beside a grid) would interleave metrics lines and overwrite each other's
checkpoints. The trainer therefore holds ``RUN_DIR/run.lock`` (created with ``O_EXCL``,
holding ``{"pid", "host", "since"}``) while it trains, and removes it when it stops, by
any exception included. A lock left by a killed process is recognised as stale when it
names this host and its pid is gone, and is taken over; a lock from another host (a
shared file system) cannot be checked, so the message says which file to delete.
"""
from __future__ import annotations

import json
import os
import platform
import time

LOCK_NAME = "run.lock"


class RunLockedError(RuntimeError):
    """Another live process is training in this run directory."""


def lock_owner(run_dir: str) -> dict | None:
    """The live owner ``{"pid", "host", "since"}`` of ``run_dir``'s lock, else None.

    A lock of this host whose process is gone is stale (None). An unreadable lock file,
    or one from another host, counts as held.
    """
    path = os.path.join(run_dir, LOCK_NAME)
    try:
        with open(path) as fh:
            info = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": None, "host": "?", "since": None}
    if info.get("host") == platform.node() and not _alive(info.get("pid")):
        return None
    return info


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # exists, owned by someone else
        return True
    return True


class RunLock:
    """Context manager holding ``run_dir``'s lock (see the module docstring).

    Raises
    ------
    RunLockedError
        A live process (or one on another host) holds it; the message names it and the
        lock file.
    """

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.run_dir = run_dir

    def __enter__(self):
        info = {"pid": os.getpid(), "host": platform.node(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = lock_owner(self.run_dir)
                if owner is not None:
                    raise RunLockedError(
                        f"{self.run_dir} is being trained by process {owner.get('pid')} on "
                        f"{owner.get('host')} (since {owner.get('since')}); wait for it, stop "
                        f"it, or delete {self.path} if that process is gone") from None
                try:                 # stale: its process died without cleaning up
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(info, fh)
            return self
        raise RunLockedError(f"could not take the lock {self.path}; another process is "
                             "starting in this run directory")

    def __exit__(self, *exc):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        return False
