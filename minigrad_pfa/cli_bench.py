"""``minigrad-pfa bench``: this engine against PyTorch, side by side in one run.

::

    minigrad-pfa bench --quick --threads 1                 # a few minutes on one thread
    minigrad-pfa bench --threads 1 --timer cpu --profile --json bench.json --markdown perf.md
    minigrad-pfa bench --device cuda --json bench_gpu.json # CuPy against PyTorch on the GPU

Training-step time (median after warm-up), peak memory (each configuration's maximum
resident set size in a fresh subprocess) and GFLOP/s against a float32 GEMM peak measured
in the same run, for ResNet-20 and the MLP under every learning rule, PyTorch's autograd
BP and the published PFA formulation, batch-size scaling, and the data loader. On a
shared machine set ``--threads`` to what is free (oversubscribed BLAS threads slow down
by far more than the lost share), and with one thread prefer ``--timer cpu``: the
worker's CPU time does not count the time other processes held the core. See
:mod:`minigrad_pfa.bench.runner`.
"""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    from .bench.runner import add_arguments

    # paragraphs of the module docstring: title, "::", the examples, the description
    _, _, examples, body = __doc__.split("\n\n", 3)
    p = subparsers.add_parser(
        "bench", help="benchmark training steps against PyTorch (docs/performance.md)",
        description=body.strip(), epilog="examples:\n" + examples.strip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=_cmd_bench)
    return p


def _cmd_bench(args) -> int:
    from .bench.runner import run_from_args
    return run_from_args(args)
