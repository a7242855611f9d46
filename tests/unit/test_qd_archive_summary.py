"""The streamed run summary equals the list statistics of qd.stats on the same rows."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sparq_stream.cores.archivist import run_summary, summarize_archive
from sparq_stream.messages import SolveResult
from sparq_stream.qd import stats
from sparq_stream.qd.archive_log import ArchiveLog

SKILLS = [["algebra"], ["ratio", "algebra"], ["geometry"], ["counting", "probability"], []]


def _rows(n: int, seed: int) -> list[SolveResult]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = 8
        early = rng.random() < 0.2
        used = k - rng.randint(0, 2) if early else k
        correct = rng.randint(0, used)
        rate = correct / used if used else 0.0
        skills = rng.choice(SKILLS)
        out.append(
            SolveResult(
                id=f"p{i:05d}", problem=f"problem {i}", solution="s", answer="1", skills=skills,
                niche="" if rng.random() < 0.5 or not skills else "|".join(sorted(skills)),
                k=k, rollouts_used=used, n_correct=correct, solve_rate=rate,
                quality=1.0 - rate if 0.1 <= rate <= 0.9 else 0.0,
                early_stopped=early, correct_rollouts=["r"] * correct, step=rng.randint(0, 9),
            )
        )
    return out


def test_the_streamed_summary_equals_the_list_statistics(tmp_path: Path) -> None:
    rows = _rows(300, 1)
    with ArchiveLog(tmp_path, rows_per_part=64) as log:
        log.extend(rows)
        log.extend(rows[10:40])  # redelivered: counted once
    streamed = summarize_archive(tmp_path)
    listed = run_summary(rows)
    assert streamed.pop("mean_kept_quality") == pytest.approx(listed.pop("mean_kept_quality"))
    assert streamed == listed
    head = stats.summary(rows)
    assert (listed["scored"], listed["kept"], listed["coverage"], listed["coverage_all"]) == (
        head["scored"], head["kept"], head["coverage"], head["coverage_all"],
    )
    assert listed["qd_score"] == head["qd_score"]
    assert listed["coverage_over_steps"] == [list(p) for p in stats.coverage_over_steps(rows)]
    assert listed["sr_histogram"]["counts"] == list(stats.sr_histogram(rows).counts)
    assert listed["best_per_niche"] == stats.best_per_niche(rows)

