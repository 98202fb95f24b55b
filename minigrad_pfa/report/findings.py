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


def seed_noise(groups, protocol: str, summaries=None):
    """The protocol's seed-to-seed std of the accuracy and where it comes from.

    Returns ``(sigma, source)``: the pooled std over the protocol's groups with at least
    two complete seeds, ``sqrt(sum((n_g - 1) s_g^2) / sum(n_g - 1))``, with source
    "pooled over <groups>"; else, when ``summaries`` are given and the protocol's configs
    carry published stds (the paper's seed-to-seed spread), their root mean square, with
    source "published"; else ``(None, None)``.
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
    if den:
        return math.sqrt(num / den), "pooled over " + ", ".join(used)
    pub = [(label, v["published"]["std"]) for (p, label), v in (summaries or {}).items()
           if p == protocol and (v.get("published") or {}).get("std") is not None]
    if pub:
        return (math.sqrt(sum(s * s for _, s in pub) / len(pub)),
                "root mean square of the published stds of " + ", ".join(l for l, _ in pub)
                + "; no measured group has two seeds")
    return None, None


def noise_text(noise, source) -> str:
    if noise is None:
        return ("no seed-to-seed noise estimate yet (no group with two or more seeds, no "
                "published std): verdicts below go by the sign of single-seed differences only")
    return (f"seed-to-seed std sigma = {noise:.2f} points ({source}); a difference of two "
            f"single-seed runs counts when it exceeds 2·sqrt(2)·sigma = "
            f"{2 * math.sqrt(2) * noise:.2f} points, one of means over n_a and n_b seeds "
            f"2·sigma·sqrt(1/n_a + 1/n_b) (two standard errors, a normal "
            f"approximation: with as few seeds as here a t-test would ask for more)")


def contrast_se(sigma, terms) -> float:
    """Standard error of a contrast ``sum_i c_i * mean_i`` of group means, each over n_i
    seeds with the common seed std ``sigma``: ``sigma * sqrt(sum_i c_i^2 / n_i)``.
    ``terms``: ``[(c_i, n_i), ...]``."""
    return sigma * math.sqrt(sum(c * c / n for c, n in terms))


def diff_se(sa, na, sb, nb) -> float:
    """Standard error of a difference of two means with their own sample stds:
    ``sqrt(s_a^2 / n_a + s_b^2 / n_b)`` (a missing std counts as 0)."""
    return math.sqrt((sa or 0.0) ** 2 / na + (sb or 0.0) ** 2 / nb)


def verdict(diff, noise, expected_sign: int, n=(1, 1)) -> str:
    """``agrees`` / ``deviates`` / ``within noise`` for a difference of two group means
    (over ``n`` seeds each) expected to have ``expected_sign`` (+1: should be positive);
    within noise: ``|diff| <= 2 * contrast_se(noise, [(1, n_a), (-1, n_b)])`` (for two
    single seeds 2·sqrt(2)·sigma)."""
    if diff is None:
        return PENDING
    if noise is not None and abs(diff) <= 2 * contrast_se(noise, [(1, n[0]), (-1, n[1])]):
        return "within noise (neither agrees nor deviates)"
    return "agrees" if diff * expected_sign > 0 else "deviates"
