"""Fine-tuning and evaluation plumbing on a tiny random Llama (fast); the real SmolLM2 runs are in tests/e2e."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sparq_stream.errors import ConfigError, FatalError
from sparq_stream.messages import Elite
from sparq_stream.models.base import SamplingParams
from sparq_stream.models.scripted import ScriptedBackend
from sparq_stream.training import TrainingCancelled, evaluate, export_training_set, load_heldout, train_sft
from sparq_stream.training.sft import ADAPTER_SUBDIR, MODEL_SUBDIR, RESULT_NAME, encode_example, load_chats
from tests._scores import scores
from tests.unit._tiny_lm import InProcessChecker, make_tiny_lm


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("tiny-lm") / "base")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight examples (four problems x two correct rollouts) exported like the trainer does."""
    elites = []
    for i in range(4):
        problem = f"Ann has {i + 3} pens and gets {i + 2} more. How many pens?"
        answer = str(2 * i + 5)
        rollouts = [f"{i + 3} + {i + 2} = {answer}. \\boxed{{{answer}}}", f"So \\boxed{{{answer}}}"]
        elites.append(
            Elite(id=f"{i:032x}", problem=problem, solution=rollouts[0], answer=answer, **scores(0.5, k=4),
                  correct_rollouts=rollouts, slot=f"s{i}")
        )  # fmt: skip
    out = tmp_path_factory.mktemp("export")
    assert export_training_set(elites, out).examples == 8
    return out


def _weights(folder: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_encode_example_masks_the_prompt_and_keeps_the_end_token(tiny_lm: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_lm))
    chat = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "\\boxed{4}"}]
    ids, labels = encode_example(tokenizer, chat, max_seq_len=512)  # type: ignore[misc]
    prompt_text = tokenizer.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    prompt_len = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert len(ids) == len(labels) and labels[:prompt_len] == [-100] * prompt_len
    assert tokenizer.decode([t for t in labels if t != -100]) == "\\boxed{4}<|im_end|>\n"
    assert ids[prompt_len:] == labels[prompt_len:]
    short = encode_example(tokenizer, chat, max_seq_len=prompt_len + 3)
    assert short is not None and len(short[0]) == prompt_len + 3
    assert encode_example(tokenizer, chat, max_seq_len=prompt_len) is None  # the prompt alone fills it


def test_lora_overfits_a_tiny_set_and_saves_a_merged_model(tiny_lm: Path, dataset: Path, tmp_path: Path) -> None:
    from sparq_stream.models.transformers_backend import TransformersBackend

    result = train_sft(dataset, tiny_lm, tmp_path / "run", method="lora", epochs=6, lr=1e-2, batch_size=4, seed=0)
    assert result.steps == 12 and result.examples == 8 and result.tokens > 0
    assert all(math.isfinite(x) for x in result.losses) and len(result.losses) == 12
    assert result.loss_last < result.loss_first  # LoRA on the attention of a random model moves the loss a little
    assert result.path == tmp_path / "run" / MODEL_SUBDIR and result.adapter_path == tmp_path / "run" / ADAPTER_SUBDIR
    assert (result.adapter_path / "adapter_config.json").is_file()
    saved = json.loads((tmp_path / "run" / RESULT_NAME).read_text())
    assert saved["losses"] == result.losses and saved["settings"]["lr"] == 1e-2
    assert saved["settings"]["trainer"].startswith("trl.SFTTrainer ")  # a maintained trainer, not a hand loop
    before, after = _weights(tiny_lm), _weights(result.path)
    assert set(before) == set(after)  # merged: a plain model, no adapter weights left
    changed = [k for k in before if not before[k].equal(after[k])]  # type: ignore[attr-defined]
    assert changed and all(any(p in k for p in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed)
    backend = TransformersBackend(result.path)
    out = backend.generate([[{"role": "user", "content": "hi"}]], 2, SamplingParams(max_tokens=4, seed=0))
    assert out[0].ok and len(out[0].completions) == 2
    backend.close()


def test_full_fine_tuning_respects_max_steps_and_is_deterministic(tiny_lm: Path, dataset: Path, tmp_path: Path) -> None:
    runs = [
        train_sft(dataset, tiny_lm, tmp_path / name, method="full", epochs=5, lr=1e-2, batch_size=3, max_steps=4, seed=7)
        for name in ("a", "b")
    ]
    assert [r.steps for r in runs] == [4, 4] and runs[0].losses == runs[1].losses
    assert runs[0].loss_last < runs[0].loss_first * 0.9
    assert runs[0].adapter_path is None and not (tmp_path / "a" / ADAPTER_SUBDIR).exists()
    before, after = _weights(tiny_lm), _weights(runs[0].path)
    assert all(not before[k].equal(after[k]) for k in before if "layers.0.mlp" in k)  # type: ignore[attr-defined]


def test_bf16_autocast_trains_with_finite_falling_loss(tiny_lm: Path, dataset: Path, tmp_path: Path) -> None:
    result = train_sft(dataset, tiny_lm, tmp_path / "bf16", method="full", epochs=4, lr=1e-2, batch_size=4, bf16=True)
    assert result.steps == 8 and all(math.isfinite(x) for x in result.losses) and result.loss_last < result.loss_first
    assert json.loads((tmp_path / "bf16" / RESULT_NAME).read_text())["settings"]["bf16"] is True


def test_bad_settings_and_outputs_are_refused(tiny_lm: Path, dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="method"):
        train_sft(dataset, tiny_lm, tmp_path / "x", method="qlora")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch_size"):
        train_sft(dataset, tiny_lm, tmp_path / "x", batch_size=0)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        train_sft(dataset, tiny_lm, full)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ConfigError, match="no examples"):
        train_sft(tmp_path / "empty.jsonl", tiny_lm, tmp_path / "y")
    with pytest.raises(ConfigError, match="max_seq_len"):
        train_sft(dataset, tiny_lm, tmp_path / "z", max_seq_len=16)
    assert (full / "keep.txt").read_text() == "x" and not (tmp_path / "y").exists()


def test_overwrite_replaces_a_previous_run(tiny_lm: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = train_sft(dataset, tiny_lm, out, max_steps=1, overwrite=True)
    assert result.steps == 1 and not (out / "old.txt").exists() and (out / MODEL_SUBDIR / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary folder left


def test_should_stop_cancels_without_saving(tiny_lm: Path, dataset: Path, tmp_path: Path) -> None:
    calls = iter([False, False, True])
    with pytest.raises(TrainingCancelled, match="after 2 of"):
        train_sft(dataset, tiny_lm, tmp_path / "run", epochs=3, batch_size=2, should_stop=lambda: next(calls))
    assert not (tmp_path / "run").exists()


def test_load_chats_accepts_problem_and_response_rows(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "response": "\\boxed{2}"}) + "\n")
    chats = load_chats(path)
    assert chats[0][-1] == {"role": "assistant", "content": "\\boxed{2}"} and "1+1?" in chats[0][-2]["content"]
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    with pytest.raises(ConfigError, match="assistant"):
        load_chats(path)


# ---------------------------------------------------------------------------------------- evaluate


def _heldout(tmp_path: Path, n: int = 6) -> Path:
    lines = [json.dumps({"question": f"Question {i}: how many?", "answer": f"work\n#### {10 + i}"}) for i in range(n)]
    lines.insert(2, "not json")  # an unusable line is skipped
    path = tmp_path / "heldout.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_scores_with_the_solve_prompt_and_the_checker(tmp_path: Path) -> None:
    heldout = _heldout(tmp_path)
    problems = {f"Question {i}: how many?": {"answer": str(10 + i), "solve_rate": 1.0 if i < 2 else 0.0} for i in range(6)}
    problems["Question 2: how many?"] = {"answer": "12", "solve_rate": 0.5}
    backend = ScriptedBackend({"problems": problems})
    result = evaluate(backend, heldout, limit=4, k=1, checker=InProcessChecker(), out_path=tmp_path / "eval.jsonl")
    assert (result.n, result.k) == (4, 1) and 0.0 <= result.accuracy <= 1.0
    assert [d["id"] for d in result.details] == [p.id for p in load_heldout(heldout, 4)]
    assert result.accuracy == pytest.approx(sum(d["correct"][0] for d in result.details) / 4)
    assert result.details[0]["correct"] == [True] and result.details[3]["correct"] == [False]
    assert backend.counts == {"solve": 4}
    lines = (tmp_path / "eval.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["summary"]["n"] == 4 and len(lines) == 5

    sampled = evaluate(backend, heldout, limit=4, k=4, checker=InProcessChecker())
    assert [sum(d["correct"]) for d in sampled.details] == [4, 4, 2, 0]
    assert sampled.accuracy == pytest.approx(10 / 16) and sampled.pass_at_k == pytest.approx(3 / 4)
    assert sampled.correct_samples == 10 and sampled.no_answer == 0


def test_evaluate_offset(tmp_path: Path) -> None:
    heldout = _heldout(tmp_path)
    backend = ScriptedBackend({"problems": {"Question 5: how many?": {"answer": "15", "solve_rate": 1.0}}})
    result = evaluate(backend, heldout, limit=10, offset=4, checker=InProcessChecker())
    assert result.n == 2 and [d["correct"] for d in result.details] == [[False], [True]] and result.accuracy == 0.5


def test_the_default_checker_starts_a_sandbox_only_for_symbolic_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sparq_stream.verify import pool as pool_module

    path = tmp_path / "math.jsonl"
    rows = [{"problem": "Count them.", "answer": "7"}, {"problem": "Expand it.", "solution": "", "answer": "x^2+1"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    backend = ScriptedBackend(
        {"problems": {"Count them.": {"answer": "7", "solve_rate": 1.0}, "Expand it.": {"answer": "1+x^2", "solve_rate": 1.0}}}
    )
    started: list[object] = []
    real_pool = pool_module.CheckerPool

    def counting_pool(*args: object, **kwargs: object) -> object:
        pool = real_pool(*args, **kwargs)  # type: ignore[arg-type]
        started.append(pool)
        return pool

    monkeypatch.setattr(pool_module, "CheckerPool", counting_pool)
    numeric = evaluate(backend, path, limit=1)
    assert numeric.accuracy == 1.0 and started == []  # plain numbers never need the sandbox
    both = evaluate(backend, path)
    assert [d["correct"] for d in both.details] == [[True], [True]] and len(started) == 1
    assert started[0].stats()["symbolic"] == 1  # type: ignore[attr-defined]
    with pytest.raises(FatalError, match="closed"):  # evaluate closed the pool it started
        started[0].check("1", "1")  # type: ignore[attr-defined]


def test_evaluate_loads_a_model_folder(tiny_lm: Path, tmp_path: Path) -> None:
    result = evaluate(str(tiny_lm), _heldout(tmp_path), limit=3, max_tokens=6, checker=InProcessChecker())
    assert result.n == 3 and 0.0 <= result.accuracy <= 1.0 and result.errors == 0 and result.seconds > 0
    assert result.no_answer == 3  # six random bytes never hold a \boxed{} answer


def test_evaluate_rejects_bad_arguments(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    with pytest.raises(ConfigError, match="k must be"):
        evaluate(backend, _heldout(tmp_path), k=0)
    with pytest.raises(ConfigError, match="does not exist"):
        evaluate(backend, tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text("nothing usable\n")
    with pytest.raises(ConfigError, match="no usable"):
        evaluate(backend, tmp_path / "bad.jsonl")
