"""Answer equivalence: extract, normalise, decide cheaply, else compare symbolically.

:func:`prepare` does everything that is safe in the calling process (extraction, length
and nesting limits, normalisation, plain-number and string comparison) and either returns
a final :class:`CheckResult` or a :class:`SymbolicTask` for a sandboxed worker.
:func:`answers_equal` runs the whole check in-process: use it for trusted text or inside
a worker; for model output use :class:`sparq_stream.verify.pool.CheckerPool`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sparq_stream.verify.extract import final_answer, gsm8k_answer, last_boxed
from sparq_stream.verify.normalise import NormalAnswer, nesting_depth, normalise, numbers_equal

__all__ = [
    "CheckResult",
    "SymbolicTask",
    "prepare",
    "answers_equal",
    "gold_answer",
    "MAX_ANSWER_CHARS",
    "MAX_NESTING",
    "NUMERIC",
    "STRING",
    "CHOICE",
    "SYMBOLIC",
    "UNPARSEABLE",
    "BAD_GOLD",
    "TOO_LONG",
    "TOO_DEEP",
    "TIMEOUT",
    "WORKER_CRASHED",
    "ERROR",
    "NO_ANSWER",
]

MAX_ANSWER_CHARS = 1000
MAX_NESTING = 64

# Reasons: how the verdict was reached or why no comparison happened (stable strings).
NUMERIC = "numeric"
STRING = "string"
CHOICE = "choice"
SYMBOLIC = "symbolic"
UNPARSEABLE = "unparseable"
BAD_GOLD = "bad gold"
TOO_LONG = "too long"
TOO_DEEP = "too deep"
TIMEOUT = "timeout"
WORKER_CRASHED = "worker crashed"
ERROR = "error"
NO_ANSWER = "no answer"  # final_answer's own reasons ("unclosed box", ...) are used as is

_CHOICES = frozenset("ABCDEFGHIJ")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict on one (gold, response) pair: the response's answer, equal, and why."""

    extracted: str | None
    equal: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a plain dict (for JSON)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SymbolicTask:
    """A pair that needs a symbolic comparison: normalised gold and response answers."""

    gold: str
    response: str
    extracted: str


def gold_answer(gold: str) -> str | None:
    """The answer inside a gold field: last box, else ``#### n``, else the whole text."""
    if not isinstance(gold, str):
        return None
    if "\\boxed" in gold or "\\fbox" in gold:
        return last_boxed(gold).value
    if "####" in gold:
        return gsm8k_answer(gold).value
    stripped = gold.strip()
    return stripped or None


def _symbolic_text(answer: NormalAnswer) -> str:
    """The string a worker parses: the normalised text, with its percent sign restored."""
    return answer.text + "\\%" if answer.percent else answer.text


def prepare(gold: str, response: str) -> CheckResult | SymbolicTask:
    """Decide what is safe to decide without sympy; else return the task for a worker."""
    found = final_answer(response)
    if found.value is None:
        return CheckResult(None, False, found.reason or NO_ANSWER)
    extracted = found.value
    if len(extracted) > MAX_ANSWER_CHARS:
        return CheckResult(None, False, TOO_LONG)
    gold_text = gold_answer(gold)
    if gold_text is None:
        return CheckResult(extracted, False, BAD_GOLD)
    if len(gold_text) > MAX_ANSWER_CHARS:
        return CheckResult(extracted, False, BAD_GOLD)
    if nesting_depth(extracted) > MAX_NESTING:
        return CheckResult(extracted, False, TOO_DEEP)
    if nesting_depth(gold_text) > MAX_NESTING:
        return CheckResult(extracted, False, BAD_GOLD)
    g = normalise(gold_text)
    r = normalise(extracted)
    if not r.text:
        return CheckResult(extracted, False, UNPARSEABLE)
    if not g.text:
        return CheckResult(extracted, False, BAD_GOLD)
    verdict = numbers_equal(g, r)
    if verdict is not None:
        return CheckResult(extracted, verdict, NUMERIC)
    if g.text in _CHOICES and r.text.upper() in _CHOICES:
        return CheckResult(extracted, g.text == r.text.upper(), CHOICE)
    if g.text == r.text and g.percent == r.percent:
        return CheckResult(extracted, True, STRING)
    if g.text.isalpha() and r.text.isalpha() and len(g.text) > 1 and len(r.text) > 1:
        return CheckResult(extracted, g.text.casefold() == r.text.casefold(), STRING)
    return SymbolicTask(_symbolic_text(g), _symbolic_text(r), extracted)


def answers_equal(gold: str, response: str, *, timeout_s: float | None = None) -> CheckResult:
    """Check a response (a whole solution or a bare answer) against a gold answer, in-process.

    Runs math-verify in this process when the cheap checks cannot decide; ``timeout_s``
    arms math-verify's SIGALRM limits (main thread only). Untrusted text belongs in a
    :class:`~sparq_stream.verify.pool.CheckerPool`, which also kills runaway workers.
    """
    task = prepare(gold, response)
    if isinstance(task, CheckResult):
        return task
    from sparq_stream.verify.symbolic import symbolic_equal

    try:
        equal, reason = symbolic_equal(task.gold, task.response, timeout_s)
    except (RecursionError, ValueError, TypeError, ArithmeticError, AttributeError):
        return CheckResult(task.extracted, False, ERROR)
    return CheckResult(task.extracted, equal, reason)
