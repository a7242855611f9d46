"""Lineage end to end: a scripted run's exports name their solved records, and `sparq export --verify` checks them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from sparq_stream.orchestrator.up import UpConfig, run_up
from sparq_stream.training.export import JSONL_NAME, MANIFEST_NAME, read_examples
from tests.broker._util import sparq

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.e2e]


def _verify(target: Path, bootstrap: str) -> tuple[int, list[dict], dict]:
    """Run `sparq export --verify TARGET`; return the exit code, the broken rows and the summary line."""
    done = sparq("export", "--verify", str(target), "--bootstrap", bootstrap, timeout=240)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout + done.stderr
    return done.returncode, lines[:-1], lines[-1]


def test_a_runs_exports_verify_and_a_doctored_row_is_reported(tansu_bootstrap: str, shared_data: Path, tmp_path: Path) -> None:
    prefix = "lin" + uuid.uuid4().hex[:8]
    run = tmp_path / "run"
    config = UpConfig(
        seeds=shared_data / "gsm8k_train.jsonl", out=run, steps=3, batch_size=8, k=4, backend="scripted", embedder="hash",
        variant="qd", seed_limit=40, seed=7, timeout_s=240, bootstrap=tansu_bootstrap, prefix=prefix,
    )  # fmt: skip
    assert run_up(config).reason == "budget reached"

    # the trainer's export (the elites): every row names the run and its solved record
    trainer_rows = read_examples(run / "export")
    assert trainer_rows, "the scripted run kept nothing to export"
    assert all(r["run"] == prefix and r["solved_topic"] == f"{prefix}.solved" and r["solved_offset"] >= 0 for r in trainer_rows)
    assert json.loads((run / "export" / MANIFEST_NAME).read_text())["lineage"]["without_solved_record"] == 0

    # `sparq export --archive` takes the run from run.json; --verify then reads the run's topics
    out = tmp_path / "export"
    done = sparq("export", "--archive", str(run / "archive"), "--out", str(out), "--verify", "--bootstrap", tansu_bootstrap, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    archive_rows = read_examples(out)
    assert summary["rows"] == len(archive_rows) >= len(trainer_rows) and summary["broken"] == 0 and summary["runs"] == [prefix]
    assert all(r["run"] == prefix and r["solved_partition"] >= 0 for r in archive_rows)
    assert summary["records"][f"{prefix}.solved"] > 0 and summary["records"][f"{prefix}.candidates"] > 0

    code, broken, summary = _verify(run / "export", tansu_bootstrap)
    assert (code, broken, summary["broken"], summary["rows"]) == (0, [], 0, len(trainer_rows))

    # one doctored row (its solved offset moved) is reported, by id and link; the others still pass
    lines = (out / JSONL_NAME).read_text().splitlines()
    first = json.loads(lines[0])
    first["solved_offset"] += 10_000
    doctored = tmp_path / "doctored.jsonl"
    doctored.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    code, broken, summary = _verify(doctored, tansu_bootstrap)
    assert code == 1 and summary["broken"] == 1 and summary["by_link"] == {"solved": 1}
    assert [(b["id"], set(b["broken"])) for b in broken] == [(first["id"], {"solved"})]
    assert "no record" in broken[0]["broken"]["solved"]
