"""The compiled CPU kernels (minigrad_pfa.jit, ``--cpu-kernels numba``).

They must compute what the NumPy path computes (to rounding: they accumulate in float64
and keep other temporaries), give the same bits on any number of threads, and be chosen
only on request, with a clear error when Numba is missing.
"""
import json
import sys
import threading

import numpy as np
import pytest

from minigrad_pfa import cpu, jit
from minigrad_pfa.functional import batchnorm as F_bn

numba = pytest.importorskip("numba", reason="the optional extra minigrad_pfa[jit] "
                                            "(pip install numba) is not installed")


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _bn_step(x, dy, kernels, threads=1, reduce=None, min_elements=None):
    """(y, dx, dgamma, dbeta, running_mean, running_var) of one training BN step."""
    c = x.shape[1]
    rng = np.random.default_rng(3)
    gamma = (rng.random(c) + 0.5).astype(x.dtype)
    beta = rng.standard_normal(c).astype(x.dtype)
    rm, rv = np.zeros(c, x.dtype), np.ones(c, x.dtype)
    with jit.using_cpu_kernels(kernels), \
            cpu.using_threads(threads, min_rows=1 if min_elements else None,
                              min_elements=min_elements):
        y, cache = F_bn.batchnorm_forward(x, gamma, beta, rm, rv, training=True,
                                          reduce=reduce)
        dx, dg, db = F_bn.batchnorm_backward(dy, cache)
    return y, dx, dg, db, rm, rv


SHAPES = [(128, 16, 32, 32), (64, 32, 8, 8), (6, 3, 2, 2), (64, 10), (2, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_batchnorm_kernels_compute_what_numpy_does(shape, dtype, tol):
    rng = np.random.default_rng(0)
    # an offset mean 3 sigma away: a one-pass E[x^2] - mu^2 variance would lose digits
    x = (rng.standard_normal(shape) * 0.5 + 1.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    ref = _bn_step(x, dy, "numpy")
    got = _bn_step(x, dy, "numba")
    for name, a, b in zip("y dx dgamma dbeta running_mean running_var".split(), got, ref):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert _rel(a, b) <= tol, (name, _rel(a, b))
    assert got[0].strides == ref[0].strides  # 4-D outputs stay channels-last


def test_batchnorm_kernels_take_any_layout():
    """NCHW (copied to channels-last by the flat view) and a Fortran-ordered 2-D input."""
    rng = np.random.default_rng(5)
    for x in (rng.standard_normal((6, 4, 3, 5)), np.asfortranarray(rng.standard_normal((32, 7)))):
        dy = rng.standard_normal(x.shape)
        for a, b in zip(_bn_step(x, dy, "numba"), _bn_step(x, dy, "numpy")):
            assert _rel(a, b) <= 1e-12


def test_batchnorm_kernels_same_bits_on_any_thread_count():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((96, 16, 8, 8)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    one = _bn_step(x, dy, "numba", threads=1, min_elements=1)
    for t in (2, 3):
        many = _bn_step(x, dy, "numba", threads=t, min_elements=1)
        for a, b in zip(many, one):
            assert np.array_equal(a, b)


def test_batchnorm_kernels_really_shard(monkeypatch):
    """With 2 threads the compiled passes run in shards on two threads (not a serial call
    dressed up): record the threads the forward's affine kernel ran on."""
    from minigrad_pfa.jit import batchnorm as jit_bn
    moments, affine, sums, dx_rows, affine_relu = jit_bn._kernels()
    seen = set()
    x = np.random.default_rng(2).standard_normal((64, 16, 8, 8))
    barrier = threading.Barrier(2, timeout=10)

    def slow_spy(*args):  # both shards must be in flight at once to pass the barrier
        seen.add(threading.get_ident())
        barrier.wait()
        return affine(*args)

    monkeypatch.setattr(jit_bn, "_kernels",
                        lambda: (moments, slow_spy, sums, dx_rows, affine_relu))
    _bn_step(x, x, "numba", threads=2, min_elements=1)
    assert len(seen) == 2


def test_synchronised_batchnorm_kernels_equal_one_process():
    """Two ranks (threads here) with a summing ``reduce`` normalise with the statistics of
    the whole batch: their halves equal the one-process result."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((16, 4, 3, 3)) * 2 + 5).astype(np.float64)
    dy = rng.standard_normal(x.shape)
    whole = _bn_step(x, dy, "numba")
    slots, barrier, out = {}, threading.Barrier(2, timeout=10), {}

    def reduce_for(rank):
        def reduce(v):
            slots[rank] = np.array(v)
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()
            return total
        return reduce

    def rank(k):
        half = slice(8 * k, 8 * k + 8)
        out[k] = _bn_step(x[half], dy[half], "numba", reduce=reduce_for(k))

    ts = [threading.Thread(target=rank, args=(k,)) for k in (0, 1)]
    with jit.using_cpu_kernels("numba"):  # the threads read the process-wide setting
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    for i in (0, 1):  # y and dx: rows of the whole batch's
        assert _rel(np.concatenate([out[0][i], out[1][i]]), whole[i]) <= 1e-12
    # dgamma, dbeta are each rank's share of the sums
    for i in (2, 3):
        assert _rel(out[0][i] + out[1][i], whole[i]) <= 1e-12
    for i in (4, 5):  # the running statistics: the global batch's on both ranks
        assert _rel(out[0][i], whole[i]) <= 1e-12 and _rel(out[1][i], whole[i]) <= 1e-12


def test_setting_is_explicit_and_checked(monkeypatch):
    monkeypatch.delenv(jit.CPU_KERNELS_ENV, raising=False)
    monkeypatch.setitem(jit._state, "name", None)
    assert jit.get_cpu_kernels() == "numpy"  # the default: the NumPy code
    assert not jit.active(np)
    with jit.using_cpu_kernels("numba"):
        assert jit.active(np)
        assert not jit.active(type(sys)("cupy"))  # never for other array modules
    assert jit.get_cpu_kernels() == "numpy"
    with pytest.raises(ValueError, match="one of numpy, numba"):
        jit.set_cpu_kernels("numbaa")
    monkeypatch.setitem(jit._state, "name", None)
    monkeypatch.setenv(jit.CPU_KERNELS_ENV, "numba")
    assert jit.get_cpu_kernels() == "numba"
    monkeypatch.setitem(jit._state, "name", None)
    monkeypatch.setenv(jit.CPU_KERNELS_ENV, "fast")
    with pytest.raises(ValueError, match=r"\$MINIGRAD_PFA_CPU_KERNELS must be one of"):
        jit.get_cpu_kernels()


def test_missing_numba_is_an_error_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'minigrad_pfa\[jit\]'"):
        jit.check_cpu_kernels("numba")
    assert jit.check_cpu_kernels("numpy") == "numpy"


def test_train_cli_runs_with_numba_kernels_and_records_them(tmp_path):
    """``train --cpu-kernels numba``: a short run that learns, its choice in results.json,
    and the setting restored afterwards."""
    from minigrad_pfa.cli import main
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({
        "name": "t", "epochs": 1, "seed": 0, "model": {"name": "resnet20"},
        "data": {"name": "synthetic-images", "batch_size": 16, "val_size": 16,
                 "limit_train": 32, "normalize": "train_stats", "eval_batch_size": 64},
        "rule": "bp", "optim": {"lr": 0.05}, "metrics": {"probe_size": 16}}))
    rc = main(["train", str(cfg), "--run-dir", str(tmp_path / "run"), "--no-progress",
               "--cpu-kernels", "numba", "--threads", "2"])
    assert rc in (0, None)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["machine"]["cpu_kernels"] == "numba" and res["machine"]["threads"] == 2
    assert jit.get_cpu_kernels() == "numpy"


def test_grid_and_bench_pass_the_choice_to_their_children(monkeypatch):
    from minigrad_pfa.bench.runner import worker_env
    from minigrad_pfa.grid import thread_env
    monkeypatch.delenv(jit.CPU_KERNELS_ENV, raising=False)
    assert thread_env(1, 1, cpu_kernels="numba")[jit.CPU_KERNELS_ENV] == "numba"
    assert jit.CPU_KERNELS_ENV not in thread_env(1, 1)
    assert worker_env(1, "numba")[jit.CPU_KERNELS_ENV] == "numba"


def test_kernels_benchmark_compares_both_in_one_run():
    """``python -m minigrad_pfa.bench.kernels``: every (work, threads) row has both kernels'
    times and a verdict, and the caller's settings come back unchanged."""
    from minigrad_pfa.bench import kernels as bk
    lines = []
    rows = bk.compare("mlp", batch=8, rounds=2, steps=1, threads=2, log=lines.append)
    works = {r["work"] for r in rows}
    assert len(works) == 1 + 3 * len(bk.STAGES) + 2 + len(bk.SGD_SIZES)  # 2 strided convs
    assert {r["threads"] for r in rows} == {1, 2}
    for r in rows:
        assert r["numpy_s"] > 0 and r["numba_s"] > 0 and len(r["round_speedups"]) == 2
        assert r["verdict"] in ("faster", "slower", "no difference")
    assert len(lines) == len(rows)
    assert jit.get_cpu_kernels() == "numpy" and cpu.get_threads() == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["channels-last", "C", "fortran-2d", "strided"])
def test_compiled_relu_has_numpys_bits(dtype, layout, monkeypatch):
    """One compiled pass each way gives NumPy's maximum / greater / multiply bits (NaN,
    infinities, signed zeros included) in the input's layout, on 1 and 2 threads; a strided
    input (no dense block) takes NumPy's path."""
    from minigrad_pfa.functional import activation as F_act
    from minigrad_pfa.jit import activation as jit_act
    rng = np.random.default_rng(6)
    x = rng.standard_normal((32, 16, 6, 6) if layout != "fortran-2d" else (33, 100))
    x.flat[:20] = [np.nan, -0.0, 0.0, np.inf, -np.inf] * 4
    x = {"channels-last": lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))
         .transpose(0, 3, 1, 2), "C": lambda a: a, "fortran-2d": np.asfortranarray,
         "strided": lambda a: a[:, ::2]}[layout](x.astype(dtype))
    dy = np.empty_like(x)
    dy[...] = rng.standard_normal(x.shape)
    dy.flat[:5] = [np.nan, -0.0, 0.0, np.inf, -3.0]
    ref_y, ref_m = F_act.relu_forward(x)
    ref_dx = F_act.relu_backward(dy, ref_m)
    calls = []
    real = jit_act.relu_forward
    monkeypatch.setattr(jit_act, "relu_forward",  # counts the calls the kernel took
                        lambda a: (lambda out: (calls.append(out is not None), out)[1])(real(a)))
    for t in (1, 2):
        calls.clear()
        with jit.using_cpu_kernels("numba"), cpu.using_threads(t, min_rows=1, min_elements=1):
            y, m = F_act.relu_forward(x)
            dx = F_act.relu_backward(dy, m)
        assert calls == [layout != "strided"]
        for a, b in ((y, ref_y), (m, ref_m), (dx, ref_dx)):
            assert a.strides == b.strides and a.tobytes(order="A") == b.tobytes(order="A")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("residual", [None, "channels-last", "NCHW"])
def test_fused_batchnorm_relu_has_the_three_operations_bits(dtype, residual):
    """``batchnorm_relu_forward`` and ``relu_batchnorm_backward`` under the compiled kernels:
    one output pass and the mask read inside the batch norm's backward passes give the bits of
    batchnorm_forward -> elementwise add -> relu_forward and relu_backward ->
    batchnorm_backward under the same kernels (y, mask, statistics, dx, dgamma, dbeta), on 1
    and 2 threads, with NaN and signed zeros."""
    from minigrad_pfa.functional import activation as F_act
    from minigrad_pfa.functional import elementwise as F_ew
    rng = np.random.default_rng(8)
    shape = (32, 8, 6, 6)
    x = np.ascontiguousarray(rng.standard_normal(shape).transpose(0, 2, 3, 1)).transpose(
        0, 3, 1, 2).astype(dtype)
    add = None
    if residual is not None:
        add = rng.standard_normal(shape).astype(dtype)
        add.flat[:4] = [np.nan, -0.0, np.inf, -np.inf]
        if residual == "channels-last":
            add = np.ascontiguousarray(add.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    c = shape[1]
    gamma = (rng.random(c) + 0.5).astype(dtype)
    gamma[0] = 0.0  # channel 0: y = beta exactly; beta[0] = -0.0 checks the ReLU's zero
    beta = rng.standard_normal(c).astype(dtype)
    beta[0] = -0.0
    dy = rng.standard_normal(shape).astype(dtype)

    def run(fused, threads):
        rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
        with jit.using_cpu_kernels("numba"), cpu.using_threads(threads, min_rows=1,
                                                               min_elements=1):
            if fused:
                y, cache, m = F_bn.batchnorm_relu_forward(x, gamma, beta, rm, rv, add=add,
                                                          training=True)
                dx, dg, db = F_bn.relu_batchnorm_backward(dy, m, cache)
            else:
                y, cache = F_bn.batchnorm_forward(x, gamma, beta, rm, rv, training=True)
                if add is not None:
                    y = F_ew.add(y, add)
                y, m = F_act.relu_forward(y)
                dx, dg, db = F_bn.batchnorm_backward(F_act.relu_backward(dy, m), cache)
        return y, m, rm, rv, dx, dg, db

    from minigrad_pfa.jit import batchnorm as jit_bn
    fused_calls = []
    real = jit_bn.train_forward

    def spy(*a, **k):
        fused_calls.append(bool(k.get("relu")))
        return real(*a, **k)

    ref = run(False, 1)
    for threads in (1, 2):
        jit_bn.train_forward = spy
        try:
            got = run(True, threads)
        finally:
            jit_bn.train_forward = real
        for name, a, b in zip("y mask running_mean running_var dx dgamma dbeta".split(),
                              got, ref):
            assert a.strides == b.strides, (name, threads)  # an NCHW residual: not fused
            assert a.tobytes(order="A") == b.tobytes(order="A"), (name, threads)
    assert ref[1].any() and not ref[1].all()
    assert fused_calls == [residual != "NCHW"] * 2  # the one pass ran, where it applies


def test_resnet_block_uses_one_output_pass(monkeypatch):
    """Under the compiled kernels a ResNet-8 forward runs each BN -> (residual) -> ReLU as
    one fused pass (the stem's pair through Sequential, both of every block's), the backward
    the ReLU -> BN pairs in the batch norm's passes, and its outputs and gradients equal
    those of the layers called one by one."""
    from minigrad_pfa.jit import batchnorm as jit_bn
    from minigrad_pfa.nn import CifarResNet, finalize, init_model
    from minigrad_pfa.nn import layers as L
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    dy = rng.standard_normal((8, 10)).astype(np.float32)

    def run(fused):
        model = init_model(finalize(CifarResNet(depth=8)), 0)
        calls, masked = [], []
        real, real_bwd = jit_bn.train_forward, jit_bn.train_backward
        monkeypatch.setattr(jit_bn, "train_forward",
                            lambda *a, **k: (calls.append((k.get("relu"),
                                                           k.get("add") is not None)),
                                             real(*a, **k))[1])
        monkeypatch.setattr(jit_bn, "train_backward",
                            lambda *a, **k: (masked.append(k.get("mask") is not None),
                                             real_bwd(*a, **k))[1])
        if not fused:  # the layers one by one: BN's forward, then the ReLU module's
            monkeypatch.setattr(L._BatchNorm, "forward_relu",
                                lambda self, x, relu, add=None: relu.forward(
                                    self.forward(x) if add is None else
                                    F_ew.add(self.forward(x), add)))
            monkeypatch.setattr(L._BatchNorm, "backward_relu",
                                lambda self, dy, relu, ctx=None: self.backward(
                                    relu.backward(dy, ctx), ctx))
        with jit.using_cpu_kernels("numba"):
            out = model.forward(x)
            model.backward(dy)
        monkeypatch.undo()
        grads = [p.grad.copy() for _, p in model.named_parameters()]
        return out, grads, calls, masked

    from minigrad_pfa.functional import elementwise as F_ew
    out, grads, calls, masked = run(True)
    ref_out, ref_grads, ref_calls, ref_masked = run(False)
    assert calls == [(True, False)] + [(True, False), (True, True)] * 3
    assert masked == [False, True] * 3 + [True]  # blocks' bn2, bn1 (backward order), stem
    assert set(ref_calls) == {(False, False)} and set(ref_masked) == {False}
    assert out.tobytes() == ref_out.tobytes()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(grads, ref_grads))


def test_fused_batchnorm_relu_leaves_other_residuals_to_numpy():
    """A residual of another dtype is not cast into the fused pass: the three operations run,
    and NumPy's promotion gives a float64 output, as without the compiled kernels."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    add = rng.standard_normal(x.shape)  # float64
    c = x.shape[1]
    outs = []
    for kernels in ("numba", "numpy"):
        with jit.using_cpu_kernels(kernels):
            y, _, m = F_bn.batchnorm_relu_forward(x, np.ones(c, np.float32),
                                                  np.zeros(c, np.float32), None, None,
                                                  add=add, training=True, update_stats=False)
        outs.append((y, m))
    assert outs[0][0].dtype == outs[1][0].dtype == np.float64
    assert _rel(outs[0][0], outs[1][0]) < 1e-6 and np.array_equal(outs[0][1], outs[1][1])


def test_layer_pairs_respect_replaced_layers_and_take_2d_inputs():
    """Only the engine's own BatchNorm and ReLU, unmodified, pair up (nn.layers.fusable): a
    subclass or a forward replaced on the instance runs its own code; a BatchNorm1d -> ReLU
    pair (2-D, r = 1) gives the bits of the layers one by one."""
    from minigrad_pfa.nn import BatchNorm1d, BasicBlock, ReLU, Sequential
    from minigrad_pfa.nn.layers import fusable

    class ScaledBN(BatchNorm1d):
        def forward(self, x):
            return 2 * super().forward(x)

    class LeakyReLU(ReLU):
        def forward(self, x):
            self.cache["relu"] = np.ones(x.shape, bool)
            return np.where(x > 0, x, 0.5 * x)

    x = np.random.default_rng(4).standard_normal((16, 3)).astype(np.float32)
    with jit.using_cpu_kernels("numba"):
        assert fusable(BatchNorm1d(3), ReLU())
        assert not fusable(ScaledBN(3), ReLU()) and not fusable(BatchNorm1d(3), LeakyReLU())
        assert np.array_equal(Sequential(ScaledBN(3), ReLU()).forward(x),
                              ReLU().forward(ScaledBN(3).forward(x)))
        wrapped = ReLU()
        object.__setattr__(wrapped, "forward", lambda a: a * 0 + 7)
        assert (Sequential(BatchNorm1d(3), wrapped).forward(x) == 7).all()
        pair, (bn, relu) = Sequential(BatchNorm1d(3), ReLU()), (BatchNorm1d(3), ReLU())
        assert pair.forward(x).tobytes() == relu.forward(bn.forward(x)).tobytes()
        dy = np.ones_like(x)
        assert pair.backward(dy).tobytes() == bn.backward(relu.backward(dy)).tobytes()
        block = BasicBlock(4, 4)
        object.__setattr__(block, "relu1", LeakyReLU())  # replaced after construction
        z = np.random.default_rng(5).standard_normal((2, 4, 4, 4)).astype(np.float32)
        block.forward(z)
        # the subclass's own forward ran (a fused pass would store BN's sign pattern)
        assert block.relu1.cache["relu"].all() and not block.relu2.cache["relu"].all()
