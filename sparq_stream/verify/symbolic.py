"""Symbolic comparison with math-verify; imports sympy, so run it in a sandboxed worker.

This module is what a checker worker imports (and what the forkserver preloads). Calling
it in-process on model output is only safe with a time limit and a memory cap: see
:class:`sparq_stream.verify.pool.CheckerPool`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from math_verify import LatexExtractionConfig, parse, verify

__all__ = ["symbolic_equal", "warm_up"]

# Outcomes (same strings as sparq_stream.verify.equivalence's reasons).
_SYMBOLIC = "symbolic"
_UNPARSEABLE = "unparseable"
_BAD_GOLD = "bad gold"
_TIMEOUT = "timeout"

_LATEX_ONLY = [LatexExtractionConfig()]
_CACHE_SIZE = 4096
_cache: OrderedDict[str, list] = OrderedDict()
_verdicts: OrderedDict[tuple[str, str], tuple[bool, str]] = OrderedDict()
_cache_lock = threading.Lock()


def _parse(answer: str, timeout: int | None) -> list:
    """Parse one normalised answer as boxed LaTeX (never through sympy's ``parse_expr``).

    Results are kept in a bounded LRU cache (a gold answer meets many rollouts), except
    empty results, which may come from a timeout rather than from the text.
    """
    with _cache_lock:
        hit = _cache.get(answer)
        if hit is not None:
            _cache.move_to_end(answer)
            return hit
    parsed = parse("\\boxed{" + answer + "}", extraction_config=_LATEX_ONLY, parsing_timeout=timeout)
    if parsed:
        with _cache_lock:
            _cache[answer] = parsed
            if len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    return parsed


def symbolic_equal(gold: str, response: str, timeout_s: float | None = None) -> tuple[bool, str]:
    """Compare two normalised answers with math-verify; returns (equal, reason).

    ``timeout_s`` arms math-verify's own SIGALRM limits (main thread only; ignored
    elsewhere). It is a soft limit: a worker process kill is the hard one. Verdicts other
    than timeouts are kept in a bounded LRU cache (many rollouts give the same answer).
    """
    key = (gold, response)
    with _cache_lock:
        verdict = _verdicts.get(key)
        if verdict is not None:
            _verdicts.move_to_end(key)
            return verdict
    verdict = _compare(gold, response, timeout_s)
    if verdict[1] != _TIMEOUT:
        with _cache_lock:
            _verdicts[key] = verdict
            if len(_verdicts) > _CACHE_SIZE:
                _verdicts.popitem(last=False)
    return verdict


def _compare(gold: str, response: str, timeout_s: float | None) -> tuple[bool, str]:
    """Parse both answers and compare them (uncached)."""
    timeout: int | None = None
    if timeout_s is not None and threading.current_thread() is threading.main_thread():
        timeout = max(1, int(timeout_s))
    start = time.monotonic()
    gold_parsed = _parse(gold, timeout)
    if not gold_parsed:
        slow = timeout is not None and time.monotonic() - start >= timeout
        return False, _TIMEOUT if slow else _BAD_GOLD
    mark = time.monotonic()
    response_parsed = _parse(response, timeout)
    if not response_parsed:
        slow = timeout is not None and time.monotonic() - mark >= timeout
        return False, _TIMEOUT if slow else _UNPARSEABLE
    mark = time.monotonic()
    equal = bool(verify(gold_parsed, response_parsed, timeout_seconds=timeout))
    if not equal and timeout is not None and time.monotonic() - mark >= timeout:
        return False, _TIMEOUT
    return equal, _SYMBOLIC


_WARM_UP = [
    ("\\frac{1}{2}", "\\sqrt{2}/2 - \\sqrt{2}/2 + 0.5", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", True),
    ("(3,4] \\cup (5, \\infty)", "(3, 4] \\cup (5, \\infty)", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("6 - 5i", "6-5i", True),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}", False),
    ("y = 2x + 3", "y=3+2x", True),
]


def warm_up(timeout_s: float | None = 10.0) -> bool:
    """Run known comparisons so parsers and caches are ready; False if any came out wrong."""
    return all(symbolic_equal(g, r, timeout_s)[0] is want for g, r, want in _WARM_UP)
