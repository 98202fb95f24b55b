"""Batch norm: finite differences, PyTorch cross-checks, running statistics, dtypes, layouts."""
import numpy as np
import pytest

from minigrad_pfa.backend import to_numpy
from minigrad_pfa.functional.batchnorm import batchnorm_backward, batchnorm_forward
from tests._util import numerical_grad, rel_err

EPS = 1e-5
MOMENTUM = 0.1


# ------------------------------------------------------------------------------- helpers
def make_x(rng, shape, layout="channels_last", dtype=np.float64, loc=0.5, scale=2.0):
    """Random input of NCHW ``shape``; 4-D 'channels_last' is a transposed view of an NHWC buffer."""
    if len(shape) == 4 and layout == "channels_last":
        n, c, h, w = shape
        buf = rng.normal(loc, scale, (n, h, w, c)).astype(dtype)
        return buf.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(rng.normal(loc, scale, shape).astype(dtype))


def is_channels_last(a):
    return a.transpose(0, 2, 3, 1).flags.c_contiguous


def params(rng, c, dtype=np.float64):
    gamma = rng.uniform(0.5, 1.5, c).astype(dtype)
    beta = rng.normal(0, 1, c).astype(dtype)
    return gamma, beta


def reference_train_forward(x, gamma, beta):
    """Closed form in float64 with NumPy's own reductions (independent of the module)."""
    x = np.asarray(x, dtype=np.float64)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    bshape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)  # biased
    return (x - mu) / np.sqrt(var + EPS) * gamma.reshape(bshape) + beta.reshape(bshape)


SHAPES = [((7, 3), "plain"), ((3, 2, 3, 4), "channels_last"), ((3, 2, 3, 4), "nchw")]


# ----------------------------------------------------------------- finite differences
@pytest.mark.parametrize("shape,layout", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_finite_differences(rng, shape, layout, training):
    c = shape[1]
    x = make_x(rng, shape, layout)
    gamma, beta = params(rng, c)
    rmean = rng.normal(0, 1, c)
    rvar = rng.uniform(0.5, 2.0, c)
    R = rng.standard_normal(shape)  # random upstream error: f = sum(y * R)

    def f():
        y, _ = batchnorm_forward(x, gamma, beta, rmean, rvar, training=training,
                                 momentum=MOMENTUM, eps=EPS, update_stats=False)
        return float(np.sum(y * R))

    _, cache = batchnorm_forward(x, gamma, beta, rmean, rvar, training=training,
                                 momentum=MOMENTUM, eps=EPS, update_stats=False)
    dx, dgamma, dbeta = batchnorm_backward(R, cache)
    assert dx.shape == x.shape
    for ana, var in ((dx, x), (dgamma, gamma), (dbeta, beta)):
        num = numerical_grad(f, var)
        assert rel_err(ana, num) < 1e-7


def test_eval_backward_is_affine(rng):
    """Eval mode: dx = gamma / sqrt(running_var + eps) * dy (closed form)."""
    shape = (4, 3, 2, 5)
    x = make_x(rng, shape)
    gamma, beta = params(rng, 3)
    rmean, rvar = rng.normal(0, 1, 3), rng.uniform(0.5, 2.0, 3)
    _, cache = batchnorm_forward(x, gamma, beta, rmean, rvar, training=False,
                                 momentum=MOMENTUM, eps=EPS, update_stats=True)
    dy = rng.standard_normal(shape)
    dx, _, _ = batchnorm_backward(dy, cache)
    expect = dy * (gamma / np.sqrt(rvar + EPS)).reshape(1, -1, 1, 1)
    assert rel_err(dx, expect) < 1e-14


# ------------------------------------------------------------------- PyTorch cross-check
@pytest.mark.parametrize("shape,layout", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_matches_torch(rng, shape, layout, dtype, tol):
    torch = pytest.importorskip("torch")
    c = shape[1]
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tbn = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(c).to(tdtype)
    gamma, beta = params(rng, c, dtype)
    with torch.no_grad():
        tbn.weight.copy_(torch.from_numpy(gamma))
        tbn.bias.copy_(torch.from_numpy(beta))
    rmean = np.zeros(c, dtype)
    rvar = np.ones(c, dtype)
    rmean_id, rvar_id = id(rmean), id(rvar)

    tbn.train()
    for step in range(3):  # different batches: the running averages must compound like torch's
        x = make_x(rng, shape, layout, dtype, loc=step - 1.0, scale=1.0 + step)
        dy = rng.standard_normal(shape).astype(dtype)
        y, cache = batchnorm_forward(x, gamma, beta, rmean, rvar, training=True,
                                     momentum=MOMENTUM, eps=EPS, update_stats=True)
        dx, dgamma, dbeta = batchnorm_backward(dy, cache)

        xt = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
        tbn.weight.grad = tbn.bias.grad = None
        yt = tbn(xt)
        yt.backward(torch.from_numpy(np.ascontiguousarray(dy)))
        assert rel_err(y, yt.detach().numpy()) < tol
        assert rel_err(dx, xt.grad.numpy()) < tol
        assert rel_err(dgamma, tbn.weight.grad.numpy()) < tol
        assert rel_err(dbeta, tbn.bias.grad.numpy()) < tol
        for a in (y, dx, dgamma, dbeta):
            assert a.dtype == dtype

    assert id(rmean) == rmean_id and id(rvar) == rvar_id  # updated in place
    assert rmean.dtype == dtype and rvar.dtype == dtype
    assert rel_err(rmean, tbn.running_mean.numpy()) < tol
    assert rel_err(rvar, tbn.running_var.numpy()) < tol

    # eval mode: running statistics, forward and backward
    tbn.eval()
    x = make_x(rng, shape, layout, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y, cache = batchnorm_forward(x, gamma, beta, rmean, rvar, training=False,
                                 momentum=MOMENTUM, eps=EPS, update_stats=True)
    dx, dgamma, dbeta = batchnorm_backward(dy, cache)
    xt = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
    tbn.weight.grad = tbn.bias.grad = None
    yt = tbn(xt)
    yt.backward(torch.from_numpy(np.ascontiguousarray(dy)))
    assert rel_err(y, yt.detach().numpy()) < tol
    assert rel_err(dx, xt.grad.numpy()) < tol
    assert rel_err(dgamma, tbn.weight.grad.numpy()) < tol
    assert rel_err(dbeta, tbn.bias.grad.numpy()) < tol
    assert rel_err(rmean, tbn.running_mean.numpy()) < tol  # eval leaves them alone


# ------------------------------------------------------------------ running statistics
@pytest.mark.parametrize("shape,layout", SHAPES)
def test_update_stats_false(rng, shape, layout):
    c = shape[1]
    x = make_x(rng, shape, layout)
    gamma, beta = params(rng, c)
    rmean, rvar = rng.normal(0, 1, c), rng.uniform(0.5, 2.0, c)
    rmean0, rvar0 = rmean.copy(), rvar.copy()
    y, _ = batchnorm_forward(x, gamma, beta, rmean, rvar, training=True, momentum=MOMENTUM,
                             eps=EPS, update_stats=False)
    assert np.array_equal(rmean, rmean0) and np.array_equal(rvar, rvar0)
    assert rel_err(y, reference_train_forward(x, gamma, beta)) < 1e-13
    # the same call with update_stats=True does move them (so the check above can fail)
    batchnorm_forward(x, gamma, beta, rmean, rvar, training=True, momentum=MOMENTUM,
                      eps=EPS, update_stats=True)
    assert not np.array_equal(rmean, rmean0) and not np.array_equal(rvar, rvar0)


def test_running_update_closed_form(rng):
    """One step: running = 0.9 * running + 0.1 * batch, variance unbiased (m = n*h*w)."""
    shape = (5, 3, 2, 4)
    x = make_x(rng, shape)
    gamma, beta = params(rng, 3)
    rmean, rvar = rng.normal(0, 1, 3), rng.uniform(0.5, 2.0, 3)
    expect_mean = 0.9 * rmean + 0.1 * x.mean(axis=(0, 2, 3))
    expect_var = 0.9 * rvar + 0.1 * x.var(axis=(0, 2, 3), ddof=1)
    batchnorm_forward(x, gamma, beta, rmean, rvar, training=True, momentum=MOMENTUM, eps=EPS,
                      update_stats=True)
    assert rel_err(rmean, expect_mean) < 1e-14
    assert rel_err(rvar, expect_var) < 1e-14


# --------------------------------------------------------------------- dtypes & layout
@pytest.mark.parametrize("shape,layout", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_float32_stays_float32(rng, shape, layout, training):
    c = shape[1]
    x = make_x(rng, shape, layout, np.float32)
    gamma, beta = params(rng, c, np.float32)
    rmean, rvar = np.zeros(c, np.float32), np.ones(c, np.float32)
    y, cache = batchnorm_forward(x, gamma, beta, rmean, rvar, training=training,
                                 momentum=MOMENTUM, eps=EPS, update_stats=True)
    dx, dgamma, dbeta = batchnorm_backward(rng.standard_normal(shape).astype(np.float32), cache)
    for a in (y, dx, dgamma, dbeta, rmean, rvar):
        assert a.dtype == np.float32
    arrays = [v for v in cache.values() if hasattr(v, "dtype")]
    assert arrays and all(a.dtype == np.float32 for a in arrays)


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_4d_outputs_are_channels_last(rng, layout):
    shape = (2, 3, 4, 5)
    x = make_x(rng, shape, layout)
    gamma, beta = params(rng, 3)
    y, cache = batchnorm_forward(x, gamma, beta, None, None, training=True,
                                 momentum=MOMENTUM, eps=EPS, update_stats=False)
    dy = make_x(rng, shape, "nchw" if layout == "channels_last" else "channels_last")
    dx, _, _ = batchnorm_backward(dy, cache)
    assert y.shape == dx.shape == shape
    assert is_channels_last(y) and is_channels_last(dx)


def test_2d_any_layout(rng):
    """A Fortran-ordered (n, c) input gives the same result as a C-ordered one."""
    x = make_x(rng, (9, 4))
    gamma, beta = params(rng, 4)
    y_c, cache_c = batchnorm_forward(x, gamma, beta, None, None, training=True,
                                     momentum=MOMENTUM, eps=EPS, update_stats=False)
    y_f, cache_f = batchnorm_forward(np.asfortranarray(x), gamma, beta, None, None,
                                     training=True, momentum=MOMENTUM, eps=EPS,
                                     update_stats=False)
    dy = rng.standard_normal((9, 4))
    assert rel_err(y_f, y_c) < 1e-15
    assert rel_err(batchnorm_backward(np.asfortranarray(dy), cache_f)[0],
                   batchnorm_backward(dy, cache_c)[0]) < 1e-14


def test_float32_statistics_accuracy(rng):
    """Large float32 batch (m = 131072 per channel) with an offset mean: the normalised
    output stays within a few float32 ulps of a float64 reference."""
    shape = (128, 16, 32, 32)
    x = make_x(rng, shape, "channels_last", np.float32, loc=3.0, scale=2.0)
    gamma, beta = np.ones(16, np.float32), np.zeros(16, np.float32)
    y, _ = batchnorm_forward(x, gamma, beta, None, None, training=True, momentum=MOMENTUM,
                             eps=EPS, update_stats=False)
    assert rel_err(y, reference_train_forward(x, gamma, beta)) < 2e-6


# -------------------------------------------------------------------------------- errors
def test_errors(rng):
    x = make_x(rng, (4, 3, 2, 2))
    gamma, beta = params(rng, 3)
    rm, rv = np.zeros(3), np.ones(3)
    kw = dict(momentum=MOMENTUM, eps=EPS)
    with pytest.raises(ValueError, match="gamma"):
        batchnorm_forward(x, gamma.astype(np.float32), beta, rm, rv, training=True, **kw)
    with pytest.raises(ValueError, match="beta"):
        batchnorm_forward(x, gamma, beta[:2], rm, rv, training=True, **kw)
    with pytest.raises(ValueError, match="running_var"):
        batchnorm_forward(x, gamma, beta, rm, rv.astype(np.float32), training=True, **kw)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        batchnorm_forward(x, gamma, beta, None, None, training=False, **kw)
    with pytest.raises(ValueError, match=r"\(n, c\) or \(n, c, h, w\)"):
        batchnorm_forward(x[0], gamma, beta, rm, rv, training=True, **kw)
    with pytest.raises(ValueError, match="float32 or float64"):
        batchnorm_forward(x.astype(np.int64), gamma, beta, rm, rv, training=True, **kw)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batchnorm_forward(x[:1, :, :1, :1], gamma, beta, rm, rv, training=True, **kw)
    _, cache = batchnorm_forward(x, gamma, beta, rm, rv, training=True, **kw)
    with pytest.raises(ValueError, match="dy of shape"):
        batchnorm_backward(x[:2], cache)
    with pytest.raises(ValueError, match="dy of dtype float64"):
        batchnorm_backward(x.astype(np.float32), cache)


# ---------------------------------------------------------------------------- backends
def test_numpy_cupy_parity(xp, rng):
    """Same numbers on both backends (the CuPy case is skipped without a GPU)."""
    shape = (4, 3, 5, 2)
    x = make_x(rng, shape)
    gamma, beta = params(rng, 3)
    dy = rng.standard_normal(shape)
    out = {}
    for mod in (np, xp):
        rm, rv = mod.zeros(3), mod.ones(3)
        y, cache = batchnorm_forward(mod.asarray(x), mod.asarray(gamma), mod.asarray(beta),
                                     rm, rv, training=True, momentum=MOMENTUM, eps=EPS,
                                     update_stats=True)
        grads = batchnorm_backward(mod.asarray(dy), cache)
        out[mod.__name__] = [to_numpy(a) for a in (y, *grads, rm, rv)]
    for a, b in zip(out["numpy"], out[xp.__name__]):
        assert rel_err(b, a) < 1e-12
