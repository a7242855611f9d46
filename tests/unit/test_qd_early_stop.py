"""Early stopping of the K rollouts: exact decisions, the predictive test, the simulator."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparq_stream.errors import ConfigError, FatalError
from sparq_stream.qd.early_stop import (
    COMPLETE,
    CONTINUE,
    EMPTY_BAND,
    LIKELY_TOO_EASY,
    LIKELY_UNSOLVABLE,
    TOO_EASY,
    UNSOLVABLE,
    ExactStop,
    NeverStop,
    PredictiveStop,
    exact_decision,
    make_stop_rule,
    simulate_early_stop,
)
from sparq_stream.qd.quality import quality, quality_from_counts


def test_design_example_fifteen_of_sixteen() -> None:
    d = exact_decision(16, 15, 15)
    assert (d.stop, d.reason, d.solve_rate, d.quality, d.early) == (True, TOO_EASY, 1.0, 0.0, True)
    # 14 of 14 correct: the final count may still be 14 (SR 0.875, kept), so keep going
    assert exact_decision(16, 14, 14).reason == CONTINUE


def test_unsolvable_when_even_all_remaining_correct_stay_below_the_band() -> None:
    d = exact_decision(16, 15, 0)
    assert (d.stop, d.reason, d.solve_rate, d.quality) == (True, UNSOLVABLE, 0.0, 0.0)
    assert exact_decision(16, 14, 0).reason == CONTINUE  # 2 more correct would give 2/16 = 0.125
    assert exact_decision(100, 95, 4).reason == UNSOLVABLE
    assert exact_decision(100, 95, 4).solve_rate == pytest.approx(4 / 95)


def test_complete_publishes_the_exact_rate_and_quality() -> None:
    d = exact_decision(16, 16, 8)
    assert (d.stop, d.reason, d.solve_rate, d.quality, d.early) == (True, COMPLETE, 0.5, 0.5, False)
    assert exact_decision(16, 16, 15).quality == 0.0


def test_empty_band_stops_at_once() -> None:
    d = exact_decision(5, 0, 0, 0.1, 0.15)
    assert (d.stop, d.reason, d.quality) == (True, EMPTY_BAND, 0.0)


@pytest.mark.parametrize(("k", "n_done", "n_correct"), [(0, 0, 0), (16, 17, 0), (16, 4, 5), (16, -1, 0)])
def test_impossible_counts_raise(k: int, n_done: int, n_correct: int) -> None:
    with pytest.raises(FatalError):
        exact_decision(k, n_done, n_correct)


@st.composite
def _state(draw: st.DrawFn) -> tuple[int, int, int, float, float]:
    k = draw(st.integers(1, 24))
    n_done = draw(st.integers(0, k))
    n_correct = draw(st.integers(0, n_done))
    a, b = draw(st.floats(0, 1)), draw(st.floats(0, 1))
    return k, n_done, n_correct, min(a, b), max(a, b)


@given(_state())
def test_exact_stop_is_certain_and_as_early_as_possible(state: tuple[int, int, int, float, float]) -> None:
    k, n_done, n_correct, t_low, t_high = state
    d = exact_decision(k, n_done, n_correct, t_low, t_high)
    finals = [quality_from_counts(n_correct + x, k, t_low, t_high) for x in range(k - n_done + 1)]
    if d.early:
        assert all(q == 0.0 for q in finals), "stopped although some completion keeps the problem"
        assert d.quality == 0.0
        assert quality(d.solve_rate, t_low, t_high) == 0.0  # the published estimate is outside the band too
    elif not d.stop:
        assert any(q > 0.0 for q in finals), "kept going although the drop was certain"


def test_predictive_agrees_with_the_uniform_prior_by_hand() -> None:
    # Before any rollout the Beta(1, 1)-Binomial predictive is uniform on 0..16: 2/17 each side
    p_easy, p_hard = PredictiveStop().drop_probabilities(16, 0, 0)
    assert p_easy == pytest.approx(2 / 17) and p_hard == pytest.approx(2 / 17)
    assert PredictiveStop().drop_probabilities(16, 4, 2) == (0.0, 0.0)  # final count lies in [2, 14]


def test_predictive_stops_on_strong_evidence_with_its_reason() -> None:
    rule = PredictiveStop(confidence=0.9)
    d = rule.decide(16, 12, 12)
    assert d.stop and d.reason == LIKELY_TOO_EASY and d.quality == 0.0 and d.solve_rate == 1.0
    assert d.p_drop is not None and d.p_drop > 0.9
    d = rule.decide(16, 12, 0)
    assert d.stop and d.reason == LIKELY_UNSOLVABLE and d.solve_rate == 0.0
    assert not rule.decide(16, 8, 4).stop


def test_predictive_waits_for_min_rollouts_but_not_for_certainty() -> None:
    rule = PredictiveStop(confidence=0.5, min_rollouts=6)
    assert not rule.decide(16, 5, 5).stop
    assert rule.decide(16, 6, 6).stop
    assert PredictiveStop(min_rollouts=16).decide(16, 15, 15).reason == TOO_EASY


@pytest.mark.parametrize(
    "kwargs",
    [
        {"confidence": 1.0},
        {"confidence": 0.0},
        {"prior_a": 0.0},
        {"prior_b": float("inf")},
        {"min_rollouts": -1},
        {"t_low": 0.95},
    ],
)
def test_predictive_validates_its_settings(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        PredictiveStop(**kwargs)


def test_make_stop_rule() -> None:
    assert isinstance(make_stop_rule("none"), NeverStop)
    assert make_stop_rule("exact", 0.2, 0.8) == ExactStop(0.2, 0.8)
    assert make_stop_rule("predictive", confidence=0.99) == PredictiveStop(confidence=0.99)
    with pytest.raises(ConfigError, match="early_stop"):
        make_stop_rule("sprt")
    with pytest.raises(ConfigError):
        make_stop_rule("exact", confidence=0.9)


_RATES = np.random.default_rng(7).beta(0.5, 0.5, 3000)


def test_simulation_of_the_reference_and_exact_rules() -> None:
    full = simulate_early_stop(NeverStop(), _RATES, k=16, seed=1)
    assert (full.saved_fraction, full.changed, full.stops) == (0.0, 0, {COMPLETE: 3000})
    exact = simulate_early_stop(ExactStop(), _RATES, k=16, seed=1)
    assert exact.changed == 0 and exact.kept_full == full.kept_full
    assert 0.0 < exact.saved_fraction < 0.1
    assert exact.rollouts_used == exact.rollouts_full - exact.stops[TOO_EASY] - exact.stops[UNSOLVABLE]
    # checked only every 4 rollouts, the exact rule never gets to stop at 15 of 16
    assert simulate_early_stop(ExactStop(), _RATES, k=16, chunk=4, seed=1).saved_fraction == 0.0


def test_simulation_of_the_predictive_rule_is_measured_and_deterministic() -> None:
    a = simulate_early_stop(PredictiveStop(confidence=0.95), _RATES, k=16, seed=1)
    b = simulate_early_stop(PredictiveStop(confidence=0.95), _RATES, k=16, seed=1)
    exact = simulate_early_stop(ExactStop(), _RATES, k=16, seed=1)
    assert a == b
    assert a.saved_fraction > exact.saved_fraction
    assert 0 < a.changed and a.changed_fraction < 0.05 and a.lost_keep_fraction < 0.05
    strict = simulate_early_stop(PredictiveStop(confidence=0.999), _RATES, k=16, seed=1)
    assert strict.changed <= a.changed and strict.saved_fraction <= a.saved_fraction


def test_simulation_validates_inputs() -> None:
    for kwargs in ({"k": 0}, {"chunk": 0}):
        with pytest.raises(ConfigError):
            simulate_early_stop(ExactStop(), [0.5], **kwargs)
    with pytest.raises(ConfigError):
        simulate_early_stop(ExactStop(), [1.5])
