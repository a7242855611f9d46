"""Smoke run of the whole loop with the real tiny model (SmolLM2-135M from PyPI) on the embedded broker.

The tiny model cannot do arithmetic: this checks that every stage handled messages and
that the outputs are well formed, not their quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparq_stream.messages import SolveResult
from sparq_stream.orchestrator.up import UpConfig, run_up
from sparq_stream.qd.archive_log import read_archive

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

STEPS, BATCH, K = 2, 6, 2


def test_real_tiny_model_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    config = UpConfig(
        seeds=shared_data / "gsm8k_train.jsonl",
        out=tmp_path / "run",
        steps=STEPS,
        batch_size=BATCH,
        k=K,
        max_tokens=256,
        backend="transformers",
        embedder="sentence-transformers",
        seed_limit=100,
        label_seeds=False,
        timeout_s=1500,
        # a low temperature keeps the 135M model closer to the requested tag format
        extra={"mutator": ["--temperature", "0.2"]},
    )
    result = run_up(config)
    assert result.reason == "budget reached", result.reason
    stages = result.summary["stages"]
    generated = stages["mutator.generated"]
    emitted = stages["mutator.emitted"]
    assert generated == STEPS * BATCH
    assert emitted + stages["mutator.parse_failures"] == generated  # every output parsed or counted
    assert emitted > 0, "the tiny model wrote no parseable child: nothing reached the other stages"
    # every candidate was handled by novelty: passed on to the solver, or dropped with a reason
    drops = sum(v for k, v in stages.items() if k.startswith("novelty.dropped_"))
    assert stages["novelty.consumed"] == emitted
    archive = read_archive(tmp_path / "run" / "archive")
    assert len(archive) + drops == emitted
    assert stages["solver.consumed"] == len(archive)
    assert stages["archivist.scored"] == len(archive)
    for row in archive:
        assert isinstance(row, SolveResult)
        assert row.k == K and row.rollouts_used == K and 0 <= row.n_correct <= K
        assert row.solve_rate == row.n_correct / K and len(row.correct_rollouts) == row.n_correct
        assert row.problem and row.answer and row.prompt_hash and row.model.startswith("SmolLM2")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["scored"] == len(archive)
    assert (tmp_path / "run" / "plots" / "sr_histogram.png").stat().st_size > 0
    kept = [r for r in archive if r.quality > 0]
    if kept:  # the trainer exports kept problems x correct rollouts
        rows = (tmp_path / "run" / "export" / "train.jsonl").read_text().splitlines()
        assert len(rows) == sum(len(r.correct_rollouts) for r in kept)
    else:
        assert summary["export"]["examples"] == 0
