"""``sparq eval --sweep``: nested slices of the filtered and unfiltered exports, trained and evaluated, with a power-law fit."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest

from sparq_stream.ids import problem_id
from sparq_stream.messages import SolveResult
from sparq_stream.orchestrator.report import write_report
from sparq_stream.qd.archive_log import ArchiveLog
from sparq_stream.training import evaluate
from sparq_stream.training.sweep import fit_power_law, run_sweep
from tests.unit._tiny_lm import InProcessChecker, make_tiny_lm


def test_power_law_fit_recovers_exponent() -> None:
    fit = fit_power_law([(n, 0.05 * n**0.3) for n in (10, 100, 1000)])
    assert fit is not None and fit["a"] == pytest.approx(0.05) and fit["b"] == pytest.approx(0.3)
    assert fit_power_law([(10, 0.0), (100, 0.2)]) is None  # one usable point
    assert fit_power_law([(10, 0.1), (10, 0.2)]) is None  # no spread in n


@pytest.mark.slow
def test_a_small_sweep_on_a_tiny_model(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with ArchiveLog(run / "archive") as log:
        for i in range(12):
            text = f"Ann has {i} pens and buys 2 more. How many pens?"
            kept = i % 2 == 0
            log.append(SolveResult(id=problem_id(text), problem=text, solution=f"{i} + 2 = \\boxed{{{i + 2}}}", answer=str(i + 2),
                                   k=2, rollouts_used=2, n_correct=1 if kept else 2, solve_rate=0.5 if kept else 1.0,
                                   quality=0.5 if kept else 0.0, correct_rollouts=[f"So \\boxed{{{i + 2}}}"] if kept else []))  # fmt: skip
    heldout = tmp_path / "gsm8k_test.jsonl"
    heldout.write_text("".join(json.dumps({"problem": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(3)))
    base = make_tiny_lm(tmp_path / "tiny")
    report = run_sweep(run / "archive", run / "sweep", {"gsm8k": heldout}, [2, 4, 100], base_model=str(base),
                       train_kwargs={"max_steps": 1, "max_seq_len": 2048}, eval_limit=2, eval_max_tokens=4,
                       eval_fn=functools.partial(evaluate, checker=InProcessChecker()))  # fmt: skip
    assert report["sizes"] == [2, 4] and report["available"] == {"filtered": 6, "unfiltered": 12}
    assert [(r["set"], r["examples"]) for r in report["runs"]] == [("filtered", 2), ("filtered", 4), ("unfiltered", 2), ("unfiltered", 4)]
    assert all(r["gsm8k"]["n"] == 2 and 0.0 <= r["gsm8k"]["accuracy"] <= 1.0 and r["steps"] == 1 for r in report["runs"])
    small = (run / "sweep" / "filtered-000002" / "data" / "train.jsonl").read_text().splitlines()
    large = (run / "sweep" / "filtered-000004" / "data" / "train.jsonl").read_text().splitlines()
    assert large[:2] == small  # nested slices
    assert (run / "sweep" / "sweep.png").stat().st_size > 0
    summary = write_report(run, {}, reason="report", prefix="p")
    assert summary["sweep"]["sizes"] == [2, 4] and "Data-quantity sweep" in (run / "report.html").read_text()
    assert not math.isnan(report["runs"][0]["loss_last"])
