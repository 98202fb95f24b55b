"""E5: PFA's converged path alignment versus the expansion ratio.

Expected values: the published numbers of Li & Benna 2024 (Figure 3, as listed in the
project's algorithm notes: 45.0 / 26.6 / 17.5 / 11.3 / 5.7 degrees and norm ratios
1.41 / 1.12 / 1.05 / 1.02 / 1.005 at r = 1, 3.98, 10, 25.1, 100), the Marchenko-Pastur
law's edges and first moment, and orthogonality (PFA-o).
"""
import json
import math

import numpy as np
import pytest

from minigrad_pfa.analysis import (expansion_ratio_analysis, format_table, haar_orthogonal,
                                   main, marchenko_pastur_edges)

PUBLISHED = [  # r, angle (deg), norm ratio
    (1.0, 45.0, 1.41), (10 ** 0.6, 26.6, 1.12), (10.0, 17.5, 1.05), (10 ** 1.4, 11.3, 1.02),
    (100.0, 5.7, 1.005)]


@pytest.fixture(scope="module")
def published_rows():
    return expansion_ratio_analysis(ratios=[r for r, _, _ in PUBLISHED], reps=12, seed=0)


def test_published_angles_and_norm_ratios(published_rows):
    rows = [x for x in published_rows if x["variant"] == "pfa"]
    assert [x["mid"] for x in rows] == [100, 398, 1000, 2512, 10000]
    for x, (r, ang, ratio) in zip(rows, PUBLISHED):
        assert x["r"] == pytest.approx(r, rel=2e-3)
        assert x["angle_mean"] == pytest.approx(ang, abs=1.0), r
        assert x["norm_ratio_mean"] == pytest.approx(ratio, abs=0.02), r
        assert x["reps"] == 12 and x["angle_std"] < 1.0


def test_spectrum_of_BBt_follows_marchenko_pastur(published_rows):
    for x in (x for x in published_rows if x["variant"] == "pfa"):
        r = x["r"]
        lo, hi = (1 - r ** -0.5) ** 2, (1 + r ** -0.5) ** 2      # independent closed form
        assert (x["mp_lower"], x["mp_upper"]) == pytest.approx((lo, hi), rel=1e-12)
        # E[B B.T] = I (the gain sqrt((1 + 1/r)/2)): mean eigenvalue 1
        assert x["eig_mean"] == pytest.approx(1.0, abs=0.02)
        # the extreme eigenvalues sit at the edges, up to finite-size (out = 100) effects
        assert hi * 0.9 < x["eig_max_mean"] < hi * 1.02
        assert lo - 0.02 < x["eig_min_mean"] < lo + 0.05


def test_orthogonal_variant_is_exact(published_rows):
    x = published_rows[-1]
    assert x["variant"] == "pfa-o" and x["mid"] == 100
    assert x["angle_mean"] < 1e-5
    assert x["norm_ratio_mean"] == pytest.approx(1.0, abs=1e-12)
    assert x["eig_min_mean"] == pytest.approx(1.0, abs=1e-12)
    assert x["eig_max_mean"] == pytest.approx(1.0, abs=1e-12)


def test_other_ratios_follow_the_moment_formula():
    # angle = arctan(r^-1/2), ratio = sqrt(1 + 1/r): the first two moments of the MP law
    ratios = [2.0, 5.0, 40.0]
    rows = expansion_ratio_analysis(out=60, inp=150, ratios=ratios, reps=8, seed=3,
                                    include_orthogonal=False)
    assert len(rows) == 3
    for x, r in zip(rows, ratios):
        assert x["angle_mean"] == pytest.approx(math.degrees(math.atan(r ** -0.5)), abs=1.0)
        assert x["norm_ratio_mean"] == pytest.approx(math.sqrt(1 + 1 / r), abs=0.02)


def test_default_ratios_and_reproducibility():
    a = expansion_ratio_analysis(out=20, inp=30, reps=2, seed=1)
    assert [round(x["r"], 2) for x in a[:-1]] == \
        [round(round(r * 20) / 20, 2) for r in np.logspace(0, 2, 11)]
    b = expansion_ratio_analysis(out=20, inp=30, reps=2, seed=1)
    c = expansion_ratio_analysis(out=20, inp=30, reps=2, seed=2)
    assert a == b
    assert a[0]["angle_mean"] != c[0]["angle_mean"]
    # each ratio's draws are its own: a subset of the ratios, in another order, gives the
    # same rows
    d = expansion_ratio_analysis(out=20, inp=30, ratios=np.logspace(0, 2, 11)[[7, 2]], reps=2,
                                 seed=1, include_orthogonal=True)
    assert d == [a[7], a[2], a[-1]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="expansion ratio"):
        expansion_ratio_analysis(ratios=[0.0], reps=1)
    with pytest.raises(ValueError, match="positive"):
        expansion_ratio_analysis(reps=0)


def test_haar_orthogonal():
    rng = np.random.default_rng(0)
    Q = haar_orthogonal(rng, 50)
    assert np.allclose(Q @ Q.T, np.eye(50), atol=1e-12)
    # Haar: E[Q_00] = 0 and E[Q_00^2] = 1/n; without the sign fix of R's diagonal,
    # NumPy's QR gives E[Q_00] of about -0.5 for n = 3
    q00 = np.array([haar_orthogonal(rng, 3)[0, 0] for _ in range(2000)])
    assert abs(q00.mean()) < 0.05
    assert (q00 ** 2).mean() == pytest.approx(1 / 3, abs=0.03)


def test_marchenko_pastur_edges():
    assert marchenko_pastur_edges(1.0) == (0.0, 4.0)
    lo, hi = marchenko_pastur_edges(4.0)
    assert (lo, hi) == pytest.approx((0.25, 2.25))


def test_cli_writes_table_and_json(tmp_path, capsys):
    path = tmp_path / "e5.json"
    assert main(["--out", "10", "--inp", "20", "--reps", "2", "--ratios", "1", "10",
                 "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    assert [x["variant"] for x in rows] == ["pfa", "pfa", "pfa-o"]
    text = capsys.readouterr().out
    assert "MP edges" in text and text.count("\n") >= 4
    assert format_table(rows).splitlines()[0] == text.splitlines()[0]
