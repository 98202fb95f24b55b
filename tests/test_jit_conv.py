"""The compiled stride-1 convolutions (minigrad_pfa.jit.conv, ``--cpu-kernels numba``).

They must compute what the NumPy path computes (to rounding: the weight gradient sums
sample by sample), really run when chosen, give the same bits on any number of threads, keep
SciPy's BLAS on one thread like NumPy's, and train every rule as the NumPy path does.
"""
import numpy as np
import pytest

from _rules_common import ALL_SPECS
from minigrad_pfa import cpu, jit
from minigrad_pfa.functional import conv as F_conv
from minigrad_pfa.nn.models import build_model, weight_layers
from minigrad_pfa.optim import build_optimizer
from minigrad_pfa.rules import attach_rules
from minigrad_pfa.train import train_step

pytest.importorskip("numba", reason="the optional extra minigrad_pfa[jit] (pip install numba) "
                                    "is not installed")
from minigrad_pfa.jit import blas  # noqa: E402  (needs Numba)
from minigrad_pfa.jit import conv as jit_conv  # noqa: E402


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _conv_ops(x, W, padding, d, kernels, threads=1, small_shards=False):
    """(forward y, weight gradient of error ``d``, input error of ``d``) with ``kernels``."""
    with jit.using_cpu_kernels(kernels), \
            cpu.using_threads(threads, min_rows=1 if small_shards else None,
                              min_elements=1 if small_shards else None):
        y, cache = F_conv.conv2d_forward(x, W, None, 1, padding)
        gW = F_conv.conv2d_weight_grad(d, cache)
        dx = F_conv.conv2d_input_error(d, W, x.shape, 1, padding, method="conv")
    return y, gW, dx


# (batch, in channels, out channels, side, kernel, padding): ResNet shapes, a padding wider
# than the kernel's reach, a rectangular kernel with rectangular padding, no padding
CASES = [(9, 16, 16, 32, (3, 3), (1, 1)), (7, 32, 16, 16, (3, 3), (1, 1)),
         (5, 8, 12, 7, (3, 3), (2, 2)), (4, 5, 6, 9, (3, 2), (1, 0)),
         (3, 4, 6, 10, (5, 5), (0, 0))]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
def test_conv_kernels_compute_what_numpy_does(case, dtype, tol, monkeypatch):
    n, ic, oc, s, k, p = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, s, s, ic)).astype(dtype).transpose(0, 3, 1, 2)
    W = rng.standard_normal((oc, ic) + k).astype(dtype)
    oh, ow = F_conv.conv_output_size(s, s, k[0], k[1], 1, p)
    d = rng.standard_normal((n, oc, oh, ow)).astype(dtype)
    calls = []
    for name in ("forward_rows", "weight_grad_rows"):
        real = getattr(jit_conv, name)
        monkeypatch.setattr(jit_conv, name,
                            lambda *a, _f=real, _n=name, **kw: (calls.append(_n), _f(*a, **kw))[1])
    got = _conv_ops(x, W, p, d, "numba")
    assert set(calls) == {"forward_rows", "weight_grad_rows"}  # the compiled path ran
    # forward, input error (a forward of the padded error) and the weight gradient
    # (summed per sample here, per chunk there): equal to rounding
    for name, a, b in zip(("y", "gW", "dx"), got, _conv_ops(x, W, p, d, "numpy")):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert _rel(a, b) <= tol, (name, _rel(a, b))


def test_weight_gradient_of_an_error_with_other_channels():
    """PFA's mid-channel error (oc' != oc) goes through the same loop."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 8, 8, 4)).transpose(0, 3, 1, 2)
    W = rng.standard_normal((5, 4, 3, 3))
    with jit.using_cpu_kernels("numba"):
        _, cache = F_conv.conv2d_forward(x, W, None, 1, 1)
        d = rng.standard_normal((6, 15, 8, 8))
        got = F_conv.conv2d_weight_grad(d, cache)
    _, cache = F_conv.conv2d_forward(x, W, None, 1, 1)
    ref = F_conv.conv2d_weight_grad(d, cache)
    assert got.shape == (15, 4, 3, 3) and _rel(got, ref) <= 1e-13


# (batch, in channels, error channels, h, w, kernel, stride, padding): ResNet-20's strided
# layers (small), an error with 10x the input's channels at stride 1 (PFA's mid channels),
# rectangular everything, a strided 1x1 kernel, a padding wider than the kernel's reach
FOLD_CASES = [(5, 16, 32, 8, 8, (3, 3), (2, 2), (1, 1)), (4, 3, 30, 8, 8, (3, 3), (1, 1), (1, 1)),
              (3, 5, 6, 9, 7, (2, 3), (2, 1), (0, 1)), (6, 4, 8, 6, 6, (1, 1), (2, 2), (0, 0)),
              (2, 3, 4, 5, 6, (3, 3), (3, 2), (2, 2))]


@pytest.mark.parametrize("case", FOLD_CASES, ids=str)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
def test_fold_input_error_compiled_computes_what_numpy_does(case, dtype, tol, monkeypatch):
    """The folded input error (any stride, kernel, padding; errors with other channels) in
    compiled sample loops: NumPy's result to the GEMM's rounding, in NumPy's layout, and the
    same bits on 1, 2 and 3 threads."""
    n, ic, ocp, h, w, k, s, p = case
    rng = np.random.default_rng(5)
    oh, ow = F_conv.conv_output_size(h, w, k[0], k[1], s, p)
    d = rng.standard_normal((n, oh, ow, ocp)).astype(dtype).transpose(0, 3, 1, 2)
    M = rng.standard_normal((ocp, ic) + k).astype(dtype)
    shards = []
    real = jit_conv.input_error_fold
    monkeypatch.setattr(jit_conv, "input_error_fold",
                        lambda *a: (shards.append(a[-1] - a[-2]), real(*a))[1])

    def fold(kernels, threads=1):
        with jit.using_cpu_kernels(kernels), \
                cpu.using_threads(threads, min_rows=1, min_elements=1):
            return F_conv.conv2d_input_error(d, M, (n, ic, h, w), s, p, method="fold")

    ref = fold("numpy")
    assert shards == []
    one = fold("numba")
    assert shards == [n]  # the compiled path ran, one shard on one thread
    assert one.shape == ref.shape and one.strides == ref.strides and one.dtype == ref.dtype
    assert _rel(one, ref) <= tol
    for t in (2, 3):
        shards.clear()
        many = fold("numba", t)
        assert len(shards) == min(t, n) and sum(shards) == n
        assert np.array_equal(many, one)


def test_conv_kernels_same_bits_on_any_thread_count(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((12, 8, 8, 6)).astype(np.float32).transpose(0, 3, 1, 2)
    W = rng.standard_normal((7, 6, 3, 3)).astype(np.float32)
    d = rng.standard_normal((12, 7, 8, 8)).astype(np.float32)
    one = _conv_ops(x, W, (1, 1), d, "numba", threads=1, small_shards=True)
    shards = []
    real = jit_conv.forward_rows
    monkeypatch.setattr(jit_conv, "forward_rows",
                        lambda xl, *a: (shards.append(xl.shape[0]), real(xl, *a))[1])
    for t in (2, 3):
        shards.clear()
        many = _conv_ops(x, W, (1, 1), d, "numba", threads=t, small_shards=True)
        assert len(shards) >= t  # the forward and the input error ran in batch shards
        for a, b in zip(many, one):
            assert np.array_equal(a, b)


def test_scipy_blas_is_held_to_one_thread_with_the_engine_threads():
    """The kernels call SciPy's BLAS: inside the engine's threads every BLAS runs one thread,
    else each shard's GEMM would start its own helpers."""
    from threadpoolctl import threadpool_info
    with cpu.using_threads(2):
        blas.gemm.cache_clear()  # the loader runs here, after the engine's limit
        jit_conv._kernels.cache_clear()
        jit_conv._kernels(np.dtype(np.float32))
        libs = [i for i in threadpool_info() if i["user_api"] == "blas"]
        assert any("scipy_openblas" in i["filepath"] or "scipy" in i["filepath"] for i in libs)
        assert all(i["num_threads"] == 1 for i in libs), libs


def test_unsupported_dtypes_stay_on_numpy():
    assert jit_conv.supports(np.float32) and jit_conv.supports(np.float64)
    assert not jit_conv.supports(np.float16)


SPECS = [("bp", "bp"), ("fa", "fa"), ("dfa", "dfa"), ("kp", "kp"), ("wm", "wm"),
         ("pfa", ALL_SPECS["pfa"]), ("pfa_literal", {"name": "pfa", "expand_ratio": 2,
                                                    "order": "literal"})]


@pytest.mark.parametrize("name,spec", SPECS, ids=[k for k, _ in SPECS])
def test_resnet_trains_the_same_with_either_kernels(name, spec):
    """Five SGD steps of a small ResNet (float64, 2 threads) with the compiled convolutions
    and batch norms end where the NumPy path's end, for rules whose feedback convolutions
    differ (B, D_l, B @ R, mirrored, R with mid channels)."""
    def run(kernels):
        model = build_model("resnet20", 0, "float64", num_classes=4)
        attach_rules(model, spec, 0, input_shape=(3, 8, 8))
        layers = list(weight_layers(model).values())
        opt = build_optimizer("sgd", list(model.named_parameters(trainable_only=True)),
                              lr=0.05, momentum=0.9, weight_decay=5e-4)
        rng = np.random.default_rng(1)
        x, y = rng.standard_normal((8, 3, 8, 8)), rng.integers(0, 4, size=8)
        with jit.using_cpu_kernels(kernels), cpu.using_threads(2, min_rows=1, min_elements=1):
            for _ in range(5):
                train_step(model, layers, opt, x, y)
        return model.state_dict()
    ref, got = run("numpy"), run("numba")
    for k in ref:
        assert _rel(got[k], ref[k]) <= 1e-10, k
