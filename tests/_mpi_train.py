"""``minigrad-pfa`` under ``mpiexec`` with an injected fault (helper of tests/test_distributed.py).

``MGP_FAULT``:
  ``kill:RANK:STEP``   rank RANK kills itself (SIGKILL) at its STEP-th training step;
  ``raise:RANK:STEP``  rank RANK raises RuntimeError("injected fault") there;
  ``hang:RANK:STEP``   rank RANK sleeps for an hour there (the others time out);
  ``stop:EPOCH``       every rank exits cleanly right after epoch EPOCH is persisted.
"""
import os
import signal
import sys
import time

from minigrad_pfa import train as train_mod
from minigrad_pfa.cli import main


def install(fault: str) -> None:
    from mpi4py import MPI
    kind, *args = fault.split(":")
    rank = MPI.COMM_WORLD.Get_rank()
    if kind == "stop":
        epoch = int(args[0])
        real_end = train_mod.Trainer.end_epoch

        def end_epoch(self, e, record):
            real_end(self, e, record)
            if e == epoch:
                sys.exit(0)
        train_mod.Trainer.end_epoch = end_epoch
        return
    who, at = int(args[0]), int(args[1])
    real_step, count = train_mod.train_step, [0]

    def train_step(*a, **kw):
        count[0] += 1
        if rank == who and count[0] == at:
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "raise":
                raise RuntimeError("injected fault")
            if kind == "hang":
                time.sleep(3600)
        return real_step(*a, **kw)
    train_mod.train_step = train_step


if __name__ == "__main__":
    if os.environ.get("MGP_FAULT"):
        install(os.environ["MGP_FAULT"])
    sys.exit(main(sys.argv[1:]))
