"""Small numerical helpers shared by the tests."""
import numpy as np


def rel_err(a, b) -> float:
    """Relative Frobenius error ||a - b|| / max(||b||, tiny)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def numerical_grad(f, x, eps=1e-6):
    """Central finite-difference gradient of the scalar function f at x (float64, in place)."""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
        it.iternext()
    return g


def directional_check(f, x, g, rng, eps=1e-6, n_dirs=3):
    """Compare <g, v> against (f(x+eps v) - f(x-eps v)) / 2eps for random directions v.

    Returns the largest relative discrepancy. For large tensors where full finite
    differences are too slow.
    """
    worst = 0.0
    for _ in range(n_dirs):
        v = rng.standard_normal(x.shape)
        x0 = x.copy()
        x[...] = x0 + eps * v
        fp = f()
        x[...] = x0 - eps * v
        fm = f()
        x[...] = x0
        num = (fp - fm) / (2 * eps)
        ana = float(np.sum(g * v))
        worst = max(worst, abs(num - ana) / max(abs(num), abs(ana), 1e-12))
    return worst
