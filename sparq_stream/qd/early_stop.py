"""Early stopping of the solver's K rollouts: pure decisions on the running counts.

After ``n_done`` of ``k`` rollouts with ``n_correct`` correct, the final count will lie in
``[n_correct, n_correct + (k - n_done)]``. Quality is ``1 - SR`` inside the band, so its
exact value needs all K rollouts; the only thing that can be certain early is that
**quality will be 0**:

- ``too_easy``: ``n_correct`` already exceeds the largest kept count (e.g. 15 of 16 done,
  15 correct, ``t_high = 0.9``: the final SR is at least 15/16 > 0.9 whatever is left);
- ``unsolvable``: even if every remaining rollout is correct, the final count stays below
  the smallest kept count.

:func:`exact_decision` stops only then, so it never changes a keep/drop decision. After
any early stop the published quality is 0 (exact for the exact rule) and the published
solve-rate is the *estimate* ``n_correct / n_done`` from the rollouts done, not the
K-rollout value (for an exact stop it lies outside the band too, so recomputing the
quality from it still gives 0; after an approximate stop it may not: read ``quality``,
never recompute it from ``solve_rate`` when ``early_stopped`` is set).

:class:`PredictiveStop` is the opt-in approximation: a Bayesian sequential test. With a
``Beta(prior_a, prior_b)`` prior on the true solve probability, the number of correct
rollouts among the remaining ones is Beta-Binomial; it stops when the posterior-predictive
probability that the full-K decision is *drop* exceeds ``confidence``. It may drop a
problem that all K rollouts would have kept; :func:`simulate_early_stop` measures the
rollouts saved and how often that happens over a distribution of true solve-rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from sparq_stream.errors import ConfigError, FatalError
from sparq_stream.qd.quality import T_HIGH, T_LOW, keep_range, quality, validate_thresholds

__all__ = [
    "CONTINUE",
    "COMPLETE",
    "TOO_EASY",
    "UNSOLVABLE",
    "EMPTY_BAND",
    "LIKELY_TOO_EASY",
    "LIKELY_UNSOLVABLE",
    "StopDecision",
    "StopRule",
    "exact_decision",
    "NeverStop",
    "ExactStop",
    "PredictiveStop",
    "make_stop_rule",
    "EarlyStopReport",
    "simulate_early_stop",
]

#: Keep generating: the decision is not settled yet.
CONTINUE = "continue"
#: All K rollouts are done: solve-rate and quality are exact.
COMPLETE = "complete"
#: Certain: the final solve-rate is above the band whatever the remaining rollouts do.
TOO_EASY = "too_easy"
#: Certain: the final solve-rate is below the band even if every remaining rollout is correct.
UNSOLVABLE = "unsolvable"
#: Certain: no count out of K has positive quality under these thresholds (degenerate band).
EMPTY_BAND = "empty_band"
#: Approximate: the sequential test judges the problem too easy with the configured confidence.
LIKELY_TOO_EASY = "likely_too_easy"
#: Approximate: the sequential test judges the problem unsolvable with the configured confidence.
LIKELY_UNSOLVABLE = "likely_unsolvable"


@dataclass(frozen=True)
class StopDecision:
    """Whether to stop, why, and (when stopping) the solve-rate and quality to publish."""

    stop: bool
    reason: str
    solve_rate: float | None = None
    quality: float | None = None
    p_drop: float | None = None

    @property
    def early(self) -> bool:
        """True when the rollouts stop before all K are done."""
        return self.stop and self.reason != COMPLETE


@runtime_checkable
class StopRule(Protocol):
    """A stopping rule: decides after each batch of rollouts whether to stop."""

    def decide(self, k: int, n_done: int, n_correct: int) -> StopDecision:
        """Return the decision after ``n_done`` of ``k`` rollouts, ``n_correct`` of them correct."""
        ...


def _check_counts(k: int, n_done: int, n_correct: int) -> None:
    if k <= 0:
        raise FatalError(f"the number of rollouts must be positive, got k={k}")
    if not 0 <= n_done <= k:
        raise FatalError(f"n_done={n_done} is outside [0, k={k}]")
    if not 0 <= n_correct <= n_done:
        raise FatalError(f"n_correct={n_correct} is outside [0, n_done={n_done}]")


def _dropped(reason: str, n_done: int, n_correct: int, p_drop: float | None = None) -> StopDecision:
    estimate = n_correct / n_done if n_done else 0.0
    return StopDecision(True, reason, estimate, 0.0, p_drop)


def exact_decision(
    k: int, n_done: int, n_correct: int, t_low: float = T_LOW, t_high: float = T_HIGH
) -> StopDecision:
    """Stop only when quality is certain to be 0 whatever the remaining rollouts do."""
    _check_counts(k, n_done, n_correct)
    if n_done == k:
        sr = n_correct / k
        return StopDecision(True, COMPLETE, sr, quality(sr, t_low, t_high))
    band = keep_range(k, t_low, t_high)
    if band is None:
        return _dropped(EMPTY_BAND, n_done, n_correct, 1.0)
    lo, hi = band
    if n_correct > hi:
        return _dropped(TOO_EASY, n_done, n_correct, 1.0)
    if n_correct + (k - n_done) < lo:
        return _dropped(UNSOLVABLE, n_done, n_correct, 1.0)
    return StopDecision(False, CONTINUE)


@dataclass(frozen=True)
class NeverStop:
    """Run all K rollouts (the reference the other rules are measured against)."""

    t_low: float = T_LOW
    t_high: float = T_HIGH

    def __post_init__(self) -> None:
        validate_thresholds(self.t_low, self.t_high)

    def decide(self, k: int, n_done: int, n_correct: int) -> StopDecision:
        """Stop only when all K rollouts are done."""
        _check_counts(k, n_done, n_correct)
        if n_done < k:
            return StopDecision(False, CONTINUE)
        return exact_decision(k, n_done, n_correct, self.t_low, self.t_high)


@dataclass(frozen=True)
class ExactStop:
    """Stop when the drop decision is certain (never changes a keep/drop decision)."""

    t_low: float = T_LOW
    t_high: float = T_HIGH

    def __post_init__(self) -> None:
        validate_thresholds(self.t_low, self.t_high)

    def decide(self, k: int, n_done: int, n_correct: int) -> StopDecision:
        """Return :func:`exact_decision` under this rule's thresholds."""
        return exact_decision(k, n_done, n_correct, self.t_low, self.t_high)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _beta_binomial_pmf(r: int, a: float, b: float) -> list[float]:
    base = _log_beta(a, b)
    return [
        math.exp(math.lgamma(r + 1) - math.lgamma(x + 1) - math.lgamma(r - x + 1) + _log_beta(x + a, r - x + b) - base)
        for x in range(r + 1)
    ]


@dataclass(frozen=True)
class PredictiveStop:
    """Opt-in approximate rule: a Bayesian posterior-predictive sequential test.

    Stops (dropping the problem) once ``P(full-K decision is drop | rollouts so far)`` under a
    ``Beta(prior_a, prior_b)`` prior exceeds ``confidence``, and never before ``min_rollouts``
    rollouts (except where :func:`exact_decision` already stops).
    """

    t_low: float = T_LOW
    t_high: float = T_HIGH
    confidence: float = 0.95
    prior_a: float = 1.0
    prior_b: float = 1.0
    min_rollouts: int = 4

    def __post_init__(self) -> None:
        validate_thresholds(self.t_low, self.t_high)
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"confidence must lie in (0, 1), got {self.confidence!r}")
        for name in ("prior_a", "prior_b"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.min_rollouts < 0:
            raise ConfigError(f"min_rollouts must be >= 0, got {self.min_rollouts!r}")

    def drop_probabilities(self, k: int, n_done: int, n_correct: int) -> tuple[float, float]:
        """Return the predictive probabilities that the full-K result is (too easy, unsolvable)."""
        _check_counts(k, n_done, n_correct)
        band = keep_range(k, self.t_low, self.t_high)
        if band is None:
            return 0.0, 1.0
        lo, hi = band
        pmf = _beta_binomial_pmf(k - n_done, self.prior_a + n_correct, self.prior_b + n_done - n_correct)
        p_easy = sum(p for x, p in enumerate(pmf) if n_correct + x > hi)
        p_hard = sum(p for x, p in enumerate(pmf) if n_correct + x < lo)
        return min(p_easy, 1.0), min(p_hard, 1.0)

    def decide(self, k: int, n_done: int, n_correct: int) -> StopDecision:
        """Return the exact decision if it stops, else stop when the drop probability exceeds confidence."""
        exact = exact_decision(k, n_done, n_correct, self.t_low, self.t_high)
        if exact.stop or n_done < self.min_rollouts:
            return exact
        p_easy, p_hard = self.drop_probabilities(k, n_done, n_correct)
        p_drop = p_easy + p_hard
        if p_drop > self.confidence:
            return _dropped(LIKELY_TOO_EASY if p_easy >= p_hard else LIKELY_UNSOLVABLE, n_done, n_correct, p_drop)
        return StopDecision(False, CONTINUE, p_drop=p_drop)


def make_stop_rule(name: str, t_low: float = T_LOW, t_high: float = T_HIGH, **options: float) -> StopRule:
    """Build a stopping rule by name: ``none``, ``exact`` or ``predictive`` (with its options)."""
    if name in ("none", "exact") and options:
        raise ConfigError(f"early_stop={name!r} takes no options, got {sorted(options)}")
    if name == "none":
        return NeverStop(t_low, t_high)
    if name == "exact":
        return ExactStop(t_low, t_high)
    if name == "predictive":
        return PredictiveStop(t_low, t_high, **options)  # type: ignore[arg-type]
    raise ConfigError(f"early_stop must be one of none, exact, predictive; got {name!r}")


@dataclass(frozen=True)
class EarlyStopReport:
    """What a stopping rule saved and what it changed, against running all K rollouts."""

    problems: int
    k: int
    chunk: int
    rollouts_full: int
    rollouts_used: int
    kept_full: int
    changed: int
    stops: dict[str, int] = field(default_factory=dict)

    @property
    def saved_fraction(self) -> float:
        """Fraction of the K-rollout generations the rule did not need."""
        return 1.0 - self.rollouts_used / self.rollouts_full if self.rollouts_full else 0.0

    @property
    def changed_fraction(self) -> float:
        """Fraction of problems whose keep/drop decision differs from the full-K one."""
        return self.changed / self.problems if self.problems else 0.0

    @property
    def lost_keep_fraction(self) -> float:
        """Fraction of the problems all K rollouts would keep that the rule dropped."""
        return self.changed / self.kept_full if self.kept_full else 0.0


def simulate_early_stop(
    rule: StopRule, true_rates: Sequence[float] | np.ndarray, *, k: int = 16, chunk: int = 1, seed: int = 0
) -> EarlyStopReport:
    """Simulate K Bernoulli rollouts per true solve-rate, checked every ``chunk``; compare with full K.

    Each problem gets one fixed sequence of K outcomes, so the early-stopped run and the
    full run see the same rollouts; the rule is consulted after every ``chunk`` rollouts.
    """
    if k <= 0:
        raise ConfigError(f"k must be positive, got {k}")
    if chunk <= 0:
        raise ConfigError(f"chunk must be positive, got {chunk}")
    rates = np.asarray(true_rates, dtype=float)
    if rates.ndim != 1 or np.any((rates < 0) | (rates > 1)) or np.any(np.isnan(rates)):
        raise ConfigError("true_rates must be a 1-d sequence of probabilities in [0, 1]")
    rng = np.random.default_rng(seed)
    outcomes = rng.random((rates.size, k)) < rates[:, None]
    prefix = np.concatenate([np.zeros((rates.size, 1), dtype=np.int64), np.cumsum(outcomes, axis=1)], axis=1)
    checkpoints = list(range(chunk, k, chunk)) + [k]
    t_low = getattr(rule, "t_low", T_LOW)
    t_high = getattr(rule, "t_high", T_HIGH)
    cache: dict[tuple[int, int], StopDecision] = {}
    used = kept_full = changed = 0
    stops: dict[str, int] = {}
    for row in prefix:
        keep_full = quality(int(row[k]) / k, t_low, t_high) > 0.0
        kept_full += keep_full
        for n_done in checkpoints:
            state = (n_done, int(row[n_done]))
            decision = cache.get(state)
            if decision is None:
                decision = cache[state] = rule.decide(k, *state)
            if decision.stop:
                break
        used += n_done
        stops[decision.reason] = stops.get(decision.reason, 0) + 1
        keep_rule = (decision.quality or 0.0) > 0.0
        changed += keep_rule != keep_full
    return EarlyStopReport(rates.size, k, chunk, rates.size * k, used, kept_full, changed, dict(sorted(stops.items())))
