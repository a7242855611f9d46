"""The scripted backend: prompt recognition, determinism, order independence, exact solve-rates."""

from __future__ import annotations

import json
import threading
import time

import pytest

from sparq_stream.errors import ConfigError
from sparq_stream.models.base import GenerationBackend, SamplingParams
from sparq_stream.models.scripted import DEFAULT_SKILLS, Script, ScriptedBackend
from sparq_stream.prompts import MUTATION, SKILL_CLASSIFICATION, SKILL_EXTRACTION, SOLVE, load_prompt
from sparq_stream.qd.vocabulary import Vocabulary, build_vocabulary, normalise_skill, parse_skill_answer
from sparq_stream.verify.extract import extract_problem, extract_solution, extract_tag, final_answer

PARAMS = SamplingParams()
PARENT = "Janet's ducks lay 16 eggs per day. She eats three for breakfast. How many are left?"
VOCAB = Vocabulary(("addition", "fraction", "percentage", "ratio", "area", "probability"))


def mutation(problem: str = PARENT) -> list[dict[str, str]]:
    return load_prompt(MUTATION).render(problem=problem, solution="16 - 3 = 13.", answer="13")


def solve(problem: str) -> list[dict[str, str]]:
    return load_prompt(SOLVE).render(problem=problem)


def classify(problem: str, vocab: Vocabulary = VOCAB) -> list[dict[str, str]]:
    return load_prompt(SKILL_CLASSIFICATION).render(problem=problem, skills=vocab.numbered())


def extract(problem: str) -> list[dict[str, str]]:
    return load_prompt(SKILL_EXTRACTION).render(problem=problem)


def boxed(text: str) -> str | None:
    return final_answer(text).value


def test_it_is_a_generation_backend() -> None:
    backend = ScriptedBackend()
    assert isinstance(backend, GenerationBackend)
    assert backend.name == "scripted"


def test_mutation_output_parses_with_the_real_parsers() -> None:
    backend = ScriptedBackend(seed=3)
    result = backend.generate([mutation()], 3, PARAMS)[0]
    assert result.ok and len(result.completions) == 3
    children = set()
    for i, completion in enumerate(result.completions):
        problem = extract_problem(completion.text).value
        solution = extract_solution(completion.text).value
        assert problem and solution
        child = backend.child_for(PARENT, i)
        assert problem == child.problem and boxed(solution) == child.answer == backend.answer_for(problem)
        assert completion.tokens > 0 and completion.finish_reason == "stop"
        children.add(problem)
    assert len(children) == 3
    # the sampling seed shifts the emission index: seed=1 sample 0 is seed=0 sample 1
    shifted = backend.generate([mutation()], 1, SamplingParams(seed=1))[0].completions[0].text
    assert shifted == result.completions[1].text


def test_default_children_of_children_stay_short_and_distinct() -> None:
    backend = ScriptedBackend()
    child = backend.child_for(PARENT, 0).problem
    grandchild = backend.child_for(child, 0).problem
    assert grandchild.count("[variant") == 1
    assert grandchild != child and len(grandchild) < len(child) + 40
    assert grandchild.startswith("Janet's ducks lay")


def test_explicit_children_then_default_or_cycle() -> None:
    script = {
        "problems": {
            PARENT: {"children": [{"problem": "Child A?", "answer": "7"}, {"raw": "no tags at all"}]},
            "Other parent?": {"children": [{"problem": "Child B?", "answer": "x+1"}], "after_children": "cycle"},
        }
    }
    backend = ScriptedBackend(script)
    texts = [c.text for c in backend.generate([mutation()], 3, PARAMS)[0].completions]
    assert extract_problem(texts[0]).value == "Child A?" and boxed(texts[0]) == "7"
    assert texts[1] == "no tags at all" and not extract_problem(texts[1]).ok
    assert "[variant" in extract_problem(texts[2]).value
    cycled = backend.generate([mutation("Other parent?")], 2, PARAMS)[0].completions
    assert [extract_problem(c.text).value for c in cycled] == ["Child B?", "Child B?"]
    # the scripted child's answer is what the solver then holds correct
    assert backend.answer_for("Child A?") == "7"
    assert backend.answer_for("  child  b? ") == "x+1"


def test_same_seed_same_outputs_whatever_the_batch_order() -> None:
    prompts = [mutation(), solve("What is 2+2?"), classify("Area of a square"), extract("A ratio problem"), solve("Q2")]
    first = ScriptedBackend(seed=11).generate(prompts, 4, PARAMS)
    again = ScriptedBackend(seed=11).generate(prompts, 4, PARAMS)
    assert first == again
    backend = ScriptedBackend(seed=11)
    order = [3, 0, 4, 2, 1]
    reordered = backend.generate([prompts[i] for i in order], 4, PARAMS)
    assert [reordered[order.index(i)] for i in range(len(prompts))] == first
    alone = [backend.generate([p], 4, PARAMS)[0] for p in prompts]
    assert alone == first
    other_seed = ScriptedBackend(seed=12).generate(prompts, 4, PARAMS)
    assert other_seed[0] != first[0]


@pytest.mark.parametrize("k", [16, 8, 5])
def test_exact_solve_rates(k: int) -> None:
    rates = {"P zero": 0.0, "P quarter": 0.25, "P half": 0.5, "P most": 0.8125, "P all": 1.0, "P third": 1 / 3}
    script = {"problems": {p: {"solve_rate": sr, "answer": str(i + 10)} for i, (p, sr) in enumerate(rates.items())}}
    backend = ScriptedBackend(script)
    results = backend.generate([solve(p) for p in rates], k, PARAMS)
    for (problem, sr), result in zip(rates.items(), results):
        answers = [boxed(c.text) for c in result.completions]
        assert len(answers) == k and all(a is not None for a in answers)
        correct = [a == backend.answer_for(problem) for a in answers]
        assert sum(correct) == round(sr * k)
        assert correct == backend.correct_samples(problem, k)
        wrong = [int(a) for a, ok in zip(answers, correct) if not ok]
        assert all(w != int(backend.answer_for(problem)) for w in wrong)


def test_default_solve_rates_follow_the_configured_distribution() -> None:
    problems = [f"Problem number {i}" for i in range(200)]
    only = ScriptedBackend({"solve_rates": [0.25]})
    assert {only.solve_rate_for(p) for p in problems} == {0.25}
    weighted = ScriptedBackend({"solve_rates": [0.0, 0.5, 1.0], "solve_rate_weights": [0.0, 1.0, 3.0]})
    drawn = [weighted.solve_rate_for(p) for p in problems]
    assert 0.0 not in drawn
    assert 100 < drawn.count(1.0) < 190  # about 3/4 of them
    results = weighted.generate([solve(p) for p in problems[:20]], 16, PARAMS)
    for problem, result in zip(problems, results):
        hits = sum(boxed(c.text) == weighted.answer_for(problem) for c in result.completions)
        assert hits == round(weighted.solve_rate_for(problem) * 16)


def test_non_integer_answers_get_a_different_wrong_value() -> None:
    backend = ScriptedBackend({"problems": {"Half?": {"answer": r"\frac{1}{2}", "solve_rate": 0.5}}})
    answers = [boxed(c.text) for c in backend.generate([solve("Half?")], 4, PARAMS)[0].completions]
    assert answers.count(r"\frac{1}{2}") == 2
    assert all(a.startswith(r"\frac{1}{2} + ") for a in answers if a != r"\frac{1}{2}")


def test_skill_classification_explicit_and_default() -> None:
    backend = ScriptedBackend({"problems": {"Scripted skills?": {"skills": ["ratio", "area"]}}, "max_skills": 2})
    text = backend.generate([classify("Scripted skills?")], 1, PARAMS)[0].completions[0].text
    assert parse_skill_answer(text, VOCAB) == (["area", "ratio"], "ok")
    sizes = set()
    for i in range(40):
        text = backend.generate([classify(f"Default skills {i}")], 1, PARAMS)[0].completions[0].text
        skills, reason = parse_skill_answer(text, VOCAB)
        assert reason == "ok" and 1 <= len(skills) <= 2
        assert skills == sorted(backend.skills_for(f"Default skills {i}", list(VOCAB)))
        sizes.add(len(skills))
    assert sizes == {1, 2}


def test_skill_extraction_builds_a_vocabulary() -> None:
    assert all(normalise_skill(s) == s for s in DEFAULT_SKILLS)
    backend = ScriptedBackend()
    prompts = [extract(f"Seed problem {i}") for i in range(300)]
    answers = [r.completions[0].text for r in backend.generate(prompts, 1, PARAMS)]
    lists = [extract_tag(a, "skills").value.splitlines() for a in answers]
    assert all(1 <= len(skills) <= 3 for skills in lists)
    vocab = build_vocabulary(lists, m=100)
    assert len(vocab) == 100
    assert vocab.counts[vocab.skills[0]] > vocab.counts[vocab.skills[-1]]  # skewed, like real skills


def test_unrecognised_and_invalid_prompts_are_per_prompt_errors() -> None:
    backend = ScriptedBackend()
    results = backend.generate([[{"role": "user", "content": "hello"}], [], solve("Fine?")], 2, PARAMS)
    assert "unrecognised prompt" in results[0].error
    assert "invalid prompt" in results[1].error
    assert results[2].ok and len(results[2].completions) == 2
    assert backend.counts == {"unrecognised": 1, "invalid": 1, SOLVE: 1}
    with pytest.raises(ConfigError):
        backend.generate([solve("x")], 0, PARAMS)


def test_max_tokens_and_stop_strings_apply() -> None:
    backend = ScriptedBackend()
    cut = backend.generate([solve("Long?")], 1, SamplingParams(max_tokens=5))[0].completions[0]
    assert (cut.tokens, cut.finish_reason, len(cut.text)) == (5, "length", 20)
    stopped = backend.generate([solve("Long?")], 1, SamplingParams(stop=("Step 2",)))[0].completions[0]
    assert "Step 1" in stopped.text and "Step 2" not in stopped.text


def test_latency_knobs_sleep_without_holding_the_gil() -> None:
    backend = ScriptedBackend(latency_per_request_s=0.05, latency_per_token_s=0.0)
    start = time.perf_counter()
    backend.generate([solve(f"Q{i}") for i in range(4)], 1, PARAMS)
    assert time.perf_counter() - start >= 0.2
    threads = [threading.Thread(target=backend.generate, args=([solve(f"Q{i}") for i in range(4)], 1, PARAMS)) for _ in range(4)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.perf_counter() - start < 0.6  # four 0.2 s calls overlap instead of taking 0.8 s
    per_token = ScriptedBackend(latency_per_token_s=0.002)
    start = time.perf_counter()
    tokens = sum(c.tokens for c in per_token.generate([solve("Q")], 2, PARAMS)[0].completions)
    assert time.perf_counter() - start >= 0.002 * tokens


def test_script_from_json_yaml_and_errors(tmp_path) -> None:
    data = {"seed": 5, "problems": {"Q?": {"solve_rate": 0.5, "answer": "3"}}, "solve_rates": [0.5]}
    (tmp_path / "s.json").write_text(json.dumps(data))
    (tmp_path / "s.yaml").write_text("seed: 5\nsolve_rates: [0.5]\nproblems:\n  'Q?': {solve_rate: 0.5, answer: '3'}\n")
    assert Script.from_file(tmp_path / "s.json") == Script.from_file(tmp_path / "s.yaml") == Script.from_dict(data)
    from_path = ScriptedBackend(str(tmp_path / "s.json")).generate([solve("Q?")], 4, PARAMS)
    assert from_path == ScriptedBackend(data).generate([solve("Q?")], 4, PARAMS)
    (tmp_path / "bad.json").write_text("{not json")
    for bad in (
        lambda: Script.from_file(tmp_path / "bad.json"),
        lambda: Script.from_file(tmp_path / "missing.json"),
        lambda: Script.from_dict({"problems": {"Q": {"solve_rate": 1.5}}}),
        lambda: Script.from_dict({"unknown_knob": 1}),
        lambda: Script.from_dict({"problems": {"Q": {"children": [{"problem": "no answer"}]}}}),
        lambda: Script.from_dict({"solve_rates": [0.5], "solve_rate_weights": [1.0, 2.0]}),
    ):
        with pytest.raises(ConfigError):
            bad()


def test_problems_can_be_keyed_by_id() -> None:
    from sparq_stream.ids import problem_id

    backend = ScriptedBackend({"problems": {problem_id("Keyed by id?"): {"answer": "99", "solve_rate": 1.0}}})
    answers = {boxed(c.text) for c in backend.generate([solve("Keyed   by ID?")], 3, PARAMS)[0].completions}
    assert answers == {"99"}
