"""Training in the loop with the real tiny model: ``sparq up --train-every 1`` on CPU.

One test runs ``sparq up --train-every 1 --steps 3`` on the embedded broker to its natural end:
the trainer fine-tunes SmolLM2-135M (TRL SFTTrainer, LoRA, two steps) on the first kept
problems, evaluates the version on GSM8K and MATH500 slices and publishes it; the mutator and
the solver hot-reload it (the mutator runs past its budget until a child of the newest version
is scored), and the output folder holds the evaluation, the audit and contamination counts and
report.html. The other runs the cores in process (no broker): a real mutator and a real solver
core hot-reload a trained version (a path outside the models root is refused) and their
outputs carry version 1. This shows the plumbing, not a gain in accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

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

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(3600)]

# Problems easy enough that the 135M model solves some of its own children some of the time.
EASY = [("What is 2 + 3?", "5"), ("What is 4 + 4?", "8"), ("What is 10 - 3?", "7"), ("What is 3 + 3?", "6"),
        ("What is 6 - 2?", "4"), ("What is 1 + 8?", "9"), ("What is 5 + 5?", "10"), ("What is 9 - 4?", "5")]  # fmt: skip


def test_up_trains_publishes_and_both_sides_reload(shared_data: Path, tmp_path: Path) -> None:
    """``sparq up --train-every 1 --steps 3`` to its natural end: version 1 generated and solved children in the run."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"question": q, "answer": f"{q.removeprefix('What is ').rstrip('?')} = {a}\n#### {a}"}) + "\n"
                             for q, a in EASY))  # fmt: skip
    out = tmp_path / "run"
    config = UpConfig(
        seeds=seeds, out=out, steps=3, batch_size=8, k=4, max_tokens=96, backend="transformers", embedder="hash",
        label_seeds=False, timeout_s=3000, train_every=1,
        extra={
            "novelty": ["--no-classify"],  # the skill classifier is one more CPU-heavy model call per candidate
            # a step of the 135M model yields 1-2 scored children, ~1 in 4 kept (most outputs do not parse, are not
            # novel or are never solved): up to 13 steps past the budget until a version is trained and has a scored
            # child, so that chance does not fail the test (docs/benchmarks.md has the runs)
            "mutator": ["--new-model-steps", "13"],
            "solver": ["--audit-max-tokens", "32", "--temperature", "1.0"],
            # the 135M model's problems are nearly all flagged by the audit: train on them anyway (plumbing)
            "trainer": ["--include-flagged", "--train-max-steps", "2", "--train-max-seq-len", "160", "--train-batch-size", "2",
                        "--eval-limit", "2", "--eval-max-tokens", "32"],
        },
    )  # fmt: skip
    result = run_up(config)
    assert (result.reason, result.exit_code) == ("budget reached", 0), result.detail
    rows = read_archive(out / "archive")
    summary = json.loads((out / "summary.json").read_text())
    both = [r for r in rows if r.model_version >= 1 and r.solver_version >= 1]
    assert both, (f"no solved record used a new version on both sides: {[(r.model_version, r.solver_version) for r in rows]}; "
                  f"versions {summary.get('model_versions')}; stages {summary.get('stages')}")  # fmt: skip
    assert all(r.model == r.solver_model == "student" for r in both)
    version_dir = out / "models" / "student-v0001"
    trained = json.loads((version_dir / "train_result.json").read_text())
    assert trained["steps"] == 2 and trained["settings"]["trainer"].startswith("trl.SFTTrainer")
    assert (version_dir / "adapter" / "adapter_config.json").is_file()  # LoRA by default
    base, first = summary["model_versions"][:2]  # version 0 is the base model, scored at the start
    assert base["version"] == 0 and base["base"] and {base["eval"]["gsm8k"]["n"], base["eval"]["math500"]["n"]} == {2}
    assert first["version"] == 1 and {first["eval"]["gsm8k"]["n"], first["eval"]["math500"]["n"]} == {2}
    assert set(first["delta_vs_base"]) == {"gsm8k", "math500"}  # each version shows its change against version 0
    assert 0.0 <= first["eval"]["gsm8k"]["accuracy"] <= 1.0 and 0.0 <= first["eval"]["math500"]["accuracy"] <= 1.0
    in_use = summary["models_in_use"]
    assert set(in_use) == {"mutator", "solver-0"} and min(in_use.values()) >= 1  # both ended on a trained version
    assert sum(v["children_generated"] for v in summary["model_versions"]) >= 1
    assert sum(v["children_solved"] for v in summary["model_versions"]) >= 1
    assert summary["stages"]["mutator.reloads"] >= 1 and summary["stages"]["solver.reloads"] >= 1
    assert summary["audit"]["kept"] >= 1 and summary["audit"]["not_audited_kept"] == 0  # every kept problem audited
    assert set(summary["contamination"]) >= {"contamination", "contamination_ngram", "prompt_example"}
    page = (out / "report.html").read_text()
    assert "Model versions" in page and "pass@1 gsm8k" in page and "Validity audit" in page


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
