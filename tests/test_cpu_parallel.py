"""The CPU's batch-sharded paths (minigrad_pfa.cpu) compute what the serial engine does.

Every rule trains a small ResNet (conv, BN, ReLU, shortcuts, pooling, linear) and an MLP
for 5 steps in float64, once serially (1 thread) and once with 3 engine threads and
shards of a single sample (``min_rows=1, min_elements=1``, so even these small batches
split); every parameter, feedback array and BN statistic must agree to 1e-12 relative (at
these tiny sizes OpenBLAS's small-problem kernels round a shard's rows differently).
At the engine's own shard sizes the runs must be equal bit for bit: every rule in float32,
ResNet-20 and the MLP, 1 vs 2 threads (sums over the batch go in blocks fixed by the batch,
not by the threads; minigrad_pfa.cpu.threads).
"""
import numpy as np
import pytest

from _rules_common import ALL_SPECS
from minigrad_pfa import cpu
from minigrad_pfa.cpu import threads as cpu_threads
from minigrad_pfa.functional import batchnorm as F_bn
from minigrad_pfa.functional import conv as F_conv
from minigrad_pfa.nn.models import build_model, weight_layers
from minigrad_pfa.optim import build_optimizer
from minigrad_pfa.rules import attach_rules
from minigrad_pfa.train import train_step

SPECS = [("bp", "bp")] + list(ALL_SPECS.items()) + [
    ("pfa_literal", {"name": "pfa", "expand_ratio": 2, "order": "literal"}),
    ("pfa_fast", {"name": "pfa", "expand_ratio": 2, "order": "fast"})]


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)) if a.size else 0.0


def _train(make, spec, threads, input_shape, optimizer="sgd", steps=5):
    """State after ``steps`` steps with ``threads`` engine threads (fresh model each time)."""
    model = make()
    attach_rules(model, spec, 0, input_shape=input_shape)
    layers = list(weight_layers(model).values())
    opt = build_optimizer(optimizer, list(model.named_parameters(trainable_only=True)),
                          lr=0.05, momentum=0.9, weight_decay=5e-4) if optimizer == "sgd" \
        else build_optimizer(optimizer, list(model.named_parameters(trainable_only=True)),
                             lr=1e-3, weight_decay=5e-4)
    rng = np.random.default_rng(1)
    n = 8  # Linear shards its features from GEMM_MIN_ROWS = 8 batch rows up
    x = rng.standard_normal((n,) + input_shape)
    y = rng.integers(0, 4, size=n)
    with cpu.using_threads(threads, min_rows=1, min_elements=1):
        for _ in range(steps):
            train_step(model, layers, opt, x, y)
    return model.state_dict()


@pytest.mark.parametrize("name,spec", SPECS, ids=[k for k, _ in SPECS])
def test_sharded_resnet_steps_equal_serial(name, spec):
    make = lambda: build_model("resnet20", 0, "float64", num_classes=4)  # noqa: E731
    serial = _train(make, spec, 1, (3, 8, 8))
    sharded = _train(make, spec, 3, (3, 8, 8))
    assert serial.keys() == sharded.keys()
    for k in serial:
        assert _rel(sharded[k], serial[k]) <= 1e-12, k


@pytest.mark.parametrize("name,spec", SPECS, ids=[k for k, _ in SPECS])
def test_sharded_mlp_steps_equal_serial(name, spec):
    make = lambda: build_model("mlp", 0, "float64", in_features=12,  # noqa: E731
                               hidden=(24, 16), num_classes=4)
    serial = _train(make, spec, 1, (12,))
    sharded = _train(make, spec, 3, (12,))
    for k in serial:
        assert _rel(sharded[k], serial[k]) <= 1e-12, k


def test_sharded_adam_steps_equal_serial():
    """Adam's per-parameter updates run in groups on the pool too (BP, ResNet).

    Adam divides by sqrt(v): a gradient entry near zero that is a cancellation of larger
    terms (a bias after BN) turns a 1e-16 rounding difference into ~1e-10 of the update,
    so the comparison is 1e-8 here (SGD above is linear: 1e-12)."""
    make = lambda: build_model("resnet20", 0, "float64", num_classes=4)  # noqa: E731
    serial = _train(make, "bp", 1, (3, 8, 8), optimizer="adam")
    sharded = _train(make, "bp", 3, (3, 8, 8), optimizer="adam")
    for k in serial:
        assert _rel(sharded[k], serial[k]) <= 1e-8, k


def _train_f32(model_kwargs, spec, threads, input_shape, n, steps=2):
    """float32 state after ``steps`` SGD steps with ``threads`` engine threads, at the shard
    sizes the engine uses (``min_elements`` a quarter of the default, so that a batch of 32
    also cuts BN's sums into blocks; every GEMM piece still runs OpenBLAS's regular kernel,
    see cpu.threads "Same numbers with any T")."""
    kw = dict(model_kwargs)
    model = build_model(kw.pop("name"), 0, "float32", **kw)
    attach_rules(model, spec, 0, input_shape=input_shape)
    layers = list(weight_layers(model).values())
    opt = build_optimizer("sgd", list(model.named_parameters(trainable_only=True)), lr=0.05,
                          momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(1)
    with cpu.using_threads(threads, min_elements=cpu_threads.MIN_ELEMENTS // 4):
        for _ in range(steps):
            x = rng.standard_normal((n,) + input_shape).astype(np.float32)
            train_step(model, layers, opt, x, rng.integers(0, 10, size=n))
    return model.state_dict()


@pytest.mark.parametrize("name,spec", SPECS, ids=[k for k, _ in SPECS])
def test_same_bits_on_one_and_two_threads(name, spec):
    """A run's numbers do not depend on --threads: ResNet-20 (32 x 32, batch 32) and the MLP
    (784-256-256, batch 64) in float32 give the same bits on 1 and 2 threads, every rule
    (sums in fixed blocks, row shards of full GEMM kernels; minigrad_pfa.cpu.threads)."""
    for kw, shape, n in (({"name": "resnet20", "num_classes": 10}, (3, 32, 32), 32),
                         ({"name": "mlp", "in_features": 784, "hidden": (256, 256),
                           "num_classes": 10}, (784,), 64)):
        one = _train_f32(kw, spec, 1, shape, n)
        two = _train_f32(kw, spec, 2, shape, n)
        for k in one:
            assert np.array_equal(one[k], two[k]), (kw["name"], k)


def test_sums_are_cut_into_blocks_whatever_the_threads(monkeypatch):
    """The blocks of a sum depend on the batch and the work only; sum_blocks adds the
    blocks' partials in block order on 1 and on 3 threads (the same bits), and the conv
    weight gradient and BN really use several blocks at these sizes."""
    E = cpu_threads.MIN_ELEMENTS
    sizes = {}
    for t in (1, 3):
        with cpu.using_threads(t):
            sizes[t] = [(b.start, b.stop) for b in cpu_threads.block_bounds(128, 8 * E)]
            assert len(cpu_threads.block_bounds(128, None)) == cpu_threads.MAX_BLOCKS
            assert len(cpu_threads.block_bounds(4, 8 * E)) == 2  # n // min_rows
    assert sizes[1] == sizes[3] and len(sizes[1]) == 8
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal(1000).astype(np.float32) for _ in range(8)]
    blocks = cpu_threads.shard_bounds(8, 8)
    want = parts[0]
    for p in parts[1:]:
        want = want + p
    for t in (1, 3):
        with cpu.using_threads(t):
            got = cpu_threads.sum_blocks(lambda run: [parts[b.start] for b in run], blocks)
        assert np.array_equal(got, want)
    seen = []
    real = cpu_threads.sum_blocks

    def spy(fn, bounds, xp=None):
        seen.append(len(bounds))
        return real(fn, bounds, xp)

    from minigrad_pfa.cpu import batchnorm as cpu_bn
    monkeypatch.setattr(F_conv, "sum_blocks", spy)
    monkeypatch.setattr(cpu_bn, "sum_blocks", spy)
    x = rng.standard_normal((32, 16, 32, 32)).astype(np.float32)
    W = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    y, cache = F_conv.conv2d_forward(x, W, None, 1, 1)
    F_conv.conv2d_weight_grad(y, cache)  # serial (1 thread) and still in blocks
    g1 = np.ones(16, np.float32)
    F_bn.batchnorm_forward(np.concatenate([x] * 4), g1, 0 * g1, None, None,
                           training=True, update_stats=False)
    assert len(seen) == 3 and min(seen) > 1, seen  # gW; BN's two sums


def test_sharding_really_happens():
    """The equality tests above would pass vacuously if nothing sharded: count the shards."""
    calls = []
    real = cpu_threads._run

    def spy(fn, bounds, **kw):
        calls.append(len(bounds))
        return real(fn, bounds, **kw)

    cpu_threads._run = spy
    try:
        _train(lambda: build_model("resnet20", 0, "float64", num_classes=4), "bp", 3,
               (3, 8, 8), steps=1)
    finally:
        cpu_threads._run = real
    assert calls and max(calls) == 3 and sum(c > 1 for c in calls) > 50, calls


def test_shards_need_enough_work():
    """A shard must carry ``min_elements`` of work: small calls (an MLP's 64 x 512 ReLU, a
    small model's optimizer groups) stay on the calling thread, large ones split."""
    import threading

    from minigrad_pfa.functional import activation as F_act
    calls = []
    real = cpu_threads._run

    def spy(fn, bounds, **kw):
        calls.append(len(bounds))
        return real(fn, bounds, **kw)

    E = cpu_threads.MIN_ELEMENTS
    cpu_threads._run = spy
    try:
        with cpu.using_threads(2):
            assert cpu_threads.num_shards(128, 2 * E - 1) == 1
            assert cpu_threads.num_shards(128, 2 * E) == 2
            assert cpu_threads.num_shards(128) == 2  # no work given: rows decide
            F_act.relu_forward(np.ones((64, 512), np.float32))
            assert calls == []  # the serial path: no pool at all
            F_act.relu_forward(np.ones((64, 2 * E // 64), np.float32))
            assert calls == [2]
            seen = []
            cpu_threads.for_each_balanced(
                list(range(6)), lambda i: E, lambda i: seen.append(threading.get_ident()))
            assert set(seen) == {threading.get_ident()}  # 6 E < 2 groups of GROUP_FACTOR E
        with cpu.using_threads(2, min_elements=1):
            assert cpu_threads.num_shards(128, 2) == 2
        assert cpu_threads._state["min_elements"] == E  # restored
    finally:
        cpu_threads._run = real


def test_linear_gemms_shard_only_when_large():
    """A linear GEMM is cut into feature shards only from WORK_DIVISOR x the pool's smallest
    work: the MLP 784-512-512-10's BP step at batch 64 runs no pool region at all on 2
    threads (each hand-off would cost what the shard saves), a 10x wider GEMM does."""
    from minigrad_pfa.functional import linear as F_lin
    calls = []
    real = cpu_threads._run

    def spy(fn, bounds, **kw):
        calls.append(len(bounds))
        return real(fn, bounds, **kw)

    model = build_model("mlp", 0, "float32")  # 784-512-512-10
    attach_rules(model, "bp", 0, input_shape=(784,))
    layers = list(weight_layers(model).values())
    opt = build_optimizer("sgd", list(model.named_parameters(trainable_only=True)), lr=0.05,
                          momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=64)
    cpu_threads._run = spy
    try:
        with cpu.using_threads(2):
            train_step(model, layers, opt, x, y)
            assert calls == []
            F_lin.linear_forward(x, rng.standard_normal((5120, 784)).astype(np.float32))
            assert calls == [2]
    finally:
        cpu_threads._run = real


def test_sharded_ops_equal_serial_float32_strided_inputs():
    """Conv (all input-error methods), BN and channel_matmul on NCHW and strided views."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6, 7, 9)).astype(np.float32)[:, :, :, ::-1]  # strided
    W = rng.standard_normal((4, 6, 3, 3)).astype(np.float32)
    d = rng.standard_normal((5, 4, 7, 9)).astype(np.float32)
    g, b = np.ones(6, np.float32), np.zeros(6, np.float32)
    dyb = rng.standard_normal(x.shape).astype(np.float32)

    def ops():
        y, c = F_conv.conv2d_forward(x, W, None, 1, 1)
        out = [y, F_conv.conv2d_weight_grad(d, c), F_conv.channel_matmul(d, W[:, :, 0, 0])]
        out += [F_conv.conv2d_input_error(d, W, x.shape, 1, 1, method=m)
                for m in ("conv", "fold", "col2im")]
        yb, cb = F_bn.batchnorm_forward(x, g, b, None, None, training=True,
                                        update_stats=False)
        out += [yb, *F_bn.batchnorm_backward(dyb, cb)]
        return out

    serial = ops()
    with cpu.using_threads(2, min_rows=1, min_elements=1):
        sharded = ops()
    for s, p in zip(serial, sharded):
        assert s.shape == p.shape
        assert _rel(p, s) <= 1e-5


def test_threads_setting_validates_and_restores():
    before = cpu.get_threads()
    with cpu.using_threads(2):
        assert cpu.get_threads() == 2
    assert cpu.get_threads() == before
    for bad in (0, -1, 1.5, "x"):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            cpu.set_threads(bad)
    assert cpu.usable_cores() >= 1
    assert [(s.start, s.stop) for s in cpu_threads.shard_bounds(7, 3)] == \
        [(0, 3), (3, 5), (5, 7)]


def test_default_threads_env_grid_jobs_and_mpi_ranks(monkeypatch):
    from minigrad_pfa import grid as G
    monkeypatch.delenv(cpu.THREADS_ENV, raising=False)
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 4)
    assert cpu.default_threads() == 4
    monkeypatch.setenv("PMI_SIZE", "2")
    assert cpu.default_threads(distributed=True) == 2 and cpu.default_threads() == 4
    # grid --jobs 2 on 2 cores: each child run gets one thread (no oversubscription)
    env = G.thread_env(2, base={}, cpus=2)
    assert env[cpu.THREADS_ENV] == "1"
    monkeypatch.setenv(cpu.THREADS_ENV, env[cpu.THREADS_ENV])
    assert cpu.default_threads() == 1
    monkeypatch.setenv(cpu.THREADS_ENV, "zero")
    with pytest.raises(ValueError, match="MINIGRAD_PFA_THREADS must be a positive integer"):
        cpu.default_threads()


def test_using_threads_restores_blas_limits():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [p["num_threads"] for p in threadpoolctl.threadpool_info()
                if p["user_api"] == "blas"]

    before = blas_threads()
    with cpu.using_threads(2):
        assert set(blas_threads()) == {1}  # the shards are the parallelism
    assert blas_threads() == before


def test_keep_freed_memory_on_glibc():
    import platform

    from minigrad_pfa.cpu.memory import keep_freed_memory
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt thresholds are glibc's")
    assert keep_freed_memory() is True and keep_freed_memory() is True  # idempotent


def test_sum_blocks_stays_on_the_calling_thread_for_other_array_modules():
    """Blocks of CuPy arrays (conv's chunked=True on a GPU) are added in the same order but
    never handed to the CPU pool."""
    import threading
    import time
    import types

    seen = []

    def partials(run):
        seen.append(threading.get_ident())
        time.sleep(0.05)  # long enough for the idle worker to pull the second group
        return [np.ones(3) for _ in run]

    bounds = cpu_threads.shard_bounds(8, 4)
    with cpu.using_threads(2):
        cpu_threads.sum_blocks(partials, bounds)
        assert len(set(seen)) == 2  # NumPy: two groups on two threads
        seen.clear()
        got = cpu_threads.sum_blocks(partials, bounds, types.SimpleNamespace(__name__="cupy"))
    assert seen == [threading.get_ident()] and np.array_equal(got, 4 * np.ones(3))


def test_edge_batches_keep_their_bits():
    """A one-sample batch through a Linear layer large enough to shard (NumPy takes a
    matrix-vector product there), an empty batch through conv, and the smallest shard of a
    GEMM split (>= GEMM_MIN_ROWS rows even when the shard sizes differ)."""
    from minigrad_pfa.functional import linear as F_lin
    rng = np.random.default_rng(0)
    W = rng.standard_normal((3000, 3000)).astype(np.float32)
    x = rng.standard_normal((1, 3000)).astype(np.float32)
    serial = [F_lin.linear_forward(x, W), F_lin.linear_input_error(x, W)]
    with cpu.using_threads(2):
        sharded = [F_lin.linear_forward(x, W), F_lin.linear_input_error(x, W)]
    assert all(np.array_equal(a, b) for a, b in zip(serial, sharded))
    x0 = np.zeros((0, 3, 8, 8), np.float32)
    W0 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    with cpu.using_threads(2):
        y0, c0 = F_conv.conv2d_forward(x0, W0, None, 1, 1)
        assert y0.shape == (0, 4, 8, 8)
        assert np.array_equal(F_conv.conv2d_weight_grad(y0, c0), np.zeros_like(W0))
    with cpu.using_threads(4, min_rows=1, min_elements=1):
        s = cpu_threads.num_shards(11, gemm_rows=3)
        sizes = [b.stop - b.start for b in cpu_threads.shard_bounds(11, s)]
        assert s > 1 and min(sizes) * 3 >= cpu_threads.GEMM_MIN_ROWS, sizes


def test_cpu_model_names_the_processor_not_the_architecture(tmp_path, monkeypatch):
    """cpu.machine.cpu_model: /proc/cpuinfo's model name where Linux has it (what a run's
    results.json and the benchmark record), else platform's answer."""
    import builtins
    import platform

    from minigrad_pfa.cpu.machine import cpu_model
    from minigrad_pfa.train import machine_description
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Example CPU 9000 @ 1GHz\n"
                    "model name\t: second\n")
    real_open = builtins.open

    def fake_open(path, *a, **k):
        return real_open(fake if path == "/proc/cpuinfo" else path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    assert cpu_model() == "Example CPU 9000 @ 1GHz"
    assert machine_description()["processor"] == "Example CPU 9000 @ 1GHz"
    fake.write_text("processor\t: 0\n")  # no model name line
    assert cpu_model() == (platform.processor() or platform.machine())


def test_residual_sum_shards_keep_bits_and_layout():
    """``functional.elementwise.add``: batch shards on two threads give ``a + b``'s bits in
    the inputs' layout (channels-last stays channels-last); two layouts stay serial."""
    from minigrad_pfa.functional import elementwise as F_ew
    calls = []
    real = cpu_threads._run

    def spy(fn, bounds, **kw):
        calls.append(len(bounds))
        return real(fn, bounds, **kw)

    rng = np.random.default_rng(3)
    a = rng.standard_normal((8, 5, 4, 3)).astype(np.float32).transpose(0, 3, 1, 2)
    b = rng.standard_normal((8, 5, 4, 3)).astype(np.float32).transpose(0, 3, 1, 2)
    a[0, 0, 0, 0], b[1, 1, 1, 1] = np.nan, -np.inf
    cpu_threads._run = spy
    try:
        with cpu.using_threads(2, min_rows=1, min_elements=1):
            y = F_ew.add(a, b)
            assert calls == [2]
            y_mixed = F_ew.add(a, np.ascontiguousarray(b))  # two layouts: serial
            assert calls == [2]
    finally:
        cpu_threads._run = real
    ref = a + b
    assert y.strides == ref.strides == a.strides
    np.testing.assert_array_equal(y.view(np.uint32), ref.view(np.uint32))
    np.testing.assert_array_equal(y_mixed, ref)
