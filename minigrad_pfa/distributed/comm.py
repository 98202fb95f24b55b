"""Communicators: the collectives data-parallel training needs, with a deadline.

Three implementations of one small interface (``rank``, ``size``, ``allreduce_sum``,
``broadcast``, ``allgather``, ``barrier``, ``abort``):

* :class:`LocalCommunicator` -- one process (rank 0 of 1); every collective is the identity.
  The single-process trainer never builds one: it is the reference and the test double.
* :class:`MPICommunicator` -- MPI through mpi4py (imported when one is built, never by
  ``import minigrad_pfa``): host (NumPy) buffers.
* :class:`~minigrad_pfa.distributed.nccl.NCCLCommunicator` -- CuPy buffers through NCCL,
  everything else through MPI (:mod:`minigrad_pfa.distributed.nccl`).

Why a deadline. MPI collectives have no timeout: a rank that died without taking the job
down (or that hangs) leaves the others blocked forever. So every collective here is started
*non-blocking* (``Iallreduce``, or an ``Ibarrier`` rendezvous before an object collective)
and polled against a deadline of ``timeout_s``; past it, this rank prints which collective
timed out and calls ``MPI_Abort``, which ends every rank of the job. Files are never left
half-written by that: checkpoints are replaced atomically (:mod:`minigrad_pfa.atomic`), so
the run directory keeps its last good ``latest.npz``.

Polling cost: ``Test`` is called in a loop with a sleep that grows from 0 to 1 ms, so a
waiting rank neither spins a core (the ranks share the machine's cores) nor adds more than
~1 ms to a collective that completes late.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

#: seconds a rank waits for the others in one collective before ending the job
DEFAULT_TIMEOUT_S = 300.0
#: seconds a failing rank waits between printing its error and MPI_Abort (see abort)
ABORT_GRACE_S = 0.5
TIMEOUT_ENV = "MINIGRAD_PFA_COLLECTIVE_TIMEOUT"


def default_timeout() -> float:
    """``$MINIGRAD_PFA_COLLECTIVE_TIMEOUT`` (seconds) or :data:`DEFAULT_TIMEOUT_S`."""
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw!r}")
    return value


class MissingDependency(ImportError, RuntimeError):
    """An optional dependency is absent (a RuntimeError too: the CLI prints it in one line)."""


def import_mpi():
    """``mpi4py.MPI``, or a :class:`MissingDependency` that names the fix."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MissingDependency("distributed training needs mpi4py and an MPI library: "
                          "pip install 'minigrad_pfa[mpi]' (mpi4py + the mpich wheel), or "
                          f"mpi4py built against the cluster's MPI ({exc})") from None
    return MPI


class LocalCommunicator:
    """One process: rank 0 of 1, collectives are identities."""

    backend = "local"
    rank = 0
    size = 1

    def allreduce_sum(self, buf, what: str = "all-reduce"):
        return buf

    def broadcast(self, obj, root: int = 0, what: str = "broadcast"):
        return obj

    def allgather(self, obj, what: str = "all-gather"):
        return [obj]

    def barrier(self, what: str = "barrier") -> None:
        pass

    def abort(self, message: str, code: int = 1):
        raise SystemExit(message)


class MPICommunicator:
    """MPI collectives on host buffers, each with a deadline (module docstring).

    Parameters
    ----------
    timeout_s : float, optional
        Seconds to wait in one collective (default :func:`default_timeout`).
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``.
    """

    backend = "mpi"

    def __init__(self, timeout_s: float | None = None, comm=None):
        self.MPI = import_mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.timeout_s = float(timeout_s) if timeout_s is not None else default_timeout()

    # ------------------------------------------------------------------ waiting
    def wait(self, request, what: str) -> None:
        """Poll ``request`` until it completes, or abort the job after ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        pause = 0.0
        while not request.Test():
            if time.monotonic() > deadline:
                self.abort(f"{what}: no answer from the other ranks within {self.timeout_s:g} s "
                           f"(a rank failed, was killed or hangs; raise {TIMEOUT_ENV} for slow "
                           "steps); ending every rank. The run directory keeps its last "
                           "finished epoch: continue with --resume RUN_DIR")
            time.sleep(pause)
            pause = min(1e-3, pause * 2 if pause else 1e-5)

    def rendezvous(self, what: str) -> None:
        """Wait (with the deadline) until every rank has reached this call."""
        self.wait(self.comm.Ibarrier(), what)

    # ------------------------------------------------------------------ collectives
    def allreduce_sum(self, buf, what: str = "all-reduce"):
        """Sum the contiguous NumPy array ``buf`` over the ranks, in place; returns it."""
        if not isinstance(buf, np.ndarray) or not buf.flags.c_contiguous:
            raise TypeError("MPICommunicator.allreduce_sum needs a C-contiguous NumPy array "
                            f"(got {type(buf).__name__}); device arrays go through NCCL")
        self.wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), what)
        return buf

    def broadcast(self, obj, root: int = 0, what: str = "broadcast"):
        """``obj`` of rank ``root`` on every rank (any picklable object)."""
        self.rendezvous(what)
        return self.comm.bcast(obj, root=root)

    def allgather(self, obj, what: str = "all-gather"):
        """The list of every rank's ``obj``, in rank order."""
        self.rendezvous(what)
        return self.comm.allgather(obj)

    def barrier(self, what: str = "barrier") -> None:
        self.rendezvous(what)

    def abort(self, message: str, code: int = 1):
        """Print ``message`` with this rank's id and end every rank of the job."""
        print(f"minigrad-pfa (rank {self.rank} of {self.size}): error: {message}",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        # the launcher forwards this rank's output through a pipe; Abort makes it kill the
        # job at once, and a message still in the pipe can be lost (seen with MPICH's Hydra
        # on a loaded 2-core machine): give the forwarding a moment first
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)
