"""The GPU path's fused kernels (minigrad_pfa.functional.fused) against the literal equations.

The kernel bodies are run through the CuPy stand-in's ``fuse`` (eager: the same Python
source CuPy compiles) and compared with the equations written out here in NumPy float64.
"""
import numpy as np
import pytest

from minigrad_pfa.backend import to_device, to_numpy
from minigrad_pfa.functional.fused import FUSED_ENV, kernels


def dev(a):
    return to_device(a, "cuda")


def test_numpy_gets_no_kernels_and_the_switch_turns_them_off(standin, monkeypatch):
    assert kernels(np) is None
    k = kernels(standin)
    assert k is not None and all(getattr(getattr(k, n), "is_standin_fused", False)
                                 for n in ("relu", "bn_affine", "bn_dx", "sgd", "sgd_nesterov",
                                           "adam"))
    monkeypatch.setenv(FUSED_ENV, "0")
    assert kernels(standin) is None


def test_relu_and_batchnorm_kernels(standin, rng):
    k = kernels(standin)
    x = rng.standard_normal((6, 10))
    x[0, :3] = 0.0
    y, mask = k.relu(dev(x))
    np.testing.assert_array_equal(to_numpy(y), np.where(x > 0, x, 0.0))
    np.testing.assert_array_equal(to_numpy(mask), x > 0)
    assert to_numpy(mask).dtype == np.bool_
    xc, D = rng.standard_normal((2, 5, 12))
    s, t, a, b, kk = rng.standard_normal((5, 12))
    np.testing.assert_allclose(to_numpy(k.bn_affine(dev(xc), dev(s), dev(t))),
                               xc * s[None] + t[None], rtol=1e-15)
    np.testing.assert_allclose(to_numpy(k.bn_dx(dev(D), dev(xc), dev(a), dev(b), dev(kk))),
                               kk * (D - xc * a - b), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_kernels_follow_torch_sgd_equations(standin, rng, nesterov):
    """buf <- mu buf + (g + lam p); p <- p - lr (buf or g + lam p + mu buf), in place."""
    p0, g, buf0 = rng.standard_normal((3, 7, 4))
    lr, lam, mu = 0.1, 5e-4, 0.9
    d = g + lam * p0
    buf1 = mu * buf0 + d
    p1 = p0 - lr * ((d + mu * buf1) if nesterov else buf1)
    p, b = dev(p0), dev(buf0)
    k = kernels(standin)
    (k.sgd_nesterov if nesterov else k.sgd)(p, dev(g), b, lr, lam, mu)
    np.testing.assert_allclose(to_numpy(b), buf1, rtol=1e-14)
    np.testing.assert_allclose(to_numpy(p), p1, rtol=1e-14)


def test_sgd_optimizer_uses_the_kernel_and_matches_numpy(standin, rng):
    from minigrad_pfa.nn.module import Parameter
    from minigrad_pfa.optim import build_optimizer
    w0 = rng.standard_normal((5, 3)).astype(np.float32)
    grads = rng.standard_normal((4, 5, 3)).astype(np.float32)
    out = []
    for device in ("cpu", "cuda"):
        p = Parameter(to_device(w0.copy(), device))
        opt = build_optimizer("sgd", [("w", p)], lr=0.1, momentum=0.9, weight_decay=5e-4)
        for g in grads:
            p.grad = to_device(g, device)
            opt.step()
        out.append(to_numpy(p.data))
    np.testing.assert_allclose(out[1], out[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_kernel_follows_the_adam_equations(standin, rng, name):
    """Three steps of Adam (L2 decay in the moments) / AdamW (decoupled decay) written out
    in NumPy float64 (torch.optim.Adam / AdamW semantics) against the optimizer on the
    stand-in, where its update is the fused kernel."""
    from minigrad_pfa.nn.module import Parameter
    from minigrad_pfa.optim import build_optimizer
    lr, lam, b1, b2, eps = 0.01, 0.1, 0.9, 0.999, 1e-8
    p0 = rng.standard_normal((6, 5))
    grads = rng.standard_normal((3, 6, 5))
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        if name == "adamw":
            p = p * (1 - lr * lam)
        else:
            g = g + lam * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1 ** t) * m / (np.sqrt(v / (1 - b2 ** t)) + eps)
    param = Parameter(dev(p0.copy()))
    opt = build_optimizer(name, [("w", param)], lr=lr, betas=(b1, b2), eps=eps,
                          weight_decay=lam)
    calls = []
    k = kernels(standin)
    real = k.adam
    k.adam = lambda *a: (calls.append(1), real(*a))
    try:
        for g in grads:
            param.grad = dev(g)
            opt.step()
    finally:
        k.adam = real
    assert len(calls) == 3                      # the kernel, not the reference sequence
    np.testing.assert_allclose(to_numpy(param.data), p, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(opt.state["w"]["exp_avg_sq"]), v, rtol=1e-12)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_kernel_matches_the_numpy_sequence_bitwise(standin, rng, name):
    """The kernel's operation order is the NumPy path's: float64 results agree exactly."""
    from minigrad_pfa.nn.module import Parameter
    from minigrad_pfa.optim import build_optimizer
    w0, grads = rng.standard_normal((5, 3)), rng.standard_normal((4, 5, 3))
    out = []
    for device in ("cpu", "cuda"):
        p = Parameter(to_device(w0.copy(), device))
        opt = build_optimizer(name, [("w", p)], lr=0.01, weight_decay=0.05)
        for g in grads:
            p.grad = to_device(g, device)
            opt.step()
        out.append(to_numpy(p.data))
    np.testing.assert_array_equal(out[1], out[0])
