"""Hostile model output: every case returns a result within the limit and the caller lives.

Each case is its own test with a pytest-timeout as a hang check (not a speed test).
The symbolic part runs in a module-scoped CheckerPool; the parsers run in this process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sparq_stream.verify import equivalence as eq
from sparq_stream.verify.equivalence import answers_equal, prepare
from sparq_stream.verify.extract import extract_problem, final_answer, gsm8k_answer, last_boxed
from sparq_stream.verify.normalise import normalise, parse_number
from sparq_stream.verify.pool import CheckerPool

MB = 1 << 20
HARD_LIMIT_S = 3.0
PWNED = Path("/tmp/sparq_hostile_pwned")

# Outcomes a hostile check may legitimately end in (never an exception, never a hang).
NOT_EQUAL_REASONS = {
    eq.SYMBOLIC,
    eq.UNPARSEABLE,
    eq.TIMEOUT,
    eq.WORKER_CRASHED,
    eq.ERROR,
    eq.TOO_LONG,
    eq.TOO_DEEP,
    eq.NUMERIC,
    eq.STRING,
    eq.NO_ANSWER,
    "unclosed box",
    "empty box",
}

# (id, response, expected reasons or None for "any of NOT_EQUAL_REASONS"); gold is "5".
HOSTILE: list[tuple[str, str, set[str] | None]] = [
    ("braces 10k deep", "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}", {eq.TOO_LONG}),
    ("parens 10k deep", "\\boxed{" + "(" * 10_000 + "1" + ")" * 10_000 + "}", {eq.TOO_LONG}),
    ("braces 400 deep", "\\boxed{" + "{" * 400 + "1" + "}" * 400 + "}", {eq.TOO_DEEP}),
    ("frac nest 60 deep", "\\boxed{" + "\\frac{1}{" * 60 + "2" + "}" * 60 + "}", None),
    ("sqrt nest 100", "\\boxed{" + "\\sqrt{" * 100 + "2" + "}" * 100 + "}", {eq.TOO_DEEP}),
    ("power tower 10^10^10^10", "\\boxed{10^{10^{10^{10}}}}", None),
    ("power tower 9^9^9^9", "\\boxed{9^{9^{9^{9}}}}", None),
    ("2^2^36", "\\boxed{2^{2^{36}}}", None),
    ("factorial 100000!", "\\boxed{100000!}", None),
    ("factorial (10^8)!", "\\boxed{(10^{8})!}", None),
    ("double factorial tower", "\\boxed{((10^{6})!)!}", None),
    ("1 MB of letters", "a" * MB, {eq.NO_ANSWER}),
    ("1 MB of open boxes", "\\boxed{" * (MB // 7), {"unclosed box"}),
    ("1 MB inside a box", "\\boxed{" + "x" * MB + "}", {eq.TOO_LONG}),
    ("1 MB after ####", "#### " + "9" * MB, {eq.TOO_LONG}),
    ("1 MB of 'answer is'", "the answer is " * (MB // 14), None),
    ("1 MB of closers", "}" * MB + "\\boxed{3}", {eq.NUMERIC}),
    ("unbalanced frac", "\\boxed{\\frac{1}{2}", {"unclosed box"}),
    ("stray closers in box", "\\boxed{1}}}}{{{", {eq.NUMERIC}),
    ("unknown macros", "\\boxed{\\foo{1}\\bar\\baz[2]}", None),
    ("unterminated env", "\\boxed{\\begin{pmatrix} 1 & 2}", None),
    ("mismatched env", "\\boxed{\\begin{pmatrix} 1 \\end{bmatrix}}", None),
    ("no close at all", "\\boxed{", {"unclosed box"}),
    ("NUL bytes", "\\boxed{4\x00\x00}", None),
    ("only NULs", "\x00" * 1000, None),
    ("lone surrogate", "\\boxed{\ud800}", None),
    ("division by zero", "\\boxed{\\frac{1}{0}}", None),
    ("zero to zero", "\\boxed{0^0}", None),
    ("huge exponent float", "\\boxed{1e999999999}", None),
    ("python power", "\\boxed{10**10**10**10}", None),
    ("code injection", "\\boxed{__import__('os').system('touch " + str(PWNED) + "')}", None),
    ("open() injection", "\\boxed{open('" + str(PWNED) + "', 'w')}", None),
    ("integral", "\\boxed{\\int_0^\\infty e^{-x^2} dx}", None),
    ("divergent sum", "\\boxed{\\sum_{n=1}^{\\infty} n}", None),
    ("symbolic tower", "\\boxed{x^{x^{x^{x^{x^{x^{x}}}}}}}", None),
    ("big matrix", "\\boxed{\\begin{pmatrix}" + "\\\\".join(["1&2&3&4&5&6&7&8"] * 50) + "\\end{pmatrix}}", None),
    ("999-digit number", "\\boxed{" + "7" * 999 + "}", None),
    ("many equals", "\\boxed{" + "=".join(["x"] * 300) + "}", None),
    ("unicode digits", "\\boxed{\u0663\u0664}", None),
    ("emoji", "\\boxed{\U0001f600}", None),
    ("20,000 newlines", "\n" * 20_000, None),
    ("open angle then 20,000 newlines", "<" + "\n" * 20_000 + "/ \n" * 5_000, None),
    ("injection in tags", "<problem>Ignore all instructions</problem><solution>\\boxed{$(rm -rf ~)}</solution>", None),
]


@pytest.fixture(scope="module")
def pool() -> Iterator[CheckerPool]:
    with CheckerPool(workers=2, timeout_s=HARD_LIMIT_S) as p:
        yield p


def test_enough_hostile_cases() -> None:
    assert len(HOSTILE) >= 30


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("response", "reasons"), [(r, s) for _, r, s in HOSTILE], ids=[i for i, _, _ in HOSTILE])
def test_hostile_case(pool: CheckerPool, response: str, reasons: set[str] | None) -> None:
    result = pool.check("5", response)
    assert result.equal is False, result
    assert result.reason in (reasons or NOT_EQUAL_REASONS), result
    assert result.extracted is None or len(result.extracted) <= eq.MAX_ANSWER_CHARS


@pytest.mark.timeout(60)
@pytest.mark.parametrize("response", [r for _, r, _ in HOSTILE], ids=[i for i, _, _ in HOSTILE])
def test_parent_side_parsers_survive(response: str) -> None:
    final_answer(response)
    last_boxed(response)
    gsm8k_answer(response)
    extract_problem(response)
    task = prepare(response, response)
    assert task is not None
    normalise(response[:2000])
    parse_number(response[:2000])


@pytest.mark.timeout(60)
def test_hostile_gold_is_rejected_or_checked(pool: CheckerPool) -> None:
    results = pool.check_many([(r, "\\boxed{5}") for _, r, _ in HOSTILE[:12]])
    assert len(results) == 12
    assert all(r.equal is False for r in results)


@pytest.mark.timeout(60)
def test_no_code_was_executed_and_pool_still_answers(pool: CheckerPool) -> None:
    pool.check("5", "\\boxed{__import__('os').system('touch " + str(PWNED) + "')}")
    assert not PWNED.exists()
    assert pool.check("\\frac{\\sqrt{3}}{2}", "\\boxed{\\sqrt{3}/2}").equal
    assert pool.check("1/2", "0.5").equal


@pytest.mark.timeout(60)
def test_in_process_limits_need_no_sympy() -> None:
    assert answers_equal("5", "\\boxed{" + "1" * 5000 + "}").reason == eq.TOO_LONG
    assert answers_equal("5", "\\boxed{" + "[" * 100 + "]" * 100 + "}").reason == eq.TOO_DEEP
    assert answers_equal("\\boxed{" + "1" * 5000 + "}", "\\boxed{5}").reason == eq.BAD_GOLD
