"""``minigrad-pfa bench``: this engine against PyTorch, side by side in one run.

::

    minigrad-pfa bench --quick                             # all cores and one thread
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE minigrad-pfa bench --profile \
        --json docs/bench_cpu.json --markdown docs/performance.md     # the full report
    minigrad-pfa bench --device cuda --json bench_gpu.json # CuPy against PyTorch on the GPU

Training-step time (median of the steps pooled over interleaved rounds, with their
interquartile range), peak memory (each configuration's maximum resident set size in a
fresh subprocess) and GFLOP/s against a float32 GEMM peak measured in the same run, for
ResNet-20 and the MLP under every learning rule, PyTorch's autograd BP and the published
PFA formulation, batch-size scaling, and the data loader. Two regimes in one run: all
usable cores (``--threads``, default; wall clock) and one thread (the worker's CPU time,
which does not count the time other processes held the core). The all-core targets are
reported as undecided when other processes kept more than a quarter of a core busy while
a configuration was timed: measure them on a quiet machine. See :mod:`minigrad_pfa.bench.runner` and :mod:`minigrad_pfa.bench.regimes`.
"""
from __future__ import annotations

import argparse

from .cli_doc import documented_parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    from .bench.runner import add_arguments

    p = documented_parser(subparsers, "bench",
                          "benchmark training steps against PyTorch (docs/performance.md)",
                          __doc__)
    add_arguments(p)
    p.set_defaults(func=_cmd_bench)
    return p


def _cmd_bench(args) -> int:
    from .bench.runner import run_from_args
    return run_from_args(args)
