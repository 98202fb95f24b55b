"""CuPy arrays all-reduced with NCCL; the communicator set up (and everything else) over MPI.

``train --distributed`` on ``device: cuda`` builds a :class:`NCCLCommunicator`: every rank
uses the GPU ``local_rank % gpus`` (local_rank = its rank among the ranks of its node,
from ``MPI_COMM_TYPE_SHARED``), rank 0 draws the NCCL unique id and broadcasts it over MPI,
and ``allreduce_sum`` of a CuPy array is ``ncclAllReduce(sum)`` in place on the current
stream. Host arrays (evaluation totals) and object collectives (digests, checkpoints) go
through MPI as on the CPU, so the data-parallel code is the same for both devices.

Deadline: the NCCL call is asynchronous; a CUDA event recorded after it is polled against
the collective timeout, and past it the NCCL communicator is aborted (``ncclCommAbort``,
which frees a kernel stuck waiting for a dead peer) before ``MPI_Abort`` ends the job.

Not exercised on this project's CI machine (no GPU): :func:`check_nccl` is the hook that
``minigrad-pfa doctor --device cuda`` runs where GPUs exist -- an all-reduce over every
visible GPU from one process, checked against the sum computed on the host.
"""
from __future__ import annotations

import time

import numpy as np

from .comm import MissingDependency, MPICommunicator, TIMEOUT_ENV


def require_nccl():
    """``(cupy, cupy.cuda.nccl)`` usable with a device, or a clear error naming the fix."""
    import warnings

    from ..backend import DeviceError, cuda_available
    try:
        import cupy
    except ImportError as exc:
        raise MissingDependency(f"distributed training on GPUs needs CuPy: pip install "
                                f"'minigrad_pfa[gpu]' ({exc})") from None
    if not cuda_available():
        raise DeviceError("distributed training on device cuda: no CUDA device is visible "
                          "(check nvidia-smi and CUDA_VISIBLE_DEVICES, or use device cpu)")
    with warnings.catch_warnings():  # CuPy warns when libnccl is absent: we raise instead
        warnings.simplefilter("ignore")
        from cupy.cuda import nccl
    if not getattr(nccl, "available", False):
        raise MissingDependency("CuPy cannot load NCCL: pip install nvidia-nccl-cu12 (in "
                                "'minigrad_pfa[gpu]') or put the system libnccl on the "
                                "library path")
    return cupy, nccl


def nccl_dtype(nccl, dtype) -> int:
    """The NCCL datatype constant of a float32 / float64 NumPy dtype."""
    table = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}
    name = np.dtype(dtype).name
    if name not in table:
        raise TypeError(f"NCCL all-reduce of {name} arrays is not supported (float32, float64)")
    return table[name]


def local_rank(mpi: MPICommunicator) -> int:
    """This rank's index among the ranks of its node."""
    node = mpi.comm.Split_type(mpi.MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_rank()
    finally:
        node.Free()


class NCCLCommunicator:
    """Device collectives through NCCL, host ones through MPI (module docstring).

    Parameters
    ----------
    timeout_s : float, optional
        Collective deadline (default: :func:`minigrad_pfa.distributed.comm.default_timeout`).
    mpi : MPICommunicator, optional
        Built from ``MPI.COMM_WORLD`` when not given.
    """

    backend = "nccl"

    def __init__(self, timeout_s: float | None = None, mpi: MPICommunicator | None = None):
        self.cupy, self.nccl = require_nccl()
        self.mpi = mpi if mpi is not None else MPICommunicator(timeout_s)
        self.rank, self.size, self.timeout_s = self.mpi.rank, self.mpi.size, self.mpi.timeout_s
        gpus = self.cupy.cuda.runtime.getDeviceCount()
        self.device_id = local_rank(self.mpi) % gpus
        self.cupy.cuda.Device(self.device_id).use()
        uid = self.nccl.get_unique_id() if self.rank == 0 else None
        uid = self.mpi.broadcast(uid, what="NCCL unique id")
        self.comm = self.nccl.NcclCommunicator(self.size, uid, self.rank)

    def allreduce_sum(self, buf, what: str = "all-reduce"):
        """Sum ``buf`` over the ranks in place: NCCL for CuPy arrays, MPI for NumPy ones."""
        if isinstance(buf, np.ndarray):
            return self.mpi.allreduce_sum(buf, what)
        if not buf.flags.c_contiguous:
            raise TypeError("NCCLCommunicator.allreduce_sum needs a C-contiguous array")
        stream = self.cupy.cuda.get_current_stream()
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size,
                            nccl_dtype(self.nccl, buf.dtype), self.nccl.NCCL_SUM, stream.ptr)
        self._wait(stream.record(), what)
        return buf

    def _wait(self, event, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        pause = 0.0
        while not event.done:
            if time.monotonic() > deadline:
                self.comm.abort()
                self.mpi.abort(f"{what} (NCCL): no answer from the other ranks within "
                               f"{self.timeout_s:g} s (a rank failed, was killed or hangs; "
                               f"raise {TIMEOUT_ENV} for slow steps); ending every rank")
            time.sleep(pause)
            pause = min(1e-3, pause * 2 if pause else 1e-5)

    def broadcast(self, obj, root: int = 0, what: str = "broadcast"):
        return self.mpi.broadcast(obj, root, what)

    def allgather(self, obj, what: str = "all-gather"):
        return self.mpi.allgather(obj, what)

    def barrier(self, what: str = "barrier") -> None:
        self.mpi.barrier(what)

    def abort(self, message: str, code: int = 1):
        self.mpi.abort(message, code)


def check_nccl(n: int = 1 << 20) -> dict:
    """Doctor check: all-reduce an array of ``n`` float32 over every visible GPU, from one
    process (``ncclCommInitAll``), against the host sum. Never raises.

    Returns
    -------
    dict
        ``{"check": "nccl all-reduce", "rule": "-", "ok": bool, "detail": str}``.
    """
    out = {"check": "nccl all-reduce", "rule": "-", "ok": False, "detail": ""}
    try:
        cupy, nccl = require_nccl()
        gpus = cupy.cuda.runtime.getDeviceCount()
        comms = nccl.NcclCommunicator.initAll(gpus)
        rng = np.random.default_rng(0)
        host = [rng.standard_normal(n).astype(np.float32) for _ in range(gpus)]
        bufs, streams = [], []
        for d in range(gpus):
            with cupy.cuda.Device(d):
                bufs.append(cupy.asarray(host[d]))
                streams.append(cupy.cuda.Stream(non_blocking=True))
        t0 = time.perf_counter()
        nccl.groupStart()
        for d in range(gpus):
            with cupy.cuda.Device(d):
                comms[d].allReduce(bufs[d].data.ptr, bufs[d].data.ptr, n, nccl.NCCL_FLOAT32,
                                   nccl.NCCL_SUM, streams[d].ptr)
        nccl.groupEnd()
        for d in range(gpus):
            streams[d].synchronize()
        elapsed = time.perf_counter() - t0
        want = np.sum(np.stack(host).astype(np.float64), axis=0)
        err = max(float(np.abs(cupy.asnumpy(b) - want).max()) for b in bufs)
        out["ok"] = err <= 1e-5 * max(1.0, float(np.abs(want).max()))
        out["detail"] = (f"{gpus} GPU(s), NCCL {nccl.get_version()}, {n} floats in "
                         f"{elapsed * 1e3:.1f} ms, max error {err:.2e} against the host sum")
    except Exception as exc:  # a check reports, it does not raise
        out["detail"] = f"{type(exc).__name__}: {exc}"
    return out
