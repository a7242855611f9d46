"""Training in the loop with the real tiny model: ``sparq up --train-every 1`` on CPU.

One test runs the cores in process (no broker): the trainer core fine-tunes SmolLM2-135M
(TRL SFTTrainer, LoRA, one step) on a kept problem, evaluates the version on a one-problem
held-out slice and publishes it; a real mutator and a real solver core hot-reload it (a path
outside the models root is refused) and their outputs carry version 1. The other runs the
same through ``sparq up --train-every 1`` on the embedded broker (opt-in, see its skip reason).
This shows the plumbing, not a gain in accuracy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from sparq_stream.core import Inbound
from sparq_stream.cores.mutator import MutatorConfig, MutatorCore
from sparq_stream.cores.solver import SolverConfig, SolverCore
from sparq_stream.cores.trainer import TrainerConfig, TrainerCore
from sparq_stream.ids import problem_id
from sparq_stream.messages import Elite, ModelVersion, NovelCandidate, Seed
from sparq_stream.models.model_root import UntrustedModelPath
from sparq_stream.models.transformers_backend import TransformersBackend
from sparq_stream.orchestrator.up import UpConfig, run_up
from sparq_stream.qd.archive_log import read_archive
from sparq_stream.verify.pool import CheckerPool

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


@pytest.mark.skipif(
    not os.environ.get("SPARQ_E2E_TRAIN_LOOP"),
    reason="the whole `sparq up --train-every` run with the real model takes minutes: set SPARQ_E2E_TRAIN_LOOP=1 "
    "(not yet seen passing: on the shared 2-core machine where it was written it archived nothing in 15 minutes)",
)
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


def test_a_trained_version_is_hot_reloaded_by_the_real_mutator_and_solver_cores(shared_data: Path, tmp_path: Path) -> None:
    """The same path without the broker: trainer core (TRL, LoRA, 1 step) -> ModelVersion -> mutator and solver cores."""
    models = tmp_path / "models"
    heldout = tmp_path / "gsm8k_slice.jsonl"
    heldout.write_text((shared_data / "gsm8k_test.jsonl").read_text().splitlines(keepends=True)[0])
    trainer = TrainerCore(TrainerConfig(
        export_dir=tmp_path / "export", models_dir=models, export_every=1, train_every=1, train_in_background=False,
        train_max_steps=1, train_max_seq_len=192, train_batch_size=2, train_threads=2,
        eval_sets={"gsm8k": heldout}, eval_limit=1, eval_max_tokens=16,
    ))  # fmt: skip
    rollouts = ["3 + 4 = 7. \\boxed{7}", "So \\boxed{7}"]
    elite = Elite(id=problem_id("What is 3 + 4?"), problem="What is 3 + 4?", solution=rollouts[0], answer="7", k=4, rollouts_used=4,
                  n_correct=2, solve_rate=0.5, quality=0.5, correct_rollouts=rollouts, slot="arithmetic")  # fmt: skip
    trainer.on_table(Inbound("elites", elite.slot, elite))
    (published,) = trainer.tick(0.0)
    version = published.message
    assert isinstance(version, ModelVersion) and version.number == 1 and version.metrics["eval_gsm8k_n"] == 1
    assert Path(version.path).is_relative_to(models.resolve())
    outside = version.model_copy(update={"number": 2, "path": str(tmp_path / "elsewhere")})

    mutator = MutatorCore(MutatorConfig(variant="static-uniform", batch_size=2, max_tokens=64, temperature=0.2,
                                        follow_models=True, models_root=str(models)),
                          backend=TransformersBackend(num_threads=2))  # fmt: skip
    for i, (q, a) in enumerate([("What is 2 + 3?", "5"), ("What is 6 - 2?", "4")]):
        mutator.on_table(Inbound("seeds", problem_id(q), Seed(id=problem_id(q), problem=q, answer=a), offset=i))
    with pytest.raises(UntrustedModelPath):
        mutator.on_table(Inbound("models", "student", outside))
    mutator.on_table(Inbound("models", "student", version))
    # the first tick records the step's parents (mutator-state); the next one generates with the new version
    children = [o.message for o in mutator.tick(0.0) + mutator.tick(0.0) if o.topic == "candidates"]
    m = mutator.metrics()
    assert m["reloads"] == 1 and m["model_version"] == 1 and m["models_refused"] == 1
    assert all((c.model, c.model_version) == ("student", 1) for c in children)  # the tiny model may fail the format
    mutator.close()

    with CheckerPool(workers=1, timeout_s=10.0) as pool:
        solver = SolverCore(TransformersBackend(num_threads=2), pool,
                            SolverConfig(k=2, max_tokens=32, follow_models=True, models_root=str(models)))  # fmt: skip
        solver.on_table(Inbound("models", "student", version))
        cand = NovelCandidate(id=problem_id("What is 1 + 1?"), problem="What is 1 + 1?", solution="", answer="2",
                              model="student", model_version=1)  # fmt: skip
        (out,) = solver.handle_batch([Inbound("novel", cand.id, cand)])
        solved = out[0].message
        solver.close()
    assert (solved.solver_model, solved.solver_version, solved.model_version) == ("student", 1, 1)
    assert solver.metrics()["reloads"] == 1
