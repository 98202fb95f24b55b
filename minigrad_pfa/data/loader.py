"""Mini-batch loader: seeded shuffling, augmentation, device transfer, background prefetch.

Reproducibility: everything random about epoch ``e`` is a pure function of ``(seed, e)``:

* the order of the samples: ``default_rng([seed, e, 0, 0]).permutation(n)``;
* the augmentation of batch ``b``: its own ``default_rng([seed, e, 1, b])``.

So batch ``b`` of epoch ``e`` is the same whether it is computed first or last, by one
thread or several, and a run resumed at (epoch e, batch b) sees exactly the batches the
uninterrupted run would have seen (:meth:`DataLoader.set_epoch`). The seed sequences all
have four words because ``SeedSequence`` pads shorter ones with zeros: ``[s, e, 0]`` and
``[s, e, 0, 0]`` would be the same stream.

Prefetching uses *threads*, not processes. The work per batch is NumPy indexing/copies,
Pillow decoding and resampling, and host-to-device copies, all of which release the GIL,
so threads overlap it with the training step; and threads share the dataset arrays
without pickling or copying them into worker processes (a 50k CIFAR training set is read
in place, an ImageNet file list is not duplicated per worker).

Device transfer: the transform pipeline is split (:meth:`Compose.split_for_device`). The
head (crops, flips: byte-level work) runs on the host; the batch is then sent to the device
while still uint8 (4x fewer bytes than float32); the tail (``ToFloat``, ``Normalize``,
``Flatten``) runs where the batch now is. On the CPU this is the same computation.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..backend import check_device, to_device
from .transforms import Compose, as_array


def _rng(seed: int, *words) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed)] + [int(w) for w in words]))


class DataLoader:
    """Iterate ``(x, y)`` mini-batches of a dataset.

    Parameters
    ----------
    dataset : ArrayDataset or ImageFolderDataset
        Anything with ``len()`` and ``get_batch(indices) -> (images, labels)``.
    batch_size : int
    shuffle : bool
        Reshuffle every epoch (order = function of (seed, epoch)).
    drop_last : bool
        Drop the last incomplete batch.
    seed : int
        Seeds shuffling and augmentation (non-negative).
    transform : Compose or callable ``(x, rng) -> x``, optional
        Applied to each whole batch; ``None`` gives the raw uint8 images.
    device : {"cpu", "cuda"}
        Where the yielded arrays live (NumPy or CuPy).
    prefetch : int
        Batches prepared ahead in background threads while the caller trains on the
        current one; 0 = everything in the caller's thread (no threads at all).
    workers : int, optional
        Threads preparing batches (default: 1 for in-memory arrays, ``min(8, cpus)`` for
        image folders, whose JPEG decoding dominates). In flight: ``max(prefetch, workers)``.

    Yields
    ------
    x : array
        float32 (n, c, h, w) (channels-last memory) or (n, features), per the transform.
    y : array of int64 (n,)
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, transform=None,
                 device: str = "cpu", prefetch: int = 2, workers: int | None = None):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.device = check_device(device)
        self.prefetch = max(0, int(prefetch))
        if workers is None:
            workers = getattr(dataset, "default_workers", 1)
        self.workers = max(1, int(workers))
        if isinstance(transform, Compose):
            self._host_tf, self._dev_tf = transform.split_for_device()
        else:
            self._host_tf, self._dev_tf = transform, None
        self.transform = transform
        self.epoch = 0
        self.start_batch = 0
        if len(self) == 0:
            raise ValueError(f"{len(dataset)} samples give no batch of {batch_size} "
                             f"(drop_last={drop_last})")

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration epoch ``epoch``, starting at batch ``start_batch``."""
        if epoch < 0 or not 0 <= start_batch <= len(self):
            raise ValueError(f"bad epoch/start_batch ({epoch}, {start_batch})")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def order(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch`` (int64 (n,))."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        return _rng(self.seed, epoch, 0, 0).permutation(n).astype(np.int64)

    def batch_indices(self, epoch: int) -> list:
        """Index arrays of the batches of ``epoch``, in order."""
        order = self.order(epoch)
        bs = self.batch_size
        return [order[i:i + bs] for i in range(0, len(self) * bs, bs)]

    def batch_rng(self, epoch: int, b: int) -> np.random.Generator:
        """The augmentation stream of batch ``b`` of ``epoch``."""
        return _rng(self.seed, epoch, 1, b)

    def make_batch(self, epoch: int, b: int, idx):
        """Batch ``b`` of ``epoch`` (a pure function of seed, epoch, b and ``idx``)."""
        rng = self.batch_rng(epoch, b)
        return self.device_batch(*self.host_batch(idx, rng), rng)

    def host_batch(self, idx, rng):
        """Images (host array) and labels of ``idx``, the host part of the transform applied."""
        x, y = self.dataset.get_batch(idx)
        if self._host_tf is not None:
            x = self._host_tf(x, rng)
        return as_array(x), y  # image-folder batches: a crop must have made the sizes equal

    def device_batch(self, x, y, rng):
        """A host batch sent to the device, the device part of the transform applied."""
        x = to_device(x, self.device)
        y = to_device(np.ascontiguousarray(y, dtype=np.int64), self.device)
        if self._dev_tf is not None and self._dev_tf.transforms:
            x = self._dev_tf(x, rng)
        return x, y

    def __iter__(self):
        it = _BatchIterator(self, self.epoch, self.start_batch)
        self.start_batch = 0  # a resume offset applies to one iteration only
        return it


class _BatchIterator:
    """One pass over an epoch; owns (and always shuts down) its worker threads."""

    def __init__(self, loader: DataLoader, epoch: int, start: int):
        self.loader = loader
        self.epoch = epoch
        self.batches = loader.batch_indices(epoch)
        self.next_submit = self.next_yield = start
        self.pending = deque()
        self.depth = max(loader.prefetch, loader.workers) if loader.prefetch > 0 else 0
        self.pool = None
        if self.depth:
            self.pool = ThreadPoolExecutor(max_workers=loader.workers,
                                           thread_name_prefix="minigrad-data")
        self._closed = False
        self._lock = threading.Lock()

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self.batches) - self.next_yield

    def _submit_until_full(self):
        while self.next_submit < len(self.batches) and len(self.pending) < self.depth:
            b = self.next_submit
            self.pending.append(self.pool.submit(self.loader.make_batch, self.epoch, b,
                                                 self.batches[b]))
            self.next_submit += 1

    def __next__(self):
        if self._closed or self.next_yield >= len(self.batches):
            self.close()
            raise StopIteration
        b = self.next_yield
        try:
            if self.pool is None:
                out = self.loader.make_batch(self.epoch, b, self.batches[b])
            else:
                self._submit_until_full()
                out = self.pending.popleft().result()  # re-raises a worker's exception here
                self._submit_until_full()  # keep the pipeline full while the caller trains
        except BaseException:
            self.close()
            raise
        self.next_yield += 1
        return out

    def close(self) -> None:
        """Cancel queued batches and join the worker threads (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for f in self.pending:
            f.cancel()
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
