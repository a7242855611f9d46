"""Training in the loop with the real tiny model: ``sparq up --train-every 1`` on CPU.

The trainer fine-tunes SmolLM2-135M (TRL SFTTrainer, LoRA, two optimiser steps) on the first
kept problems, evaluates the version on a two-problem held-out slice, and publishes it; the
mutator and the solver hot-reload it without a restart, and the run stops once a solved record
carries the new version on both sides. This shows the plumbing, not a gain in accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sparq_stream.orchestrator.up import UpConfig, run_up
from sparq_stream.qd.archive_log import read_archive

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1800)]

# Problems easy enough that the 135M model solves some of its own children some of the time.
EASY = [("What is 2 + 3?", "5"), ("What is 4 + 4?", "8"), ("What is 10 - 3?", "7"), ("What is 3 + 3?", "6"),
        ("What is 6 - 2?", "4"), ("What is 1 + 8?", "9"), ("What is 5 + 5?", "10"), ("What is 9 - 4?", "5")]  # fmt: skip


def _both_use_a_new_version(out: Path) -> bool:
    try:
        rows = read_archive(out / "archive")
    except Exception:  # noqa: BLE001 - a part being written; look again on the next tick
        return False
    return any(r.model_version >= 1 and r.solver_version >= 1 for r in rows)


def test_up_trains_publishes_and_both_sides_reload(shared_data: Path, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"question": q, "answer": f"#### {a}"}) + "\n" for q, a in EASY))
    heldout = tmp_path / "gsm8k_slice.jsonl"
    heldout.write_text("".join((shared_data / "gsm8k_test.jsonl").read_text().splitlines(keepends=True)[:2]))
    out = tmp_path / "run"
    ticks = {"n": 0}

    def stop_when_reloaded(_supervisor: Any, _monitor: Any) -> None:
        ticks["n"] += 1
        if ticks["n"] % 6 == 0 and _both_use_a_new_version(out):
            raise KeyboardInterrupt  # run_up stops every service cleanly and writes the outputs

    config = UpConfig(
        seeds=seeds, out=out, steps=40, batch_size=4, k=4, max_tokens=256, backend="transformers", embedder="hash",
        label_seeds=False, contamination=[], timeout_s=1500, train_every=1,
        extra={
            "mutator": ["--temperature", "0.2"],
            "trainer": ["--train-max-steps", "2", "--train-max-seq-len", "160", "--train-batch-size", "2",
                        "--eval-sets", json.dumps({"gsm8k": str(heldout)}), "--eval-limit", "2", "--eval-max-tokens", "24"],
        },
    )  # fmt: skip
    result = run_up(config, on_tick=stop_when_reloaded)
    assert result.reason == "interrupted", f"no solved record used a new version on both sides ({result.reason})"
    rows = read_archive(out / "archive")
    both = [r for r in rows if r.model_version >= 1 and r.solver_version >= 1]
    assert both and all(r.solver_model == "student" for r in both)
    version_dir = out / "models" / "student-v0001"
    trained = json.loads((version_dir / "train_result.json").read_text())
    assert trained["steps"] == 2 and trained["settings"]["trainer"].startswith("trl.SFTTrainer")
    assert (version_dir / "adapter" / "adapter_config.json").is_file()  # LoRA by default
    scored = json.loads((version_dir / "eval.json").read_text())
    assert scored["gsm8k"]["n"] == 2 and 0.0 <= scored["gsm8k"]["accuracy"] <= 1.0
    stages = result.summary["stages"]
    assert stages["mutator.reloads"] >= 1 and stages["solver-0.reloads"] >= 1 or stages.get("solver.reloads", 0) >= 1
    summary = json.loads((out / "summary.json").read_text())
    assert [v["version"] for v in summary["model_versions"]][:1] == [1]
    assert summary["model_versions"][0]["eval"]["gsm8k"]["n"] == 2
