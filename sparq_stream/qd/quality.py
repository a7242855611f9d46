"""Solve-rate and quality: the difficulty signal of a child problem.

``QUALITY = 1 - SR`` when ``t_low <= SR <= t_high`` (both bounds inclusive), else 0:
problems that are too easy (SR above ``t_high``) or unsolvable or invalid (SR below
``t_low``) are worth nothing. A problem is *kept* when its quality is above 0 (so with
``t_high = 1`` a problem every rollout solves is still dropped: its quality is 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from sparq_stream.errors import ConfigError, FatalError

__all__ = [
    "T_LOW",
    "T_HIGH",
    "Thresholds",
    "validate_thresholds",
    "solve_rate",
    "quality",
    "quality_from_counts",
    "keep_range",
]

#: The paper's lower solve-rate threshold: below it a problem counts as unsolvable.
T_LOW = 0.1
#: The paper's upper solve-rate threshold: above it a problem counts as too easy.
T_HIGH = 0.9


def validate_thresholds(t_low: float, t_high: float) -> None:
    """Raise ConfigError naming the field unless ``0 <= t_low <= t_high <= 1``."""
    for name, value in (("t_low", t_low), ("t_high", t_high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    if t_low > t_high:
        raise ConfigError(f"t_low ({t_low}) must not exceed t_high ({t_high})")


@dataclass(frozen=True)
class Thresholds:
    """The solve-rate band ``[t_low, t_high]`` inside which a problem has positive quality."""

    t_low: float = T_LOW
    t_high: float = T_HIGH

    def __post_init__(self) -> None:
        validate_thresholds(self.t_low, self.t_high)

    def quality(self, sr: float) -> float:
        """Return the quality of solve-rate ``sr`` under these thresholds."""
        return quality(sr, self.t_low, self.t_high)


def solve_rate(n_correct: int, k: int) -> float:
    """Return ``n_correct / k``; raise FatalError for counts that cannot happen."""
    if k <= 0:
        raise FatalError(f"the number of rollouts must be positive, got k={k}")
    if not 0 <= n_correct <= k:
        raise FatalError(f"n_correct={n_correct} is outside [0, k={k}]")
    return n_correct / k


def quality(sr: float, t_low: float = T_LOW, t_high: float = T_HIGH) -> float:
    """Return ``1 - sr`` if ``t_low <= sr <= t_high`` (inclusive), else 0."""
    validate_thresholds(t_low, t_high)
    if not 0.0 <= sr <= 1.0:
        raise FatalError(f"a solve-rate must lie in [0, 1], got {sr!r}")
    return 1.0 - sr if t_low <= sr <= t_high else 0.0


def quality_from_counts(n_correct: int, k: int, t_low: float = T_LOW, t_high: float = T_HIGH) -> float:
    """Return the quality of ``n_correct`` correct rollouts out of ``k``."""
    return quality(solve_rate(n_correct, k), t_low, t_high)


@lru_cache(maxsize=256)
def keep_range(k: int, t_low: float = T_LOW, t_high: float = T_HIGH) -> tuple[int, int] | None:
    """Return the inclusive range of correct counts out of ``k`` with quality > 0, or None if empty.

    Computed with :func:`quality` itself, so it agrees with it exactly (no float drift from
    comparing counts against ``t * k``).
    """
    kept = [n for n in range(k + 1) if quality_from_counts(n, k, t_low, t_high) > 0.0]
    return (kept[0], kept[-1]) if kept else None
