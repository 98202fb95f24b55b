"""Loader benchmark: augmentation / decoding throughput, and prefetch overlap.

``python -m minigrad_pfa.bench.loader [--quick] [--json PATH]`` measures on this machine:

1. CIFAR-style augmentation (random crop 32, padding 4 + horizontal flip + bytes/255 +
   normalise) over random uint8 data of CIFAR-10's shape (50k x 3 x 32 x 32; 10k with
   ``--quick``), batch 128, gather included: images/s.
2. ImageNet-style decoding: a generated folder of real JPEG files of ImageNet-like sizes
   (300-500 px a side), decoded by Pillow, random-resized-crop 224 + flip, batch 32, with 1
   loader thread and with ``min(8, cpus)`` threads: images/s. This is the host part of the
   E3 pipeline; ``ToFloat``/``Normalize`` run on the GPU there.
3. Prefetch: a simulated training step lasting about twice the measured per-batch
   augmentation time, run over the CIFAR pipeline's batches without prefetch and with
   ``prefetch=2``, against the steps alone; twice: a CPU-bound step (float32 GEMMs,
   single-threaded BLAS, GIL released) and a step during which the host only waits (what a
   GPU step looks like from the host). ``hidden`` = share of the data pipeline's time that
   prefetch removed from the epoch (1.0 = the epoch takes as long as its steps alone).
   A CPU-bound step can only be overlapped when a second core is free.

:func:`run_loader_bench` returns all numbers as a dict for the project's main benchmark.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ..data import ArrayDataset, DataLoader, imagenet_folder
from ..data import transforms as T


def _cifar_like(n: int, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8).transpose(0, 3, 1, 2)
    return ArrayDataset(x, rng.integers(0, 10, size=n),
                        dict(name="random-uint8-cifar-shape", split="bench", synthetic=True))


def bench_cifar_augment(n_images: int, batch: int = 128) -> dict:
    """One epoch of the CIFAR training pipeline in the caller's thread (no prefetch)."""
    ds = _cifar_like(n_images)
    loader = DataLoader(ds, batch, shuffle=True, drop_last=True, seed=0,
                        transform=T.cifar_train_transform(), prefetch=0)
    next(iter(loader))  # warm-up (allocator, first-call costs)
    t0 = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    dt = time.perf_counter() - t0
    return dict(images=n, batch=batch, seconds=dt, images_per_s=n / dt,
                ms_per_batch=1e3 * dt / len(loader))


def make_jpeg_tree(root: Path, n_images: int, n_classes: int = 8, seed: int = 0) -> Path:
    """``root/train/<class>/*.JPEG``: smooth random images of ImageNet-like sizes."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for k in range(n_images):
        d = root / "train" / f"n{k % n_classes:08d}"
        d.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(300, 501)), int(rng.integers(300, 501))
        # low-frequency content (a random 12x12 colour field, upsampled) plus mild noise:
        # compresses like a photograph rather than like white noise
        small = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        a = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, size=(h, w, 3))
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(d / f"img{k:05d}.JPEG",
                                                                   quality=90)
    return root


def bench_imagenet_decode(root: Path, workers: int, batch: int = 32) -> dict:
    ds = imagenet_folder(root, "train")
    tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip()])
    loader = DataLoader(ds, batch, shuffle=True, seed=0, transform=tf, prefetch=workers,
                        workers=workers)
    t0 = time.perf_counter()
    n = sum(x.shape[0] for x, _ in loader)
    dt = time.perf_counter() - t0
    return dict(images=n, workers=workers, batch=batch, seconds=dt, images_per_s=n / dt)


class SimulatedStep:
    """A fixed amount of float32 GEMM work lasting about ``target_s`` (calibrated here).

    One call is a single stacked ``matmul`` of ``k`` independent 64x64 products: 64x64
    stays on OpenBLAS's single-threaded path (no spinning helper threads fighting the loader
    for the cores), and one ufunc call releases the GIL for the whole step, as a training
    step that waits for its GPU kernels does. (A Python loop of small GEMMs would instead
    re-acquire the GIL thousands of times per step and measure GIL hand-offs.)
    """

    def __init__(self, target_s: float, size: int = 64):
        rng = np.random.default_rng(0)
        self.b = rng.random((size, size), dtype=np.float32)
        self._set(16)
        for _ in range(3):  # calibrate on the median of three timings
            t = sorted(self._time() for _ in range(3))[1]
            self._set(max(1, int(round(self.k * target_s / t))))

    def _set(self, k: int) -> None:
        self.k = k
        size = self.b.shape[0]
        self.a = np.random.default_rng(1).random((k, size, size), dtype=np.float32)
        self.out = np.empty_like(self.a)

    def _time(self) -> float:
        t0 = time.perf_counter()
        self()
        return time.perf_counter() - t0

    def __call__(self, x=None) -> None:
        np.matmul(self.a, self.b, out=self.out)


class WaitStep:
    """A step during which the host only waits, as it does for a GPU step (``sleep``)."""

    def __init__(self, target_s: float):
        self.target_s = target_s

    def __call__(self, x=None) -> None:
        time.sleep(self.target_s)


def bench_prefetch(n_images: int, step, batch: int = 128, prefetch: int = 2,
                   repeats: int = 3) -> dict:
    """Epoch times: steps alone, steps + loader without / with prefetch (min of repeats).

    The three runs are interleaved and repeated and each keeps its fastest time, so that
    load from other processes on a shared machine disturbs the comparison as little as
    possible.
    """
    ds = _cifar_like(n_images, seed=1)
    n_batches = n_images // batch

    def steps_only():
        for _ in range(n_batches):
            step()

    def epoch(pf):
        def run():
            loader = DataLoader(ds, batch, shuffle=True, drop_last=True, seed=0,
                                transform=T.cifar_train_transform(), prefetch=pf)
            for x, _ in loader:
                step(x)
        return run

    runs = {"steps_only_s": steps_only, "no_prefetch_s": epoch(0), "prefetch_s": epoch(prefetch)}
    best = {k: float("inf") for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    out = dict(batches=n_batches, repeats=repeats, prefetch_depth=prefetch,
               step_ms=1e3 * best["steps_only_s"] / n_batches, **best)
    data_time = best["no_prefetch_s"] - best["steps_only_s"]
    out["hidden"] = ((best["no_prefetch_s"] - best["prefetch_s"]) / data_time
                     if data_time > 0 else float("nan"))
    out["prefetch_overhead_vs_steps"] = best["prefetch_s"] / best["steps_only_s"] - 1.0
    return out


def run_loader_bench(quick: bool = False, log=print) -> dict:
    """Run the three measurements; ``quick`` keeps the whole run well under a minute."""
    res = dict(quick=quick, cpus=os.cpu_count())
    n_cifar = 10_000 if quick else 50_000
    res["cifar_augment"] = c = bench_cifar_augment(n_cifar)
    log(f"CIFAR augmentation (crop 32 pad 4 + flip + /255 + normalise, batch 128, "
        f"{c['images']} images): {c['images_per_s']:,.0f} images/s "
        f"({c['ms_per_batch']:.2f} ms/batch)")

    tmp = Path(tempfile.mkdtemp(prefix="minigrad-bench-jpeg-"))
    try:
        n_jpeg = 128 if quick else 512
        t0 = time.perf_counter()
        make_jpeg_tree(tmp, n_jpeg)
        res["jpeg_tree"] = dict(images=n_jpeg, generate_s=time.perf_counter() - t0)
        res["imagenet_decode"] = []
        for w in sorted({1, min(8, os.cpu_count() or 1)}):
            r = bench_imagenet_decode(tmp, w)
            res["imagenet_decode"].append(r)
            log(f"ImageNet-style JPEG decode + random-resized-crop 224 + flip ({n_jpeg} "
                f"generated JPEGs 300-500 px, {w} thread(s)): {r['images_per_s']:,.0f} images/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    step_s = 2.0 * c["ms_per_batch"] / 1e3
    n_pf, reps = (5_120, 3) if quick else (20_480, 5)
    gemm = SimulatedStep(step_s)
    res["prefetch"] = p = bench_prefetch(n_pf, gemm, repeats=reps)
    # the same duration spent waiting (a GPU step seen from the host): needs no CPU, so it
    # shows the pipeline's overlap even when other processes keep the cores busy
    res["prefetch_wait_step"] = q = bench_prefetch(n_pf, WaitStep(p["step_ms"] / 1e3),
                                                   repeats=reps)
    for name, r in (("GEMM loop, CPU-bound", p), ("host waiting, as for a GPU", q)):
        log(f"Prefetch (min of {r['repeats']} runs, {r['batches']} CIFAR batches), step "
            f"{r['step_ms']:.2f} ms ({name}; ~2x augmentation): steps alone "
            f"{r['steps_only_s']:.2f} s, epoch without prefetch {r['no_prefetch_s']:.2f} s, "
            f"with prefetch=2 {r['prefetch_s']:.2f} s -> {100 * r['hidden']:.0f}% of the "
            f"data time hidden (epoch {100 * r['prefetch_overhead_vs_steps']:+.0f}% vs "
            f"steps alone)")
    res["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if res["load_average"] is not None:
        log(f"(load average {res['load_average'][0]:.1f} on {res['cpus']} CPUs: with other "
            "processes busy, the loader thread and a CPU-bound step share fewer cores)")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigrad_pfa.bench.loader",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (< 1 minute)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    res = run_loader_bench(args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
