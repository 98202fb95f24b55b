"""ReLU and softmax cross-entropy: finite differences, PyTorch cross-checks, stability, dtypes."""
import numpy as np
import pytest

from minigrad_pfa.backend import cupy_module, to_numpy
from minigrad_pfa.functional.activation import relu_backward, relu_forward
from minigrad_pfa.functional.loss import accuracy_counts, softmax_cross_entropy
from tests._util import numerical_grad, rel_err


def channels_last(rng, shape, dtype=np.float64):
    n, c, h, w = shape
    return rng.standard_normal((n, h, w, c)).astype(dtype).transpose(0, 3, 1, 2)


def reference_ce(logits, labels):
    """Float64 log-sum-exp cross-entropy and its gradient, written independently."""
    z = np.asarray(logits, dtype=np.float64)
    n = z.shape[0]
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    loss = np.mean(lse - z[np.arange(n), labels])
    p = np.exp(z - lse[:, None])
    p[np.arange(n), labels] -= 1.0
    return loss, p / n


# ------------------------------------------------------------------------------------ ReLU
def test_relu_finite_differences(rng):
    x = rng.standard_normal((4, 3, 2, 3))
    x += np.where(x >= 0, 0.1, -0.1)  # keep away from the kink at 0
    R = rng.standard_normal(x.shape)
    y, cache = relu_forward(x)
    dx = relu_backward(R, cache)
    num = numerical_grad(lambda: float(np.sum(relu_forward(x)[0] * R)), x)
    assert rel_err(dx, num) < 1e-9
    assert np.array_equal(y, np.where(x > 0, x, 0.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_matches_torch_layout_dtype(rng, dtype):
    torch = pytest.importorskip("torch")
    x = channels_last(rng, (2, 5, 3, 4), dtype)
    x[0, 0, 0, :2] = 0.0  # the subgradient at 0 must be 0, like PyTorch's
    dy = channels_last(rng, x.shape, dtype)
    y, cache = relu_forward(x)
    dx = relu_backward(dy, cache)
    xt = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
    yt = torch.relu(xt)
    yt.backward(torch.from_numpy(np.ascontiguousarray(dy)))
    assert np.array_equal(y, yt.detach().numpy())
    assert np.array_equal(dx, xt.grad.numpy())
    assert y.dtype == dx.dtype == dtype
    assert cache.dtype == np.bool_
    for a in (y, dx):
        assert a.transpose(0, 2, 3, 1).flags.c_contiguous  # channels-last kept


def test_relu_backward_shape_error(rng):
    _, cache = relu_forward(rng.standard_normal((3, 4)))
    with pytest.raises(ValueError, match="dy of shape"):
        relu_backward(rng.standard_normal((4, 3)), cache)


# ------------------------------------------------------------------------------------ loss
def test_loss_finite_differences(rng):
    logits = rng.standard_normal((6, 5)) * 3
    labels = rng.integers(0, 5, 6)
    loss, e = softmax_cross_entropy(logits, labels)
    num = numerical_grad(lambda: float(softmax_cross_entropy(logits, labels)[0]), logits)
    assert rel_err(e, num) < 1e-8


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_loss_matches_torch(rng, dtype, tol):
    torch = pytest.importorskip("torch")
    logits = (rng.standard_normal((16, 10)) * 4).astype(dtype)
    labels = rng.integers(0, 10, 16)
    loss, e = softmax_cross_entropy(logits, labels)
    zt = torch.from_numpy(logits).requires_grad_(True)
    lt = torch.nn.functional.cross_entropy(zt, torch.from_numpy(labels))
    lt.backward()
    assert rel_err(loss, lt.detach().numpy()) < tol
    assert rel_err(e, zt.grad.numpy()) < tol
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == dtype
    assert e.shape == logits.shape and e.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_stable_for_huge_logits(rng, dtype):
    logits = (rng.standard_normal((32, 7)) * 1e4).astype(dtype)
    logits[0, :] = 1e4  # a row of equal huge values: loss log(7)
    labels = rng.integers(0, 7, 32)
    loss, e = softmax_cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(e))
    ref_loss, ref_e = reference_ce(logits, labels)
    assert rel_err(loss, ref_loss) < (1e-6 if dtype == np.float32 else 1e-13)
    assert rel_err(e, ref_e) < (1e-6 if dtype == np.float32 else 1e-13)
    # naive exp overflows here, so the reference is not trivially equal to a naive formula
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.log(np.exp(logits).sum(axis=1))
    assert not np.all(np.isfinite(naive))


@pytest.mark.parametrize("dtype,gap", [(np.float32, 100.0), (np.float64, 720.0)])
def test_output_error_flushes_what_would_slow_the_gemms(dtype, gap):
    """Entries of e below tiny / eps become exact zeros (a logit gap of 100 gives float32
    probabilities of 3.7e-44: subnormal); every other entry is the unflushed value."""
    from minigrad_pfa.functional.loss import flush_threshold
    fi = np.finfo(dtype)
    assert flush_threshold(np, dtype) == pytest.approx(fi.tiny / fi.eps)
    logits = np.zeros((4, 5), dtype)
    logits[:, 0] = gap          # classes 1..4: exp(-gap), subnormal (or zero) probabilities
    logits[1, 1] = gap - 60.0   # exp(-60): small but far above the threshold (8.8e-27)
    labels = np.array([0, 0, 2, 0])
    _, e = softmax_cross_entropy(logits, labels)
    _, ref = reference_ce(logits, labels)   # float64 reference, no flush
    small = np.abs(ref) < flush_threshold(np, dtype)
    assert small.sum() >= 11                # what the gap makes tiny is flushed ...
    assert np.all(e[small] == 0)
    assert not np.any((e != 0) & (np.abs(e) < fi.tiny))  # ... no subnormal left
    assert e[1, 1] > 0 and rel_err(e[~small], ref[~small]) < (1e-6 if dtype == np.float32
                                                              else 1e-13)


def test_loss_closed_form():
    """Uniform logits: loss = log k, e = (1/k - onehot)/n."""
    logits = np.zeros((4, 8), np.float32)
    labels = np.array([0, 7, 3, 3])
    loss, e = softmax_cross_entropy(logits, labels)
    assert abs(float(loss) - np.log(8)) < 1e-6
    expect = np.full((4, 8), 1 / 8)
    expect[np.arange(4), labels] -= 1
    assert rel_err(e, expect / 4) < 1e-6


def test_loss_errors(rng):
    logits = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        softmax_cross_entropy(logits, np.array([0, 1, 3, 2]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        softmax_cross_entropy(logits, np.array([0, -1, 1, 2]))
    with pytest.raises(ValueError, match=r"labels of shape \(4,\)"):
        softmax_cross_entropy(logits, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="integer class labels"):
        softmax_cross_entropy(logits, np.array([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match=r"logits of shape \(n, k\)"):
        softmax_cross_entropy(logits[0], np.array([0]))
    with pytest.raises(ValueError, match="non-empty"):
        softmax_cross_entropy(logits[:0], np.array([], dtype=np.int64))


def test_unchecked_bad_label_poisons_loss(rng):
    """The GPU default (no value check, no sync): an invalid label turns the loss into NaN."""
    logits = rng.standard_normal((4, 3)).astype(np.float32)
    for bad in (3, -1):
        loss, _ = softmax_cross_entropy(logits, np.array([0, 1, bad, 2]), check_labels=False)
        assert loss.shape == () and loss.dtype == np.float32 and np.isnan(loss)
    loss, _ = softmax_cross_entropy(logits, np.array([0, 1, 2, 2]), check_labels=False)
    assert np.isfinite(loss)


def test_accuracy_counts(rng):
    logits = rng.standard_normal((50, 4))
    labels = rng.integers(0, 4, 50)
    expect = sum(int(np.argmax(row) == lab) for row, lab in zip(logits.tolist(), labels))
    count = accuracy_counts(logits, labels)
    assert isinstance(count, np.ndarray) and count.shape == () and count.dtype.kind == "i"
    assert int(count) == expect
    assert 0 < expect < 50  # a non-trivial case
    # ties go to the lowest index
    assert int(accuracy_counts(np.zeros((2, 3)), np.array([0, 1]))) == 1


# ---------------------------------------------------------------------------- backends
def test_xp_names_exist_in_cupy():
    """Every xp function these modules call exists in CuPy (runs without a GPU)."""
    try:
        cp = cupy_module()
    except Exception:
        pytest.skip("CuPy not installed")
    for name in ("maximum", "exp", "log", "sqrt", "clip", "take_along_axis", "arange", "full",
                 "where", "asarray", "einsum", "ascontiguousarray", "subtract", "tile", "abs",
                 "finfo"):
        assert hasattr(cp, name), name


def test_numpy_cupy_parity(xp, rng):
    logits = rng.standard_normal((8, 5))
    labels = rng.integers(0, 5, 8)
    x = channels_last(rng, (2, 3, 4, 4))
    res = {}
    for mod in (np, xp):
        loss, e = softmax_cross_entropy(mod.asarray(logits), mod.asarray(labels))
        y, cache = relu_forward(mod.asarray(x))
        dx = relu_backward(mod.asarray(x), cache)
        acc = accuracy_counts(mod.asarray(logits), mod.asarray(labels))
        res[mod.__name__] = [to_numpy(a) for a in (loss, e, y, dx, acc)]
    for a, b in zip(res["numpy"], res[xp.__name__]):
        assert rel_err(b, a) < 1e-12
