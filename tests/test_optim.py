"""Optimizers against torch.optim (same hyper-parameters, same gradient streams)."""
import numpy as np
import pytest

from minigrad_pfa.nn.module import Parameter
from minigrad_pfa.optim import SGD, Adam, AdamW, OPTIMIZERS, build_optimizer
from _util import rel_err

SHAPES = {"fc.weight": (4, 3), "fc.bias": (4,), "conv.weight": (2, 3, 3, 3)}
N_STEPS = 5

CASES = {
    "sgd": ("sgd", dict(lr=0.1)),
    "sgd_momentum_wd": ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=1e-4)),
    "sgd_nesterov": ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True)),
    "sgd_dampening": ("sgd", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-3)),
    "adam": ("adam", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6)),
    "adam_l2": ("adam", dict(lr=0.01, weight_decay=0.1)),
    "adamw": ("adamw", dict(lr=0.01, weight_decay=0.1)),
}


def _torch_optimizer(torch, name, params, kw):
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return cls(params, **kw)


def _make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [(k, Parameter(rng.standard_normal(s).astype(dtype))) for k, s in SHAPES.items()]


def _grad_stream(dtype, n_steps, seed=1):
    """Fixed random gradients per step; fc.bias has none at step 2 (skipped that step)."""
    rng = np.random.default_rng(seed)
    stream = []
    for t in range(n_steps):
        grads = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
        if t == 2:
            grads["fc.bias"] = None
        stream.append(grads)
    return stream


def _run_ours(named, opt, stream, schedule=None):
    params = dict(named)
    for t, grads in enumerate(stream):
        if schedule:
            opt.lr, opt.weight_decay = schedule(t)
        for k, g in grads.items():
            params[k].grad = g
        opt.step()


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(case, dtype, tol):
    torch = pytest.importorskip("torch")
    name, kw = CASES[case]
    named = _make_params(dtype)
    tparams = {k: torch.tensor(p.data.copy(), requires_grad=True) for k, p in named}
    frozen = Parameter(np.ones((2, 2), dtype=dtype), requires_grad=False)
    frozen.grad = np.ones((2, 2), dtype=dtype)     # has a gradient but is frozen: untouched
    never = Parameter(np.full((3,), 2.0, dtype=dtype))  # never gets a gradient: untouched
    opt = build_optimizer(name, named + [("frozen", frozen), ("never", never)], **kw)
    topt = _torch_optimizer(torch, name, list(tparams.values()), kw)
    stream = _grad_stream(dtype, N_STEPS)

    # schedules change lr and weight decay between steps (set identically on both sides)
    def schedule(t):
        return kw["lr"] * (0.5 if t >= 3 else 1.0), kw.get("weight_decay", 0.0) * (1 + t)

    refs = {k: p.data for k, p in named}           # layers hold these references
    _run_ours(named, opt, stream, schedule)
    for t, grads in enumerate(stream):
        lr, wd = schedule(t)
        for group in topt.param_groups:
            group["lr"], group["weight_decay"] = lr, wd
        for k, g in grads.items():
            tparams[k].grad = None if g is None else torch.tensor(g)
        topt.step()

    for k, p in named:
        assert p.data is refs[k], "update must be in place"
        assert p.data.dtype == dtype
        expected = tparams[k].detach().numpy()
        assert rel_err(p.data, expected) <= tol, (k, rel_err(p.data, expected))
    assert np.array_equal(frozen.data, np.ones((2, 2), dtype=dtype))
    assert np.array_equal(never.data, np.full((3,), 2.0, dtype=dtype))
    assert "never" not in {k.partition("/")[2] for k in opt.state_dict()}
    for k, v in opt.state_dict().items():
        if "/" in k and v.ndim > 0:
            assert v.dtype == dtype, k            # no float64 state in float32 mode


def test_float32_with_numpy_scalar_hyperparameters():
    """np.float64 learning rates (e.g. from np.linspace) must not promote float32 arrays."""
    named = _make_params(np.float32)
    for name in OPTIMIZERS:
        opt = build_optimizer(name, named, lr=0.1, weight_decay=1e-3)
        opt.lr, opt.weight_decay = np.float64(0.05), np.float64(1e-3)
        for _, p in named:
            p.grad = np.ones(p.data.shape, dtype=np.float32)
        opt.step()
        opt.step()
        for _, p in named:
            assert p.data.dtype == np.float32


def test_plain_sgd_closed_form():
    """p <- p - lr (g + wd p) with momentum 0, checked by hand (no torch needed)."""
    w0 = np.array([1.0, -2.0, 3.0])
    p = Parameter(w0.copy())
    opt = SGD([("w", p)], lr=0.1, weight_decay=0.5)
    p.grad = np.array([1.0, 1.0, -1.0])
    opt.step()
    np.testing.assert_allclose(p.data, w0 - 0.1 * (p.grad + 0.5 * w0), rtol=0, atol=1e-15)
    assert opt.state_dict().keys() == {"type", "lr", "weight_decay", "momentum",
                                       "dampening", "nesterov", "step"}


def test_adam_skipped_param_keeps_its_own_step_count():
    named = _make_params(np.float64)
    opt = Adam(named)
    _run_ours(named, opt, _grad_stream(np.float64, N_STEPS))
    sd = opt.state_dict()
    assert int(sd["step"]) == N_STEPS
    assert int(sd["step/fc.weight"]) == N_STEPS
    assert int(sd["step/fc.bias"]) == N_STEPS - 1


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_roundtrip_is_bitwise(case):
    """3 steps, copy the state into a fresh optimizer on copied params, 2 more steps each."""
    name, kw = CASES[case]
    stream = _grad_stream(np.float32, N_STEPS)
    a = _make_params(np.float32)
    opt_a = build_optimizer(name, a, **kw)
    _run_ours(a, opt_a, stream[:3])

    b = [(k, Parameter(p.data.copy())) for k, p in a]
    opt_b = build_optimizer(name, b, lr=123.0) if name == "sgd" else build_optimizer(name, b)
    # through host copies, as a checkpoint would deliver them
    opt_b.load_state_dict({k: np.array(v, copy=True) for k, v in opt_a.state_dict().items()})
    assert opt_b.hyperparameters() == opt_a.hyperparameters()
    _run_ours(a, opt_a, stream[3:])
    _run_ours(b, opt_b, stream[3:])
    for (k, pa), (_, pb) in zip(a, b):
        assert np.array_equal(pa.data, pb.data), k
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert np.array_equal(sa[k], sb[k]), k


def test_state_is_copied_not_shared():
    a = _make_params(np.float64)
    opt_a = SGD(a, lr=0.1, momentum=0.9)
    _run_ours(a, opt_a, _grad_stream(np.float64, 1))
    opt_b = SGD(a, lr=0.1, momentum=0.9)
    opt_b.load_state_dict(opt_a.state_dict())
    buf_a = opt_a.state_dict()["momentum_buffer/fc.weight"]
    buf_b = opt_b.state_dict()["momentum_buffer/fc.weight"]
    assert buf_a is not buf_b and not np.shares_memory(buf_a, buf_b)


def test_load_state_dict_errors():
    a = _make_params(np.float64)
    sgd = SGD(a, lr=0.1, momentum=0.9)
    _run_ours(a, sgd, _grad_stream(np.float64, 1))
    state = sgd.state_dict()
    with pytest.raises(ValueError, match="'sgd'.*'adam'"):
        Adam(a).load_state_dict(state)
    bad = dict(state)
    bad["momentum_buffer/fc.weight"] = np.zeros((3, 4))
    with pytest.raises(ValueError, match="fc.weight.*shape"):
        SGD(a, lr=0.1, momentum=0.9).load_state_dict(bad)
    bad = dict(state)
    bad["momentum_buffer/nope"] = np.zeros(3)
    with pytest.raises(KeyError, match="nope"):
        SGD(a, lr=0.1, momentum=0.9).load_state_dict(bad)
    SGD(a, lr=0.1, momentum=0.9).load_state_dict(bad, strict=False)
    bad = {k: v for k, v in state.items() if k != "momentum"}
    with pytest.raises(KeyError, match="momentum"):
        SGD(a, lr=0.1, momentum=0.9).load_state_dict(bad)


def test_flags_for_the_kp_pfa_guard():
    assert SGD.is_linear_in_gradient and not SGD.decoupled_weight_decay
    assert not Adam.is_linear_in_gradient and not Adam.decoupled_weight_decay
    assert not AdamW.is_linear_in_gradient and AdamW.decoupled_weight_decay


def test_build_optimizer_errors_name_the_problem():
    named = _make_params(np.float64)
    with pytest.raises(ValueError, match="rmsprop.*sgd.*adam.*adamw"):
        build_optimizer("rmsprop", named, lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        build_optimizer("adam", named, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        build_optimizer("sgd", named, momentum=0.9)
    with pytest.raises(ValueError, match="lr"):
        build_optimizer("SGD", named, lr=-1.0)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(named, lr=0.1, nesterov=True)               # needs momentum
    with pytest.raises(ValueError, match="betas\\[1\\]"):
        Adam(named, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="twice"):
        SGD(named + named[:1], lr=0.1)
    with pytest.raises(TypeError, match="Parameter"):
        SGD([("w", np.zeros(3))], lr=0.1)
    assert isinstance(build_optimizer("AdamW", named), AdamW)


def test_gradient_shape_or_dtype_mismatch_is_an_error():
    p = Parameter(np.zeros((2, 3), dtype=np.float32))
    opt = SGD([("w", p)], lr=0.1)
    p.grad = np.zeros((2, 3), dtype=np.float64)
    with pytest.raises(ValueError, match="'w'.*float64"):
        opt.step()


def test_backends_agree(xp):
    """NumPy vs the xp backend (CuPy on a GPU machine): same updates, state on the device."""
    from minigrad_pfa.backend import to_device, to_numpy, device_of
    dev = "cpu" if xp is np else "cuda"
    stream = _grad_stream(np.float32, N_STEPS)
    for case in ("sgd_nesterov", "adam_l2", "adamw"):
        name, kw = CASES[case]
        host = _make_params(np.float32)
        dev_params = [(k, Parameter(to_device(p.data.copy(), dev))) for k, p in host]
        _run_ours(host, build_optimizer(name, host, **kw), stream)
        opt = build_optimizer(name, dev_params, **kw)
        dev_stream = [{k: None if g is None else to_device(g, dev) for k, g in s.items()}
                      for s in stream]
        _run_ours(dev_params, opt, dev_stream)
        for (k, ph), (_, pd) in zip(host, dev_params):
            assert device_of(pd.data) == dev and pd.data.dtype == np.float32
            assert rel_err(to_numpy(pd.data), ph.data) <= 1e-6, (case, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(CASES) + ["sgd_momentum_no_wd"])
def test_update_in_pieces_has_the_bits_of_the_whole_update(case, dtype, monkeypatch):
    """cpu.elementwise.update_chunks: the update chain on 7-element pieces (every parameter
    but the bias cut, a short last piece) gives the bits of the whole-array chain over 5
    steps, state included; a strided parameter is updated whole. The pieces path really
    runs (counted), and momentum without weight decay (first step buf = g) is covered."""
    from minigrad_pfa.cpu import elementwise
    from minigrad_pfa.optim import adam as adam_mod, sgd as sgd_mod

    name, kw = CASES.get(case, ("sgd", dict(lr=0.1, momentum=0.9)))
    results, cut = [], []
    real = elementwise.update_chunks

    def counting(xp, *arrays):
        out = real(xp, *arrays)
        cut.append(len(out))
        return out

    monkeypatch.setattr(sgd_mod, "update_chunks", counting)
    monkeypatch.setattr(adam_mod, "update_chunks", counting)
    for chunk in (10 ** 9, 7):
        monkeypatch.setattr(elementwise, "UPDATE_CHUNK", chunk)
        cut.clear()
        named = _make_params(dtype)
        strided = Parameter(np.ones((6, 4), dtype)[:, ::2])  # not C-contiguous
        opt = build_optimizer(name, named + [("strided", strided)], **kw)
        for grads in _grad_stream(dtype, N_STEPS):
            grads = dict(grads, strided=np.full((6, 2), 0.5, dtype))
            for k, p in named + [("strided", strided)]:
                p.grad = grads[k]
            opt.step()
        results.append(({k: p.data.copy() for k, p in named + [("strided", strided)]},
                        opt.state_dict(), max(cut)))
    (whole, whole_state, whole_cut), (pieces, pieces_state, pieces_cut) = results
    assert whole_cut == 1 and pieces_cut == 8  # conv.weight: 54 elements in pieces of 7
    pieces_of_36 = elementwise.update_chunks(np, np.ones(36, dtype), None)
    assert [q[0].size for q in pieces_of_36] == [7, 7, 7, 7, 7, 1]
    assert all(q[1] is None for q in pieces_of_36)
    for k in whole:
        np.testing.assert_array_equal(pieces[k], whole[k], err_msg=k)
    for k, v in whole_state.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(pieces_state[k], v, err_msg=k)
