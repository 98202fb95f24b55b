"""DataLoader: coverage, seeded order, exact resume, prefetch overlap and thread shutdown."""
import gc
import threading
import time

import numpy as np
import pytest

from minigrad_pfa.backend import DeviceError, cuda_available
from minigrad_pfa.data import ArrayDataset, DataLoader, load_dataset
from minigrad_pfa.data import transforms as T


def _ds(n=103):
    x = np.arange(n * 3 * 4 * 4, dtype=np.int64).reshape(n, 3, 4, 4) % 251
    return ArrayDataset(x.astype(np.uint8), np.arange(n) % 10, dict(name="t", split="train"))


def _batches(loader):
    return [(np.array(x), np.array(y)) for x, y in loader]


def _data_threads():
    return [t for t in threading.enumerate() if t.name.startswith("minigrad-data")]


def test_epoch_covers_every_sample_once_and_lengths():
    ds = _ds(103)
    for drop_last, n_batches, last in ((False, 11, 3), (True, 10, 10)):
        loader = DataLoader(ds, 10, shuffle=True, drop_last=drop_last, seed=1)
        out = _batches(loader)
        assert len(loader) == len(out) == n_batches and len(out[-1][1]) == last
        if not drop_last:
            labels_seen = np.concatenate([b[1] for b in out])
            assert sorted(labels_seen.tolist()) == sorted(ds.labels.tolist())
            x_seen = np.concatenate([b[0] for b in out]).reshape(103, -1)
            assert {r.tobytes() for r in x_seen} == {r.tobytes() for r in
                                                     ds.images.reshape(103, -1)}
    plain = _batches(DataLoader(ds, 10, shuffle=False))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in plain]), ds.labels)


def test_order_is_a_function_of_seed_and_epoch_only():
    ds = _ds()
    tf = T.Compose([T.RandomCrop(4, 1), T.RandomHorizontalFlip(), T.ToFloat()])
    a = DataLoader(ds, 16, shuffle=True, seed=5, transform=tf, prefetch=0)
    b = DataLoader(ds, 16, shuffle=True, seed=5, transform=tf, prefetch=3, workers=3)
    _batches(b)  # consume epoch 0 first: epoch 1 must not depend on it
    a.set_epoch(1)
    b.set_epoch(1)
    for (xa, ya), (xb, yb) in zip(_batches(a), _batches(b)):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    a.set_epoch(2)
    e2 = _batches(a)
    assert not all(np.array_equal(p[1], q[1]) for p, q in zip(e2, _batches(b)))
    c = DataLoader(ds, 16, shuffle=True, seed=6, transform=tf)
    c.set_epoch(2)
    assert not np.array_equal(_batches(c)[0][1], e2[0][1])


def test_resume_mid_epoch_is_exact():
    ds = _ds()
    tf = T.Compose([T.RandomCrop(4, 2), T.RandomHorizontalFlip(), T.ToFloat()])
    full = DataLoader(ds, 8, shuffle=True, seed=3, transform=tf)
    full.set_epoch(4)
    ref = _batches(full)
    resumed = DataLoader(ds, 8, shuffle=True, seed=3, transform=tf, prefetch=2)
    resumed.set_epoch(4, start_batch=5)
    tail = _batches(resumed)
    assert len(tail) == len(ref) - 5
    for (x, y), (xr, yr) in zip(tail, ref[5:]):
        np.testing.assert_array_equal(x, xr)
        np.testing.assert_array_equal(y, yr)
    assert len(_batches(resumed)) == len(ref)  # the offset applied to one pass only


def test_output_types():
    ds = load_dataset("synthetic-mlp", "train", n=64)
    tf = T.Compose([T.ToFloat(), T.Normalize(T.MNIST_MEAN, T.MNIST_STD), T.Flatten()])
    x, y = next(iter(DataLoader(ds, 32, transform=tf)))
    assert x.shape == (32, 784) and x.dtype == np.float32 and y.dtype == np.int64
    raw, _ = next(iter(DataLoader(ds, 32)))
    assert raw.dtype == np.uint8 and raw.shape == (32, 1, 28, 28)


class _SlowDataset:
    """get_batch sleeps (stands for decoding); optionally fails at one batch."""

    def __init__(self, n, delay, fail_at=None):
        self.n, self.delay, self.fail_at = n, delay, fail_at
        self.meta = {}

    def __len__(self):
        return self.n

    def get_batch(self, idx):
        time.sleep(self.delay)
        if self.fail_at is not None and self.fail_at in idx:
            raise ValueError(f"broken sample {self.fail_at}")
        return np.zeros((len(idx), 1, 2, 2), np.uint8), np.asarray(idx)


def _epoch_time(prefetch, step=0.04, n_batches=12):
    loader = DataLoader(_SlowDataset(n_batches, step), 1, prefetch=prefetch)
    t0 = time.perf_counter()
    for _ in loader:
        time.sleep(step)  # the "training step"
    return time.perf_counter() - t0


def test_prefetch_overlaps_loading_with_the_step():
    serial = _epoch_time(0)
    overlapped = _epoch_time(2)
    # serial ~ 12 * (load + step); overlapped ~ 12 * step + one load
    assert serial > 0.9 * 12 * 0.08
    assert overlapped < 0.75 * serial


def test_threads_shut_down_on_break_exhaustion_and_error():
    ds = _ds()
    loader = DataLoader(ds, 4, shuffle=True, prefetch=3, workers=2)
    for k, _ in enumerate(loader):
        if k == 2:
            break
    gc.collect()
    assert not _data_threads()
    _batches(loader)
    assert not _data_threads()
    with pytest.raises(ValueError, match="broken sample 7"):
        for _ in DataLoader(_SlowDataset(20, 0.001, fail_at=7), 2, prefetch=2, workers=2):
            pass
    gc.collect()
    assert not _data_threads()
    it = iter(loader)
    next(it)
    it.close()
    assert not _data_threads()
    with pytest.raises(StopIteration):
        next(it)


def test_bad_arguments():
    ds = _ds(5)
    with pytest.raises(ValueError, match="no batch"):
        DataLoader(ds, 10, drop_last=True)
    with pytest.raises(ValueError):
        DataLoader(ds, 0)
    if not cuda_available():
        with pytest.raises(DeviceError):
            DataLoader(ds, 2, device="cuda")


@pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA device")
def test_cuda_batches_match_cpu():
    import cupy
    ds = load_dataset("synthetic-images", "train", n=64)
    tf = T.cifar_train_transform()
    cpu = _batches(DataLoader(ds, 16, shuffle=True, seed=2, transform=tf))
    gpu = list(DataLoader(ds, 16, shuffle=True, seed=2, transform=tf, device="cuda"))
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert isinstance(xg, cupy.ndarray) and xg.dtype == cupy.float32
        np.testing.assert_allclose(cupy.asnumpy(xg), xc, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(cupy.asnumpy(yg), yc)


def test_synthetic_data_says_so():
    ds = load_dataset("synthetic-images", "test")
    assert ds.meta["synthetic"] is True and ds.images.shape == (512, 3, 32, 32)
    assert ds.describe().startswith("[SYNTHETIC")
    again = load_dataset("synthetic-images", "test")
    np.testing.assert_array_equal(ds.images, again.images)
    assert not np.array_equal(load_dataset("synthetic-images", "train", n=512).images,
                              ds.images)
