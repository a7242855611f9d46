"""A labelled set of valid and broken problems for measuring the validity audit (tests and bench/audit_quality.py).

Each case is a scored problem as the solver sees it (text, reference answer, correct rollouts,
the wrong rollouts' answers) with a label: broken or not, and why. Some cases are there to
keep the measurement honest: a broken problem no check can see (an under-determined problem
whose rollouts scatter) and a valid one the majority check wrongly flags (a consistent wrong
solver).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from sparq_stream.qd.audit import AuditItem

__all__ = ["CASES", "LabelledCase", "precision_recall"]


@dataclass(frozen=True)
class LabelledCase:
    """One labelled problem: the audit input, whether it is broken, and the kind of breakage ('' if valid)."""

    item: AuditItem
    broken: bool
    kind: str = ""


def _case(problem: str, answer: str, n_correct: int, wrong: Sequence[str | None], kind: str = "") -> LabelledCase:
    return LabelledCase(AuditItem(problem, answer, n_correct, tuple(wrong)), broken=bool(kind), kind=kind)


CASES: tuple[LabelledCase, ...] = (
    # valid problems
    _case("Ann has 3 pens and buys 4 more. How many pens does she have?", "7", 2, ["8", "6"]),
    _case("A train travels 120 km in 2 hours. What is its average speed in km per hour?", "60", 2, ["120", "240"]),
    _case("Find x if 2x + 3 = 11.", "4", 3, ["7"]),
    _case("Tom buys 5 apples at 2 dollars each. How much does he pay in dollars?", "10", 1, ["7", "12", None]),
    _case("What is $\\frac{1}{2} + \\frac{1}{3}$?", "\\frac{5}{6}", 2, ["\\frac{2}{5}", "1"]),
    _case("A box holds 12 eggs. How many eggs are in 5 boxes?", "60", 3, ["17"]),
    _case("Compute the sum of the first 10 positive integers.", "55", 2, ["45", "50"]),
    _case("Sara reads 15 pages a day. How many days does she need for a 90-page book?", "6", 1, ["5", "7", "75"]),
    _case("How many minutes are there in 3 hours?", "180", 3, ["360"]),
    _case("Evaluate $3^4 - 2^5$.", "49", 1, ["48", "50", "113"]),
    _case("A shirt costs 40 dollars and is sold at 25% off. What is the sale price in dollars?", "30", 2, ["10", "35"]),
    # a valid problem whose solver is consistently wrong: the majority check flags it (a false positive)
    _case("A clock shows 3:15. What is the angle in degrees between the hands?", "7.5", 1, ["0", "0", "0"]),
    # broken: the problem states its own answer
    _case("The answer is 42. What is 6 times 7?", "42", 3, ["48"], "answer_in_problem"),
    _case("Tom has \\boxed{12} apples. How many apples does Tom have?", "12", 3, ["13"], "answer_in_problem"),
    _case("Compute 17 * 3 = 51. What is 17 * 3?", "51", 3, ["41"], "answer_in_problem"),
    _case("A shop sold 1250 shirts in May. How many shirts did the shop sell in May?", "1250", 3, ["1205"], "answer_in_problem"),
    # broken: the reference answer is not a value
    _case("Tom has 4 apples and eats 1. How many are left?", "the number of apples Tom has left at the end", 1, ["3", "3"], "answer_malformed"),
    _case("What is 2 + 2?", "", 0, ["4", "4", "4"], "answer_malformed"),
    _case("Solve for y: 3y = 9.", "{3", 1, ["3", "2"], "answer_malformed"),
    # broken: a wrong reference answer (the solver agrees on another value)
    _case("What is 12 + 15?", "26", 1, ["27", "27", "27"], "wrong_answer"),
    _case("How many sides do 3 triangles have in total?", "6", 1, ["9", "9"], "wrong_answer"),
    # broken: not self-contained (nothing is asked)
    _case("Tom has some apples and gives some of them to Ann. Then Ann has apples.", "5", 1, ["3", "4"], "not_self_contained"),
    _case("A car drives at a constant speed for a while.", "60", 1, ["30", "45"], "not_self_contained"),
    # broken but invisible to every check: under-determined, and the rollouts scatter
    _case("A rectangle has an area of 24. What is its perimeter?", "20", 1, ["22", "28", "14"], "under_determined"),
)


def precision_recall(cases: Sequence[LabelledCase], flagged: Sequence[bool]) -> dict[str, float]:
    """Precision and recall of 'flagged' against 'broken', with the counts behind them."""
    tp = sum(1 for c, f in zip(cases, flagged) if f and c.broken)
    fp = sum(1 for c, f in zip(cases, flagged) if f and not c.broken)
    fn = sum(1 for c, f in zip(cases, flagged) if not f and c.broken)
    return {
        "cases": float(len(cases)),
        "broken": float(sum(c.broken for c in cases)),
        "true_positives": float(tp),
        "false_positives": float(fp),
        "false_negatives": float(fn),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
    }
