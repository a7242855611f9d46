"""Run statistics over scored children: coverage, QD-score, yield, solve-rate histogram.

Pure functions over lists of results (anything with ``quality``, ``solve_rate``, ``step``
and ``niche``/``skills``). They count what they are given: de-duplicate first (the archive
readers do) if the list may hold a redelivered result twice.

- coverage: distinct niches (skill-sets) reached; by default only by *kept* children
  (quality > 0), the cells a QD archive fills; ``kept_only=False`` counts every child.
- QD-score: the sum over niches of the best quality found there.
- yield: the fraction of scored children with quality > 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from sparq_stream.errors import ConfigError
from sparq_stream.descriptors import niche_of

__all__ = [
    "Histogram",
    "coverage",
    "qd_score",
    "yield_rate",
    "best_per_niche",
    "sr_histogram",
    "coverage_over_steps",
    "coverage_by_count",
    "summary",
]

#: Tolerance for solve-rates that land on a bin edge up to float rounding (3/10 vs 0.1 * 3).
_EDGE_EPS = 1e-9


def best_per_niche(results: Iterable[Any]) -> dict[str, float]:
    """Return the best quality per niche over all results (niches whose best is 0 included)."""
    best: dict[str, float] = {}
    for r in results:
        niche = niche_of(r)
        if r.quality > best.get(niche, -1.0):
            best[niche] = r.quality
    return dict(sorted(best.items()))


def coverage(results: Iterable[Any], *, kept_only: bool = True) -> int:
    """Return the number of distinct niches reached (by kept children unless ``kept_only=False``)."""
    return len({niche_of(r) for r in results if not kept_only or r.quality > 0.0})


def qd_score(results: Iterable[Any]) -> float:
    """Return the sum over niches of the best quality found in each."""
    return math.fsum(best_per_niche(results).values())


def yield_rate(results: Sequence[Any]) -> float:
    """Return the fraction of results with quality > 0 (0.0 for no results)."""
    results = list(results)
    return sum(r.quality > 0.0 for r in results) / len(results) if results else 0.0


@dataclass(frozen=True)
class Histogram:
    """Counts of solve-rates in equal-width bins over [0, 1]; ``edges`` has ``len(counts) + 1`` entries."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    def rows(self) -> list[tuple[float, float, int]]:
        """Return (low edge, high edge, count) per bin."""
        return [(self.edges[i], self.edges[i + 1], c) for i, c in enumerate(self.counts)]


def sr_histogram(results: Iterable[Any], bins: int = 10) -> Histogram:
    """Bin solve-rates into ``bins`` equal bins: [i/bins, (i+1)/bins), the last one closed."""
    if bins < 1:
        raise ConfigError(f"bins must be >= 1, got {bins}")
    counts = [0] * bins
    for r in results:
        index = min(int(math.floor(r.solve_rate * bins + _EDGE_EPS)), bins - 1)
        counts[max(index, 0)] += 1
    edges = tuple(i / bins for i in range(bins + 1))
    return Histogram(edges, tuple(counts))


def coverage_over_steps(results: Iterable[Any], *, kept_only: bool = True) -> list[tuple[int, int]]:
    """Return (step, coverage of all results with step <= it) for every step that has results."""
    by_step: dict[int, set[str]] = {}
    for r in results:
        if not kept_only or r.quality > 0.0:
            by_step.setdefault(r.step, set()).add(niche_of(r))
        else:
            by_step.setdefault(r.step, set())
    seen: set[str] = set()
    series = []
    for step in sorted(by_step):
        seen |= by_step[step]
        series.append((step, len(seen)))
    return series


def coverage_by_count(results: Iterable[Any], every: int = 1000, *, kept_only: bool = True) -> list[tuple[int, int]]:
    """Return (children scored so far, coverage) after every ``every`` results and at the end."""
    if every < 1:
        raise ConfigError(f"every must be >= 1, got {every}")
    seen: set[str] = set()
    series = []
    n = 0
    for n, r in enumerate(results, 1):
        if not kept_only or r.quality > 0.0:
            seen.add(niche_of(r))
        if n % every == 0:
            series.append((n, len(seen)))
    if n and (not series or series[-1][0] != n):
        series.append((n, len(seen)))
    return series


def summary(results: Iterable[Any]) -> dict[str, float]:
    """Return the headline numbers of a run: counts, yield, coverage, QD-score, mean kept quality."""
    results = list(results)
    kept = [r.quality for r in results if r.quality > 0.0]
    return {
        "scored": float(len(results)),
        "kept": float(len(kept)),
        "yield": yield_rate(results),
        "coverage": float(coverage(results)),
        "coverage_all": float(coverage(results, kept_only=False)),
        "qd_score": qd_score(results),
        "mean_kept_quality": math.fsum(kept) / len(kept) if kept else 0.0,
    }
