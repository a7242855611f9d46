"""Validity audit of kept problems: is a hard problem hard, or just broken (the paper's reward hacking)?

Dynamic variants reward low solve-rates, and a problem can be "hard" because it is invalid:
its reference answer is wrong, it misses a quantity, or it has several answers. Every kept
problem (QUALITY > 0) gets an audit, stored with it as ``SolveResult.audit``: one
``"<flag>: <reason>"`` entry per flag raised (``[]``: it passed; ``None``: not audited).

Flags:

- ``answer_malformed`` (cheap): the generator's final answer is not a well-formed value
  (empty, a sentence, unbalanced brackets, a nested ``\\boxed``, far too long).
- ``answer_in_problem`` (cheap): the problem states its own answer (``\\boxed{}`` in the
  text, "the answer is X", "= X" at the end of a sentence, or a distinctive answer verbatim).
- ``solver_disagrees``: the solver's majority final answer over its K rollouts is a value
  other than the generator's answer (more rollouts agree on it than on the reference).
- ``verifier_rejects``: the verifier prompt (``prompts/validity.txt``, run with the solver's
  backend at temperature 0) judges that the problem is not self-contained or has no single answer.
  A verdict that cannot be read raises no flag (counted as ``audit_verifier_unclear``).

The export leaves flagged problems out by default. The checks are heuristics: their
precision and recall on a labelled set are measured by ``bench/audit_quality.py``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sparq_stream.models.base import GenerationBackend, SamplingParams
from sparq_stream.prompts import VALIDITY, PromptTemplate, load_prompt
from sparq_stream.verify.normalise import normalise_answer, parse_number

__all__ = [
    "ANSWER_IN_PROBLEM",
    "ANSWER_MALFORMED",
    "AUDIT_FLAGS",
    "SOLVER_DISAGREES",
    "VERIFIER_REJECTS",
    "AuditItem",
    "Auditor",
    "audit_flags",
    "cheap_checks",
    "is_flagged",
    "majority_check",
    "parse_verdict",
]

log = logging.getLogger(__name__)

ANSWER_MALFORMED = "answer_malformed"
ANSWER_IN_PROBLEM = "answer_in_problem"
SOLVER_DISAGREES = "solver_disagrees"
VERIFIER_REJECTS = "verifier_rejects"
#: Every flag the audit can raise.
AUDIT_FLAGS: tuple[str, ...] = (ANSWER_MALFORMED, ANSWER_IN_PROBLEM, SOLVER_DISAGREES, VERIFIER_REJECTS)

_MAX_ANSWER_CHARS = 80
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_VERDICT_TAG = re.compile(r"<verdict>\s*(valid|invalid)\s*</verdict>", re.IGNORECASE)
_INVALID_WORDS = re.compile(r"\b(invalid|not valid|ill-posed|ambiguous|not self-contained)\b", re.IGNORECASE)
_VALID_WORD = re.compile(r"\bvalid\b", re.IGNORECASE)
_UNITS_OK = {"cm", "km", "kg", "mm", "ml", "hours", "hour", "minutes", "days", "dollars", "cents", "pi", "sqrt", "frac"}


@dataclass(frozen=True)
class AuditItem:
    """What the audit needs of one scored problem: its text, reference answer and the rollouts' answers."""

    problem: str
    answer: str
    n_correct: int
    wrong_answers: Sequence[str | None] = field(default_factory=tuple)


def _balanced(text: str) -> bool:
    depth: Counter[str] = Counter()
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in text:
        if ch in "([{":
            depth[ch] += 1
        elif ch in pairs:
            depth[pairs[ch]] -= 1
            if depth[pairs[ch]] < 0:
                return False
    return not any(depth.values())


def _malformed(answer: str) -> str | None:
    """Why ``answer`` is not a well-formed final value, or None."""
    text = answer.strip()
    if not text:
        return "the final answer is empty"
    if len(text) > _MAX_ANSWER_CHARS:
        return f"the final answer is {len(text)} characters long"
    if "\n" in text or "\\boxed" in text:
        return "the final answer holds a line break or a nested \\boxed"
    if not _balanced(text):
        return "the final answer has unbalanced brackets"
    words = [w for w in _WORD.findall(text) if w.lower() not in _UNITS_OK]
    if len(words) > 3:
        return f"the final answer is text, not a value ({' '.join(words[:4])} ...)"
    return None


def _states_answer(problem: str, answer: str) -> str | None:
    """Why ``problem`` contains its own answer, or None."""
    if "\\boxed" in problem:
        return "the problem holds a \\boxed{} answer"
    target = normalise_answer(answer) or answer.strip()
    if not target:
        return None
    escaped = re.escape(target)
    stated = re.search(rf"(answer|result)\s*(is|=|:)\s*\$?\s*{escaped}(?!\d|\.\d)", problem, re.IGNORECASE)
    if stated:
        return f"the problem says '{stated.group(0).strip()}'"
    equals = re.search(rf"=\s*\$?\s*{escaped}\s*\$?\s*(?:[.!?]\s|[.!?]?$)", problem)
    if equals:
        return f"the problem ends a statement with '= {target}'"
    number = parse_number(target)
    distinctive = (number is None and len(target) >= 3) or (number is not None and len(target.lstrip("-").replace(".", "")) >= 4)
    if distinctive and re.search(rf"(?<![\w.]){escaped}(?![\w]|\.\d)", problem):
        return f"the answer {target} appears verbatim in the problem"
    return None


def cheap_checks(problem: str, answer: str) -> list[str]:
    """The cheap flags of one problem (no model call): malformed answer, answer stated in the problem."""
    flags = []
    why = _malformed(answer)
    if why:
        flags.append(f"{ANSWER_MALFORMED}: {why}")
    why = _states_answer(problem, answer)
    if why:
        flags.append(f"{ANSWER_IN_PROBLEM}: {why}")
    return flags


def majority_check(answer: str, n_correct: int, wrong_answers: Sequence[str | None]) -> list[str]:
    """Flag when more rollouts agree on one other value than on the generator's answer."""
    counts = Counter(normalise_answer(a) for a in wrong_answers if a is not None and a.strip())
    counts.pop("", None)
    if not counts:
        return []
    value, votes = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    if votes <= n_correct:
        return []
    total = n_correct + sum(1 for a in wrong_answers)
    return [f"{SOLVER_DISAGREES}: the solver's majority answer {value} ({votes} of {total} rollouts) differs from the generator's {answer.strip()}"]


def parse_verdict(text: str) -> tuple[bool | None, str]:
    """Read the verifier's answer: (True = valid, False = invalid, None = unreadable) and its reason sentence."""
    found = _VERDICT_TAG.search(text)
    rest = text[found.end() :] if found else text
    reason = " ".join(rest.strip().split())[:200]
    if found:
        return found.group(1).lower() == "valid", reason
    if _INVALID_WORDS.search(text):
        return False, reason
    if _VALID_WORD.search(text):
        return True, reason
    return None, reason


def audit_flags(entries: Sequence[str] | None) -> list[str]:
    """The flag names of an ``audit`` list (``"flag: reason"`` entries)."""
    return [entry.split(":", 1)[0].strip() for entry in entries or ()]


def is_flagged(entries: Sequence[str] | None) -> bool:
    """True when an ``audit`` list raised at least one flag."""
    return bool(entries)


class Auditor:
    """Runs the audit over a batch of kept problems: cheap checks, majority answer, one verifier call each."""

    def __init__(
        self,
        backend: GenerationBackend | None,
        *,
        verifier: bool = True,
        max_tokens: int = 64,
        template: PromptTemplate | None = None,
    ) -> None:
        """``backend`` runs the verifier prompt (None or ``verifier=False``: cheap checks and majority only)."""
        self.backend = backend if verifier else None
        self.template = template or load_prompt(VALIDITY)
        self.params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_tokens)
        self.counts: Counter[str] = Counter()

    def audit(self, items: Sequence[AuditItem]) -> list[list[str]]:
        """Return the audit entries of every item, in order."""
        flags = [cheap_checks(i.problem, i.answer) + majority_check(i.answer, i.n_correct, i.wrong_answers) for i in items]
        for entries, verdict in zip(flags, self._verify(items)):
            if verdict is not None:
                entries.append(verdict)
        for entries in flags:
            self.counts["audited"] += 1
            if entries:
                self.counts["audit_flagged"] += 1
            for name in audit_flags(entries):
                self.counts[f"audit_{name}"] += 1
        return flags

    def _verify(self, items: Sequence[AuditItem]) -> list[str | None]:
        """One verifier call per item (one batch): a ``verifier_rejects`` entry, or None."""
        if self.backend is None or not items:
            return [None] * len(items)
        prompts = [self.template.render(problem=i.problem, answer=i.answer.strip()) for i in items]
        try:
            results = self.backend.generate(prompts, 1, self.params)
        except Exception as exc:  # noqa: BLE001 - the audit must never lose the solved results
            self.counts["audit_verifier_errors"] += len(items)
            log.warning("the validity verifier failed (%s: %s): no verifier verdicts for %d problems", type(exc).__name__, exc, len(items))
            return [None] * len(items)
        out: list[str | None] = []
        for result in results:
            if not result.ok or not result.completions:
                self.counts["audit_verifier_errors"] += 1
                out.append(None)
                continue
            valid, reason = parse_verdict(result.completions[0].text)
            if valid is None:
                self.counts["audit_verifier_unclear"] += 1
                out.append(None)
            else:
                out.append(None if valid else f"{VERIFIER_REJECTS}: {reason or 'the verifier judged it invalid'}")
        return out
