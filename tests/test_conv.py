"""Tests of minigrad_pfa.functional.conv: definitions, adjoints, finite differences,
PyTorch cross-checks, dtypes and memory layouts. Expected values always come from an
independent computation (explicit loops, finite differences, PyTorch)."""
import itertools

import numpy as np
import pytest

from minigrad_pfa import cpu
from minigrad_pfa.functional import conv as C
from _util import numerical_grad, rel_err


def channels_last(a):
    """Same values, channels-last memory (an NHWC buffer seen as NCHW)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def is_channels_last(a):
    return a.transpose(0, 2, 3, 1).flags.c_contiguous


def vdot(a, b):
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


def out_grid(h, w, kh, kw, s, p):
    return (h + 2 * p[0] - kh) // s[0] + 1, (w + 2 * p[1] - kw) // s[1] + 1


# geometry cases: (x shape, kernel (kh, kw), stride, padding) -- strides 1-2, paddings 0-3,
# kernels 1/3/7, non-square inputs, non-square kernels and strides
CASES = [
    ((2, 3, 7, 5), (3, 3), (1, 1), (1, 1)),
    ((2, 3, 7, 5), (3, 3), (2, 2), (1, 1)),
    ((2, 2, 6, 9), (1, 1), (1, 1), (0, 0)),
    ((2, 2, 6, 9), (1, 1), (2, 2), (0, 0)),
    ((1, 2, 5, 4), (1, 1), (1, 2), (2, 1)),
    ((2, 2, 11, 8), (7, 7), (1, 1), (0, 0)),
    ((2, 2, 11, 8), (7, 7), (2, 2), (3, 3)),
    ((1, 3, 9, 6), (3, 2), (2, 1), (0, 2)),
    ((2, 3, 8, 7), (3, 3), (1, 1), (3, 3)),
    ((1, 2, 10, 7), (2, 3), (1, 2), (1, 0)),
    ((2, 1, 6, 6), (3, 3), (2, 2), (0, 0)),
]
CASE_IDS = [f"x{c[0][2]}x{c[0][3]}-k{c[1]}-s{c[2]}-p{c[3]}" for c in CASES]


def im2col_by_loops(x, kh, kw, s, p):
    """The definition col[(n, oy, ox), (i, j, c)] = xpad[n, c, oy*sh + i, ox*sw + j], by loops."""
    n, c, h, w = x.shape
    oh, ow = out_grid(h, w, kh, kw, s, p)
    xpad = np.zeros((n, c, h + 2 * p[0], w + 2 * p[1]), x.dtype)
    xpad[:, :, p[0]:p[0] + h, p[1]:p[1] + w] = x
    col = np.zeros((n, oh, ow, kh, kw, c), x.dtype)
    for b, oy, ox, i, j in itertools.product(range(n), range(oh), range(ow), range(kh), range(kw)):
        col[b, oy, ox, i, j, :] = xpad[b, :, oy * s[0] + i, ox * s[1] + j]
    return col.reshape(n * oh * ow, kh * kw * c)


# ------------------------------------------------------------------------ geometry


def test_conv_output_size_closed_form_and_errors():
    assert C.conv_output_size(32, 32, 3, 3, (1, 1), (1, 1)) == (32, 32)
    assert C.conv_output_size(32, 32, 3, 3, (2, 2), (1, 1)) == (16, 16)
    assert C.conv_output_size(224, 224, 7, 7, (2, 2), (3, 3)) == (112, 112)
    assert C.conv_output_size(9, 6, 3, 2, (2, 1), (0, 2)) == (4, 9)
    assert C.conv_output_size(3, 3, 3, 3, 1, 0) == (1, 1)
    with pytest.raises(ValueError, match="does not fit"):
        C.conv_output_size(4, 8, 7, 3, (1, 1), (1, 1))
    with pytest.raises(ValueError, match="stride"):
        C.conv_output_size(8, 8, 3, 3, (0, 1), (0, 0))
    with pytest.raises(ValueError, match="padding"):
        C.conv_output_size(8, 8, 3, 3, (1, 1), (-1, 0))


@pytest.mark.parametrize("shape,k,s,p", CASES, ids=CASE_IDS)
def test_im2col_matches_definition(shape, k, s, p, rng):
    x = rng.standard_normal(shape)
    expected = im2col_by_loops(x, *k, s, p)
    np.testing.assert_array_equal(C.im2col(x, *k, s, p), expected)
    np.testing.assert_array_equal(C.im2col(channels_last(x), *k, s, p), expected)


def test_im2col_matches_torch_unfold(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 9, 7))
    kh, kw, s, p = 3, 2, (2, 1), (1, 2)
    col = C.im2col(x, kh, kw, s, p)
    # unfold: (n, c*kh*kw, L) with rows in (c, kh, kw) order and L in (oh, ow) order
    u = torch.nn.functional.unfold(torch.tensor(x), (kh, kw), stride=s, padding=p).numpy()
    n, c = x.shape[:2]
    u = u.reshape(n, c, kh, kw, -1).transpose(0, 4, 2, 3, 1).reshape(col.shape)
    np.testing.assert_array_equal(col, u)


def test_kernel_matrix_roundtrip(rng):
    K = rng.standard_normal((4, 3, 2, 5))
    Kmat = C.kernel_to_matrix(K)
    assert Kmat.shape == (4, 2 * 5 * 3)
    # column (i, j, c) holds K[o, c, i, j]
    assert Kmat[1, (1 * 5 + 3) * 3 + 2] == K[1, 2, 1, 3]
    back = C.matrix_to_kernel(Kmat, K.shape)
    np.testing.assert_array_equal(back, K)
    assert back.flags.c_contiguous
    with pytest.raises(ValueError, match="expected a"):
        C.matrix_to_kernel(Kmat, (4, 3, 3, 3))  # 27 columns, not 30


# ------------------------------------------------------------------------- adjoints


@pytest.mark.parametrize("shape,k,s,p", CASES, ids=CASE_IDS)
def test_im2col_col2im_adjoint(shape, k, s, p, rng):
    x = rng.standard_normal(shape)
    col = C.im2col(x, *k, s, p)
    c = rng.standard_normal(col.shape)
    back = C.col2im(c, shape, *k, s, p)
    assert back.shape == shape and is_channels_last(back)
    lhs, rhs = vdot(col, c), vdot(x, back)
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


@pytest.mark.parametrize("shape,k,s,p", CASES, ids=CASE_IDS)
def test_conv_data_and_weight_adjoint(shape, k, s, p, rng):
    """<conv(x, W), d> = <x, input_error(d, W)> = <W, weight_grad(d)> (conv is bilinear)."""
    oc = 4
    x = rng.standard_normal(shape)
    W = rng.standard_normal((oc, shape[1], *k))
    y, cache = C.conv2d_forward(x, W, None, s, p)
    d = rng.standard_normal(y.shape)
    ref = vdot(y, d)
    methods = ["col2im", "fold"]
    if s == (1, 1) and p[0] <= k[0] - 1 and p[1] <= k[1] - 1:
        methods.append("conv")
    for m in methods:
        dx = C.conv2d_input_error(d, W, shape, s, p, method=m)
        assert abs(vdot(x, dx) - ref) <= 1e-12 * max(1.0, abs(ref)), m
    gW = C.conv2d_weight_grad(d, cache)
    assert abs(vdot(W, gW) - ref) <= 1e-12 * max(1.0, abs(ref))


# ---------------------------------------------------------------- finite differences


@pytest.mark.parametrize("s,p", [((1, 1), (1, 1)), ((2, 1), (0, 2))])
def test_conv_finite_differences(s, p, rng):
    x = rng.standard_normal((2, 3, 6, 5))
    W = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    y, cache = C.conv2d_forward(x, W, b, s, p)
    g = rng.standard_normal(y.shape)  # random upstream gradient: L = <y, g>

    def loss():
        return vdot(C.conv2d_forward(x, W, b, s, p)[0], g)

    dx = C.conv2d_input_error(g, W, x.shape, s, p)
    gW = C.conv2d_weight_grad(g, cache)
    gb = C.conv2d_bias_grad(g)
    assert rel_err(dx, numerical_grad(loss, x)) < 1e-8
    assert rel_err(gW, numerical_grad(loss, W)) < 1e-8
    assert rel_err(gb, numerical_grad(loss, b)) < 1e-8


# -------------------------------------------------------------- PyTorch cross-checks


def _torch_conv_grads(torch, x, W, b, s, p, delta):
    """y, dx, dW, db of PyTorch's conv2d by autograd."""
    xt = torch.tensor(x, requires_grad=True)
    Wt = torch.tensor(W, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    y = torch.nn.functional.conv2d(xt, Wt, bt, stride=s, padding=p)
    y.backward(torch.tensor(delta))
    return y.detach().numpy(), xt.grad.numpy(), Wt.grad.numpy(), bt.grad.numpy()


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-4)])
@pytest.mark.parametrize("shape,k,s,p", CASES, ids=CASE_IDS)
def test_conv_matches_torch(shape, k, s, p, dtype, tol, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape).astype(dtype)
    W = rng.standard_normal((5, shape[1], *k)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    y, cache = C.conv2d_forward(x, W, b, s, p)
    d = rng.standard_normal(y.shape).astype(dtype)
    yt, dxt, dWt, dbt = _torch_conv_grads(torch, x, W, b, s, p, d)
    assert rel_err(y, yt) < tol
    assert rel_err(C.conv2d_input_error(d, W, shape, s, p), dxt) < tol
    assert rel_err(C.conv2d_weight_grad(d, cache), dWt) < tol
    assert rel_err(C.conv2d_bias_grad(d), dbt) < tol


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-4)])
@pytest.mark.parametrize("shape,k,s,p", CASES, ids=CASE_IDS)
def test_input_error_other_kernel_matches_conv_transpose(shape, k, s, p, dtype, tol, rng):
    """Input error with a kernel M whose out-channels (7, e.g. PFA's mid or DFA's classes)
    differ from the forward kernel's: PyTorch's conv_transpose2d with the same geometry."""
    torch = pytest.importorskip("torch")
    n, ic, h, w = shape
    oh, ow = out_grid(h, w, *k, s, p)
    M = rng.standard_normal((7, ic, *k)).astype(dtype)
    d = rng.standard_normal((n, 7, oh, ow)).astype(dtype)
    # output_padding restores the rows/cols the floor in oh dropped
    op = ((h + 2 * p[0] - k[0]) % s[0], (w + 2 * p[1] - k[1]) % s[1])
    ref = torch.nn.functional.conv_transpose2d(torch.tensor(d), torch.tensor(M), stride=s,
                                               padding=p, output_padding=op).numpy()
    assert ref.shape == shape
    conv_ok = s == (1, 1) and p[0] < k[0] and p[1] < k[1]
    methods = ["auto", "col2im", "fold"] + (["conv"] if conv_ok else [])
    for m in methods:
        dx = C.conv2d_input_error(d, M, shape, s, p, method=m)
        assert dx.dtype == dtype and is_channels_last(dx)
        assert rel_err(dx, ref) < tol, m


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-4)])
def test_weight_grad_other_channels_matches_torch(dtype, tol, rng):
    """weight_grad for a delta with mid != oc channels (PFA's gR): gradient w.r.t. a kernel
    (mid, ic, kh, kw) of the same geometry."""
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, 4, 9, 8)).astype(dtype)
    W = rng.standard_normal((2, 4, 3, 3)).astype(dtype)
    s, p = (2, 1), (1, 1)
    y, cache = C.conv2d_forward(x, W, None, s, p)
    delta_mid = rng.standard_normal((3, 11) + y.shape[2:]).astype(dtype)
    Rt = torch.zeros((11, 4, 3, 3), dtype=torch.float64 if dtype == np.float64 else torch.float32,
                     requires_grad=True)
    torch.nn.functional.conv2d(torch.tensor(x), Rt, stride=s, padding=p).backward(
        torch.tensor(delta_mid))
    gR = C.conv2d_weight_grad(delta_mid, cache)
    assert gR.shape == (11, 4, 3, 3) and gR.dtype == dtype
    assert rel_err(gR, Rt.grad.numpy()) < tol
    # keep_col=False recomputes col in the backward: same numbers
    _, cache_x = C.conv2d_forward(x, W, None, s, p, keep_col=False)
    assert cache_x["col"] is None
    np.testing.assert_allclose(C.conv2d_weight_grad(delta_mid, cache_x), gR, rtol=0, atol=0)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_channel_matmul(dtype, tol, rng):
    torch = pytest.importorskip("torch")
    B = rng.standard_normal((6, 9)).astype(dtype)
    a2 = rng.standard_normal((5, 6)).astype(dtype)
    out2 = C.channel_matmul(a2, B)
    assert out2.dtype == dtype
    assert rel_err(out2, torch.tensor(a2) @ torch.tensor(B)) < tol
    a4 = rng.standard_normal((3, 6, 5, 4)).astype(dtype)
    # a 1x1 convolution with kernel B.T[:, :, None, None]
    ref = torch.nn.functional.conv2d(torch.tensor(a4),
                                     torch.tensor(np.ascontiguousarray(B.T[:, :, None, None])))
    for a in (a4, channels_last(a4)):
        out = C.channel_matmul(a, B)
        assert out.shape == (3, 9, 5, 4) and out.dtype == dtype and is_channels_last(out)
        assert rel_err(out, ref.numpy()) < tol
    with pytest.raises(ValueError, match="matching c"):
        C.channel_matmul(a4, B.T)


# ---------------------------------------------------------- dtypes, layouts, methods


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_and_channels_last_outputs(dtype, rng):
    x = rng.standard_normal((2, 3, 8, 7)).astype(dtype)
    W = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    for s in [(1, 1), (2, 2)]:
        y, cache = C.conv2d_forward(x, W, b, s, (1, 1))
        assert y.dtype == dtype and is_channels_last(y)
        d = channels_last(rng.standard_normal(y.shape).astype(dtype))
        for m in ["auto", "col2im", "fold"] + (["conv"] if s == (1, 1) else []):
            dx = C.conv2d_input_error(d, W, x.shape, s, (1, 1), method=m)
            assert dx.dtype == dtype and is_channels_last(dx) and dx.shape == x.shape
        assert C.conv2d_weight_grad(d, cache).dtype == dtype
        assert C.conv2d_bias_grad(d).dtype == dtype
    col = C.im2col(x, 3, 3, (1, 1), (1, 1))
    assert col.dtype == dtype
    back = C.col2im(col, x.shape, 3, 3, (1, 1), (1, 1))
    assert back.dtype == dtype and is_channels_last(back)


def test_input_layouts_and_broadcast_delta(rng):
    """NCHW-contiguous, channels-last and broadcast (DFA: e over the grid) inputs agree."""
    x = rng.standard_normal((2, 3, 8, 6))
    W = rng.standard_normal((4, 3, 3, 3))
    y1, c1 = C.conv2d_forward(x, W, None, (1, 1), (1, 1))
    y2, c2 = C.conv2d_forward(channels_last(x), W, None, (1, 1), (1, 1))
    np.testing.assert_array_equal(y1, y2)
    e = rng.standard_normal((2, 5))
    D = rng.standard_normal((5, 3, 3, 3))
    e_grid = np.broadcast_to(e[:, :, None, None], (2, 5, 8, 6))  # stride-0 view
    dense = np.ascontiguousarray(e_grid)
    for m in ("auto", "col2im", "fold", "conv"):
        np.testing.assert_allclose(C.conv2d_input_error(e_grid, D, x.shape, 1, 1, method=m),
                                   C.conv2d_input_error(dense, D, x.shape, 1, 1, method="col2im"),
                                   rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(C.conv2d_weight_grad(e_grid[:, :4], c1),
                                  C.conv2d_weight_grad(dense[:, :4], c2))


@pytest.mark.parametrize("oc_prime", [1, 4, 13, 40])
@pytest.mark.parametrize("s,p", [((1, 1), (0, 0)), ((1, 1), (1, 1)), ((1, 1), (2, 1)),
                                 ((1, 1), (1, 0)), ((2, 2), (1, 1)), ((2, 1), (3, 0))])
def test_input_error_methods_agree(oc_prime, s, p, rng):
    """col2im (literal), fold and, for stride 1, conv give the same dx; so does auto,
    whichever it picks (oc' from below ic to 10 ic exercises all three)."""
    x_shape = (2, 4, 7, 9)
    M = rng.standard_normal((oc_prime, 4, 3, 3))
    oh, ow = out_grid(7, 9, 3, 3, s, p)
    d = rng.standard_normal((2, oc_prime, oh, ow))
    ref = C.conv2d_input_error(d, M, x_shape, s, p, method="col2im")
    # the col2im form, spelled out
    d2 = d.transpose(0, 2, 3, 1).reshape(-1, oc_prime)
    np.testing.assert_array_equal(C.col2im(d2 @ C.kernel_to_matrix(M), x_shape, 3, 3, s, p), ref)
    methods = ["fold", "auto"] + (["conv"] if s == (1, 1) and max(p) <= 2 else [])
    for m in methods:
        np.testing.assert_allclose(C.conv2d_input_error(d, M, x_shape, s, p, method=m), ref,
                                   rtol=1e-12, atol=1e-12, err_msg=m)


def test_bad_inputs_raise_clear_errors(rng):
    x = rng.standard_normal((2, 3, 8, 8))
    W = rng.standard_normal((4, 3, 3, 3))
    with pytest.raises(ValueError, match="channels"):
        C.conv2d_forward(x, rng.standard_normal((4, 2, 3, 3)), None, 1, 1)
    with pytest.raises(ValueError, match="4-D"):
        C.conv2d_forward(x[0], W, None, 1, 1)
    with pytest.raises(TypeError, match="same float dtype"):
        C.conv2d_forward(x.astype(np.float32), W, None, 1, 1)
    with pytest.raises(ValueError, match="b of shape"):
        C.conv2d_forward(x, W, np.zeros(3), 1, 1)
    d = rng.standard_normal((2, 4, 4, 4))
    with pytest.raises(ValueError, match="method 'conv' needs stride 1"):
        C.conv2d_input_error(d, W, x.shape, 2, 1, method="conv")
    with pytest.raises(ValueError, match="unknown method"):
        C.conv2d_input_error(d, W, x.shape, 2, 1, method="fft")
    with pytest.raises(ValueError, match="expected M"):
        C.conv2d_input_error(d, W, x.shape, 1, 1)  # delta grid is 4x4, not 8x8
    _, cache = C.conv2d_forward(x, W, None, 1, 1)
    with pytest.raises(ValueError, match="does not match"):
        C.conv2d_weight_grad(d, cache)
    with pytest.raises(ValueError, match="expected col of shape"):
        C.col2im(np.zeros((5, 27)), x.shape, 3, 3, 1, 1)


# ----------------------------------------------------------------------- NumPy/CuPy


@pytest.mark.parametrize("chunked", [None, True, False])
def test_backend_parity(xp, rng, chunked):
    """Same numbers on the array module under test as on NumPy (CuPy runs only with a GPU),
    on either path (None: the module's default, whole batch on CuPy)."""
    from minigrad_pfa.backend import get_array_module, to_numpy
    x = rng.standard_normal((2, 3, 9, 7))
    W = rng.standard_normal((4, 3, 3, 3))
    M = rng.standard_normal((6, 3, 3, 3))
    b = rng.standard_normal(4)
    B = rng.standard_normal((4, 6))
    for s in [(1, 1), (2, 1)]:
        y, cache = C.conv2d_forward(x, W, b, s, (1, 1))
        yd, cached = C.conv2d_forward(xp.asarray(x), xp.asarray(W), xp.asarray(b), s, (1, 1),
                                      chunked=chunked)
        # layout checked on the device: asnumpy / .get() copy to C order
        assert get_array_module(yd) is xp and is_channels_last(yd)
        np.testing.assert_allclose(to_numpy(yd), y, rtol=1e-12, atol=1e-12)
        d6 = rng.standard_normal((2, 6) + y.shape[2:])
        d4 = rng.standard_normal(y.shape)
        for m in ["col2im", "fold"] + (["conv"] if s == (1, 1) else []):
            np.testing.assert_allclose(
                to_numpy(C.conv2d_input_error(xp.asarray(d6), xp.asarray(M), x.shape, s, (1, 1),
                                              method=m, chunked=chunked)),
                C.conv2d_input_error(d6, M, x.shape, s, (1, 1), method=m), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(to_numpy(C.conv2d_weight_grad(xp.asarray(d6), cached)),
                                   C.conv2d_weight_grad(d6, cache), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(to_numpy(C.conv2d_bias_grad(xp.asarray(d4))),
                                   C.conv2d_bias_grad(d4), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(to_numpy(C.channel_matmul(xp.asarray(d4), xp.asarray(B))),
                                   C.channel_matmul(d4, B), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------- sample chunks vs whole batch


def _chunk_bytes_for(samples, shape, k, s, p, itemsize, oc=4):
    """CHUNK_BYTES that makes chunks of ``samples`` samples for this geometry (stride-1 row
    taps size by their own buffers, the others by im2col's; ``oc`` output channels)."""
    if C.row_taps(k, s):
        return samples * C._RowWindows.sample_bytes(shape[2:], shape[1], k, p, oc, itemsize)
    oh, ow = out_grid(shape[2], shape[3], *k, s, p)
    return samples * oh * ow * k[0] * k[1] * shape[1] * itemsize


@pytest.mark.parametrize("samples", [1, 2])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("shape,k,s,p", CASES, ids=CASE_IDS)
def test_chunked_and_whole_batch_paths_match_torch(shape, k, s, p, dtype, tol, samples,
                                                   monkeypatch, rng):
    """Chunks of 1 or 2 samples out of 5 (every seam used, a short last chunk) and the
    whole-batch GEMM: same y, gW (incl. a mid-channel delta) and stride-1 'conv' dx as
    PyTorch, and as each other."""
    torch = pytest.importorskip("torch")
    shape = (5,) + shape[1:]
    monkeypatch.setattr(C, "CHUNK_BYTES",
                        _chunk_bytes_for(samples, shape, k, s, p, np.dtype(dtype).itemsize))
    x = rng.standard_normal(shape).astype(dtype)
    W = rng.standard_normal((4, shape[1], *k)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    yc, cc = C.conv2d_forward(channels_last(x), W, b, s, p, chunked=True)
    yw, cw = C.conv2d_forward(x, W, b, s, p, chunked=False)
    d = rng.standard_normal(yc.shape).astype(dtype)
    yt, dxt, dWt, _ = _torch_conv_grads(torch, x, W, b, s, p, d)
    assert is_channels_last(yc) and yc.dtype == dtype
    assert rel_err(yc, yt) < tol and rel_err(yw, yt) < tol
    assert rel_err(yc, yw) < tol
    gWc, gWw = C.conv2d_weight_grad(d, cc), C.conv2d_weight_grad(d, cw)
    assert gWc.dtype == dtype and rel_err(gWc, dWt) < tol and rel_err(gWw, dWt) < tol
    # PFA's literal order: a delta with mid != oc channels, against torch's gradient of a
    # (mid, ic, kh, kw) kernel
    dm = rng.standard_normal((5, 9) + yc.shape[2:]).astype(dtype)
    Rt = torch.zeros((9, shape[1], *k), dtype=torch.float64 if dtype == np.float64
                     else torch.float32, requires_grad=True)
    torch.nn.functional.conv2d(torch.tensor(x), Rt, stride=s, padding=p).backward(
        torch.tensor(dm))
    assert rel_err(C.conv2d_weight_grad(dm, cc), Rt.grad.numpy()) < tol
    assert rel_err(C.conv2d_weight_grad(dm, cw), Rt.grad.numpy()) < tol
    if s == (1, 1) and p[0] <= k[0] - 1 and p[1] <= k[1] - 1:
        # the stride-1 input error runs the forward GEMM on the padded error
        oc_chunk = _chunk_bytes_for(samples, (5, 4) + shape[2:], k, (1, 1),
                                    (k[0] - 1 - p[0], k[1] - 1 - p[1]), np.dtype(dtype).itemsize,
                                    oc=shape[1])
        monkeypatch.setattr(C, "CHUNK_BYTES", oc_chunk)
        for ch in (True, False):
            dx = C.conv2d_input_error(d, W, shape, s, p, method="conv", chunked=ch)
            assert is_channels_last(dx) and rel_err(dx, dxt) < tol, ch


def test_chunk_rule_and_cache_contents(monkeypatch, rng):
    """NumPy defaults to chunks and caches x itself (no whole-batch col); the whole-batch
    path caches col unless keep_col=False; the chunk size follows CHUNK_BYTES."""
    x = channels_last(rng.standard_normal((6, 3, 8, 8)))
    W = rng.standard_normal((4, 3, 3, 3))
    assert C.use_chunks(np) and not C.use_chunks(np, False) and C.use_chunks(np, True)
    _, cache = C.conv2d_forward(x, W, None, 1, 1)
    assert cache["chunked"] and cache["col"] is None and cache["x"] is x
    _, cache_w = C.conv2d_forward(x, W, None, 1, 1, chunked=False)
    assert cache_w["x"] is None and cache_w["col"].shape == (6 * 8 * 8, 27)
    _, cache_wx = C.conv2d_forward(x, W, None, 1, 1, chunked=False, keep_col=False)
    assert cache_wx["col"] is None and cache_wx["x"] is x
    d = rng.standard_normal((6, 4, 8, 8))
    g = C.conv2d_weight_grad(d, cache_w)
    for c in (cache, cache_wx):
        np.testing.assert_allclose(C.conv2d_weight_grad(d, c), g, rtol=1e-12, atol=1e-12)
    # ResNet-20's first stage at batch 128 in float32: 32*32*144*4 B = 0.59 MB of col per
    # sample; 2 MB chunks -> 3 samples (a 1.8 MB col)
    assert C.CHUNK_BYTES == 2 << 20
    assert C.samples_per_chunk(128, 32, 32, 144, 4) == 3
    assert C.samples_per_chunk(3, 32, 32, 144, 4) == 3   # never more than the batch
    assert C.samples_per_chunk(128, 224, 224, 147, 4) == 1  # at least one sample
    # stride-1 row taps size their chunks by their own buffers: per sample a padded input
    # 34*34*16, its taps 34*32*48 and the result 32*32*16 float32 values (0.35 MB) -> 6
    assert C._RowWindows.sample_bytes((32, 32), 16, (3, 3), (1, 1), 16, 4) == \
        (34 * 34 * 16 + 34 * 32 * 48 + 32 * 32 * 16) * 4
    assert C.chunk_samples(128, (34 * 34 * 16 + 34 * 32 * 48 + 32 * 32 * 16) * 4) == 6
    assert C._RowWindows.sample_bytes((8, 8), 4, (3, 3), (0, 0), 2, 8) == \
        (8 * 6 * 12 + 6 * 6 * 2) * 8  # no padded copy without padding
    monkeypatch.setattr(C, "CHUNK_BYTES", 2 * 64 * 27 * 8)  # 2 samples per chunk
    assert C.samples_per_chunk(6, 8, 8, 27, 8) == 2


@pytest.mark.parametrize("shape,kernel,padding", [
    ((7, 3, 8, 8), (3, 3), (1, 1)), ((5, 2, 7, 9), (3, 2), (0, 1)),
    ((4, 4, 9, 9), (5, 5), (2, 2)), ((3, 1, 5, 5), (3, 3), (0, 0)), ((6, 4, 6, 7), (1, 3), (0, 1))])
def test_row_tap_forward_equals_one_im2col_gemm(shape, kernel, padding, monkeypatch):
    """Stride-1 chunked forwards add kh per-row GEMMs (_RowWindows); they equal the
    whole-batch im2col GEMM in float64 over batches spanning several chunks and shards, and
    the 'conv' input error built on them equals the literal col2im."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    W = rng.standard_normal((5, shape[1]) + kernel)
    b = rng.standard_normal(5)
    assert C.row_taps(kernel, (1, 1)) and not C.row_taps(kernel, (2, 2))
    monkeypatch.setattr(C, "CHUNK_BYTES", 2 * x[0].nbytes)  # several chunks per shard
    calls = []
    real = C._RowWindows.gemm_into
    monkeypatch.setattr(C._RowWindows, "gemm_into",
                        lambda self, a, m, y3: calls.append(m) or real(self, a, m, y3))
    whole, _ = C.conv2d_forward(x, W, b, 1, padding, chunked=False)
    assert not calls
    for threads in (1, 3):
        with cpu.using_threads(threads, min_rows=1, min_elements=1):
            rows, _ = C.conv2d_forward(x, W, b, 1, padding, chunked=True)
        np.testing.assert_allclose(rows, whole, rtol=1e-12, atol=1e-12)
    assert len(calls) > 2 and sum(calls) == 2 * shape[0]  # the row path ran, in chunks
    if padding[0] <= kernel[0] - 1 and padding[1] <= kernel[1] - 1:
        d = rng.standard_normal(whole.shape)
        got = C.conv2d_input_error(d, W, x.shape, 1, padding, method="conv", chunked=True)
        want = C.conv2d_input_error(d, W, x.shape, 1, padding, method="col2im")
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
