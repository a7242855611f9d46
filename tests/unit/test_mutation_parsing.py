"""Parsing mutation outputs: the strict tag format, and the lenient forms small models write."""

from __future__ import annotations

import pytest

from sparq_stream.cores.mutator import parse_child

STRICT = "<problem>\nA has 3 apples.\n</problem>\n<solution>\n3 + 0 = 3. \\boxed{3}\n</solution>"


def test_strict_format_parses_either_way() -> None:
    expected = (("A has 3 apples.", "3 + 0 = 3. \\boxed{3}", "3"), None)
    assert parse_child(STRICT) == expected
    assert parse_child(STRICT, lenient=True) == expected


@pytest.mark.parametrize(
    "text, problem, answer",
    [
        ("<problem>\nBetty saves 100.\n<solution>\nShe has 50. \\boxed{50}", "Betty saves 100.", "50"),
        ("<problem>\nBetty saves 100.\n</problem>\n<solution>\nSo the answer is 50.", "Betty saves 100.", "50"),
        ("Problem:\nHow many legs do 3 cats have?\n\nSolution:\n3 * 4 = 12\nFinal answer: 12", "How many legs do 3 cats have?", "12"),
        ("**New problem:** Find x if 2x = 8.\n**Solution:** x = 4, \\boxed{4}", "Find x if 2x = 8.", "4"),
    ],
)
def test_lenient_forms(text: str, problem: str, answer: str) -> None:
    parsed, reason = parse_child(text, lenient=True)
    assert reason is None and parsed is not None
    assert parsed[0] == problem and parsed[2] == answer
    assert parsed[1].endswith(f"\\boxed{{{answer}}}")  # the stored solution always ends in the box
    strict, strict_reason = parse_child(text)
    assert strict is None and strict_reason


@pytest.mark.parametrize(
    "text",
    ["", "just some words", "<problem>only a problem</problem>", "Problem: x\nSolution: no answer stated here", "<solution>\\boxed{1}</solution>"],
)
def test_unparseable_outputs_give_a_reason_not_an_exception(text: str) -> None:
    parsed, reason = parse_child(text, lenient=True)
    assert parsed is None and isinstance(reason, str) and reason
