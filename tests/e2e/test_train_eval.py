"""Fine-tune the real packaged SmolLM2-135M-Instruct with LoRA on a tiny set, reload it, evaluate it.

On 2 CPU cores this shows the plumbing (the loss falls on a set it can overfit; the merged model
loads in the transformers backend and generates; eval scores held-out GSM8K problems with the
solver's checker), not a gain in accuracy.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sparq_stream.messages import Elite
from sparq_stream.models.base import SamplingParams
from sparq_stream.models.transformers_backend import TransformersBackend
from sparq_stream.training import evaluate, export_training_set, train_sft

pytestmark = pytest.mark.slow

THREADS = 2


@pytest.fixture(scope="module")
def overfit_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight short examples: four problems, two correct rollouts each, exported like the trainer does."""
    elites = []
    for i in range(4):
        a, b = i + 3, i + 2
        problem = f"Tom has {a} apples and buys {b} more. How many apples does he have?"
        rollouts = [f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}", f"He has {a + b} apples. \\boxed{{{a + b}}}"]
        elites.append(
            Elite(id=f"{i:032x}", problem=problem, solution=rollouts[0], answer=str(a + b), k=16, rollouts_used=16,
                  n_correct=8, solve_rate=0.5, quality=0.5, correct_rollouts=rollouts, slot=f"s{i}")
        )  # fmt: skip
    out = tmp_path_factory.mktemp("overfit")
    assert export_training_set(elites, out).examples == 8
    return out


@pytest.fixture(scope="module")
def trained(overfit_set: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One LoRA run shared by the module: 8 examples, batch 4, 2 epochs = 4 steps."""
    out = tmp_path_factory.mktemp("lora") / "run"
    return train_sft(
        overfit_set, None, out, method="lora", epochs=2, lr=1e-3, batch_size=4, max_seq_len=256, seed=0,
        num_threads=THREADS,
    )  # fmt: skip


def test_lora_training_runs_and_the_loss_falls(trained) -> None:  # type: ignore[no-untyped-def]
    assert trained.steps == 4 and trained.examples == 8 and trained.skipped == 0
    assert all(math.isfinite(loss) for loss in trained.losses)
    assert trained.loss_last < trained.loss_first
    print(f"\nLoRA: {trained.steps} steps in {trained.seconds:.1f}s ({trained.steps_per_s:.3f} steps/s), "
          f"loss {trained.loss_first:.3f} -> {trained.loss_last:.3f}")  # fmt: skip


def test_the_merged_model_loads_in_the_backend_generates_and_evaluates(trained, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    backend = TransformersBackend(trained.path, num_threads=THREADS, model_name="student", model_version=1)
    try:
        assert not backend.load_info.converted and backend.load_info.hf_dir == trained.path
        out = backend.generate(
            [[{"role": "user", "content": "Tom has 4 apples and buys 3 more. How many apples does he have?"}]],
            1,
            SamplingParams(temperature=0.0, max_tokens=24),
        )
        assert out[0].ok and out[0].completions[0].text.strip()
        result = evaluate(backend, shared_data / "gsm8k_test.jsonl", limit=2, max_tokens=32, batch_size=2)
    finally:
        backend.close()
    assert result.n == 2 and result.k == 1 and 0.0 <= result.accuracy <= 1.0 and result.errors == 0
    assert (result.model, result.model_version) == ("student", 1)
    assert len(result.details) == 2 and all(len(d["correct"]) == 1 for d in result.details)
    print(f"\neval: accuracy {result.accuracy:.3f} on {result.n} problems, {result.seconds_per_problem:.1f}s/problem")
