"""Answer checking: parse model output, normalise answers, compare them in a sandbox.

- :mod:`.extract`: tags, the last ``\\boxed{}``, ``#### n``, :func:`final_answer`.
- :mod:`.normalise`: string normalisation and exact plain-number reading.
- :mod:`.equivalence`: :func:`answers_equal` and :class:`CheckResult` (in-process).
- :mod:`.pool`: :class:`CheckerPool`, sandboxed workers with time and memory limits.
- :mod:`.jsonl`: :func:`verify_file` for ``sparq verify``.

Importing this package does not import sympy; only the workers (and
:func:`answers_equal` when a symbolic comparison is needed) do.
"""

from sparq_stream.verify.equivalence import CheckResult, answers_equal, prepare
from sparq_stream.verify.extract import (
    FinalAnswer,
    Parsed,
    extract_problem,
    extract_solution,
    extract_tag,
    final_answer,
    gsm8k_answer,
    last_boxed,
)
from sparq_stream.verify.jsonl import verify_file, verify_jsonl, verify_lines
from sparq_stream.verify.normalise import normalise_answer, parse_number
from sparq_stream.verify.pool import CheckerPool

__all__ = [
    "CheckResult",
    "CheckerPool",
    "FinalAnswer",
    "Parsed",
    "answers_equal",
    "extract_problem",
    "extract_solution",
    "extract_tag",
    "final_answer",
    "gsm8k_answer",
    "last_boxed",
    "normalise_answer",
    "parse_number",
    "prepare",
    "verify_file",
    "verify_jsonl",
    "verify_lines",
]
