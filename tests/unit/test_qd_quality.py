"""Solve-rate and quality."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparq_stream.errors import ConfigError, FatalError
from sparq_stream.qd.quality import Thresholds, keep_range, quality, quality_from_counts, solve_rate


def test_solve_rate() -> None:
    assert solve_rate(3, 16) == 3 / 16
    for n, k in [(-1, 16), (17, 16), (0, 0)]:
        with pytest.raises(FatalError):
            solve_rate(n, k)


def test_quality_band_is_inclusive() -> None:
    assert quality(0.1) == pytest.approx(0.9)
    assert quality(0.9) == pytest.approx(0.1)
    assert quality(0.5) == 0.5
    assert quality(0.0999) == 0.0
    assert quality(0.9001) == 0.0
    assert quality(0.0) == 0.0 and quality(1.0) == 0.0
    assert quality(1.0, 0.0, 1.0) == 0.0  # solved by every rollout: quality 1 - 1 = 0
    assert quality(0.0, 0.0, 1.0) == 1.0


@pytest.mark.parametrize(
    ("t_low", "t_high", "field"),
    [(0.5, 0.4, "t_low"), (-0.1, 0.9, "t_low"), (0.1, 1.5, "t_high"), (0.1, float("nan"), "t_high")],
)
def test_bad_thresholds_name_the_field(t_low: float, t_high: float, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        quality(0.5, t_low, t_high)
    with pytest.raises(ConfigError, match=field):
        Thresholds(t_low, t_high)


def test_quality_rejects_a_rate_outside_0_1() -> None:
    with pytest.raises(FatalError):
        quality(1.5)


def test_keep_range_of_the_paper_defaults() -> None:
    assert keep_range(16) == (2, 14)
    assert quality_from_counts(2, 16) > 0 and quality_from_counts(1, 16) == 0
    assert quality_from_counts(14, 16) > 0 and quality_from_counts(15, 16) == 0


def test_keep_range_has_no_float_drift_on_exact_bounds() -> None:
    # 0.3 * 10 == 3.0000000000000004 and 0.7 * 10 == 7.000000000000001 in floats
    assert keep_range(10, 0.3, 0.7) == (3, 7)
    assert keep_range(5, 0.1, 0.15) is None


@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_quality_properties(sr: float, a: float, b: float) -> None:
    t_low, t_high = min(a, b), max(a, b)
    q = quality(sr, t_low, t_high)
    assert 0.0 <= q <= 1.0
    assert (q > 0) == (t_low <= sr <= t_high and sr < 1.0)
    if q > 0:
        assert q == 1.0 - sr


@given(st.integers(1, 40), st.floats(0, 1), st.floats(0, 1))
def test_keep_range_matches_quality(k: int, a: float, b: float) -> None:
    t_low, t_high = min(a, b), max(a, b)
    kept = [n for n in range(k + 1) if quality_from_counts(n, k, t_low, t_high) > 0]
    band = keep_range(k, t_low, t_high)
    assert band == ((kept[0], kept[-1]) if kept else None)
    if kept:
        assert kept == list(range(kept[0], kept[-1] + 1))
