"""The compiled linear GEMMs and SGD updates (minigrad_pfa.jit.linear / .optim / .parallel).

Both must give NumPy's serial bits (float32 products; every SGD variant in float32 and
float64) on any number of threads, really run when chosen, and step aside (same numbers)
where they do not apply: float64 products, strided operands, one thread, no thread-safe
threading layer.
"""
import itertools

import numpy as np
import pytest

from _rules_common import ALL_SPECS
from minigrad_pfa import cpu, jit
from minigrad_pfa.functional import linear as F_lin
from minigrad_pfa.nn.models import build_model, weight_layers
from minigrad_pfa.nn.module import Parameter
from minigrad_pfa.optim import build_optimizer
from minigrad_pfa.optim.sgd import SGD
from minigrad_pfa.rules import attach_rules
from minigrad_pfa.train import train_step

pytest.importorskip("numba", reason="the optional extra minigrad_pfa[jit] (pip install numba) "
                                    "is not installed")
from minigrad_pfa.jit import linear as jit_linear  # noqa: E402  (needs Numba)
from minigrad_pfa.jit import parallel  # noqa: E402

needs_layer = pytest.mark.skipif(parallel.layer() is None,
                                 reason="Numba has no thread-safe threading layer here")


def _products(x, W, d, M, kernels, threads):
    with jit.using_cpu_kernels(kernels), cpu.using_threads(threads):
        return (F_lin.linear_forward(x, W), F_lin.linear_input_error(d, M),
                F_lin.linear_weight_grad(d, x))


# (batch, in, out): the MLP's layers, a wide layer at a small batch, odd sizes
SHAPES = [(64, 784, 512), (64, 512, 512), (16, 3072, 1000), (33, 500, 777), (256, 300, 200)]


@needs_layer
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_linear_products_have_numpys_serial_bits_on_any_thread_count(shape, monkeypatch):
    n, i, o = shape
    rng = np.random.default_rng(0)
    x, W = rng.standard_normal((n, i), np.float32), rng.standard_normal((o, i), np.float32)
    d, M = rng.standard_normal((n, o), np.float32), rng.standard_normal((o, i), np.float32)
    ref = _products(x, W, d, M, "numpy", 1)
    calls = []
    real = jit_linear.matmul
    monkeypatch.setattr(jit_linear, "matmul",
                        lambda A, B, split, s: (calls.append((split, s)), real(A, B, split, s))[1])
    for t in (2, 3):
        calls.clear()
        got = _products(x, W, d, M, "numba", t)
        assert [c[0] for c in calls] == ["cols", "cols", "rows"]  # the compiled path ran
        assert all(s >= 2 for _, s in calls)
        for a, b in zip(got, ref):
            assert a.flags.c_contiguous and np.array_equal(a, b)


def test_float32_pieces_round_like_the_whole_product():
    """The premise of the compiled shards (``python -m minigrad_pfa.bench.pieces`` surveys a
    larger grid): float32 two-piece cuts of every product equal the whole, bit for bit."""
    from minigrad_pfa.bench import pieces
    res = pieces.survey(np.float32, batches=(16, 64), ins=(300, 784), outs=(200, 512))
    assert all(n > 0 for n, _ in res.values()), res  # every product had cuts to compare
    assert all(bad == 0 for _, bad in res.values()), res


def test_float64_strided_and_one_thread_products_stay_on_numpy(monkeypatch):
    """float64 pieces were measured to round differently from the whole: not compiled;
    nor is an operand with neither axis contiguous, nor anything on one thread."""
    rng = np.random.default_rng(1)
    calls = []
    real = jit_linear.matmul
    monkeypatch.setattr(jit_linear, "matmul",
                        lambda *a: (calls.append(a[2]), real(*a))[1])
    x64, W64 = rng.standard_normal((64, 784)), rng.standard_normal((512, 784))
    with jit.using_cpu_kernels("numba"), cpu.using_threads(2):
        y = F_lin.linear_forward(x64, W64)
    assert not calls and np.array_equal(y, x64 @ W64.T)
    assert jit_linear.shards(64, 512, 64 * 784 * 512, np.float64) == 0
    with cpu.using_threads(1):
        assert jit_linear.shards(64, 512, 64 * 784 * 512, np.float32) == 0
    x = rng.standard_normal((64, 1568), np.float32)[:, ::2]  # neither axis contiguous
    W = rng.standard_normal((512, 784), np.float32)
    assert jit_linear._operand(x) is None and jit_linear.matmul(x, W.T, "cols", 2) is None
    with cpu.using_threads(1):
        ref = x @ W.T
    with jit.using_cpu_kernels("numba"), cpu.using_threads(2):
        assert np.array_equal(F_lin.linear_forward(x, W), ref)


def test_without_a_threadsafe_layer_the_products_take_the_numpy_path(monkeypatch):
    monkeypatch.setattr(parallel, "layer", lambda: None)
    assert parallel.max_threads() == 1
    assert jit_linear.shards(64, 512, 64 * 784 * 512, np.float32) == 0


def _sgd_run(kernels, threads, dtype, mu, wd, tau, nesterov):
    r = np.random.default_rng(1)
    ps = [Parameter(r.standard_normal(s).astype(dtype)) for s in ((300, 700), (512,), (100001,))]
    opt = SGD([(f"p{i}", p) for i, p in enumerate(ps)], lr=0.05, momentum=mu, dampening=tau,
              weight_decay=wd, nesterov=nesterov)
    with jit.using_cpu_kernels(kernels), cpu.using_threads(threads):
        for _ in range(3):  # the first step fills the buffer, the next ones read it
            for p in ps:
                p.grad = r.standard_normal(p.data.shape).astype(dtype)
            opt.step()
    return [p.data for p in ps] + [v for st in opt.state.values() for v in st.values()
                                   if isinstance(v, np.ndarray)]


CONFIGS = [c for c in itertools.product((0.0, 0.9), (0.0, 5e-4), (0.0, 0.1), (False, True))
           if not (c[3] and (c[0] == 0.0 or c[2] != 0.0))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mu,wd,tau,nesterov", CONFIGS, ids=str)
def test_compiled_sgd_has_the_numpy_chains_bits(dtype, mu, wd, tau, nesterov, monkeypatch):
    from minigrad_pfa.jit import optim as jit_optim
    calls = []
    real = jit_optim.sgd_update
    monkeypatch.setattr(jit_optim, "sgd_update", lambda *a: (calls.append(1), real(*a))[1])
    ref = _sgd_run("numpy", 1, dtype, mu, wd, tau, nesterov)
    for t in (1, 2):
        calls.clear()
        got = _sgd_run("numba", t, dtype, mu, wd, tau, nesterov)
        assert len(calls) == 9 and len(got) == len(ref)
        for a, b in zip(got, ref):
            assert np.array_equal(a, b)


SPECS = [("bp", "bp")] + list(ALL_SPECS.items())  # every rule and variant


@needs_layer
@pytest.mark.parametrize("name,spec", SPECS, ids=[k for k, _ in SPECS])
def test_mlp_trains_to_the_same_bits_with_either_kernels(name, spec):
    """Five SGD steps of the benchmark's MLP (784-512-512-10, float32, batch 64), every rule:
    compiled GEMM shards, updates and ReLUs on 2 threads end on the NumPy path's one-thread
    parameters, bit for bit."""
    def run(kernels, threads):
        model = build_model("mlp", 0, "float32")
        attach_rules(model, spec, 0, input_shape=(784,))
        layers = list(weight_layers(model).values())
        opt = build_optimizer("sgd", list(model.named_parameters(trainable_only=True)),
                              lr=0.05, momentum=0.9, weight_decay=5e-4)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((64, 784)).astype(np.float32)
        y = rng.integers(0, 10, size=64)
        with jit.using_cpu_kernels(kernels), cpu.using_threads(threads):
            for _ in range(5):
                train_step(model, layers, opt, x, y)
        return model.state_dict()
    ref, got = run("numpy", 1), run("numba", 2)
    for k in ref:
        assert np.array_equal(got[k], ref[k]), k


@needs_layer
def test_a_one_column_product_stays_on_numpy():
    """A one-column result (NumPy: gemv) rounds differently from gemm pieces: the compiled
    path leaves it to NumPy (a layer with one input feature's weight gradient)."""
    rng = np.random.default_rng(3)
    d = rng.standard_normal((1024, 8192)).astype(np.float32)
    x = rng.standard_normal((1024, 1)).astype(np.float32)
    with cpu.using_threads(1):
        ref = F_lin.linear_weight_grad(d, x)
    with jit.using_cpu_kernels("numba"), cpu.using_threads(2):
        assert np.array_equal(F_lin.linear_weight_grad(d, x), ref)


@pytest.mark.parametrize("change", ["momentum 1e-46", "weight decay 1e-46 on inf",
                                    "momentum set as np.float64"])
def test_compiled_sgd_matches_numpy_on_odd_hyperparameters(change):
    """Hyper-parameters that vanish in float32, and a NumPy scalar set after construction,
    take the NumPy chain's branches and precision on both paths."""
    def run(kernels):
        rng = np.random.default_rng(8)
        p = Parameter(rng.standard_normal(1000).astype(np.float32))
        if "inf" in change:
            p.data[0] = np.inf  # NumPy's chain: inf * lam = inf, not skipped
        opt = SGD([("w", p)], lr=0.1, momentum=1e-46 if change == "momentum 1e-46" else 0.9,
                  weight_decay=1e-46 if "weight decay" in change else 0.0)
        if change == "momentum set as np.float64":
            opt.momentum = np.float64(0.9)
        with jit.using_cpu_kernels(kernels), np.errstate(invalid="ignore"):
            for _ in range(3):
                p.grad = rng.standard_normal(1000).astype(np.float32)
                opt.step()
        return p.data, opt.state["w"].get("momentum_buffer")
    for a, b in zip(run("numba"), run("numpy")):
        assert a.tobytes() == b.tobytes()
