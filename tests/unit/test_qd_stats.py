"""Run statistics: coverage, QD-score, yield, solve-rate histogram, coverage series."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sparq_stream.errors import ConfigError
from sparq_stream.qd.stats import (
    best_per_niche,
    coverage,
    coverage_by_count,
    coverage_over_steps,
    qd_score,
    sr_histogram,
    summary,
    yield_rate,
)


def _r(niche: str, sr: float, q: float, step: int = 0) -> SimpleNamespace:
    return SimpleNamespace(niche=niche, skills=[], solve_rate=sr, quality=q, step=step)


RESULTS = [
    _r("a", 0.5, 0.5, step=0),
    _r("a", 0.25, 0.75, step=0),
    _r("b", 1.0, 0.0, step=1),
    _r("c", 0.3, 0.7, step=1),
    _r("d", 0.0, 0.0, step=3),
    _r("c", 0.9, 0.1, step=3),
]


def test_coverage_counts_distinct_niches() -> None:
    assert coverage(RESULTS) == 2
    assert coverage(RESULTS, kept_only=False) == 4
    assert coverage([]) == 0


def test_qd_score_sums_the_best_quality_per_niche() -> None:
    assert best_per_niche(RESULTS) == {"a": 0.75, "b": 0.0, "c": 0.7, "d": 0.0}
    assert qd_score(RESULTS) == pytest.approx(1.45)


def test_yield() -> None:
    assert yield_rate(RESULTS) == pytest.approx(4 / 6)
    assert yield_rate([]) == 0.0


def test_sr_histogram_bins_edges_exactly() -> None:
    h = sr_histogram(RESULTS, bins=10)
    assert h.edges[0] == 0.0 and h.edges[-1] == 1.0 and len(h.edges) == 11
    # 0.3 lands in [0.3, 0.4) although 0.3 * 10 < 3 in floats; 1.0 in the last, closed bin
    assert h.counts == (1, 0, 1, 1, 0, 1, 0, 0, 0, 2)
    assert h.rows()[2] == (0.2, 0.3, 1)
    assert sum(sr_histogram(RESULTS, bins=3).counts) == 6
    with pytest.raises(ConfigError):
        sr_histogram(RESULTS, bins=0)


def test_coverage_series() -> None:
    assert coverage_over_steps(RESULTS) == [(0, 1), (1, 2), (3, 2)]
    assert coverage_over_steps(RESULTS, kept_only=False) == [(0, 1), (1, 3), (3, 4)]
    assert coverage_by_count(RESULTS, every=2) == [(2, 1), (4, 2), (6, 2)]
    assert coverage_by_count(RESULTS, every=4, kept_only=False) == [(4, 3), (6, 4)]
    assert coverage_by_count([], every=4) == []


def test_summary() -> None:
    s = summary(RESULTS)
    assert s["scored"] == 6 and s["kept"] == 4 and s["coverage"] == 2 and s["coverage_all"] == 4
    assert s["mean_kept_quality"] == pytest.approx((0.5 + 0.75 + 0.7 + 0.1) / 4)


def test_niche_comes_from_skills_when_unset() -> None:
    rs = [SimpleNamespace(niche="", skills=["B", "a"], solve_rate=0.5, quality=0.5, step=0)]
    assert best_per_niche(rs) == {"a|b": 0.5}
