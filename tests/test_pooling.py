"""Tests of minigrad_pfa.functional.pooling against PyTorch, finite differences and
closed forms; dtypes and channels-last outputs."""
import numpy as np
import pytest

from minigrad_pfa.functional import pooling as P
from _util import numerical_grad, rel_err


def channels_last(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def is_channels_last(a):
    return a.transpose(0, 2, 3, 1).flags.c_contiguous


# (x shape, kernel, stride, padding): ResNet-18's overlapping 3x3/2 pad 1, the usual 2x2/2,
# stride 1 (heavy overlap), non-square kernels/strides/paddings, a floor-dropped border
POOL_CASES = [
    ((2, 3, 8, 8), (3, 3), (2, 2), (1, 1)),
    ((2, 3, 9, 7), (3, 3), (2, 2), (1, 1)),
    ((2, 2, 8, 6), (2, 2), (2, 2), (0, 0)),
    ((1, 3, 7, 7), (3, 3), (1, 1), (1, 1)),
    ((2, 2, 9, 8), (3, 2), (2, 1), (1, 0)),
    ((1, 2, 11, 5), (5, 3), (3, 2), (2, 1)),
]
POOL_IDS = [f"x{c[0][2]}x{c[0][3]}-k{c[1]}-s{c[2]}-p{c[3]}" for c in POOL_CASES]


def _torch_maxpool(torch, x, k, s, p, dy):
    xt = torch.tensor(x, requires_grad=True)
    y = torch.nn.functional.max_pool2d(xt, k, s, p)
    y.backward(torch.tensor(dy))
    return y.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,k,s,p", POOL_CASES, ids=POOL_IDS)
def test_maxpool_matches_torch(shape, k, s, p, dtype, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape).astype(dtype)
    for xin in (x, channels_last(x)):
        y, cache = P.maxpool2d_forward(xin, k, s, p)
        dy = rng.standard_normal(y.shape).astype(dtype)
        yt, dxt = _torch_maxpool(torch, x, k, s, p, dy)
        np.testing.assert_array_equal(y, yt)  # max is exact
        dx = P.maxpool2d_backward(dy, cache)
        assert rel_err(dx, dxt) < (1e-12 if dtype == np.float64 else 1e-6)
        assert y.dtype == dtype and dx.dtype == dtype
        assert is_channels_last(y) and is_channels_last(dx) and dx.shape == shape


@pytest.mark.parametrize("shape,k,s,p", POOL_CASES, ids=POOL_IDS)
def test_maxpool_ties_route_to_first_max_like_torch(shape, k, s, p, rng):
    """Integer-valued inputs make ties everywhere: the gradient must go where PyTorch puts
    it (the first maximum of each window in row-major order), overlaps accumulating."""
    torch = pytest.importorskip("torch")
    x = rng.integers(0, 3, size=shape).astype(np.float64)
    y, cache = P.maxpool2d_forward(x, k, s, p)
    dy = rng.standard_normal(y.shape)
    yt, dxt = _torch_maxpool(torch, x, k, s, p, dy)
    np.testing.assert_array_equal(y, yt)
    np.testing.assert_allclose(P.maxpool2d_backward(dy, cache), dxt, rtol=1e-13, atol=1e-13)


def test_maxpool_all_equal_window_takes_first_element():
    x = np.ones((1, 1, 2, 2))
    y, cache = P.maxpool2d_forward(x, 2, 2, 0)
    dx = P.maxpool2d_backward(np.full((1, 1, 1, 1), 5.0), cache)
    np.testing.assert_array_equal(dx[0, 0], [[5.0, 0.0], [0.0, 0.0]])


def test_maxpool_nan_propagates_like_torch():
    torch = pytest.importorskip("torch")
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x[0, 0, 1, 1] = np.nan
    y, cache = P.maxpool2d_forward(x, 2, 2, 0)
    yt = torch.nn.functional.max_pool2d(torch.tensor(x), 2, 2, 0).numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(yt))
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 1, 1])
    # documented choice: a NaN window sends its gradient to its first tap
    dx = P.maxpool2d_backward(np.ones((1, 1, 2, 2)), cache)
    assert dx[0, 0, 0, 0] == 1.0 and dx[0, 0, 1, 1] == 0.0 and dx.sum() == 4.0


@pytest.mark.parametrize("shape,k,s,p", [POOL_CASES[i] for i in (0, 1, 4)],
                         ids=[POOL_IDS[i] for i in (0, 1, 4)])
def test_maxpool_finite_differences(shape, k, s, p, rng):
    # distinct values at least 0.01 apart: no window has a near-tie, so max is smooth at x
    x = (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01
         + 0.001 * rng.random(shape))
    y, cache = P.maxpool2d_forward(x, k, s, p)
    g = rng.standard_normal(y.shape)

    def loss():
        return float(np.sum(P.maxpool2d_forward(x, k, s, p)[0] * g))

    assert rel_err(P.maxpool2d_backward(g, cache), numerical_grad(loss, x)) < 1e-8


def test_maxpool_bad_inputs():
    x = np.zeros((1, 1, 6, 6))
    with pytest.raises(ValueError, match="at most half"):
        P.maxpool2d_forward(x, 3, 2, 2)
    with pytest.raises(ValueError, match="does not fit"):
        P.maxpool2d_forward(x, 7, 1, 0)
    with pytest.raises(ValueError, match="4-D"):
        P.maxpool2d_forward(x[0], 2, 2, 0)
    _, cache = P.maxpool2d_forward(x, 2, 2, 0)
    with pytest.raises(ValueError, match="expected dy of shape"):
        P.maxpool2d_backward(np.zeros((1, 1, 2, 2)), cache)


# ----------------------------------------------------------------- global average pool


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 1e-6)])
def test_global_avgpool_matches_torch(dtype, tol, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, 5, 7, 4)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, 1).flatten(1)
    dy = rng.standard_normal((3, 5)).astype(dtype)
    yt.backward(torch.tensor(dy))
    for xin in (x, channels_last(x)):
        y = P.global_avgpool_forward(xin)
        assert y.shape == (3, 5) and y.dtype == dtype
        assert rel_err(y, yt.detach().numpy()) < tol
    dx = P.global_avgpool_backward(dy, x.shape)
    assert dx.dtype == dtype and dx.shape == x.shape and is_channels_last(dx)
    assert rel_err(dx, xt.grad.numpy()) < tol


def test_global_avgpool_closed_form_and_finite_differences(rng):
    x = rng.standard_normal((2, 3, 5, 6))
    np.testing.assert_allclose(P.global_avgpool_forward(x)[1, 2], x[1, 2].sum() / 30.0,
                               rtol=1e-14)
    g = rng.standard_normal((2, 3))

    def loss():
        return float(np.sum(P.global_avgpool_forward(x) * g))

    assert rel_err(P.global_avgpool_backward(g, x.shape), numerical_grad(loss, x)) < 1e-8
    with pytest.raises(ValueError, match="expected dy of shape"):
        P.global_avgpool_backward(g[:, :2], x.shape)


def test_backend_parity(xp, rng):
    from minigrad_pfa.backend import to_numpy
    x = rng.standard_normal((2, 3, 9, 7))
    y, cache = P.maxpool2d_forward(x, 3, 2, 1)
    yd, cached = P.maxpool2d_forward(xp.asarray(x), 3, 2, 1)
    np.testing.assert_array_equal(to_numpy(yd), y)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(to_numpy(P.maxpool2d_backward(xp.asarray(dy), cached)),
                                  P.maxpool2d_backward(dy, cache))
    np.testing.assert_allclose(to_numpy(P.global_avgpool_forward(xp.asarray(x))),
                               P.global_avgpool_forward(x), rtol=1e-13)
    g = rng.standard_normal((2, 3))
    np.testing.assert_allclose(to_numpy(P.global_avgpool_backward(xp.asarray(g), x.shape)),
                               P.global_avgpool_backward(g, x.shape), rtol=1e-13)
