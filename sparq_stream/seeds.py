"""Seed files: GSM8K-style question/answer-with-``####`` and MATH-style problem/solution/answer JSONL."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

from sparq_stream.errors import ConfigError
from sparq_stream.ids import problem_id
from sparq_stream.messages import Seed

__all__ = ["BadLine", "parse_seed_line", "read_seeds", "collect_seeds", "label_seeds"]


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


def read_seeds(path: str | Path) -> Iterator[Union[Seed, BadLine]]:
    """Yield a Seed or a BadLine for every non-blank line of a JSONL seed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"seed file {path} does not exist")
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for number, raw in enumerate(fh, start=1):
            item = parse_seed_line(raw, number, source=path.name)
            if item is not None:
                yield item


def collect_seeds(path: str | Path, limit: int | None = None) -> tuple[list[Seed], list[BadLine]]:
    """Read up to ``limit`` good seeds from a file, and every bad line met on the way."""
    seeds: list[Seed] = []
    bad: list[BadLine] = []
    for item in read_seeds(path):
        if isinstance(item, BadLine):
            bad.append(item)
            continue
        seeds.append(item)
        if limit is not None and len(seeds) >= limit:
            break
    return seeds, bad


def label_seeds(
    seeds: list[Seed],
    backend: str,
    *,
    backend_options: dict | None = None,
    vocabulary: str | Path | None = None,
    batch_size: int = 64,
) -> list[Seed]:
    """Give each seed its skill-set with the skill-classification prompt (the diverse variants need it)."""
    from sparq_stream.models.registry import make_generation_backend
    from sparq_stream.skills import annotate_seeds, load_vocabulary

    generator = make_generation_backend(backend, **(backend_options or {}))
    try:
        return annotate_seeds(seeds, generator, load_vocabulary(vocabulary), batch_size=batch_size)
    finally:
        generator.close()
