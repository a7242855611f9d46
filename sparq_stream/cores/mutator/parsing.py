"""Parse a mutation output into (problem, solution, boxed answer), in linear time and bounded.

The strict form is ``<problem>…</problem>`` then ``<solution>…</solution>`` whose last
``\\boxed{}`` is the answer. The lenient form (small models) also accepts unclosed tags,
"Problem: … Solution: …" headings, a stated final answer ("Final answer: 12"), a problem
followed only by an answer line ("<problem> … Answer: 12") and a solution whose last line
ends in "= 12".

Every parser here scans its input a fixed number of times with literal searches or
regular expressions without nested or adjacent unbounded quantifiers that could backtrack
across lines, so the work is linear in the input; the input is first cut to
``max_chars`` characters (a cut is reported, so callers count it). :class:`ParseWork`
counts the characters each scan covers: the hostile-output tests assert that this count
stays within a small multiple of the (cut) input, without timing anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sparq_stream.verify.extract import extract_problem, extract_solution, last_boxed

__all__ = ["DEFAULT_MAX_CHARS", "ParseWork", "parse_child"]

#: Default cap on the characters of one completion that are parsed.
DEFAULT_MAX_CHARS = 64_000
#: Scans over the whole (cut) input one parse may make: the bound the tests check.
SCANS_PER_PARSE = 12

# A heading line: optional markdown emphasis, an optional adjective, the word, a colon.
# ``[ \t]`` (never ``\s``) keeps every match inside one line, so no match can run over
# thousands of newlines and back.
_PROBLEM_HEADING = re.compile(
    r"^[ \t]*\**(?:(?:new|rewritten|harder)[ \t]+)?problem\**[ \t]*[:：]\**[ \t]*", re.IGNORECASE | re.MULTILINE
)
_SOLUTION_HEADING = re.compile(r"^[ \t]*\**(?:worked[ \t]+)?solution\**[ \t]*[:：]\**[ \t]*", re.IGNORECASE | re.MULTILINE)
_OPEN_PROBLEM = re.compile(r"<problem>", re.IGNORECASE)
_OPEN_SOLUTION = re.compile(r"<solution>", re.IGNORECASE)
_CLOSE_SOLUTION = re.compile(r"</solution>", re.IGNORECASE)
_STATED_ANSWER = re.compile(
    r"(?:final[ \t]+answer[ \t]*(?:is\b|[:：])|the[ \t]+answer[ \t]+is\b|answer[ \t]*[:：])[ \t]*(?:\$[ \t]*)?(?P<answer>[^\n$]{1,60})",
    re.IGNORECASE,
)

# A line that states the answer on its own ("Final answer: 5", "Your answer: 9", "Result: 7").
_ANSWER_LINE = re.compile(
    r"^[ \t]*\**(?:final[ \t]+answer|your[ \t]+answer|answer|result|output)\**[ \t]*[:：=][ \t]*(?P<answer>[^\n]{1,60})$",
    re.IGNORECASE | re.MULTILINE,
)
# A solution line ending in "= <number>" ("4 + 4 = 8"): its number is the answer.
_TRAILING_EQUALS = re.compile(r"=[ \t]*(?P<answer>-?[0-9][0-9,]*(?:\.[0-9]+)?)\.?[ \t]*$", re.MULTILINE)
_CLOSING_TAGS = re.compile(r"</(?:problem|solution)>", re.IGNORECASE)


@dataclass
class ParseWork:
    """What parsing cost: characters scanned (summed over every scan), characters cut and the outputs cut."""

    scanned: int = 0
    cut: int = 0
    parses: int = 0
    truncated: int = 0

    def scan(self, chars: int) -> None:
        """Record one scan over ``chars`` characters."""
        self.scanned += chars


def parse_child(
    text: str, *, lenient: bool = False, max_chars: int = DEFAULT_MAX_CHARS, work: ParseWork | None = None
) -> tuple[tuple[str, str, str] | None, str | None]:
    """Parse a mutation output into (problem, solution, boxed answer), or (None, failure reason).

    ``lenient`` also accepts unclosed tags, "Problem: ... Solution: ..." headings and a stated
    final answer ("Final answer: 12") when the tags or the box are missing. Only the first
    ``max_chars`` characters are parsed (``work.cut`` counts the rest).
    """
    work = work if work is not None else ParseWork()
    work.parses += 1
    if not isinstance(text, str):
        return None, "problem: not text"
    if len(text) > max_chars:
        work.cut += len(text) - max_chars
        work.truncated += 1
        text = text[:max_chars]
    n = len(text)
    problem = extract_problem(text)
    solution = extract_solution(text)
    work.scan(2 * n)
    if lenient and not (problem.ok and solution.ok):
        loose = _loose_tags(text, work)
        if loose is not None:
            return _lenient_child(*loose, work)
        headed = _headed(text, work)
        if headed is not None:
            return _lenient_child(*headed, work)
        stated = _answer_line_only(text, work)
        if stated is not None:
            problem_text, line, answer = stated
            return (problem_text, f"{line}\n\\boxed{{{answer}}}", answer), None
    if not problem.ok:
        return None, f"problem: {problem.reason}"
    if not solution.ok:
        return None, f"solution: {solution.reason}"
    work.scan(len(solution.value or ""))
    answer = last_boxed(solution.value or "")
    if not answer.ok:
        if lenient:
            return _lenient_child(problem.value or "", solution.value or "", work)
        return None, f"answer: {answer.reason}"
    return (problem.value or "", solution.value or "", answer.value or ""), None


def _loose_tags(text: str, work: ParseWork) -> tuple[str, str] | None:
    """``<problem> P [</problem>] <solution> S [</solution>]`` with P holding no ``<problem>``: first such P."""
    work.scan(3 * len(text))
    opens = [m.end() for m in _OPEN_PROBLEM.finditer(text)]
    solutions = [(m.start(), m.end()) for m in _OPEN_SOLUTION.finditer(text)]
    j = 0
    for i, start in enumerate(opens):
        limit = opens[i + 1] - len("<problem>") if i + 1 < len(opens) else len(text)
        while j < len(solutions) and solutions[j][0] < start:
            j += 1
        if j == len(solutions) or solutions[j][0] > limit:
            continue  # no <solution> before the next <problem>
        problem = text[start : solutions[j][0]].strip()
        if problem[-len("</problem>") :].lower() == "</problem>":
            problem = problem[: -len("</problem>")].rstrip()
        body_start = solutions[j][1]
        close = _CLOSE_SOLUTION.search(text, body_start)
        return problem, text[body_start : close.start() if close is not None else len(text)].strip()
    return None


def _headed(text: str, work: ParseWork) -> tuple[str, str] | None:
    """A "Problem:" heading line, then a later "Solution:" heading line: (problem, rest)."""
    work.scan(2 * len(text))
    marks = _first_then(_PROBLEM_HEADING, _SOLUTION_HEADING, text)
    if marks is None:
        return None
    heading, sol = marks
    problem = text[heading.end() : sol.start()].strip()
    return (problem, text[sol.end() :].strip()) if problem else None


def _first_then(first: re.Pattern[str], then: re.Pattern[str], text: str) -> tuple[re.Match[str], re.Match[str]] | None:
    """The first match of ``first`` and the first match of ``then`` after it (None when either is missing)."""
    one = first.search(text)
    two = then.search(text, one.end()) if one is not None else None
    return (one, two) if one is not None and two is not None else None


def _answer_line_only(text: str, work: ParseWork) -> tuple[str, str, str] | None:
    """``<problem> P`` with no ``<solution>``, then a line stating the answer: (P, that line, the answer)."""
    work.scan(2 * len(text))
    marks = _first_then(_OPEN_PROBLEM, _ANSWER_LINE, text)
    if marks is None:
        return None
    opened, line = marks
    problem = _CLOSING_TAGS.sub("", text[opened.end() : line.start()]).strip()
    answer = line.group("answer").strip().rstrip(".").strip()
    if not problem or not answer or "<" in problem or "<" in answer:
        return None
    return problem, line.group(0).strip(), answer


def _lenient_child(problem: str, solution: str, work: ParseWork) -> tuple[tuple[str, str, str] | None, str | None]:
    """The answer of a lenient parse: the last box, a stated answer, an answer line, or a final "= <number>"."""
    if not problem or not solution:
        return None, "problem: empty tag"
    work.scan(3 * len(solution))
    boxed = last_boxed(solution)
    if boxed.ok:
        return (problem, solution, boxed.value or ""), None
    last = None
    for last in _STATED_ANSWER.finditer(solution):
        pass
    if last is None:
        for last in _TRAILING_EQUALS.finditer(solution):
            pass
    answer = last.group("answer").strip().rstrip(".") if last is not None else ""
    if not answer:
        return None, "answer: no box"
    return (problem, f"{solution}\n\\boxed{{{answer}}}", answer), None
