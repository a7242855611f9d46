"""Skill vocabulary building (skill-extraction prompt over the seeds) and skill classification."""

from __future__ import annotations

import json
from typing import Sequence

import pytest

from sparq_stream.errors import ConfigError, FatalError
from sparq_stream.ids import problem_id
from sparq_stream.messages import Seed
from sparq_stream.models.base import GenerationResult, Prompt, SamplingParams
from sparq_stream.models.scripted import ScriptedBackend
from sparq_stream.qd.vocabulary import Vocabulary, normalise_skill
from sparq_stream.skills import (
    annotate_seeds,
    build_skill_vocabulary,
    classify_skills,
    extract_skills,
    label_seeds,
    load_vocabulary,
    parse_extracted_skills,
)

QUESTIONS = [f"Question number {i}: what is {i} plus {i + 1}?" for i in range(12)]


def seed_file(tmp_path, questions: Sequence[str] = QUESTIONS):
    path = tmp_path / "seeds.jsonl"
    lines = [json.dumps({"question": q, "answer": f"work #### {i}"}) for i, q in enumerate(questions)]
    path.write_text("\n".join(lines + ["{broken"]) + "\n")
    return path


def scripted_skills(mapping: dict[str, list[str]]) -> ScriptedBackend:
    return ScriptedBackend({"problems": {q: {"skills": s} for q, s in mapping.items()}})


def test_parse_extracted_skills() -> None:
    assert parse_extracted_skills("<skills>\n1. Linear equations\n- fractions.\n</skills>") == ["Linear equations", "fractions"]
    assert parse_extracted_skills("ratios, percentages; area of a triangle, more, and more") == [
        "ratios",
        "percentages",
        "area of a triangle",
    ]
    assert parse_extracted_skills("<skills>\nalgebra\n") == ["algebra"]  # unclosed tag (cut off by max_tokens)
    assert parse_extracted_skills("x" * 100) == []
    assert parse_extracted_skills(None) == []  # type: ignore[arg-type]


def test_build_counts_each_skill_once_per_seed_and_keeps_the_top_m(tmp_path) -> None:
    mapping = {q: ["Fractions", "ratios"] for q in QUESTIONS[:6]}
    mapping.update({q: ["Percentages", "fraction"] for q in QUESTIONS[6:10]})
    mapping.update({QUESTIONS[10]: ["area"], QUESTIONS[11]: ["area", "Area"]})
    out = tmp_path / "vocab.json"
    vocab = build_skill_vocabulary(seed_file(tmp_path), scripted_skills(mapping), m=3, out=out)
    assert vocab.skills == ("fraction", "ratio", "percentage")
    assert [vocab.counts[s] for s in vocab.skills] == [10, 6, 4]
    assert Vocabulary.load(out) == vocab


def test_build_samples_deterministically(tmp_path) -> None:
    path = seed_file(tmp_path)
    backend = ScriptedBackend()
    a = build_skill_vocabulary(path, backend, m=50, limit=5, seed=1)
    b = build_skill_vocabulary(path, backend, m=50, limit=5, seed=1)
    assert a == b
    assert backend.counts["skill_extraction"] == 10
    full = build_skill_vocabulary(path, backend, m=50)
    assert sum(full.counts.values()) >= sum(a.counts.values())
    with pytest.raises(ConfigError):
        build_skill_vocabulary(path, backend, limit=0)


def test_build_from_a_backend_name_and_progress(tmp_path) -> None:
    seen: list[tuple[int, int]] = []
    vocab = build_skill_vocabulary(seed_file(tmp_path), "scripted", m=100, batch_size=5, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(5, 12), (10, 12), (12, 12)]
    assert 1 <= len(vocab) <= 100 and all(normalise_skill(s) == s for s in vocab)


class FailingBackend(ScriptedBackend):
    def __init__(self, fail_every: int) -> None:
        super().__init__()
        self.fail_every = fail_every

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[GenerationResult]:
        results = super().generate(prompts, n, params)
        return [GenerationResult(error="timeout") if i % self.fail_every == 0 else r for i, r in enumerate(results)]


def test_failed_generations_are_skipped_and_all_failing_is_an_error(tmp_path) -> None:
    assert extract_skills(QUESTIONS[:4], FailingBackend(2), batch_size=4)[0::2] == [None, None]
    vocab = build_skill_vocabulary(seed_file(tmp_path), FailingBackend(2), m=100, batch_size=4)
    assert len(vocab) >= 1
    with pytest.raises(FatalError, match="no skill"):
        build_skill_vocabulary(seed_file(tmp_path), FailingBackend(1), m=100)
    with pytest.raises(ConfigError, match="no usable seed"):
        empty = tmp_path / "empty.jsonl"
        empty.write_text("\n")
        build_skill_vocabulary(empty, ScriptedBackend())


def test_classify_over_the_vocabulary() -> None:
    vocab = Vocabulary(("fraction", "ratio", "area", "percentage"))
    backend = scripted_skills({QUESTIONS[0]: ["Ratio", "area"], QUESTIONS[1]: ["juggling"], QUESTIONS[2]: ["4"]})
    a, b, c = classify_skills(QUESTIONS[:3], backend, vocab, batch_size=2)
    assert (a.skills, a.ok) == (["area", "ratio"], True)
    assert b.skills == [] and b.ok and "no known skill" in b.reason
    assert c.skills == ["percentage"]  # list numbers are accepted
    failed = classify_skills(QUESTIONS[:2], FailingBackend(2), vocab)
    assert (failed[0].ok, failed[0].error, failed[1].ok) == (False, "timeout", True)
    with pytest.raises(ConfigError):
        classify_skills(QUESTIONS[:1], backend, Vocabulary(()))


def test_annotate_seeds() -> None:
    seeds = [Seed(id=problem_id(q), problem=q, answer="1") for q in QUESTIONS[:2]]
    vocab = Vocabulary(("fraction", "ratio"))
    annotated = annotate_seeds(seeds, scripted_skills({QUESTIONS[0]: ["ratio"], QUESTIONS[1]: ["fraction", "ratio"]}), vocab)
    assert [s.skills for s in annotated] == [["ratio"], ["fraction", "ratio"]]
    assert [s.id for s in annotated] == [s.id for s in seeds]


def test_label_seeds_builds_the_named_backend_with_the_saved_vocabulary(tmp_path) -> None:
    seeds = [Seed(id=problem_id(q), problem=q, answer="1") for q in QUESTIONS[:2]]
    Vocabulary(("fraction", "ratio")).save(tmp_path / "vocab.json")
    script = {"problems": {QUESTIONS[0]: {"skills": ["ratio"]}, QUESTIONS[1]: {"skills": ["fraction", "geometry"]}}}
    labelled = label_seeds(seeds, "scripted", backend_options={"script": script}, vocabulary=tmp_path / "vocab.json")
    assert [s.skills for s in labelled] == [["ratio"], ["fraction"]]  # geometry is not in the saved vocabulary
    assert [s.skills for s in seeds] == [[], []]  # the seeds given are left as they were


def test_the_packaged_fallback_vocabulary() -> None:
    vocab = load_vocabulary()
    assert len(vocab) == 100 and all(normalise_skill(s) == s and "|" not in s for s in vocab)
    assert vocab.counts and set(vocab.counts.values()) == {0}  # hand-written: no counts from any seed set
    assert load_vocabulary("") == vocab
    import importlib.resources

    raw = json.loads(importlib.resources.files("sparq_stream").joinpath("data/default_skills.json").read_text())
    assert raw["source"] == "hand-written" and "FALLBACK" in raw["note"] and "sparq skills build" in raw["note"]
    with pytest.raises(ConfigError):
        load_vocabulary("/no/such/vocabulary.json")
