"""Helpers of the report's findings: finding a group, the seed-to-seed noise of a protocol,
and a verdict on a difference between two single-seed numbers.

Every statement built from these says what it compares and how (the criterion is printed
next to it), and "pending (run not finished)" where a number is missing.
"""
from __future__ import annotations

import math

from .fmt import pm
from .runs import mean_std, measured

PENDING = "pending (run not finished)"


def acc(summaries, protocol: str, label: str):
    """``(mean, std, n)`` of a group's measured accuracy; ``(None, None, 0)`` if absent."""
    s = summaries.get((protocol, label))
    if not s or not s["measured"]["n"]:
        return None, None, 0
    return s["measured"]["mean"], s["measured"]["std"], s["measured"]["n"]


def acc_text(summaries, protocol, label) -> str:
    m, s, n = acc(summaries, protocol, label)
    return PENDING if m is None else pm(m, s) + (f" (n = {n})" if n > 1 else "")


def seed_noise(groups, protocol: str):
    """Pooled seed-to-seed std of the measured accuracy over the protocol's groups with at
    least two complete seeds, and the groups used; ``(None, [])`` when there are none.

    Pooled: ``sqrt(sum((n_g - 1) s_g^2) / sum(n_g - 1))``.
    """
    num, den, used = 0.0, 0, []
    for (p, label), g in groups.items():
        if p != protocol:
            continue
        m, s, n = mean_std([measured(r) for r in g if r.complete])
        if n >= 2:
            num += (n - 1) * s * s
            den += n - 1
            used.append(label)
    return (math.sqrt(num / den), used) if den else (None, [])


def noise_text(noise, used) -> str:
    if noise is None:
        return ("no seed-to-seed noise estimate yet (no group with two or more seeds): "
                "verdicts below go by the sign of single-seed differences only")
    return (f"seed-to-seed std sigma = {noise:.2f} points (pooled over "
            f"{', '.join(used)}); a difference of two single-seed runs counts when it exceeds "
            f"2·sqrt(2)·sigma = {2 * math.sqrt(2) * noise:.2f} points")


def verdict(diff, noise, expected_sign: int) -> str:
    """``agrees`` / ``deviates`` / ``within noise`` for a difference expected to have
    ``expected_sign`` (+1: should be positive)."""
    if diff is None:
        return PENDING
    if noise is not None and abs(diff) <= 2 * math.sqrt(2) * noise:
        return "within noise (neither agrees nor deviates)"
    return "agrees" if diff * expected_sign > 0 else "deviates"
