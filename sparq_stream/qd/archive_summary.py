"""The run summary of an archive, accumulated batch by batch (bounded memory at any archive size).

:class:`SummaryAccumulator` takes Arrow record batches of archive rows (each id once: the
archive reader de-duplicates) and keeps only per-niche and per-step aggregates, so a
20M-row archive is summarised in the memory of its distinct niches and steps, not its rows.
It gives the same figures as the list functions of :mod:`sparq_stream.qd.stats`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sparq_stream.errors import ConfigError
from sparq_stream.descriptors import DescriptorError, niche_key
from sparq_stream.qd.quality import T_HIGH, T_LOW

__all__ = ["SUMMARY_COLUMNS", "INVALID_NICHE", "SummaryAccumulator", "batch_of"]

#: The archive columns the summary reads.
SUMMARY_COLUMNS = (
    "id", "quality", "solve_rate", "niche", "skills", "step", "early_stopped", "k", "rollouts_used", "correct_rollouts",
)
#: The niche counted for a row whose skills cannot form a descriptor.
INVALID_NICHE = "(invalid)"
_EDGE_EPS = 1e-9  # as in qd.stats.sr_histogram


def batch_of(results: Iterable[Any]) -> pa.RecordBatch:
    """Return the summary columns of result objects as one record batch."""
    rows = [
        {
            "id": r.id, "quality": float(r.quality), "solve_rate": float(r.solve_rate), "niche": r.niche or "",
            "skills": list(r.skills or ()), "step": int(r.step), "early_stopped": bool(r.early_stopped),
            "k": int(r.k), "rollouts_used": int(r.rollouts_used), "correct_rollouts": list(r.correct_rollouts),
        }
        for r in results
    ]
    return pa.RecordBatch.from_pylist(rows, schema=_SCHEMA)


_SCHEMA = pa.schema(
    [
        ("id", pa.string()), ("quality", pa.float64()), ("solve_rate", pa.float64()), ("niche", pa.string()),
        ("skills", pa.list_(pa.string())), ("step", pa.int64()), ("early_stopped", pa.bool_()), ("k", pa.int64()),
        ("rollouts_used", pa.int64()), ("correct_rollouts", pa.list_(pa.string())),
    ]
)


def _niches(batch: pa.RecordBatch) -> list[str]:
    """The niche of every row: its ``niche`` when set, else the key of its skills (``(invalid)`` if none forms)."""
    niches = batch.column(batch.schema.get_field_index("niche")).to_pylist()
    if all(niches):
        return niches
    skills = batch.column(batch.schema.get_field_index("skills"))
    out = []
    for i, niche in enumerate(niches):
        if niche:
            out.append(niche)
            continue
        try:
            out.append(niche_key(skills[i].as_py() or ()))
        except DescriptorError:
            out.append(INVALID_NICHE)
    return out


class SummaryAccumulator:
    """Counts, yield, coverage, QD-score, SR histogram and coverage over steps, one batch at a time."""

    def __init__(self, *, t_low: float = T_LOW, t_high: float = T_HIGH, bins: int = 10) -> None:
        if bins < 1:
            raise ConfigError(f"bins must be >= 1, got {bins}")
        self.t_low, self.t_high, self.bins = t_low, t_high, bins
        self.scored = self.kept = self.too_easy = self.unsolvable = self.other = 0
        self.early_stopped = self.asked = self.used = self.correct_kept = 0
        self.max_step = 0
        self._kept_quality: list[float] = []  # per-batch exact sums, summed with fsum at the end
        self.counts = np.zeros(bins, dtype=np.int64)
        self.best: dict[str, float] = {}
        self.first_kept_step: dict[str, int] = {}
        self.steps: set[int] = set()

    def add(self, batch: pa.RecordBatch) -> None:
        """Fold one batch of archive rows (summary columns at least) into the totals."""
        n = batch.num_rows
        if not n:
            return
        col = {name: batch.column(batch.schema.get_field_index(name)) for name in SUMMARY_COLUMNS if name != "id"}
        quality = col["quality"].to_numpy(zero_copy_only=False).astype(np.float64)
        rate = col["solve_rate"].to_numpy(zero_copy_only=False).astype(np.float64)
        step = col["step"].to_numpy(zero_copy_only=False).astype(np.int64)
        kept = quality > 0.0
        self.scored += n
        self.kept += int(kept.sum())
        dropped = ~kept
        self.too_easy += int((dropped & (rate > self.t_high)).sum())
        self.unsolvable += int((dropped & (rate < self.t_low)).sum())
        self.other += int((dropped & (rate >= self.t_low) & (rate <= self.t_high)).sum())
        self.early_stopped += int(pc.sum(pc.cast(col["early_stopped"], pa.int64())).as_py() or 0)
        self.asked += int(pc.sum(col["k"]).as_py() or 0)
        self.used += int(pc.sum(col["rollouts_used"]).as_py() or 0)
        lengths = pc.fill_null(pc.list_value_length(col["correct_rollouts"]), 0).to_numpy(zero_copy_only=False)
        self.correct_kept += int(lengths[kept].sum())
        self.max_step = max(self.max_step, int(step.max()))
        self._kept_quality.append(math.fsum(quality[kept].tolist()))
        index = np.clip(np.floor(rate * self.bins + _EDGE_EPS).astype(np.int64), 0, self.bins - 1)
        self.counts += np.bincount(index, minlength=self.bins)
        self.steps.update(np.unique(step).tolist())
        niches = _niches(batch)
        best, first = self.best, self.first_kept_step
        for niche, q, s, k in zip(niches, quality.tolist(), step.tolist(), kept.tolist()):
            if q > best.get(niche, -1.0):
                best[niche] = q
            if k and s < first.get(niche, s + 1):
                first[niche] = s

    def result(self) -> dict[str, Any]:
        """Return the summary fields of :func:`sparq_stream.cores.archivist.run_summary`."""
        best = dict(sorted(self.best.items()))
        kept_sum = math.fsum(self._kept_quality)
        series, covered = [], 0
        firsts = sorted(self.first_kept_step.values())
        i = 0
        for step in sorted(self.steps):
            while i < len(firsts) and firsts[i] <= step:
                i += 1
            covered = i
            series.append([step, covered])
        return {
            "scored": self.scored,
            "kept": self.kept,
            "yield": self.kept / self.scored if self.scored else 0.0,
            "coverage": len(self.first_kept_step),
            "coverage_all": len(best),
            "qd_score": math.fsum(best.values()),
            "mean_kept_quality": kept_sum / self.kept if self.kept else 0.0,
            "dropped": {"too_easy": self.too_easy, "unsolvable": self.unsolvable, "other": self.other},
            "early_stopped": self.early_stopped,
            "rollouts": {
                "asked": self.asked, "used": self.used,
                "saved_fraction": 1.0 - self.used / self.asked if self.asked else 0.0,
            },
            "correct_rollouts_kept": self.correct_kept,
            "steps": self.max_step,
            "sr_histogram": {"edges": [i / self.bins for i in range(self.bins + 1)], "counts": self.counts.tolist()},
            "coverage_over_steps": series,
            "best_per_niche": best,
        }

