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


# ---------------------------------------------------------------------- heritable skills (skill_model="inherit")

SMALL = ("addition", "area", "average", "counting", "division", "fraction", "percentage", "probability", "ratio", "subtraction")


def _inherit(**extra) -> ScriptedBackend:
    return ScriptedBackend({"seed": 4, "skill_model": "inherit", "skill_vocabulary": list(SMALL), **extra})


def _edit_distance(a: list[str], b: list[str]) -> tuple[int, int]:
    """(skills removed, skills added) from a to b."""
    return len(set(a) - set(b)), len(set(b) - set(a))


def test_inherit_children_carry_their_parents_skills_with_at_most_one_change() -> None:
    from sparq_stream.models.scripted import parse_skill_marker

    backend = _inherit()
    parent_skills = backend.inherited_skills_for(PARENT)
    assert 1 <= len(parent_skills) <= 3 and set(parent_skills) <= set(SMALL)
    assert parse_skill_marker(PARENT) is None  # a seed has no marker: its skills are drawn by hash
    ops = set()
    for i in range(60):
        child = backend.child_for(PARENT, i).problem
        marked = parse_skill_marker(child)
        assert marked == backend.drifted_skills(PARENT, i) == backend.inherited_skills_for(child)
        assert child.count("[skills:") == 1 and 1 <= len(marked) <= 3 and set(marked) <= set(SMALL)
        removed, added = _edit_distance(parent_skills, marked)
        assert (removed, added) in {(0, 0), (1, 1), (0, 1), (1, 0)}
        ops.add((removed, added))
    assert len(ops) >= 3  # keep, replace and add or drop all happen with the default drift


def test_inherit_grandchildren_keep_one_marker_and_a_bounded_text() -> None:
    backend = _inherit()
    text = PARENT
    lengths = []
    for generation in range(6):
        child = backend.child_for(text, generation).problem
        removed, added = _edit_distance(backend.inherited_skills_for(text), backend.inherited_skills_for(child))
        assert removed <= 1 and added <= 1
        assert child.count("[skills:") == 1 and child.count("[variant") == 1
        assert child.startswith("Janet's ducks lay")
        lengths.append(len(child))
        text = child
    assert max(lengths) - min(lengths) < 60  # no marker pile-up over generations


def test_the_classifier_recovers_the_inherited_skills_from_the_text_alone() -> None:
    from sparq_stream.skills import classify_skills

    writer = _inherit()
    children = [writer.child_for(PARENT, i).problem for i in range(12)]
    grandchildren = [writer.child_for(c, 3).problem for c in children]
    other_process = _inherit()  # a second instance, as in the novelty service: it sees only the text
    vocab = Vocabulary(SMALL)
    answers = classify_skills([PARENT, *children, *grandchildren], other_process, vocab)
    for problem, answer in zip([PARENT, *children, *grandchildren], answers):
        assert answer.ok and answer.skills == sorted(writer.inherited_skills_for(problem))


def test_inherit_answers_only_offered_skills_and_falls_back_to_the_hash_rule() -> None:
    backend = _inherit(seed=3, drift={"replace": 0.0, "add": 0.0, "drop": 0.0})
    child = backend.child_for(PARENT, 0).problem
    inherited = backend.inherited_skills_for(child)
    assert inherited == backend.inherited_skills_for(PARENT)  # no drift: the parent's set
    assert backend.skills_for(child, list(SMALL)) == inherited
    assert len(inherited) == 2  # this parent's seed skills (fixed by the script's seed)
    offered = [s for s in SMALL if s != inherited[0]]
    assert backend.skills_for(child, offered) == inherited[1:]
    unrelated = ["logic", "matrix", "vector", "symmetry"]
    fallback = backend.skills_for(child, unrelated)
    assert fallback and set(fallback) <= set(unrelated)
    assert fallback == ScriptedBackend({"seed": 3}).skills_for(child, unrelated)  # the hash rule, exactly
    # case and spacing of the offered names do not matter; the offered spelling is answered
    assert backend.skills_for(child, [s.upper() for s in SMALL]) == [s.upper() for s in inherited]


@pytest.mark.parametrize(
    ("drift", "check"),
    [
        ({"replace": 1.0, "add": 0.0, "drop": 0.0}, lambda r, a, p, c: (r, a) == (1, 1) and len(c) == len(p)),
        ({"replace": 0.0, "add": 1.0, "drop": 0.0}, lambda r, a, p, c: (r, a) == ((0, 1) if len(p) < 3 else (1, 1))),
        ({"replace": 0.0, "add": 0.0, "drop": 1.0}, lambda r, a, p, c: (r, a) == ((1, 0) if len(p) > 1 else (1, 1))),
        ({"replace": 0.0, "add": 0.0, "drop": 0.0}, lambda r, a, p, c: (r, a) == (0, 0)),
    ],
)
def test_each_drift_operation(drift: dict, check) -> None:
    backend = _inherit(drift=drift)
    parents = [PARENT] + [backend.child_for(PARENT, i).problem for i in range(8)]
    for parent in parents:
        before = backend.inherited_skills_for(parent)
        for i in range(5):
            after = backend.drifted_skills(parent, i)
            removed, added = _edit_distance(before, after)
            assert check(removed, added, before, after), (before, after)
            assert len(after) == len(set(after)) and 1 <= len(after) <= 3


def test_a_marker_does_not_change_answers_or_solve_rates() -> None:
    backend = _inherit()
    result = backend.generate([mutation()], 4, PARAMS)[0]
    for i, completion in enumerate(result.completions):
        problem = extract_problem(completion.text).value
        assert "[skills:" in problem and problem == backend.child_for(PARENT, i).problem
        solution_answer = boxed(extract_solution(completion.text).value)
        # the solver holds the answer the mutation wrote, and exactly round(sr * n) rollouts find it
        assert solution_answer == backend.answer_for(problem)
        rollouts = backend.generate([solve(problem)], 16, PARAMS)[0].completions
        hits = sum(boxed(c.text) == solution_answer for c in rollouts)
        assert hits == round(backend.solve_rate_for(problem) * 16)
    # answers and solve-rates are drawn from the whole text the same way in both skill models
    marked = backend.child_for(PARENT, 0).problem
    plain = ScriptedBackend({"seed": 4, "skill_vocabulary": list(SMALL)})
    assert backend.answer_for(marked) == plain.answer_for(marked)
    assert backend.solve_rate_for(marked) == plain.solve_rate_for(marked)
    # a scripted entry keyed by a marked text still applies
    scripted = _inherit(problems={marked: {"answer": "41", "solve_rate": 0.25, "skills": ["ratio"]}})
    assert scripted.answer_for(marked) == "41" and scripted.solve_rate_for(marked) == 0.25
    assert scripted.skills_for(marked, list(SMALL)) == ["ratio"]


def test_hash_model_is_unchanged_and_ignores_markers() -> None:
    backend = ScriptedBackend({"seed": 4, "skill_vocabulary": list(SMALL)})
    child = backend.child_for(PARENT, 0).problem
    assert "[skills:" not in child
    answers = [backend.skills_for(f"Problem {i} about tiles. [skills: area; ratio] [variant 000000-0]", list(SMALL)) for i in range(20)]
    assert sum(a == ["area", "ratio"] for a in answers) < 5  # the marker is just text: the hash rule answers
    assert len({len(a) for a in answers}) > 1


def problem_id_of(text: str) -> str:
    from sparq_stream.ids import problem_id

    return problem_id(text)


def test_inherit_siblings_are_not_near_duplicates_for_the_novelty_filter() -> None:
    import numpy as np

    from sparq_stream.models.hashing_embedder import HashingEmbedder

    backend = _inherit(drift={"replace": 0.0, "add": 0.0, "drop": 0.0})  # every sibling has the same marker
    siblings = [backend.child_for(PARENT, i).problem for i in range(30)]
    assert len({problem_id_of(s) for s in siblings}) == 30
    vectors = HashingEmbedder(seed=4).embed(siblings)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, 0.0)
    assert sims.max() < 0.95  # the novelty core's default near-duplicate threshold


def test_inherit_script_validation() -> None:
    with pytest.raises(ConfigError):
        Script.from_dict({"skill_model": "inherit", "skill_vocabulary": ["ratio", "a; b"]})
    with pytest.raises(ConfigError):
        Script.from_dict({"skill_model": "inherit", "drift": {"replace": 0.6, "add": 0.3, "drop": 0.2}})
    with pytest.raises(ConfigError):
        Script.from_dict({"skill_model": "genetic"})
    with pytest.raises(ConfigError):
        Script.from_dict({"drift": {"swap": 0.1}})
    assert Script.from_dict({"skill_model": "hash", "skill_vocabulary": ["a; b"]}).skill_model == "hash"
    # the registry options path: a dict script travels as JSON through backend_options
    backend = ScriptedBackend(json.loads(json.dumps({"skill_model": "inherit", "skill_vocabulary": list(SMALL)})))
    assert backend.script.skill_model == "inherit"
