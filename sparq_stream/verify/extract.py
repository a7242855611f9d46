"""Parsers for model output: tagged sections, the last boxed answer, GSM8K `#### n`.

Every function here is pure, runs in time linear in its input and never raises on a
``str``: a missing or broken piece comes back as a :class:`Parsed` with ``value=None``
and a short fixed ``reason`` so callers can count failures by kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "Parsed",
    "FinalAnswer",
    "extract_tag",
    "extract_problem",
    "extract_solution",
    "last_boxed",
    "gsm8k_answer",
    "answer_is",
    "final_answer",
    "MISSING_TAG",
    "UNCLOSED_TAG",
    "EMPTY_TAG",
    "BAD_TAG",
    "NO_BOX",
    "UNCLOSED_BOX",
    "EMPTY_BOX",
    "NO_HASHES",
    "EMPTY_HASHES",
    "NO_ANSWER_IS",
    "NO_ANSWER",
    "NOT_TEXT",
]

# Fixed failure reasons (stable strings: callers count by them).
MISSING_TAG = "missing tag"
UNCLOSED_TAG = "unclosed tag"
EMPTY_TAG = "empty tag"
BAD_TAG = "bad tag name"
NO_BOX = "no box"
UNCLOSED_BOX = "unclosed box"
EMPTY_BOX = "empty box"
NO_HASHES = "no ####"
EMPTY_HASHES = "empty ####"
NO_ANSWER_IS = "no 'answer is'"
NO_ANSWER = "no answer"
NOT_TEXT = "not text"

_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_BOX_MACROS = ("\\boxed", "\\fbox")
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)
_ANSWER_IS = re.compile(r"\banswer\s*(?:is\b|:)\s*:?\s*", re.IGNORECASE)
_INLINE_MATH = re.compile(r"^\$+([^$]*)\$+")
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_WHOLE_MAX = 100
_WHOLE_MAX_WORDS = 2


@dataclass(frozen=True, slots=True)
class Parsed:
    """A parse outcome: ``value`` when found, else ``None`` and a fixed ``reason``."""

    value: str | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when a value was found."""
        return self.value is not None


@dataclass(frozen=True, slots=True)
class FinalAnswer:
    """The final answer of a solution text and how it was found (``method``)."""

    value: str | None
    method: str | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when an answer was found."""
        return self.value is not None


def extract_tag(text: str, tag: str) -> Parsed:
    """Return the stripped content of the last complete ``<tag>...</tag>`` (case-insensitive)."""
    if not isinstance(text, str):
        return Parsed(None, NOT_TEXT)
    if not isinstance(tag, str) or not _TAG_NAME.fullmatch(tag):
        return Parsed(None, BAD_TAG)
    # One optional "/" between two runs of spaces, never two adjacent ``\s*`` (that backtracks quadratically).
    pattern = re.compile(rf"<\s*(/\s*)?{re.escape(tag)}\s*>", re.IGNORECASE)
    last_open = -1
    best: tuple[int, int] | None = None
    open_after_best = False
    for match in pattern.finditer(text):
        if match.group(1):
            if last_open >= 0:
                best = (last_open, match.start())
                last_open = -1
                open_after_best = False
        else:
            last_open = match.end()
            open_after_best = True
    if best is None:
        return Parsed(None, UNCLOSED_TAG if open_after_best else MISSING_TAG)
    content = text[best[0] : best[1]].strip()
    if not content:
        return Parsed(None, EMPTY_TAG)
    return Parsed(content)


def extract_problem(text: str) -> Parsed:
    """Return the content of the last complete ``<problem>...</problem>``."""
    return extract_tag(text, "problem")


def extract_solution(text: str) -> Parsed:
    """Return the content of the last complete ``<solution>...</solution>``."""
    return extract_tag(text, "solution")


def _match_braces(text: str, start: int) -> int:
    """Index just past the brace closing the one at ``start``; -1 when unbalanced."""
    depth = 0
    for match in _BRACE_TOKEN.finditer(text, start):
        token = match.group()
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            if depth == 0:
                return match.end()
    return -1


def _last_macro(text: str) -> tuple[int, str] | None:
    """Position and name of the last ``\\boxed`` / ``\\fbox`` not followed by a letter."""
    found: tuple[int, str] | None = None
    for name in _BOX_MACROS:
        end = len(text)
        while True:
            pos = text.rfind(name, 0, end)
            if pos < 0:
                break
            after = pos + len(name)
            if after < len(text) and text[after].isalpha():
                end = pos
                continue
            if found is None or pos > found[0]:
                found = (pos, name)
            break
    return found


def last_boxed(text: str) -> Parsed:
    """Return the content of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x``."""
    if not isinstance(text, str):
        return Parsed(None, NOT_TEXT)
    found = _last_macro(text)
    if found is None:
        return Parsed(None, NO_BOX)
    pos, name = found
    i = pos + len(name)
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i < n and text[i] == "{":
        end = _match_braces(text, i)
        if end < 0:
            return Parsed(None, UNCLOSED_BOX)
        content = text[i + 1 : end - 1].strip()
        return Parsed(content) if content else Parsed(None, EMPTY_BOX)
    if i == pos + len(name):
        # "\boxed" directly followed by a non-brace, non-space char (e.g. "\boxed$").
        return Parsed(None, EMPTY_BOX)
    j = i
    while j < n and not text[j].isspace() and text[j] not in "$}":
        j += 1
    token = text[i:j].rstrip(".,;")
    return Parsed(token) if token else Parsed(None, EMPTY_BOX)


def gsm8k_answer(text: str) -> Parsed:
    """Return what follows the last ``####`` on its line (GSM8K's final-answer form)."""
    if not isinstance(text, str):
        return Parsed(None, NOT_TEXT)
    pos = text.rfind("####")
    if pos < 0:
        return Parsed(None, NO_HASHES)
    start = pos + 4
    end = text.find("\n", start)
    line = text[start:] if end < 0 else text[start:end]
    value = line.strip().rstrip(".").strip()
    return Parsed(value) if value else Parsed(None, EMPTY_HASHES)


def answer_is(text: str) -> Parsed:
    """Return X from the last "the answer is X" / "answer: X" (up to the sentence end)."""
    if not isinstance(text, str):
        return Parsed(None, NOT_TEXT)
    last = None
    for match in _ANSWER_IS.finditer(text):
        last = match
    if last is None:
        return Parsed(None, NO_ANSWER_IS)
    rest = text[last.end() : last.end() + 400]
    math = _INLINE_MATH.match(rest)
    if math:
        value = math.group(1)
    else:
        value = rest[: _sentence_end(rest)]
    value = value.strip().rstrip(".,").strip()
    return Parsed(value) if value else Parsed(None, NO_ANSWER_IS)


def _sentence_end(text: str) -> int:
    """Index where the answer phrase ends: a full stop, ``;``, a newline or a prose comma."""
    depth = 0
    n = len(text)
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch in ";\n":
            return i
        elif ch == "." and (i + 1 == n or text[i + 1].isspace()):
            return i
        elif ch == "," and depth == 0 and i + 2 < n and text[i + 1] == " " and text[i + 2].isalpha():
            return i
    return n


def _strip_math_delims(text: str) -> str:
    """Remove one layer of ``$..$``, ``\\(..\\)`` or ``\\[..\\]`` around a short answer."""
    s = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left) : len(s) - len(right)].strip()
    return s


def _whole_text(text: str) -> str | None:
    """The text itself when it is short and answer-like (a bare answer, not prose)."""
    s = text.strip()
    if not s or len(s) > _WHOLE_MAX or "\n" in s:
        return None
    s = _strip_math_delims(s)
    if len(_WORD.findall(s)) > _WHOLE_MAX_WORDS:
        return None
    return s or None


def final_answer(text: str) -> FinalAnswer:
    """Find the final answer: last box, then ``####``, then "answer is X", then a bare answer."""
    if not isinstance(text, str):
        return FinalAnswer(None, None, NOT_TEXT)
    boxed = last_boxed(text)
    if boxed.ok:
        return FinalAnswer(boxed.value, "boxed")
    hashes = gsm8k_answer(text)
    if hashes.ok:
        return FinalAnswer(hashes.value, "####")
    if boxed.reason == NO_BOX and hashes.reason == NO_HASHES:
        stated = answer_is(text)
        if stated.ok:
            return FinalAnswer(stated.value, "answer is")
        whole = _whole_text(text)
        if whole is not None:
            return FinalAnswer(whole, "whole")
        return FinalAnswer(None, None, NO_ANSWER)
    reason = boxed.reason if boxed.reason != NO_BOX else hashes.reason
    return FinalAnswer(None, None, reason)
