"""Parsers of model output: tags, the last box, `#### n`, "answer is", final_answer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparq_stream.verify import extract as ex
from sparq_stream.verify.extract import (
    Parsed,
    answer_is,
    extract_problem,
    extract_solution,
    extract_tag,
    final_answer,
    gsm8k_answer,
    last_boxed,
)

MUTATOR_OUTPUT = """Here is a harder variant.
<problem>
A train travels 60 km in 45 minutes. What is its speed in km/h?
</problem>
<solution>
45 minutes is 3/4 of an hour, so the speed is 60 / (3/4) = 80 km/h.
\\boxed{80}
</solution>"""


def test_problem_and_solution_tags() -> None:
    assert extract_problem(MUTATOR_OUTPUT) == Parsed("A train travels 60 km in 45 minutes. What is its speed in km/h?")
    solution = extract_solution(MUTATOR_OUTPUT)
    assert solution.ok and solution.value is not None
    assert solution.value.startswith("45 minutes") and solution.value.endswith("\\boxed{80}")
    assert last_boxed(solution.value).value == "80"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no tags at all", Parsed(None, ex.MISSING_TAG)),
        ("<problem>cut off by max tokens", Parsed(None, ex.UNCLOSED_TAG)),
        ("<problem>   </problem>", Parsed(None, ex.EMPTY_TAG)),
        ("</problem> stray close only", Parsed(None, ex.MISSING_TAG)),
        ("<PROBLEM>Upper case</PROBLEM>", Parsed("Upper case")),
        ("< problem >spaced</ problem >", Parsed("spaced")),
        ("<problem>[your problem]</problem> then <problem>the real one</problem>", Parsed("the real one")),
        ("<problem>done</problem> and <problem>restarted but cut", Parsed("done")),
    ],
)
def test_extract_problem_cases(text: str, expected: Parsed) -> None:
    assert extract_problem(text) == expected


def test_extract_tag_generic_and_bad_names() -> None:
    assert extract_tag("<hint>use symmetry</hint>", "hint") == Parsed("use symmetry")
    assert extract_tag("<a.b>x</a.b>", "a.b") == Parsed(None, ex.BAD_TAG)
    assert extract_tag("<x>y</x>", "") == Parsed(None, ex.BAD_TAG)
    assert extract_tag(None, "problem") == Parsed(None, ex.NOT_TEXT)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{42}.", Parsed("42")),
        ("first \\boxed{1} then \\boxed{2}", Parsed("2")),
        ("\\boxed{\\frac{1}{2}}", Parsed("\\frac{1}{2}")),
        ("\\boxed{\\left(3, \\frac{\\pi}{2}\\right)}", Parsed("\\left(3, \\frac{\\pi}{2}\\right)")),
        ("\\boxed{\\{1, 2\\}}", Parsed("\\{1, 2\\}")),
        ("\\boxed {7}", Parsed("7")),
        ("\\fbox{9}", Parsed("9")),
        ("\\boxed{1} and later \\fbox{3}", Parsed("3")),
        ("$\\boxed 5$.", Parsed("5")),
        ("\\boxed 12.", Parsed("12")),
        ("\\boxed{5", Parsed(None, ex.UNCLOSED_BOX)),
        ("\\boxed{\\frac{1}{2}", Parsed(None, ex.UNCLOSED_BOX)),
        ("\\boxed{}", Parsed(None, ex.EMPTY_BOX)),
        ("\\boxed{   }", Parsed(None, ex.EMPTY_BOX)),
        ("\\boxed", Parsed(None, ex.EMPTY_BOX)),
        ("nothing boxed here", Parsed(None, ex.NO_BOX)),
        ("\\boxedanswer{3} is not a box", Parsed(None, ex.NO_BOX)),
        ("\\boxed{2} \\boxedanswer{3}", Parsed("2")),
        ("\\boxed{a}}} extra closers", Parsed("a")),
    ],
)
def test_last_boxed(text: str, expected: Parsed) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She sold 48+24 = 72 clips.\n#### 72", Parsed("72")),
        ("#### 1,000\n", Parsed("1,000")),
        ("#### -3.5.", Parsed("-3.5")),
        ("#### 5\nmore text\n#### 6", Parsed("6")),
        ("####   \n", Parsed(None, ex.EMPTY_HASHES)),
        ("no hashes", Parsed(None, ex.NO_HASHES)),
    ],
)
def test_gsm8k_answer(text: str, expected: Parsed) -> None:
    assert gsm8k_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So the answer is 18.", "18"),
        ("The final answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("Answer: 7", "7"),
        ("the answer is (1, 2), as required", "(1, 2)"),
        ("The answer is 5, which is odd.", "5"),
        ("The answer is 3.5 exactly", "3.5 exactly"),
    ],
)
def test_answer_is(text: str, expected: str) -> None:
    assert answer_is(text).value == expected


@pytest.mark.parametrize(
    ("text", "value", "method"),
    [
        ("work... \\boxed{12}\n#### 11", "12", "boxed"),
        ("work...\n#### 11", "11", "####"),
        ("work... so the answer is 10.", "10", "answer is"),
        ("42", "42", "whole"),
        ("$\\frac{3}{4}$", "\\frac{3}{4}", "whole"),
        ("\\text{(B)}", "\\text{(B)}", "whole"),
        ("5 dollars", "5 dollars", "whole"),
    ],
)
def test_final_answer_methods(text: str, value: str, method: str) -> None:
    found = final_answer(text)
    assert (found.value, found.method, found.reason) == (value, method, None)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("She had some apples and then she ate a few of them over the week.", ex.NO_ANSWER),
        ("work... \\boxed{12", ex.UNCLOSED_BOX),
        ("work... \\boxed{}", ex.EMPTY_BOX),
        ("work...\n####", ex.EMPTY_HASHES),
        ("", ex.NO_ANSWER),
        ("line one\nline two", ex.NO_ANSWER),
    ],
)
def test_final_answer_failures(text: str, reason: str) -> None:
    found = final_answer(text)
    assert found.value is None and found.method is None and found.reason == reason
    assert not found.ok


def test_non_str_inputs_do_not_raise() -> None:
    for fn in (last_boxed, gsm8k_answer, answer_is, extract_problem):
        assert fn(b"\\boxed{1}").reason == ex.NOT_TEXT  # type: ignore[arg-type]
    assert final_answer(None).reason == ex.NOT_TEXT  # type: ignore[arg-type]


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("\\boxed{}#<>/problemsanwer$ 0123\n")), max_size=200) | st.text())
def test_parsers_never_raise(text: str) -> None:
    for fn in (last_boxed, gsm8k_answer, answer_is, extract_problem, extract_solution):
        result = fn(text)
        assert (result.value is None) == (result.reason is not None)
    found = final_answer(text)
    assert (found.value is None) == (found.method is None)
