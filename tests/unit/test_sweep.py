"""``sparq eval --sweep``: nested slices of the filtered and unfiltered exports, trained and evaluated, with a power-law fit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sparq_stream.ids import problem_id
from sparq_stream.messages import SolveResult
from sparq_stream.qd.archive_log import ArchiveLog
from sparq_stream.training.sweep import fit_power_law
from tests.unit._tiny_lm import make_tiny_lm


def test_power_law_fit_recovers_exponent() -> None:
    fit = fit_power_law([(n, 0.05 * n**0.3) for n in (10, 100, 1000)])
    assert fit is not None and fit["a"] == pytest.approx(0.05) and fit["b"] == pytest.approx(0.3)
    assert fit_power_law([(10, 0.0), (100, 0.2)]) is None  # one usable point
    assert fit_power_law([(10, 0.1), (10, 0.2)]) is None  # no spread in n


def _archive(run: Path) -> None:
    """Twelve scored children: the even ones kept (one correct rollout each), the odd ones solved every time."""
    with ArchiveLog(run / "archive") as log:
        for i in range(12):
            text = f"Ann has {i} pens and buys 2 more. How many pens?"
            kept = i % 2 == 0
            log.append(SolveResult(id=problem_id(text), problem=text, solution=f"{i} + 2 = \\boxed{{{i + 2}}}", answer=str(i + 2),
                                   k=2, rollouts_used=2, n_correct=1 if kept else 2, solve_rate=0.5 if kept else 1.0,
                                   quality=0.5 if kept else 0.0, correct_rollouts=[f"So \\boxed{{{i + 2}}}"] if kept else []))  # fmt: skip


@pytest.mark.slow
def test_the_sweep_command_on_a_small_budget_then_the_report_shows_it(tmp_path: Path) -> None:
    """``sparq eval --sweep`` as a user runs it (a subprocess), then ``sparq report``: sizes, fits and the page."""
    import subprocess
    import sys

    run = tmp_path / "run"
    _archive(run)
    heldout = tmp_path / "gsm8k_test.jsonl"
    heldout.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(3)))
    base = make_tiny_lm(tmp_path / "tiny")
    sweep = subprocess.run(
        [sys.executable, "-m", "sparq_stream.cli", "eval", "--sweep", "--archive", str(run / "archive"), "--heldout", str(heldout),
         "--model", str(base), "--sizes", "2,4,1000", "--max-steps", "1", "--max-seq-len", "2048", "--limit", "2",
         "--max-tokens", "4", "--threads", "1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    printed = json.loads(sweep.stdout.strip().splitlines()[-1])
    # --heldout adds the user's set (here also named gsm8k: scored as gsm8k_2) to the packaged GSM8K test and MATH500
    fits = {f"{kind}/{name}" for kind in ("filtered", "unfiltered") for name in ("gsm8k", "math500", "gsm8k_2")}
    assert printed["sizes"] == [2, 4] and set(printed["power_law"]) == fits
    saved = json.loads((run / "sweep" / "sweep.json").read_text())
    assert saved["available"] == {"filtered": 6, "unfiltered": 12}  # sizes above the smaller set are skipped
    assert [(r["set"], r["examples"], r["gsm8k"]["n"], r["steps"]) for r in saved["runs"]] == [
        ("filtered", 2, 2, 1), ("filtered", 4, 2, 1), ("unfiltered", 2, 2, 1), ("unfiltered", 4, 2, 1)]  # fmt: skip
    assert all(0.0 <= r["gsm8k"]["accuracy"] <= 1.0 and not math.isnan(r["loss_last"]) for r in saved["runs"])
    assert all(r["gsm8k_2"]["n"] == 2 and r["math500"]["n"] == 2 for r in saved["runs"])  # --limit 2 on every set
    small = (run / "sweep" / "filtered-000002" / "data" / "train.jsonl").read_text().splitlines()
    large = (run / "sweep" / "filtered-000004" / "data" / "train.jsonl").read_text().splitlines()
    assert large[:2] == small  # nested slices
    assert (run / "sweep" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = subprocess.run([sys.executable, "-m", "sparq_stream.cli", "report", str(run)], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["sweep"]["sizes"] == [2, 4]
    assert "Data-quantity sweep" in (run / "report.html").read_text()
