"""``mpiexec -n N minigrad-pfa train CONFIG --distributed``: one rank of a data-parallel run.

Every rank builds the same model from the same seed (host draws; checked), trains on its
shard of every global batch (:mod:`minigrad_pfa.distributed.parallel`) and evaluates a slice
of every evaluation batch. Rank 0 alone writes the run directory (config, metrics,
checkpoints, results, ``distributed.json``); the other ranks run the identical trainer
against a private scratch directory under ``$TMPDIR`` (deleted at the end), so that every
rank executes the same code path -- metrics included, which keeps the ranks in step -- and
nothing outside rank 0 touches the shared run directory.

``--resume`` reads the checkpoints on rank 0 and broadcasts them, so it works with another
N than the interrupted run (the batch must divide over the new N) and without a shared
filesystem. A rank that raises ends every rank (``MPI_Abort``) with its message; a rank
that dies or hangs ends the others at the collective deadline (:mod:`.comm`).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time

from .parallel import DataParallel

#: written by rank 0 in the run directory: one entry per start or resume
RECORD = "distributed.json"
#: what a resume reads from the run directory (rank 0 reads, every rank gets a copy)
SHARED_ON_RESUME = ("run.json", "config.yaml", "metrics.jsonl", "metrics_steps.jsonl",
                    "latest.npz", "best.npz")


def select_communicator(device: str, timeout_s: float | None = None):
    """The communicator for ``device``: MPI for host arrays, NCCL (set up over MPI) for CuPy."""
    if device == "cuda":
        from .nccl import NCCLCommunicator
        return NCCLCommunicator(timeout_s)
    from .comm import MPICommunicator
    return MPICommunicator(timeout_s)


def train_distributed(cfg: dict, out_dir: str, resume: bool = False, progress: bool = True,
                      command: str | None = None, timeout_s: float | None = None,
                      comm=None) -> dict:
    """Run this rank of a data-parallel training run; returns the results (rank 0's dict).

    An exception on any rank prints ``rank r of N: error: ...`` and ends every rank
    (exit status 3 for a runtime error such as divergence, 2 for a usage error).
    """
    comm = comm if comm is not None else select_communicator(cfg["device"], timeout_s)
    group = DataParallel(comm, sync_bn=cfg["distributed"]["sync_bn"])
    scratch = None
    try:
        # every rank has checked the run directory (the CLI's freshness check) before
        # rank 0 writes into it
        comm.barrier("start")
        if comm.rank != 0:
            scratch = tempfile.mkdtemp(prefix=f"minigrad-pfa-rank{comm.rank}-")
        return _train(group, cfg, out_dir, scratch, resume, progress, command)
    except (KeyboardInterrupt, Exception) as exc:
        if comm.size == 1:
            raise
        if os.environ.get("MINIGRAD_PFA_DEBUG"):
            import traceback
            traceback.print_exc()
        code = 2 if isinstance(exc, (ValueError, FileNotFoundError)) else 3
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else \
            f"{type(exc).__name__}: {exc}"
        if scratch is not None:  # name the run directory, not this rank's scratch copy
            what = what.replace(scratch, out_dir)
        comm.abort(f"{what} (ending every rank)", code=code)
        raise  # pragma: no cover - Abort does not return
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _train(group, cfg, out_dir, scratch, resume, progress, command):
    from ..experiment_data import build_data
    from ..train import Trainer

    writer = group.rank == 0
    data = build_data(cfg, progress=writer and progress)
    holder = {}
    data.train = group.shard(data.train, even=True,
                             on_epoch_end=lambda: _epoch_end(group, holder["trainer"]))
    if data.val is not None:
        data.val = group.shard(data.val, even=False)
    data.test = group.shard(data.test, even=False)
    trainer = Trainer(cfg, out_dir if writer else scratch, data,
                      progress=progress and writer, log=print if writer else _silent,
                      command=command, parallel=group)
    holder["trainer"] = trainer
    group.check_identical(trainer.model, when="at start (host-drawn initialisation)")
    if resume:
        _share_checkpoints(group, out_dir, scratch)
        trainer.resume()
        group.check_identical(trainer.model, trainer.optimizer, when="after the resume")
    hosts = group.comm.allgather(platform.node(), what="host names")
    if writer:
        _record(out_dir, group, cfg, trainer.start_epoch, command, hosts)
    results = trainer.fit()
    if writer:
        results = _annotate_results(trainer.paths.results, group)
    return results


def _silent(*args, **kwargs):
    pass


def _epoch_end(group: DataParallel, trainer) -> None:
    """After an epoch's last step, before evaluation and checkpoints: BatchNorm running
    statistics from rank 0 (per-rank statistics otherwise differ), then the check that the
    ranks still hold one model."""
    if not group.sync_bn:
        group.sync_buffers(trainer.model)
    group.check_identical(trainer.model, trainer.optimizer, when="at the end of an epoch")


def _share_checkpoints(group: DataParallel, out_dir: str, scratch: str | None) -> None:
    """Rank 0's run files (checkpoints, logs, identity), copied into the other ranks'
    scratch directories, where the same resume then runs."""
    files = None
    if group.rank == 0:
        files = {}
        for name in SHARED_ON_RESUME:
            path = os.path.join(out_dir, name)
            if os.path.exists(path):
                with open(path, "rb") as fh:
                    files[name] = fh.read()
    files = group.comm.broadcast(files, what="checkpoint broadcast")
    if scratch is not None:
        for name, blob in files.items():
            with open(os.path.join(scratch, name), "wb") as fh:
                fh.write(blob)


def _record(out_dir: str, group: DataParallel, cfg: dict, start_epoch: int, command,
            hosts) -> None:
    """Append this start (or resume) to RUN_DIR/distributed.json: N, sync_bn, hosts."""
    path = os.path.join(out_dir, RECORD)
    history = []
    if os.path.exists(path) and start_epoch > 0:
        with open(path) as fh:
            history = json.load(fh)
    history.append({"world_size": group.size, "sync_bn": group.sync_bn,
                    "backend": group.comm.backend, "start_epoch": start_epoch,
                    "per_rank_batch": cfg["data"]["batch_size"] // group.size,
                    "hosts": sorted(set(hosts)), "command": command,
                    "mpi_launch": " ".join(sys.argv), "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(history, fh, indent=2)
    os.replace(tmp, path)


def _annotate_results(path: str, group: DataParallel) -> dict:
    """Add ``world_size`` and ``sync_bn`` to results.json (atomic rewrite)."""
    with open(path) as fh:
        results = json.load(fh)
    results["distributed"] = {"world_size": group.size, "sync_bn": group.sync_bn,
                              "backend": group.comm.backend}
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=2)
    os.replace(tmp, path)
    return results
