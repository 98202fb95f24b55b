"""The two elementary measures of every alignment metric: angle and norm ratio.

Definitions (``vec`` flattens in PyTorch's logical order; only the pairing of elements
matters, so any memory layout gives the same value)::

    angle(A, C)      = degrees(arccos(clip(<vec A, vec C> / (||A|| ||C||), -1, 1)))
    norm_ratio(M, W) = ||M||_F / ||W||_F

Deliberate float64 place: the three sums ``<A, C>``, ``||A||^2``, ``||C||^2`` are
accumulated in float64 whatever the arrays' dtype (float32 sums of ~10^6 products lose the
digits that separate 0.1 deg from 0.5 deg near alignment). They are accumulated on the
arrays' own device and only the three scalars cross to the host (one sync), where the
arccos is taken in Python floats. Both arrays are first copied to C-contiguous float64, so
the reduction order is the same for both operands: ``angle(A, A)`` is then exactly 0 and
``angle(A, -A)`` exactly 180 (``sqrt(fl(s * s)) == s`` in IEEE arithmetic).

Undefined values (a zero or non-finite operand) are ``nan`` here; the dict-producing
metrics report them as ``None``.
"""
from __future__ import annotations

import math

from ..backend import get_array_module, to_numpy
from ..nn.module import Parameter


def as_array(a):
    """The array of a :class:`Parameter` (or the array itself)."""
    return a.data if isinstance(a, Parameter) else a


def inner_products(A, C) -> tuple[float, float, float]:
    """``(<A, C>, ||A||^2, ||C||^2)`` as Python floats, accumulated in float64.

    Parameters
    ----------
    A, C : arrays (or Parameters) of the same shape, any dtype, layout and device.

    Raises
    ------
    ValueError
        The shapes differ.
    """
    A, C = as_array(A), as_array(C)
    if tuple(A.shape) != tuple(C.shape):
        raise ValueError(f"angle/norm ratio need arrays of the same shape, got "
                         f"{tuple(A.shape)} and {tuple(C.shape)}")
    xp = get_array_module(A, C)
    a = xp.ascontiguousarray(A, dtype=xp.float64)
    c = xp.ascontiguousarray(C, dtype=xp.float64)
    sums = xp.stack([xp.sum(a * c), xp.sum(a * a), xp.sum(c * c)])
    ac, aa, cc = (float(v) for v in to_numpy(sums))
    return ac, aa, cc


def angle_from(ac: float, aa: float, cc: float) -> float:
    """Angle in degrees from the three sums of :func:`inner_products`; ``nan`` if undefined."""
    if not (aa > 0.0 and cc > 0.0) or not all(map(math.isfinite, (ac, aa, cc))):
        return math.nan
    prod = aa * cc
    # sqrt(aa * cc) keeps angle(A, A) exact; fall back when the product over/underflows
    denom = math.sqrt(prod) if 0.0 < prod < math.inf else math.sqrt(aa) * math.sqrt(cc)
    return math.degrees(math.acos(min(1.0, max(-1.0, ac / denom))))


def ratio_from(num_sq: float, den_sq: float) -> float:
    """``sqrt(num_sq / den_sq)``; ``nan`` when undefined (zero or non-finite denominator)."""
    if not (den_sq > 0.0) or not math.isfinite(den_sq) or not math.isfinite(num_sq):
        return math.nan
    return math.sqrt(num_sq / den_sq)


def angle(A, C) -> float:
    """Angle between two arrays of the same shape, in degrees (``nan`` if either is zero).

    ``angle(A, C) = degrees(arccos(clip(<vec A, vec C> / (||A|| ||C||), -1, 1)))``,
    accumulated in float64 (see the module notes).
    """
    return angle_from(*inner_products(A, C))


def norm_ratio(M, W) -> float:
    """``||M||_F / ||W||_F`` (float64 accumulation; ``nan`` if ``W`` is zero)."""
    _, mm, ww = inner_products(M, W)
    return ratio_from(mm, ww)


def sq_norms(*arrays) -> list[float]:
    """Squared Frobenius norms of several arrays (float64 accumulation, one host transfer)."""
    arrays = [as_array(a) for a in arrays]
    xp = get_array_module(*arrays)
    sums = xp.stack([xp.sum(xp.square(xp.asarray(a, dtype=xp.float64))) for a in arrays])
    return [float(v) for v in to_numpy(sums)]


def none_if_nan(v):
    """``None`` for an undefined (nan) value, else a Python float: JSON has no NaN."""
    return None if v is None or math.isnan(v) else float(v)
