"""Do GEMM pieces round like the whole product? The survey behind :mod:`minigrad_pfa.jit.linear`.

For a linear layer's three products (notation of :mod:`minigrad_pfa.functional.linear`)::

    forward          y        = x @ W.T       cut into columns f:  y[:, f]
    input error      delta_in = delta @ M     cut into columns f:  delta_in[:, f]
    weight gradient  gW       = delta.T @ x   cut into rows f:     gW[f]    (as jit.linear)
                                              or columns f:        gW[:, f]

every two-piece cut [0, k), [k, p) of the cut axis (k a multiple of ``step``) whose smaller
piece has at least ``min_macs`` multiply-adds is computed by :mod:`minigrad_pfa.jit.linear`'s
compiled pieces (SciPy's BLAS, one thread) and compared bit for bit with the same call over
the whole axis. A cut that differs means shards would make a run's numbers depend on the
thread count.

    python -m minigrad_pfa.bench.pieces      (float32 and float64; a minute or two)
"""
from __future__ import annotations

import itertools

import numpy as np

#: (batch, in, out) grid of the survey
BATCHES, INS, OUTS = (8, 16, 32, 64, 128, 256), (10, 100, 300, 784), (16, 64, 200, 512, 1000)

#: the pool's smallest shard of GEMM work (:data:`minigrad_pfa.cpu.threads.MIN_ELEMENTS`
#: x ``GEMM_MACS_PER_ELEMENT``): smaller pieces are never cut
MIN_MACS = (1 << 18) * 16


def survey(dtype, batches=BATCHES, ins=INS, outs=OUTS, step: int = 8,
           min_macs: int = MIN_MACS) -> dict:
    """{product: (cuts compared, cuts that differ)} over the grid, for ``dtype``."""
    from ..cpu import using_threads
    from ..jit import linear as jit_linear
    cols, rows = jit_linear._kernels(np.dtype(dtype))
    rng = np.random.default_rng(0)
    out = {k: [0, 0] for k in ("forward", "input error", "weight gradient rows",
                               "weight gradient columns")}

    def cuts(p, other):
        return [k for k in range(step, p, step) if min(k, p - k) * other >= min_macs]

    with using_threads(1):
        for n, i, o in itertools.product(batches, ins, outs):
            x, W, M = (rng.standard_normal(s).astype(dtype) for s in ((n, i), (o, i), (o, i)))
            d = rng.standard_normal((n, o)).astype(dtype)
            jobs = [("forward", cols, (x, W.T), (0, i, 1, i), (n, o), o, n * i),
                    ("input error", cols, (d, M), (0, o, 0, i), (n, i), i, n * o),
                    ("weight gradient rows", rows, (d.T, x), (1, o, 0, i), (o, i), o, n * i),
                    ("weight gradient columns", cols, (d.T, x), (1, o, 0, i), (o, i), i, n * o)]
            for name, fn, (A, B), (ta, lda, tb, ldb), shape, p, other in jobs:
                whole = np.empty(shape, dtype)
                fn(A, B, whole, ta, lda, tb, ldb, shape[1], np.array([0, p]))
                for k in cuts(p, other):
                    two = np.empty(shape, dtype)
                    fn(A, B, two, ta, lda, tb, ldb, shape[1], np.array([0, k, p]))
                    out[name][0] += 1
                    out[name][1] += not np.array_equal(two, whole)
    return {k: tuple(v) for k, v in out.items()}


def main(argv=None) -> int:
    for dt in (np.float32, np.float64):
        for name, (n, bad) in survey(dt).items():
            print(f"{np.dtype(dt).name} {name}: {bad} of {n} two-piece cuts differ from the "
                  f"whole product")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
