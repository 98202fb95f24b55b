"""Run under ``mpiexec -n 2``: N ranks (sync_bn) against one process at the same global batch.

For every case, every rank trains a model 5 steps on its shard of the same global batches
(the data-parallel step of :mod:`minigrad_pfa.distributed`); rank 0 then trains the same
model in one process on the whole batches (the single-process path, no communicator) and
compares every state array. Rank 0 writes ``{case: max relative difference}`` as JSON to
``sys.argv[1]``. Helper of tests/test_distributed.py (not collected by pytest).

``sys.argv[2] == "cuda"`` (with ``MINIGRAD_PFA_CUPY_STANDIN=1``): the same on the CuPy
stand-in's device arrays, all-reduced through the host (:class:`HostStaged`, in place of
NCCL, which needs a GPU): the device code path of the data-parallel step minus NCCL.
"""
import json
import sys

import numpy as np

from minigrad_pfa.distributed.comm import MPICommunicator
from minigrad_pfa.distributed.parallel import DataParallel, shard_bounds
from minigrad_pfa.nn.models import build_model, finalize, init_model, weight_layers
from minigrad_pfa.nn.resnet import CifarResNet
from minigrad_pfa.optim import build_optimizer
from minigrad_pfa.rules import attach_rules
from minigrad_pfa.backend import to_device, to_numpy
from minigrad_pfa.train import train_step

STEPS, N_BATCH = 5, 8
DEVICE = sys.argv[2] if len(sys.argv) > 2 else "cpu"


class HostStaged:
    """Device buffers summed through the host over MPI (stands in for NCCL in this test)."""

    def __init__(self, mpi):
        self.mpi, self.rank, self.size, self.backend = mpi, mpi.rank, mpi.size, "host-staged"

    def allreduce_sum(self, buf, what="all-reduce"):
        if isinstance(buf, np.ndarray):
            return self.mpi.allreduce_sum(buf, what)
        host = np.ascontiguousarray(to_numpy(buf))
        self.mpi.allreduce_sum(host, what)
        buf[...] = to_device(host, DEVICE)
        return buf

    def __getattr__(self, name):  # broadcast, allgather, barrier, abort
        return getattr(self.mpi, name)
SHAPES = {"mlp": (20,), "resnet": (3, 8, 8)}


def make_model(kind, dtype, spec):
    if kind == "mlp":
        model = build_model("mlp", seed=0, dtype=dtype, in_features=20, hidden=(16, 12))
    else:
        model = init_model(finalize(CifarResNet(depth=8, widths=(4, 8, 16), dtype=dtype)), 0)
    attach_rules(model, spec, seed=0, input_shape=SHAPES[kind])
    return model.to(DEVICE)


def batches(kind, dtype):
    for step in range(STEPS):
        rng = np.random.default_rng([11, step])
        x = rng.standard_normal((N_BATCH,) + SHAPES[kind]).astype(dtype)
        yield to_device(x, DEVICE), to_device(rng.integers(0, 10, N_BATCH), DEVICE)


def train(kind, dtype, spec, group=None):
    model = make_model(kind, dtype, spec)
    opt = build_optimizer("sgd", list(model.named_parameters(trainable_only=True)),
                          lr=0.05, momentum=0.9, weight_decay=1e-3)
    layers = list(weight_layers(model).values())
    model.train()
    for x, y in batches(kind, dtype):
        if group is None:
            train_step(model, layers, opt, x, y)
            continue
        lo, hi = shard_bounds(N_BATCH, group.rank, group.size)
        with group.active():
            train_step(model, layers, opt, x[lo:hi], y[lo:hi], group)
    return {k: to_numpy(v).astype(np.float64) for k, v in model.state_dict().items()
            if np.asarray(to_numpy(v)).dtype.kind == "f"}


def max_rel(a, b):
    worst = 0.0
    for k in b:
        scale = max(float(np.abs(b[k]).max()), 1e-30)
        worst = max(worst, float(np.abs(a[k] - b[k]).max()) / scale)
    return worst


def main(out):
    comm = MPICommunicator(timeout_s=120)
    results = {}
    if DEVICE == "cuda":
        comm = HostStaged(comm)
        cases = [(kind, rule, "float64", True) for kind in ("mlp", "resnet")
                 for rule in ("bp", "dfa", "kp", "pfa")]
    else:
        cases = [(kind, rule, dtype, True)
                 for kind in ("mlp", "resnet") for dtype in ("float64", "float32")
                 for rule in ("bp", "fa", "dfa", "usf", "kp", "pfa")]
        cases += [("resnet", {"name": "wm", "mirror_batch": N_BATCH}, "float64", True),
                  ("resnet", "bp", "float64", False)]  # control: per-rank BN statistics
    for kind, spec, dtype, sync in cases:
        group = DataParallel(comm, sync_bn=sync)
        dist = train(kind, dtype, spec, group)
        if comm.rank == 0:
            name = spec if isinstance(spec, str) else spec["name"]
            key = f"{kind}/{name}/{dtype}/{'sync_bn' if sync else 'local_bn'}"
            results[key] = max_rel(dist, train(kind, dtype, spec))
    if comm.rank == 0:
        with open(out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
