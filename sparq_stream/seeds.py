"""Seed files: GSM8K-style question/answer-with-``####`` and MATH-style problem/solution/answer JSONL."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence, Union

from sparq_stream.errors import ConfigError
from sparq_stream.ids import problem_id
from sparq_stream.messages import Seed

log = logging.getLogger(__name__)

__all__ = [
    "BadLine", "MAX_LINE_BYTES", "parse_seed_line", "read_seeds", "collect_seeds", "bad_line_report",
    "refuse_heldout", "refused_report",
]


@dataclass(frozen=True)
class BadLine:
    """A seed-file line that could not be used, with its 1-based number and the reason."""

    line: int
    reason: str


def _gsm8k_answer(text: str) -> tuple[str, str] | None:
    head, sep, tail = text.rpartition("####")
    if not sep:
        return None
    answer = tail.strip().replace(",", "")
    return (head.strip(), answer) if answer else None


def parse_seed_line(raw: str, line: int, source: str = "") -> Union[Seed, BadLine, None]:
    """Parse one JSONL line into a Seed, a BadLine (with the reason), or None for a blank line."""
    if not raw.strip():
        return None
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return BadLine(line, f"not JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(obj, dict):
        return BadLine(line, f"expected a JSON object, got {type(obj).__name__}")
    problem = obj.get("problem", obj.get("question"))
    if not isinstance(problem, str) or not problem.strip():
        return BadLine(line, "no non-empty 'question' or 'problem' string field")
    solution = obj.get("solution", "")
    answer = obj.get("answer")
    if "question" in obj and "problem" not in obj:
        if not isinstance(answer, str):
            return BadLine(line, "GSM8K-style line needs a string 'answer' field ending in '#### <final answer>'")
        parsed = _gsm8k_answer(answer)
        if parsed is None:
            return BadLine(line, "GSM8K-style 'answer' has no '#### <final answer>'")
        solution, answer = parsed
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        return BadLine(line, "no non-empty 'answer' field")
    if not isinstance(solution, str):
        return BadLine(line, "'solution' must be a string")
    return Seed(
        id=problem_id(problem),
        problem=problem.strip(),
        answer=answer.strip(),
        solution=solution.strip(),
        source=source,
        line=line,
    )


MAX_LINE_BYTES = 1 << 20
"""Default longest seed line (1 MiB): a longer one is reported as a bad line, not published."""


def _raw_lines(fh: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """Yield ``(number, bytes, size)``; bytes is None for a line over the limit (read past, never held whole)."""
    number = 0
    while True:
        raw = fh.readline(max_line_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) <= max_line_bytes or raw.endswith(b"\n"):
            yield number, raw, len(raw)
            continue
        size = len(raw)
        while not raw.endswith(b"\n"):
            raw = fh.readline(1 << 20)
            if not raw:
                break
            size += len(raw)
        yield number, None, size


def read_seeds(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[Union[Seed, BadLine]]:
    """Yield a Seed or a BadLine for every non-blank line of a JSONL seed file (UTF-8, lines up to ``max_line_bytes``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"seed file {path} does not exist")
    with path.open("rb") as fh:
        for number, raw, size in _raw_lines(fh, max_line_bytes):
            if raw is None:
                yield BadLine(number, f"line of {size:,} bytes is longer than the {max_line_bytes:,}-byte limit")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield BadLine(number, f"not UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}")
                continue
            item = parse_seed_line(text, number, source=path.name)
            if item is not None:
                yield item


def collect_seeds(
    path: str | Path, limit: int | None = None, max_line_bytes: int = MAX_LINE_BYTES
) -> tuple[list[Seed], list[BadLine]]:
    """Read up to ``limit`` good seeds from a file, and every bad line met on the way."""
    seeds: list[Seed] = []
    bad: list[BadLine] = []
    for item in read_seeds(path, max_line_bytes):
        if isinstance(item, BadLine):
            bad.append(item)
            continue
        seeds.append(item)
        if limit is not None and len(seeds) >= limit:
            break
    return seeds, bad


def bad_line_report(path: str | Path, bad: list[BadLine], shown: int = 20) -> list[str]:
    """One line per bad line, the first ``shown`` of them, then one line counting the rest."""
    lines = [f"{path}:{b.line}: {b.reason} (skipped)" for b in bad[:shown]]
    if len(bad) > shown:
        lines.append(f"{path}: ... and {len(bad) - shown:,} more bad line(s) not shown")
    return lines


def refuse_heldout(
    seeds: list[Seed],
    *,
    heldout: Sequence[str | Path] = (),
    check: bool = True,
    embedder: str = "sentence-transformers",
    embedder_options: dict[str, Any] | None = None,
    threshold: float | None = None,
    ngram_n: int | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[list[Seed], list[tuple[Seed, Any]]]:
    """Drop seeds that are held-out test problems (packaged GSM8K test and MATH500, plus ``heldout``).

    The novelty service's rules, with its code (:class:`sparq_stream.heldout.HeldOutCheck`): the
    same problem id, a shared word 13-gram, or cosine >= 0.90 with ``embedder`` (novelty's).
    Returns the kept seeds and each refused one with its :class:`~sparq_stream.heldout.HeldOutMatch`;
    ``check`` False (``--no-contamination-check``) keeps every seed and says so in the log.
    """
    from sparq_stream.heldout import CONTAMINATION_THRESHOLD, NGRAM_N, NO_CHECK_FLAG, filter_seeds, heldout_files

    if not check:
        log.warning("the contamination check is OFF (%s): seeds are not checked against the held-out sets", NO_CHECK_FLAG)
        return list(seeds), []
    files = heldout_files(heldout)
    if not seeds:
        return [], []
    from sparq_stream.models.registry import make_embedding_backend

    if cache_dir is None:  # the held-out vectors, by content: embedded once per embedder on this machine
        from sparq_stream.models.gguf_cache import cache_root

        cache_dir = cache_root() / "heldout"
    model = make_embedding_backend(embedder, **(embedder_options or {}))
    try:
        return filter_seeds(
            seeds, files, model,
            threshold=CONTAMINATION_THRESHOLD if threshold is None else threshold,
            ngram_n=NGRAM_N if ngram_n is None else ngram_n,
            cache_dir=cache_dir,
        )
    finally:
        closer = getattr(model, "close", None)
        if callable(closer):
            closer()


def refused_report(path: str | Path, refused: Sequence[tuple[Seed, Any]], shown: int = 20) -> list[str]:
    """One line per refused held-out seed (the first ``shown``), then one line counting the rest."""
    lines = [
        f"{path}:{seed.line}: a held-out test problem ({found.reason}: {found.source}, similarity {found.similarity:.2f}); refused"
        for seed, found in refused[:shown]
    ]
    if len(refused) > shown:
        lines.append(f"{path}: ... and {len(refused) - shown:,} more held-out seed(s) refused")
    return lines
