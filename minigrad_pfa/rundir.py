"""Run directories: one run per directory, its identity, and what a start or a resume finds.

A run directory belongs to exactly one run. Every run gets a *run id* (``uuid4().hex``) when
it starts; the id is written into

* ``run.json`` -- the directory's identity: ``{"run_id", "created", "command",
  "first_epoch", "init_from"}`` (``init_from``: where the run's initial state came from,
  for ``train --init-from``; ``first_epoch``: the first epoch it trains, 0 unless
  initialised from a checkpoint);
* the meta of every checkpoint (``latest.npz``, ``best.npz``), every line of
  ``metrics.jsonl`` / ``metrics_steps.jsonl``, and ``results.json``.

Rules enforced here, all while holding the directory's ``run.lock``
(:mod:`minigrad_pfa.runlock`, so no other live process can be writing there):

* a fresh ``train`` into a directory holding any run file (:data:`RUN_FILES`) is refused
  (:class:`RunDirError`, exit status 2) unless ``overwrite`` is given; ``--overwrite``
  renames the whole directory aside to a unique trash name in the same parent, creates
  the new directory, moves back the files that are not run state (:data:`CARRIED`: the
  grid's ``log.txt``) and deletes the trash -- no file of the old run can survive into the
  new one, and a crash in between leaves either the old directory or the new one plus a
  ``.NAME.trash-*`` folder, never a mixture;
* a resume (and a grid deciding to resume) refuses a directory whose files carry more than
  one run id (:func:`mixed_runs`): files of another run are never continued;
* on a start or a resume, temporary files of interrupted atomic writes
  (``latest.npz.tmp*``, ``best.npz.tmp*``, ``*.tmp`` of the JSON files) are removed
  (:func:`remove_stale_temp`);
* on a resume, ``metrics.jsonl`` is cut back to the epochs the checkpoint covers
  (:func:`metrics_lines_to_keep`): a torn *trailing* line (a kill during its write) lies
  after the last checkpointed epoch and is dropped with a warning; a damaged line that the
  checkpoint depends on, or a missing epoch, is an error naming the file, the line and
  what to do.

Directories made before run ids existed (no ``run.json``, no id anywhere) still resume; the
log says their identity is not checked.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import time
import uuid

from .atomic import temp_file_beside
from .runlock import RunLock

#: files that make a directory hold a run (a fresh start there needs --overwrite)
RUN_FILES = ("run.json", "config.yaml", "metrics.jsonl", "metrics_steps.jsonl", "latest.npz",
             "best.npz", "results.json")
#: files kept across --overwrite (not run state: the grid appends every attempt to log.txt)
CARRIED = ("log.txt",)
#: temporary files of this module's, the checkpoints' and the trainer's atomic writes
TEMP_PATTERNS = ("latest.npz.tmp*", "best.npz.tmp*", "run.json.tmp*", "results.json.tmp*",
                 "metrics.jsonl.tmp*", "metrics_steps.jsonl.tmp*")
META_NAME = "run.json"


class RunDirError(ValueError):
    """A run directory cannot be used as asked (one line: the directory and what to do)."""


def new_run_id() -> str:
    """A fresh run id (32 hex digits)."""
    return uuid.uuid4().hex


def run_files(root: str) -> list[str]:
    """The :data:`RUN_FILES` present in ``root`` (in that order)."""
    return [n for n in RUN_FILES if os.path.exists(os.path.join(root, n))]


# ---------------------------------------------------------------------- claiming a directory
def check_fresh(root: str, overwrite: bool = False) -> bool:
    """Whether a new run in ``root`` must first clear an old one (only with ``overwrite``;
    without it a used directory is a :class:`RunDirError`). Callers that want to fail
    before loading data call this first; :func:`claim_fresh` checks again under the lock."""
    present = run_files(root)
    if present and not overwrite:
        raise RunDirError(
            f"{root} already holds a run ({', '.join(present)}); give --overwrite to replace "
            f"it, another --run-dir/--out for a new run, or --resume {root} to continue it")
    return bool(present)


def claim_fresh(root: str, overwrite: bool = False, log=print) -> RunLock:
    """Lock ``root`` for a new run and make sure it holds no other run's file.

    Returns the held :class:`~minigrad_pfa.runlock.RunLock` (the caller releases it).

    Raises
    ------
    RunDirError
        ``root`` holds run files and ``overwrite`` is false.
    RunLockedError
        Another live process holds the directory.
    """
    lock = RunLock(root).__enter__()
    try:
        if check_fresh(root, overwrite):
            lock = _replace_directory(root, lock, log)
        remove_stale_temp(root, log)
        return lock
    except BaseException:
        lock.__exit__(None, None, None)
        raise


def claim_existing(root: str, log=print) -> RunLock:
    """Lock ``root`` to continue the run in it and remove stale temporary files."""
    lock = RunLock(root).__enter__()
    try:
        remove_stale_temp(root, log)
        return lock
    except BaseException:
        lock.__exit__(None, None, None)
        raise


def _replace_directory(root: str, old_lock: RunLock, log) -> RunLock:
    """``--overwrite``: rename ``root`` aside, create it anew (locked), delete the old one."""
    root = os.path.abspath(root)
    parent, name = os.path.split(root)
    trash = os.path.join(parent, f".{name}.trash-{uuid.uuid4().hex[:12]}")
    os.rename(root, trash)                 # atomic: the old run leaves as a whole
    try:
        lock = RunLock(root).__enter__()   # creates the new, empty directory
    except BaseException:
        try:
            os.rename(trash, root)         # put the old run back where nothing took its place
        except OSError:
            pass
        raise
    for keep in CARRIED:                   # open descriptors (a grid child's log) follow
        if os.path.exists(os.path.join(trash, keep)):
            os.rename(os.path.join(trash, keep), os.path.join(root, keep))
    old_lock.__exit__(None, None, None)
    shutil.rmtree(trash, ignore_errors=True)
    log(f"--overwrite: removed the previous run in {root}")
    return lock


def remove_stale_temp(root: str, log=print) -> list[str]:
    """Delete temporary files of interrupted writes in ``root`` (call with its lock held:
    then no live process can be writing them). Returns the names removed."""
    removed, size = [], 0
    for name in sorted(os.listdir(root)):
        if any(fnmatch.fnmatchcase(name, p) for p in TEMP_PATTERNS):
            path = os.path.join(root, name)
            try:
                size += os.path.getsize(path)
                os.unlink(path)
                removed.append(name)
            except FileNotFoundError:
                pass
    if removed:
        log(f"removed {len(removed)} temporary file(s) of an interrupted write from {root} "
            f"({size / 1e6:.1f} MB): {', '.join(removed)}")
    return removed


# ---------------------------------------------------------------------- identity
def write_meta(root: str, meta: dict) -> None:
    """Write ``run.json`` atomically."""
    path = os.path.join(root, META_NAME)
    f, tmp = temp_file_beside(path, prefix=META_NAME + ".tmp")
    try:
        with f:
            f.write(json.dumps(meta, indent=2).encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_meta(root: str) -> dict | None:
    """``run.json`` of ``root``, or None when absent (a directory made before run ids)."""
    path = os.path.join(root, META_NAME)
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} is unreadable ({exc}); the run's identity is unknown: "
                          "start afresh with --overwrite") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("run_id"), str):
        raise RunDirError(f"{path} holds no run_id; the run's identity is unknown: start "
                          "afresh with --overwrite")
    return meta


def start_meta(run_id: str, command=None, first_epoch: int = 0, init_from=None) -> dict:
    """The ``run.json`` of a new run."""
    return {"run_id": run_id, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command, "first_epoch": int(first_epoch), "init_from": init_from}


def file_run_ids(root: str) -> dict:
    """Run id per file of ``root``: ``{"run.json": id, "latest.npz": id, ...,
    "metrics.jsonl": {ids}}``; None where a file carries no id (made before run ids).
    Files that are absent are left out; unreadable lines and checkpoints are skipped
    (the resume reports those itself)."""
    from .checkpoint import CheckpointError, read_checkpoint_meta

    ids: dict = {}
    meta = read_meta(root)
    if meta is not None:
        ids[META_NAME] = meta["run_id"]
    for name in ("latest.npz", "best.npz"):
        path = os.path.join(root, name)
        if os.path.exists(path):
            try:
                ids[name] = read_checkpoint_meta(path).get("run_id")
            except CheckpointError:
                pass
    path = os.path.join(root, "results.json")
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as fh:
                ids["results.json"] = json.load(fh).get("run_id")
        except (OSError, ValueError):
            pass
    for name in ("metrics.jsonl", "metrics_steps.jsonl"):
        path = os.path.join(root, name)
        if os.path.exists(path):
            seen = set()
            with open(path, "rb") as fh:
                for raw in fh:
                    try:
                        seen.add(json.loads(raw).get("run_id"))
                    except (ValueError, AttributeError):
                        continue
            if seen:
                ids[name] = seen
    return ids


def mixed_runs(root: str) -> str | None:
    """None when every file of ``root`` belongs to one run; else which files disagree."""
    ids = file_run_ids(root)
    distinct = set()
    for v in ids.values():
        distinct |= v if isinstance(v, set) else {v}
    if len(distinct) <= 1:
        return None
    def show(v):
        vs = sorted(v, key=str) if isinstance(v, set) else [v]
        return "/".join("none" if x is None else x[:8] for x in vs)
    return "; ".join(f"{name}: run {show(v)}" for name, v in ids.items())


# ---------------------------------------------------------------------- metrics on resume
def metrics_lines_to_keep(path: str, start_epoch: int, first_epoch: int = 0,
                          need_every_epoch: bool = True, log=print,
                          fix: str = "") -> list[bytes]:
    """The lines of ``path`` (metrics.jsonl or metrics_steps.jsonl) a resume keeps: those
    of epochs before ``start_epoch``.

    A line that is not JSON is *torn* when it is the last one (a kill while it was being
    written): the epoch it belongs to was not checkpointed (the checkpoint is written after
    the line), so it is dropped with a warning. Any other damaged line, and (with
    ``need_every_epoch``) a missing epoch in ``first_epoch .. start_epoch - 1``, is an
    error naming the file, the line and ``fix``.
    """
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    numbered = [(i, ln) for i, ln in enumerate(lines, 1) if ln.strip()]
    keep, epochs = [], []
    for k, (lineno, raw) in enumerate(numbered):
        try:
            rec = json.loads(raw)
            epoch = rec["epoch"]
            if not isinstance(epoch, int):
                raise ValueError(f"epoch is {epoch!r}")
        except (ValueError, KeyError, TypeError) as exc:
            if k == len(numbered) - 1:
                log(f"warning: {path}, line {lineno}: dropped a torn last line (written "
                    "when the run was stopped, after its last checkpoint): "
                    f"{raw[:60].decode('utf-8', 'replace')!r}")
                continue
            raise RunDirError(f"{path}, line {lineno}: damaged ({type(exc).__name__}: "
                              f"{exc}); the run's checkpoint depends on it. {fix}") from None
        if epoch < start_epoch:
            keep.append(raw + b"\n")
            epochs.append(epoch)
    if need_every_epoch:
        missing = sorted(set(range(first_epoch, start_epoch)) - set(epochs))
        if missing:
            raise RunDirError(f"{path} lacks the line(s) of epoch(s) "
                              f"{', '.join(str(e + 1) for e in missing)}, which the "
                              f"checkpoint covers. {fix}")
    return keep


def rewrite_lines(path: str, lines: list[bytes]) -> None:
    """Replace ``path`` by ``lines`` atomically."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.writelines(lines)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- --init-from
def init_source(path: str) -> str:
    """The checkpoint that ``--init-from PATH`` reads: the file itself, or the
    ``latest.npz`` of a run directory (its last finished epoch; after a divergence, the
    last good one)."""
    if os.path.isdir(path):
        ckpt = os.path.join(path, "latest.npz")
        if not os.path.exists(ckpt):
            raise RunDirError(f"--init-from {path}: no latest.npz there (the run finished no "
                              f"epoch); give a checkpoint file, e.g. {path}/best.npz")
        return ckpt
    if not os.path.exists(path):
        raise RunDirError(f"--init-from {path}: no such file or directory; give a run "
                          "directory or a checkpoint (.npz) of one")
    return path


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_diff(a: dict, b: dict, ignore=()) -> list[str]:
    """Keys (dotted one level down) where two resolved configs differ, sorted."""
    diff = []
    for k in sorted(set(a) | set(b)):
        if k in ignore or a.get(k) == b.get(k):
            continue
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            diff += [f"{k}.{s}" for s in sorted(set(a[k]) | set(b[k]))
                     if a[k].get(s) != b[k].get(s)]
        else:
            diff.append(k)
    return diff
