"""One writer per run directory: an ``flock`` on ``RUN_DIR/run.lock`` held while a run trains.

Two processes training into the same run directory (a grid started twice, a manual
``--resume`` beside a grid) would interleave metrics lines and overwrite each other's
checkpoints. The trainer therefore holds an exclusive ``fcntl.flock`` on ``run.lock`` for
as long as it works in the directory.

Why ``flock`` and not a file that exists while a run trains: taking the lock is one atomic
system call (``LOCK_EX | LOCK_NB``: granted to exactly one open file, or refused at once),
and the kernel drops it when the holder's process ends, however it ends (``kill -9``
included). So there is no stale lock to detect and take over, and no check-then-delete
race between two processes that both find one (the protocol this replaced let two
processes win together). The file itself is never deleted -- deleting it would let a
process that opened the old file and a process that created a new one hold "the" lock at
the same time -- so it stays in the directory after a run; its content, written by each
holder once it has the lock, is ``{"pid", "host", "since"}`` of the last holder and is read
only to name the holder in an error message. Linux implements ``flock`` on NFS as a
whole-file POSIX lock, so it holds across hosts of a shared file system too.
"""
from __future__ import annotations

import json
import os
import platform
import time

try:
    import fcntl
except ImportError:       # pragma: no cover - not POSIX (Windows)
    fcntl = None

LOCK_NAME = "run.lock"


class RunLockedError(RuntimeError):
    """Another live process is training in this run directory."""


def _read_info(fd: int) -> dict:
    """The holder's ``{"pid", "host", "since"}`` from an open lock file (``?`` values while
    the holder is still writing it, or for a file written by something else)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        if isinstance(info, dict):
            return info
    except (OSError, ValueError):
        pass
    return {"pid": None, "host": "?", "since": None}


def _need_fcntl():
    if fcntl is None:     # pragma: no cover
        raise RuntimeError("run directories need fcntl.flock (a POSIX system: Linux, macOS)")


def lock_owner(run_dir: str) -> dict | None:
    """The live holder ``{"pid", "host", "since"}`` of ``run_dir``'s lock, else None.

    Probes with a shared non-blocking ``flock``: granted (and released at once) means
    nobody holds it. A process that holds the lock itself is reported as the holder.
    """
    _need_fcntl()
    path = os.path.join(run_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:       # unreadable (permissions): cannot tell, so count it as held
        return {"pid": None, "host": "?", "since": None}
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_info(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """Context manager holding ``run_dir``'s lock (see the module docstring); the
    directory is created if missing.

    Raises
    ------
    RunLockedError
        A live process holds it; the message names it and the lock file.
    """

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.run_dir = run_dir
        self.fd = None

    def __enter__(self):
        _need_fcntl()
        os.makedirs(self.run_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_info(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.run_dir} is being trained by process {owner.get('pid')} on "
                f"{owner.get('host')} (since {owner.get('since')}); wait for it or stop it "
                f"(the lock on {self.path} ends with that process)") from None
        except BaseException:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": platform.node(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)        # closing the only descriptor releases the flock
            self.fd = None
        return False
