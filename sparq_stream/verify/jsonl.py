"""Batch checking of JSON Lines files: ``{"gold", "response"[, "id"]}`` in, verdicts out.

Every non-blank input line gives exactly one output line, in order; a line that is not
JSON or lacks a field gives ``equal: false`` and a reason naming the problem and the line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from typing import Any, TextIO

from sparq_stream.errors import ConfigError
from sparq_stream.verify.pool import DEFAULT_TIMEOUT_S, CheckerPool

__all__ = ["verify_lines", "verify_jsonl", "verify_file", "BATCH_SIZE"]

logger = logging.getLogger(__name__)

BATCH_SIZE = 1024


def _field(record: dict[str, Any], name: str) -> str | None:
    """A gold/response field as text (numbers are accepted for gold); None when unusable."""
    value = record.get(name)
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _read(lineno: int, line: str) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """Parse one line into (output stub, (gold, response)) or (bad-line result, None)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return _bad(lineno, None, "not JSON"), None
    if not isinstance(record, dict):
        return _bad(lineno, None, "not a JSON object"), None
    ident = record.get("id")
    stub: dict[str, Any] = {"line": lineno}
    if "id" in record:
        stub["id"] = ident
    gold = _field(record, "gold")
    response = _field(record, "response")
    if gold is None:
        problem = "missing 'gold'" if "gold" not in record else "'gold' is not a string"
        return _bad(lineno, stub, problem), None
    if response is None:
        problem = "missing 'response'" if "response" not in record else "'response' is not a string"
        return _bad(lineno, stub, problem), None
    return stub, (gold, response)


def _bad(lineno: int, stub: dict[str, Any] | None, problem: str) -> dict[str, Any]:
    """The output record for an unusable input line."""
    out = dict(stub) if stub else {"line": lineno}
    out.update(extracted=None, equal=False, reason=f"bad input: {problem} (line {lineno})")
    return out


def _batches(lines: Iterable[str], size: int) -> Iterator[list[tuple[int, str]]]:
    """Group numbered non-blank lines into batches."""
    batch: list[tuple[int, str]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        batch.append((lineno, line))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def verify_lines(
    lines: Iterable[str], out: TextIO, pool: CheckerPool, *, batch_size: int = BATCH_SIZE
) -> dict[str, Any]:
    """Check JSONL ``lines`` and write one JSON result per line to ``out``; return a summary."""
    reasons: Counter[str] = Counter()
    total = equal = bad = 0
    for batch in _batches(lines, batch_size):
        records: list[dict[str, Any]] = []
        pairs: list[tuple[str, str]] = []
        slots: list[int] = []
        for lineno, line in batch:
            record, pair = _read(lineno, line)
            records.append(record)
            if pair is not None:
                slots.append(len(records) - 1)
                pairs.append(pair)
        for slot, result in zip(slots, pool.check_many(pairs), strict=True):
            records[slot].update(result.to_dict())
        for record in records:
            total += 1
            if record["reason"].startswith("bad input"):
                bad += 1
                reasons["bad input"] += 1
            else:
                reasons[record["reason"]] += 1
            equal += bool(record["equal"])
            out.write(json.dumps(record) + "\n")
    out.flush()
    return {"total": total, "equal": equal, "bad_lines": bad, "reasons": dict(reasons)}


def verify_jsonl(in_path: str, out_path: str | None, pool: CheckerPool) -> dict[str, Any]:
    """Check a JSONL file (``-`` for stdin) into ``out_path`` (None or ``-``: stdout)."""
    with ExitStack() as stack:
        try:
            if in_path == "-":
                source: TextIO = sys.stdin
            else:
                source = stack.enter_context(open(in_path, encoding="utf-8", errors="replace"))
            if out_path in (None, "-"):
                sink: TextIO = sys.stdout
            else:
                sink = stack.enter_context(open(out_path, "w", encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot open {exc.filename}: {exc.strerror}") from exc
        summary = verify_lines(source, sink, pool)
    logger.info("verified %s: %s", in_path, summary)
    return summary


def verify_file(
    in_path: str,
    out_path: str | None = None,
    *,
    workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """``sparq verify FILE [--out FILE] [--workers N] [--timeout S]``: start a pool and check."""
    with CheckerPool(workers, timeout_s) as pool:
        return verify_jsonl(in_path, out_path, pool)
