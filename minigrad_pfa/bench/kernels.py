"""NumPy against compiled CPU kernels (``--cpu-kernels``), side by side in one process.

Notation
--------
K : the CPU kernels, "numpy" (the engine's NumPy code) or "numba" (:mod:`minigrad_pfa.jit`),
T : engine threads, 1 and the usable cores,
t(K, T) : median wall-clock time of one unit of work (a training step, or a batch norm's
    forward + backward), r_k = t_k(numpy, T) / t_k(numba, T) the speed-up within round k.

    verdict per T   "faster" / "slower" / "no difference", as
                    :func:`minigrad_pfa.doctor.threads.verdict` (every round beyond 5 %)

Method. One model and optimizer (BP, SGD, synthetic in-memory data, as in
:mod:`minigrad_pfa.bench`); the kernels and the thread count are switched in place
(:func:`minigrad_pfa.jit.set_cpu_kernels`, :func:`minigrad_pfa.cpu.set_threads`) between
interleaved rounds, each timing every (T, K) back to back (odd rounds in reverse order,
:func:`minigrad_pfa.bench.regimes.round_order`), so a change of the machine's load falls
into both sides of a ratio. The op part does the same for the training batch norm of
ResNet-20's three stages at batch 128 (channels-last float32 (128, c, s, s) for
(c, s) = (16, 32), (32, 16), (64, 8)), and for their 3x3 stride-1 convolutions (forward,
weight gradient and input error, c -> c channels), the two stride-2 ones (c -> 2c, the
first layers of stages 2 and 3) and ReLUs, and for one SGD step of a parameter
(:data:`SGD_SIZES`).

    python -m minigrad_pfa.bench.kernels [--model resnet20] [--batch 128] [--rounds 3]
"""
from __future__ import annotations

import statistics
import time

#: ResNet-20's batch-norm (and 3x3 convolution) inputs per stage, (channels, side)
STAGES = ((16, 32), (32, 16), (64, 8))

#: parameter sizes of the SGD step measured: the MLP 784-512-512-10's first layer and
#: ResNet-20's largest convolution (64 x 64 x 3 x 3)
SGD_SIZES = (401408, 36864)


def _activations(k: int, batch: int, c: int, side: int) -> list:
    """``k`` fixed float32 (batch, c, side, side) arrays in channels-last memory (as the
    engine's layers hand them on)."""
    import numpy as np
    rng = np.random.default_rng(0)
    return [rng.standard_normal((batch, side, side, c), dtype=np.float32).transpose(0, 3, 1, 2)
            for _ in range(k)]


def _bn_work(c: int, side: int, batch: int):
    """A closure running one training batch norm forward + backward on fixed data."""
    import numpy as np

    from ..functional import batchnorm as F_bn
    x, dy = _activations(2, batch, c, side)
    gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)

    def work():
        _, cache = F_bn.batchnorm_forward(x, gamma, beta, rm, rv, training=True)
        F_bn.batchnorm_backward(dy, cache)
    return work


def _conv_work(c: int, side: int, batch: int, stride: int = 1):
    """A closure running one 3x3 convolution's forward, weight gradient and input error
    (padding 1; stride 1: c -> c channels, stride 2: c -> 2c, as ResNet-20's stages and
    their first layers) on fixed channels-last data."""
    import numpy as np

    from ..functional import conv as F_conv
    (x,) = _activations(1, batch, c, side)
    (d,) = _activations(1, batch, c * stride, -(-side // stride))
    W = np.random.default_rng(1).standard_normal((c * stride, c, 3, 3), dtype=np.float32)

    def work():
        _, cache = F_conv.conv2d_forward(x, W, None, stride, 1)
        F_conv.conv2d_weight_grad(d, cache)
        F_conv.conv2d_input_error(d, W, x.shape, stride, 1)
    return work


def _relu_work(c: int, side: int, batch: int):
    """A closure running one ReLU forward + backward on fixed channels-last data."""
    from ..functional import activation as F_act
    x, dy = _activations(2, batch, c, side)

    def work():
        _, mask = F_act.relu_forward(x)
        F_act.relu_backward(dy, mask)
    return work


def _sgd_work(size: int):
    """A closure running one SGD step (momentum 0.9, weight decay 5e-4) of one float32
    parameter of ``size`` elements with a fixed gradient."""
    import numpy as np

    from ..nn.module import Parameter
    from ..optim.sgd import SGD
    p = Parameter(np.random.default_rng(0).standard_normal(size).astype(np.float32))
    p.grad = np.full(size, 1e-3, np.float32)
    opt = SGD([("w", p)], lr=1e-3, momentum=0.9, weight_decay=5e-4)
    return opt.step


def _interleaved(works: dict, threads: list, rounds: int, reps: int) -> dict:
    """{(name, T, K): [median seconds of each round]} for every work, T and K."""
    from ..cpu import set_threads
    from ..jit import set_cpu_kernels
    from .regimes import round_order
    out = {}
    for r in range(rounds):
        for name, work in round_order(works.items(), r):
            for t in round_order(threads, r):
                for k in round_order(("numpy", "numba"), r):
                    set_threads(t)
                    set_cpu_kernels(k)
                    work()  # warm-up: the first numba call compiles or loads its cache
                    times = []
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        work()
                        times.append(time.perf_counter() - t0)
                    out.setdefault((name, t, k), []).append(statistics.median(times))
    return out


def compare(model: str = "resnet20", batch: int = 128, rounds: int = 3, steps: int = 3,
            threads: int | None = None, ops: bool = True, log=print) -> list[dict]:
    """Time steps (and batch norms) under both kernels at 1 and ``threads`` threads.

    Returns
    -------
    list of dicts with ``work``, ``threads``, ``numpy_s``, ``numba_s`` (medians over the
    rounds), ``speedup``, ``round_speedups`` and ``verdict``; one line logged per dict.
    """
    from ..cpu import using_threads
    from ..cpu.threads import default_threads
    from ..doctor.threads import verdict
    from ..jit import check_cpu_kernels, using_cpu_kernels
    from ..train import train_step
    from .worker import _minigrad_setup

    check_cpu_kernels("numba", "the compiled kernels")  # a clear error without Numba
    n = default_threads() if threads is None else int(threads)
    counts = sorted({1, n})
    with using_threads(1), using_cpu_kernels("numpy"):  # both restored afterwards
        net, layers, opt, x, y, _, _ = _minigrad_setup(
            {"model": model, "rule": "bp", "threads": 1, "device": "cpu", "batch": batch})
        works = {f"{model} BP step, batch {batch}":
                 lambda: train_step(net, layers, opt, x, y)}
        res = _interleaved(works, counts, rounds, steps)
        if ops:
            bn = {f"BatchNorm fwd+bwd ({batch}, {c}, {s}, {s})": _bn_work(c, s, batch)
                  for c, s in STAGES}
            res.update(_interleaved(bn, counts, rounds, 5))
            cv = {f"Conv 3x3 fwd+wgrad+dx ({batch}, {c}, {s}, {s})": _conv_work(c, s, batch)
                  for c, s in STAGES}
            cv.update({f"Conv 3x3 stride 2 fwd+wgrad+dx ({batch}, {c}, {s}, {s})":
                       _conv_work(c, s, batch, 2) for c, s in STAGES[:2]})
            res.update(_interleaved(cv, counts, rounds, 5))
            relu = {f"ReLU fwd+bwd ({batch}, {c}, {s}, {s})": _relu_work(c, s, batch)
                    for c, s in STAGES}
            res.update(_interleaved(relu, counts, rounds, 10))
            sgd = {f"SGD step, {n_} float32 parameters": _sgd_work(n_) for n_ in SGD_SIZES}
            res.update(_interleaved(sgd, counts, rounds, 50))
    rows = []
    for (name, t, k), _ in res.items():
        if k != "numpy":
            continue
        a, b = res[(name, t, "numpy")], res[(name, t, "numba")]
        ratios = [p / q for p, q in zip(a, b)]
        row = {"work": name, "threads": t, "numpy_s": statistics.median(a),
               "numba_s": statistics.median(b), "round_speedups": ratios,
               "speedup": statistics.median(a) / statistics.median(b),
               "verdict": verdict(ratios)}
        rows.append(row)
        log(f"{name}, {t} thread(s): numpy {row['numpy_s'] * 1e3:.1f} ms, numba "
            f"{row['numba_s'] * 1e3:.1f} ms: {row['speedup']:.2f}x (rounds "
            f"{min(ratios):.2f}-{max(ratios):.2f}), {row['verdict']}")
    return rows


def main(argv=None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m minigrad_pfa.bench.kernels",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20", choices=("resnet20", "mlp"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round and setting")
    p.add_argument("--threads", type=int, default=None,
                   help="the all-core count (default: the usable cores)")
    p.add_argument("--no-ops", action="store_true", help="whole steps only")
    p.add_argument("--json", default=None, metavar="FILE")
    a = p.parse_args(argv)
    rows = compare(a.model, a.batch, a.rounds, a.steps, a.threads, ops=not a.no_ops)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
