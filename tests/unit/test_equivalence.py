"""Answer equivalence: a table of GSM8K- and MATH-style cases, normalisation, fast paths."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from sparq_stream.verify import equivalence as eq
from sparq_stream.verify.equivalence import CheckResult, SymbolicTask, answers_equal, prepare
from sparq_stream.verify.normalise import normalise, normalise_answer, parse_number

pytestmark = pytest.mark.timeout(120, method="thread")

T, F = True, False

# (gold, response, equal). Responses are bare answers or whole solution texts.
REQUIRED = [
    ("1/2", "0.5", T),
    ("1/2", "\\frac{1}{2}", T),
    ("1/2", "\\dfrac12", T),
    ("3", "3.0", T),
    ("3", "3.00", T),
    ("5", "\\$5", T),
    ("5", "5 dollars", T),
    ("1000", "1,000", T),
    ("50", "50\\%", T),
    ("4", "x=4", T),
    ("B", "\\text{(B)}", T),
    ("4", "-4", F),
    ("1/2", "2", F),
]

GSM8K = [
    ("72", "#### 72", T),
    (
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72",
        "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips in all.\n#### 72",
        T,
    ),
    ("#### 72", "so 72 clips.\n#### 27", F),
    ("18", "She sells 9 eggs at $2 each, so 9 * 2 = 18.\n\\boxed{18}", T),
    ("18", "\\boxed{\\$18}", T),
    ("18", "\\boxed{18 \\text{ dollars}}", T),
    ("18", "\\boxed{18.00}", T),
    ("18", "\\boxed{19}", F),
    ("1000", "\\boxed{1,000}", T),
    ("1,000", "1000", T),
    ("1000", "\\boxed{1{,}000}", T),
    ("1200000", "\\boxed{1,200,000}", T),
    ("1200000", "\\boxed{1.2 \\times 10^6}", T),
    ("5", "So the answer is 5.", T),
    ("5", "The answer is: $5$", T),
    ("5", "So the final answer is 6.", F),
    ("3", "\\boxed{3}\nWait, I made an error. \\boxed{4}", F),
    ("4", "\\boxed{3}\nWait, I made an error. \\boxed{4}", T),
    ("-4", "\\boxed{-4}", T),
    ("4", "\\boxed{-4}", F),
    ("0.5", "\\boxed{1/2}", T),
    ("12", "\\boxed{12 \\text{ eggs}}", T),
    ("12", "\\boxed{12\\text{eggs}}", T),
    ("20", "\\boxed{20\\%}", T),
    ("20", "\\boxed{20 percent}", T),
    ("25", "\\boxed{x = 25}", T),
    ("10", "$10", T),
    ("7", "\\boxed{7.}", T),
    ("2", "\\boxed{\\frac{4}{2}}", T),
    ("0.25", "\\boxed{25\\%}", T),
    ("3", "\\boxed{\\sqrt{9}}", T),
    ("8", "\\boxed{2^3}", T),
    ("8", "\\boxed{2^4}", F),
    ("100", "\\boxed{99}", F),
    ("36", "He needs 36 square feet of tile.\n#### 36 square feet", T),
    ("2.5", "\\boxed{\\frac{5}{2}}", T),
    ("2.5", "\\boxed{2\\frac{1}{2}}", T),
    ("-3", "\\boxed{-3.0}", T),
    ("60", "\\boxed{60 \\text{ minutes}}", T),
    ("60", "\\boxed{1 \\text{ hour}}", F),
    ("15", "The answer is \\$15.", T),
    ("640", "\\boxed{640}", T),
    ("640", "\\boxed{6400}", F),
    ("0", "\\boxed{0}", T),
    ("0", "\\boxed{-0}", T),
    ("1", "\\boxed{0.999}", F),
    ("7", "#### 7.0", T),
    ("99", "\\boxed{ 99 }", T),
]

# Answers from MATH500 (the packaged sparq_stream/data/heldout/math500_test.jsonl) against written variants.
MATH = [
    ("\\frac{14}{3}", "\\boxed{\\frac{14}{3}}", T),
    ("\\frac{14}{3}", "\\boxed{14/3}", T),
    ("\\frac{14}{3}", "\\boxed{4\\frac{2}{3}}", T),
    ("\\frac{14}{3}", "\\boxed{4.67}", F),
    ("p - q", "\\boxed{-q + p}", T),
    ("p - q", "\\boxed{q - p}", F),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi/2)}", T),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi)}", F),
    ("\\frac{\\sqrt{21}}{5}", "\\boxed{\\sqrt{21}/5}", T),
    ("\\frac{\\sqrt{21}}{5}", "\\boxed{\\frac{21}{5}}", F),
    ("\\sqrt{51}", "\\boxed{\\sqrt{51}}", T),
    ("\\sqrt{51}", "\\boxed{51^{1/2}}", T),
    ("\\sqrt{51}", "\\boxed{\\sqrt{15}}", F),
    ("288 \\pi", "\\boxed{288\\pi}", T),
    ("288 \\pi", "\\boxed{288}", F),
    ("6 - 5i", "\\boxed{6-5i}", T),
    ("6 - 5i", "\\boxed{6+5i}", F),
    ("(-\\sqrt{3}, \\sqrt{3})", "\\boxed{\\left(-\\sqrt 3, \\sqrt3\\right)}", T),
    ("\\text{Evelyn}", "\\boxed{\\text{Evelyn}}", T),
    ("\\text{Evelyn}", "\\boxed{Evelyn}", T),
    ("\\text{Evelyn}", "\\boxed{\\text{Diana}}", F),
    (".35625", "\\boxed{0.35625}", T),
    (".35625", "\\boxed{0.3562}", F),
    (".0000672", "\\boxed{6.72 \\times 10^{-5}}", T),
    ("(6,31,-1)", "\\boxed{(6, 31, -1)}", T),
    ("(6,31,-1)", "\\boxed{(6, -1, 31)}", F),
    ("\\dfrac{17}{50}", "\\boxed{0.34}", T),
    ("\\frac{1}{8}", "\\boxed{0.125}", T),
    ("\\frac{1}{8}", "\\boxed{0.12}", F),
    ("(3,4]", "\\boxed{(3, 4]}", T),
    ("(3,4]", "\\boxed{[3, 4]}", F),
    ("(0,9) \\cup (9,36)", "\\boxed{(0, 9)\\cup(9, 36)}", T),
    ("(-\\infty, 0]", "\\boxed{(-\\infty,0]}", T),
    ("(2,\\infty)", "\\boxed{(2, \\infty)}", T),
    ("(2,\\infty)", "\\boxed{[2, \\infty)}", F),
    ("\\frac{270}7\\text{ degrees}", "\\boxed{\\frac{270}{7}}", T),
    ("864 \\mbox{ inches}^2", "\\boxed{864}", T),
    ("15\\mbox{ cm}^2", "\\boxed{15 \\text{ cm}^2}", T),
    ("\\frac{\\sqrt{3}}{3}", "\\boxed{\\frac{1}{\\sqrt{3}}}", T),
    ("\\frac{\\sqrt{3}}{3}", "\\boxed{\\sqrt{3}}", F),
    ("3\\sqrt{13}", "\\boxed{\\sqrt{117}}", T),
    ("11\\sqrt2", "\\boxed{11\\sqrt{2}}", T),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "\\boxed{x^5-x^4+x^3-x^2+x-1}", T),
    ("x^3+3x-6", "\\boxed{x^3+3x+6}", F),
    ("-\\frac{\\pi}{6}", "\\boxed{-\\pi/6}", T),
    ("-\\frac{\\pi}{6}", "\\boxed{\\pi/6}", F),
    ("\\text{(C)}", "\\boxed{C}", T),
    ("\\text{(C)}", "\\boxed{\\textbf{(C)}}", T),
    ("\\text{(C)}", "\\boxed{(D)}", F),
    ("\\text{(E)}", "The answer is (E).", T),
    ("y = 2x + 3", "\\boxed{y=2x+3}", T),
    ("y = 2x + 3", "\\boxed{y=3x+2}", F),
    ("y = -2x", "\\boxed{y = -2x}", T),
    ("3, 5, 7", "\\boxed{7, 5, 3}", T),
    ("1,-2", "\\boxed{-2, 1}", T),
    ("1,-2", "\\boxed{1, 2}", F),
    ("\\{1\\pm\\sqrt{5},-2\\}", "\\boxed{\\{-2, 1+\\sqrt{5}, 1-\\sqrt{5}\\}}", T),
    ("1 \\pm \\sqrt{19}", "\\boxed{1 \\pm \\sqrt{19}}", T),
    (
        "\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}",
        "\\boxed{\\begin{pmatrix}-2\\\\-14\\\\-7\\end{pmatrix}}",
        T,
    ),
    ("\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}", "\\boxed{\\begin{pmatrix}-2\\\\-14\\\\7\\end{pmatrix}}", F),
    (
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
        "\\boxed{\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}}",
        T,
    ),
    ("11,\\! 111,\\! 111,\\! 100", "\\boxed{11111111100}", T),
    ("11,\\! 111,\\! 111,\\! 100", "\\boxed{11111111000}", F),
    ("\\frac{20000}{\\pi}", "\\boxed{20000/\\pi}", T),
    ("18+2\\pi", "\\boxed{2\\pi + 18}", T),
    ("(a+5)(b+2)", "\\boxed{(b+2)(a+5)}", T),
    ("x^2+2x+1", "\\boxed{(x+1)^2}", T),
    ("\\pi", "\\boxed{\\pi}", T),
    ("\\pi", "\\boxed{3.14}", F),
    ("1+274i", "\\boxed{274i+1}", T),
    ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "\\boxed{(0.6, \\frac{8}{3}]}", T),
    ("90^\\circ", "\\boxed{90}", T),
    ("30^\\circ", "\\boxed{30^{\\circ}}", T),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{1}{2}\\sqrt{3}}", T),
    ("\\frac{1}{3}", "\\boxed{0.333333}", T),
    ("\\frac{1}{3}", "\\boxed{0.33}", F),
    ("2k+2", "\\boxed{2(k+1)}", T),
    ("\\text{east}", "\\boxed{\\text{East}}", T),
    ("\\text{even}", "\\boxed{\\text{odd}}", F),
]

NO_ANSWER = [
    ("5", "I am not sure how to solve this problem, sorry about that.", F),
    ("5", "\\boxed{5", F),
    ("5", "\\boxed{}", F),
]

TABLE = REQUIRED + GSM8K + MATH + NO_ANSWER


def test_table_is_big_and_balanced() -> None:
    assert len(TABLE) >= 100
    assert sum(1 for *_, e in TABLE if e) >= 40
    assert sum(1 for *_, e in TABLE if not e) >= 30


@pytest.mark.parametrize(("gold", "response", "expected"), TABLE)
def test_equivalence_table(gold: str, response: str, expected: bool) -> None:
    result = answers_equal(gold, response, timeout_s=10)
    assert result.equal is expected, result


@pytest.mark.parametrize(
    ("gold", "response", "reason"),
    [
        ("1/2", "0.5", eq.NUMERIC),
        ("72", "Natalia sold 72 clips.\n#### 72", eq.NUMERIC),
        ("B", "\\text{(B)}", eq.CHOICE),
        ("\\sqrt{51}", "\\boxed{\\sqrt{51}}", eq.STRING),
        ("\\text{Evelyn}", "\\boxed{evelyn}", eq.STRING),
        ("p - q", "\\boxed{-q+p}", eq.SYMBOLIC),
        ("5", "\\boxed{5", "unclosed box"),
        ("5", "\\boxed{}", "empty box"),
        ("5", "I cannot solve this problem, it has no answer in my view.", eq.NO_ANSWER),
        ("", "\\boxed{5}", eq.BAD_GOLD),
        ("5", "\\boxed{" + "1" * 2000 + "}", eq.TOO_LONG),
        ("5", "\\boxed{" + "(" * 80 + "1" + ")" * 80 + "}", eq.TOO_DEEP),
        ("5", "\\boxed{\\$}", eq.UNPARSEABLE),
    ],
)
def test_reasons(gold: str, response: str, reason: str) -> None:
    result = answers_equal(gold, response, timeout_s=10)
    assert result.reason == reason
    if reason not in (eq.NUMERIC, eq.CHOICE, eq.STRING, eq.SYMBOLIC):
        assert result.equal is False


def test_extracted_is_the_raw_final_answer() -> None:
    assert answers_equal("18", "so $18.\n\\boxed{\\$18}").extracted == "\\$18"
    assert answers_equal("18", "\\boxed{").extracted is None
    assert answers_equal("5", "\\boxed{" + "1" * 2000 + "}").extracted is None


def test_prepare_keeps_numbers_and_strings_out_of_sympy() -> None:
    assert isinstance(prepare("1,234", "\\boxed{1234.0}"), CheckResult)
    assert isinstance(prepare("\\frac{3}{4}", "0.75"), CheckResult)
    task = prepare("\\frac{\\sqrt{3}}{2}", "\\boxed{\\sqrt3/2}")
    assert isinstance(task, SymbolicTask)
    assert task.extracted == "\\sqrt3/2"
    pct = prepare("0.5", "\\boxed{\\sqrt{2500}\\%}")
    assert isinstance(pct, SymbolicTask) and pct.response == "\\sqrt{2500}\\%"


def test_gold_forms() -> None:
    assert eq.gold_answer("Natalia ... \n#### 72") == "72"
    assert eq.gold_answer("so \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert eq.gold_answer("  \\frac{1}{2} ") == "\\frac{1}{2}"
    assert eq.gold_answer("   ") is None


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("$\\dfrac{1}{2}$", "\\frac{1}{2}"),
        ("\\left( 1, 2 \\right)", "( 1, 2 )"),
        ("\\$1,000", "1000"),
        ("1{,}000", "1000"),
        ("11,\\! 111", "11111"),
        ("x = 4", "4"),
        ("k_1 = 4", "4"),
        ("5 dollars", "5"),
        ("10\\text{ cm}", "10"),
        ("\\text{(B)}", "B"),
        ("(B)", "B"),
        ("90^\\circ", "90"),
        ("50\\%", "50"),
        ("7.", "7"),
        ("288 \\pi", "288 \\pi"),
        ("2 and 3", "2 and 3"),
        ("a = 1, b = 2", "a = 1, b = 2"),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ],
)
def test_normalise_answer(raw: str, normal: str) -> None:
    assert normalise_answer(raw) == normal


def test_percent_flag() -> None:
    assert normalise("50\\%").percent and normalise("50 percent").percent
    assert not normalise("50").percent


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", Fraction(3)),
        ("-3.50", Fraction(-7, 2)),
        (".5", Fraction(1, 2)),
        ("1/4", Fraction(1, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("-\\frac12", Fraction(-1, 2)),
        ("\\frac{-1}{2}", Fraction(-1, 2)),
        ("2\\frac{1}{2}", Fraction(5, 2)),
        ("1/0", None),
        ("\\frac{1}{0}", None),
        ("1e5", None),
        ("x", None),
        ("1" * 500, None),
        ("\\sqrt{2}", None),
    ],
)
def test_parse_number(text: str, value: Fraction | None) -> None:
    assert parse_number(text) == value


def _math500_path() -> Path:
    from sparq_stream.heldout import packaged_paths

    return packaged_paths()[1]  # MATH500 ships with the package: this test always runs


def test_math500_reference_solutions_match_their_answers() -> None:
    rows = [json.loads(line) for line in _math500_path().read_text(encoding="utf-8").splitlines()]
    for row in rows[::5]:
        result = answers_equal(row["answer"], row["solution"], timeout_s=10)
        assert result.equal, (row["unique_id"], result)
    for a, b in zip(rows[:100:2], rows[1:100:2], strict=True):
        if normalise_answer(a["answer"]) != normalise_answer(b["answer"]):
            assert not answers_equal(a["answer"], "\\boxed{" + b["answer"] + "}", timeout_s=10).equal
