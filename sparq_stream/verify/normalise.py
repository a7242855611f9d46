"""Light, string-level normalisation of final answers and a plain-number reader.

Nothing here evaluates anything: it only rewrites short strings with linear-time
regexes and reads plain numbers (integers, decimals, ``a/b``, ``\\frac{a}{b}``) with
``fractions.Fraction``, so it is safe on hostile model output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "NormalAnswer",
    "normalise",
    "normalise_answer",
    "parse_number",
    "numbers_equal",
    "nesting_depth",
]

_MAX_NUMBER_CHARS = 400
_ROUND_DIGITS = 6

_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_FRAC_VARIANT = re.compile(r"\\[dtc]frac(?![A-Za-z])")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])")
_SPACING = re.compile(r"\\\\|\\(?:[,;:! ]|quad(?![A-Za-z])|qquad(?![A-Za-z])|displaystyle(?![A-Za-z]))")
_THIN_THOUSANDS = re.compile(r"(?<=\d),\\!\s*(?=\d)")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|textit|textrm|textup|mathrm|mathbf|mathit|mbox|textnormal)\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_PERCENT = re.compile(r"(?:\\%|%|\s*\bpercent\b)\s*$", re.IGNORECASE)
_VAR_PREFIX = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[A-Za-z0-9]+\}?)?\s*=\s*(?P<rhs>[^=]+)$")
_NUM_UNITS = re.compile(
    r"^(?P<num>(?:\\frac|\\sqrt|\\pi|[\d.,/+\-{}() ])*(?:[\d})]|\\pi))"
    r"\s*(?P<unit>[A-Za-z][A-Za-z .]*?)\s*(?:\^\s*\{?\s*[23]\s*\}?)?$"
)
_NOT_UNITS = frozenset({"pi", "sqrt", "and", "or", "to", "in", "is", "ii", "iii", "iv"})
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_CHOICE = re.compile(r"^\(?\s*([A-J])\s*\)$|^\(\s*([A-J])\s*\)?$")
_SPACES = re.compile(r"\s+")

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DECIMAL = re.compile(rf"^[-+]?{_NUM}$")
_SLASH = re.compile(rf"^(?P<sign>[-+]?)(?P<a>{_NUM})\s*/\s*(?P<b>{_NUM})$")
_MIXED = re.compile(r"^(?P<sign>[-+]?)(?P<whole>\d+)\s*\\frac\s*\{\s*(?P<a>\d+)\s*\}\s*\{\s*(?P<b>\d+)\s*\}$")
_FRAC = re.compile(
    rf"^(?P<sign>[-+]?)\\frac\s*(?:\{{\s*(?P<a>[-+]?{_NUM})\s*\}}|(?P<a1>\d))"
    rf"\s*(?:\{{\s*(?P<b>[-+]?{_NUM})\s*\}}|(?P<b1>\d))$"
)


@dataclass(frozen=True, slots=True)
class NormalAnswer:
    """A normalised answer string; ``percent`` is set when a ``%`` was removed."""

    text: str
    percent: bool = False


def _strip_delims(s: str) -> str:
    """Remove surrounding math delimiters (``$``, ``\\(``, ``\\[``) repeatedly."""
    changed = True
    while changed:
        changed = False
        s = s.strip()
        for left, right in _DELIMS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)]
                changed = True
                break
    return s


def _unwrap_text(s: str) -> str:
    """Replace ``\\text{..}``-like wrappers by their content (a few nested levels)."""
    for _ in range(4):
        new = _TEXT_WRAP.sub(lambda m: m.group(1), s)
        if new == s:
            break
        s = new
    return s


def _strip_units(s: str) -> str:
    """Drop trailing unit words after a plain number ("5 dollars", "12 square feet")."""
    m = _NUM_UNITS.match(s)
    if not m:
        return s
    words = m.group("unit").replace(".", " ").split()
    if not words or any(len(w) < 2 or w.lower() in _NOT_UNITS for w in words):
        return s
    return m.group("num").strip()


def normalise(text: str) -> NormalAnswer:
    """Normalise a final answer: delimiters, ``$``, units, ``%``, ``x=``, separators, choices."""
    if not isinstance(text, str):
        return NormalAnswer("")
    s = _strip_delims(text.strip())
    s = s.replace("\\$", "").replace("$", "")
    s = _FRAC_VARIANT.sub(r"\\frac", s)
    s = _LEFT_RIGHT.sub("", s)
    s = s.replace("{,}", "")
    s = _THIN_THOUSANDS.sub(",", s)
    s = _SPACING.sub(lambda m: m.group(0) if m.group(0) == "\\\\" else "", s)
    s = s.replace("~", " ")
    s = _unwrap_text(s)
    s = _DEGREES.sub("", s)
    s = _SPACES.sub(" ", s).strip()
    percent = False
    m = _PERCENT.search(s)
    if m:
        percent = True
        s = s[: m.start()].strip()
    s = s.rstrip(".").strip() if not s.endswith("..") else s
    m = _VAR_PREFIX.match(s)
    if m:
        s = m.group("rhs").strip()
    s = _strip_units(s)
    m = _PERCENT.search(s)
    if m and not percent:
        percent = True
        s = s[: m.start()].strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    m = _CHOICE.match(s)
    if m:
        s = m.group(1) or m.group(2)
    return NormalAnswer(s, percent)


def normalise_answer(text: str) -> str:
    """Return the normalised answer string (see :func:`normalise`; a ``%`` is dropped)."""
    return normalise(text).text


def parse_number(text: str) -> Fraction | None:
    """Read a plain number (int, decimal, ``a/b``, ``\\frac{a}{b}``) exactly; else None."""
    if not isinstance(text, str) or len(text) > _MAX_NUMBER_CHARS:
        return None
    s = text.strip()
    try:
        if _DECIMAL.match(s):
            return Fraction(s)
        mixed = _MIXED.match(s)
        if mixed:
            value = int(mixed.group("whole")) + Fraction(int(mixed.group("a")), int(mixed.group("b")))
            return -value if mixed.group("sign") == "-" else value
        m = _SLASH.match(s) or _FRAC.match(s)
        if not m:
            return None
        groups = m.groupdict()
        a = Fraction(groups.get("a") or groups.get("a1"))
        b = Fraction(groups.get("b") or groups.get("b1"))
        if b == 0:
            return None
        value = a / b
        return -value if m.group("sign") == "-" else value
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _decimals(text: str) -> int | None:
    """Number of digits after the point of a decimal literal, else None."""
    if not _DECIMAL.match(text.strip()) or "." not in text:
        return None
    return len(text.strip().split(".", 1)[1])


def _close(x: Fraction, y: Fraction, x_text: str, y_text: str) -> bool:
    """Exact equality, or equality after rounding to a long decimal's own precision."""
    if x == y:
        return True
    for value, other_text, other in ((x, y_text, y), (y, x_text, x)):
        places = _decimals(other_text)
        if places is not None and places >= _ROUND_DIGITS and round(value, places) == other:
            return True
    return False


def numbers_equal(gold: NormalAnswer, response: NormalAnswer) -> bool | None:
    """Compare two normalised answers as plain numbers; None when either is not one."""
    a = parse_number(gold.text)
    b = parse_number(response.text)
    if a is None or b is None:
        return None
    golds = [a, a / 100] if gold.percent else [a]
    responses = [b, b / 100] if response.percent else [b]
    return any(_close(x, y, gold.text, response.text) for x in golds for y in responses)


def nesting_depth(text: str) -> int:
    """Maximum nesting depth of ``{}``, ``()`` and ``[]`` (unbalanced closers ignored)."""
    depth = 0
    deepest = 0
    for ch in text:
        if ch in "{([":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif ch in "})]" and depth > 0:
            depth -= 1
    return deepest
