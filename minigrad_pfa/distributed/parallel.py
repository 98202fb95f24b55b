"""Data parallelism: what every rank does around a training step (see the package notation).

:class:`DataParallel` owns one communicator and provides

* :meth:`DataParallel.average_gradients` -- the step's one all-reduce: every gradient the
  optimizer will use (W, b, BatchNorm's gamma/beta, KP's B, PFA's R, ...) packed into one
  flat buffer with the step's loss and correct count, summed, divided by N;
* :meth:`DataParallel.reduce_sum` -- the per-channel sums of synchronised BatchNorm and WM's
  Hebbian sums (called through :mod:`minigrad_pfa.distributed.context`);
* :meth:`DataParallel.shard` -- a loader yielding this rank's part of every batch;
* :meth:`DataParallel.check_identical` / :meth:`DataParallel.sync_buffers` -- every rank
  holds rank 0's model state (checked by a digest all-gather; BatchNorm running statistics
  copied from rank 0, as PyTorch DDP's ``broadcast_buffers``).
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..backend import get_array_module, to_device, to_numpy, device_of
from ..data.loader import DataLoader, _rng
from .context import activate


def shard_bounds(k: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of a batch of ``k`` that rank ``rank`` of ``size`` takes: contiguous
    slices in rank order whose sizes differ by at most one (equal when ``size`` divides ``k``)."""
    return rank * k // size, (rank + 1) * k // size


def state_digest(model, optimizer=None) -> str:
    """SHA-256 of the model state (and optimizer state): names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    items = list(model.state_dict().items())
    if optimizer is not None:
        items += [(f"optim/{k}", v) for k, v in optimizer.state_dict().items()]
    for name, value in items:
        a = np.ascontiguousarray(to_numpy(value))
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class DataParallel:
    """The data-parallel group of one training run.

    Parameters
    ----------
    comm : communicator
        :class:`~minigrad_pfa.distributed.comm.MPICommunicator` (host arrays),
        :class:`~minigrad_pfa.distributed.nccl.NCCLCommunicator` (CuPy arrays) or
        :class:`~minigrad_pfa.distributed.comm.LocalCommunicator`.
    sync_bn : bool
        Add BatchNorm's batch statistics over the ranks (N ranks = one process at the same
        global batch) instead of normalising each shard with its own statistics.
    """

    def __init__(self, comm, sync_bn: bool = False):
        self.comm = comm
        self.rank, self.size = comm.rank, comm.size
        self.sync_bn = bool(sync_bn)
        #: seconds spent in the gradient all-reduce (packing included), for benchmarks
        self.allreduce_s = 0.0
        self.steps = 0

    def active(self):
        """Context manager: this group is the one BatchNorm and WM see (one training step)."""
        return activate(self)

    # ------------------------------------------------------------------ the step
    def average_gradients(self, optimizer, loss, correct):
        """Average the gradients over the ranks with one all-reduce; returns the global
        ``(mean loss, correct count)`` of the step.

        Each rank's gradients are those of the mean loss over its shard of n/N examples, so
        their average is the gradient of the mean over the n examples of the global batch.
        Parameters without a gradient this step are left out (the same on every rank).
        """
        import time

        t0 = time.perf_counter()
        params = [p for p in optimizer.named_params.values()
                  if p.grad is not None and p.requires_grad]
        if not params:
            raise RuntimeError("data parallel step: no parameter has a gradient")
        dtypes = {p.grad.dtype for p in params}
        if len(dtypes) != 1:
            raise TypeError(f"data parallel step: gradients of mixed dtypes {sorted(map(str, dtypes))}")
        xp = get_array_module(params[0].grad)
        total = sum(int(p.grad.size) for p in params)
        # a fresh buffer each step: the averaged gradients are views into it, and an
        # optimizer may keep a reference to the first one (momentum buffers)
        buf = xp.empty(total + 2, dtype=params[0].grad.dtype)
        o = 0
        for p in params:
            k = int(p.grad.size)
            buf[o:o + k] = p.grad.reshape(-1)
            o += k
        buf[o] = loss
        buf[o + 1] = correct
        self.comm.allreduce_sum(buf, "gradient all-reduce")
        buf *= 1.0 / self.size
        o = 0
        for p in params:
            k = int(p.grad.size)
            p.grad = buf[o:o + k].reshape(p.grad.shape)
            o += k
        self.allreduce_s += time.perf_counter() - t0
        self.steps += 1
        return buf[o], xp.rint(buf[o + 1] * self.size)

    def reduce_sum(self, v, what: str = "all-reduce"):
        """Sum of the array ``v`` over the ranks (a new contiguous array, ``v`` untouched)."""
        xp = get_array_module(v)
        buf = xp.array(v, copy=True, order="C")
        return self.comm.allreduce_sum(buf, what)

    # ------------------------------------------------------------------ data
    def shard(self, loader: DataLoader, even: bool = True, on_epoch_end=None) -> "ShardedLoader":
        """This rank's view of ``loader`` (:class:`ShardedLoader`)."""
        return ShardedLoader(loader, self, even=even, on_epoch_end=on_epoch_end)

    def combine_totals(self, *totals):
        """Sum evaluation totals (Python numbers) over the ranks, in float64."""
        out = self.comm.allreduce_sum(np.array(totals, dtype=np.float64), "evaluation totals")
        return tuple(float(v) for v in out)

    # ------------------------------------------------------------------ model state
    def check_identical(self, model, optimizer=None, when: str = "") -> None:
        """Raise on every rank if any rank's model (and optimizer) state differs from rank 0's."""
        digests = self.comm.allgather(state_digest(model, optimizer), f"state digest {when}")
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        if bad:
            raise RuntimeError(f"ranks {bad} hold a different model state than rank 0 {when}; "
                               "every rank must run the same code, config and seed")

    def sync_buffers(self, model) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics, ...) to every rank."""
        if self.size == 1:
            return
        named = list(model.named_buffers())
        host = self.comm.broadcast({n: to_numpy(b) for n, b in named}
                                   if self.rank == 0 else None, what="buffer broadcast")
        for name, b in named:
            b[...] = to_device(host[name], device_of(b))


class ShardedLoader(DataLoader):
    """One rank's part of a :class:`~minigrad_pfa.data.loader.DataLoader`.

    Batch ``b`` of epoch ``e`` is the same global batch as in one process (the order is a
    function of the seed and the epoch); this rank keeps rows
    :func:`shard_bounds` of it. With ``even`` (training) every batch must split into equal
    shards, checked here; evaluation loaders split unevenly and skip empty shards.

    Augmentation of a training batch (``even``):

    * in-memory datasets (MNIST, CIFAR, ...): every rank augments the whole global batch on
      the host with one process's stream ``[seed, e, 1, b]`` and keeps its rows, so the
      shards are exactly the rows one process trains on (host work N times over: a few ms
      per step for CIFAR-sized batches, against a step of ~1 s);
    * image folders (ImageNet; decoding every image on every rank would cost N times the
      loading): each rank augments its own shard from ``[seed, e, 1, b, rank + 1, N]``,
      deterministic per (seed, rank) but not one process's draws.

    ``on_epoch_end`` runs when an epoch's iteration is exhausted (the trainer synchronises
    buffers there, before evaluating).
    """

    def __init__(self, base: DataLoader, group: DataParallel, even: bool = True,
                 on_epoch_end=None):
        self.__dict__.update(base.__dict__)
        self.rank, self.world = group.rank, group.size
        self.even = bool(even)
        self.on_epoch_end = on_epoch_end
        self.combine_totals = group.combine_totals
        from ..data.imagefolder import ImageFolderDataset
        #: slice one process's augmented global batch (module docstring) or draw per rank
        self.sliced = self.even and not isinstance(self.dataset, ImageFolderDataset)
        if self.even:
            self._check_divides()

    def _check_divides(self) -> None:
        n, bs, N = len(self.dataset), self.batch_size, self.world
        if bs % N:
            raise ValueError(f"data.batch_size {bs} (the global batch) does not divide over "
                             f"{N} ranks; use a multiple of {N}")
        last = n % bs
        if not self.drop_last and last and last % N:
            raise ValueError(f"the last batch of every epoch has {last} examples ({n} % {bs}), "
                             f"which do not divide over {N} ranks; set data.drop_last: true "
                             "or use another number of ranks")

    def batch_indices(self, epoch: int) -> list:
        order, bs = self.order(epoch), self.batch_size
        whole = [order[i:i + bs] for i in range(0, DataLoader.__len__(self) * bs, bs)]
        out, self._global_b, self._whole = [], [], whole
        for b, idx in enumerate(whole):
            lo, hi = shard_bounds(len(idx), self.rank, self.world)
            if hi > lo:
                out.append(idx[lo:hi])
                self._global_b.append(b)
        return out

    def __len__(self) -> int:
        if self.even:
            return DataLoader.__len__(self)
        return len(self.batch_indices(0))

    def batch_rng(self, epoch: int, b: int) -> np.random.Generator:
        return _rng(self.seed, epoch, 1, b, self.rank + 1, self.world)

    def make_batch(self, epoch: int, b: int, idx):
        gb = self._global_b[b]
        if not self.sliced:
            return DataLoader.make_batch(self, epoch, gb, idx)
        rng = DataLoader.batch_rng(self, epoch, gb)          # one process's stream
        whole = self._whole[gb]
        x, y = self.host_batch(whole, rng)
        lo, hi = shard_bounds(len(whole), self.rank, self.world)
        return self.device_batch(x[lo:hi], y[lo:hi], rng)

    def __iter__(self):
        it = DataLoader.__iter__(self)
        try:
            yield from it
        finally:
            it.close()
        if self.on_epoch_end is not None:
            self.on_epoch_end()
