"""Score a model on held-out problems with the solve prompt and the same answer checker as the solver.

``accuracy`` is the mean, over problems, of the fraction of the ``k`` samples whose final
answer equals the gold answer (plain accuracy at k=1, greedy by default); ``pass_at_k`` is
the share of problems with at least one correct sample. Model output is checked like the
solver does: cheap comparisons (numbers, strings) in-process, anything needing sympy in the
sandboxed :class:`~sparq_stream.verify.pool.CheckerPool` (started only when first needed),
unless another checker is given.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sparq_stream.errors import ConfigError
from sparq_stream.messages import Seed
from sparq_stream.models.base import GenerationBackend, SamplingParams
from sparq_stream.prompts import SOLVE, load_prompt
from sparq_stream.seeds import BadLine, read_seeds

__all__ = ["Checker", "EvalResult", "evaluate", "load_heldout"]

log = logging.getLogger(__name__)


class Checker(Protocol):
    """Anything that checks (gold, response) pairs, like :class:`CheckerPool`."""

    def check_many(self, pairs: Iterable[tuple[str, str]]) -> list[Any]:
        """Return one result with ``equal`` and ``extracted`` per pair, in order."""
        ...


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one model on ``n`` held-out problems with ``k`` samples each, and per-problem details."""

    accuracy: float
    n: int
    k: int = 1
    pass_at_k: float = 0.0
    correct_samples: int = 0
    no_answer: int = 0
    errors: int = 0
    seconds: float = 0.0
    model: str = ""
    model_version: int = 0
    heldout: str = ""
    details: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seconds_per_problem(self) -> float:
        """Wall-clock seconds per problem (generation and checking)."""
        return self.seconds / self.n if self.n else 0.0

    def to_dict(self, details: bool = False) -> dict[str, Any]:
        """Return the result as a JSON-ready dict (per-problem details only when asked)."""
        body = asdict(self)
        if not details:
            body.pop("details")
        body["seconds_per_problem"] = self.seconds_per_problem
        return body


def load_heldout(path: str | Path, limit: int | None = None, offset: int = 0) -> list[Seed]:
    """Read held-out problems (GSM8K or MATH JSONL) in file order: ``limit`` of them after ``offset``."""
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    if offset < 0:
        raise ConfigError(f"offset must be >= 0, got {offset}")
    problems: list[Seed] = []
    bad = 0
    for item in read_seeds(path):
        if isinstance(item, BadLine):
            bad += 1
            continue
        if offset:
            offset -= 1
            continue
        problems.append(item)
        if limit is not None and len(problems) >= limit:
            break
    if bad:
        log.warning("%s: skipped %d unusable line(s)", path, bad)
    if not problems:
        raise ConfigError(f"no usable held-out problems in {path}")
    return problems


def evaluate(
    model: GenerationBackend | str | os.PathLike[str] | None,
    heldout_path: str | Path,
    limit: int | None = None,
    k: int = 1,
    *,
    offset: int = 0,
    temperature: float | None = None,
    top_p: float = 0.95,
    max_tokens: int = 512,
    batch_size: int = 8,
    seed: int = 0,
    num_threads: int | None = None,
    checker: Checker | None = None,
    out_path: str | Path | None = None,
    cache_dir: Path | None = None,
    device: str = "cpu",
) -> EvalResult:
    """Score ``model`` (a backend, a model folder or GGUF, None: the packaged SmolLM2) on held-out problems."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    problems = load_heldout(heldout_path, limit, offset)
    if temperature is None:
        temperature = 0.0 if k == 1 else 0.7
    params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    template = load_prompt(SOLVE)
    own_backend = not isinstance(model, GenerationBackend)
    backend: GenerationBackend
    if own_backend:
        from sparq_stream.models.transformers_backend import TransformersBackend

        backend = TransformersBackend(
            model, num_threads=num_threads, max_batch_size=batch_size * k, cache_dir=cache_dir, device=device
        )
    else:
        backend = model  # type: ignore[assignment]
    own_checker = checker is None
    if checker is None:
        checker = _LazyPoolChecker()
    start = time.perf_counter()
    details: list[dict[str, Any]] = []
    try:
        for at in range(0, len(problems), batch_size):
            chunk = problems[at : at + batch_size]
            results = backend.generate([template.render(problem=p.problem) for p in chunk], k, params)
            details.extend(_score(chunk, results, k, checker))
            log.info("evaluated %d/%d problems", len(details), len(problems))
    finally:
        if own_backend:
            backend.close()
        if own_checker:
            checker.close()  # type: ignore[attr-defined]
    seconds = time.perf_counter() - start
    result = _summarise(details, k, seconds, backend, str(heldout_path))
    if out_path is not None:
        _write_details(Path(out_path), result)
    log.info(
        "accuracy %.3f (pass@%d %.3f) on %d problems in %.1fs", result.accuracy, k, result.pass_at_k, result.n, seconds
    )
    return result


class _LazyPoolChecker:
    """Decides what is safe in-process (numbers, strings); starts a sandboxed pool only for symbolic pairs."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._pool: Any = None

    def check_many(self, pairs: Iterable[tuple[str, str]]) -> list[Any]:
        """Check pairs; only those needing sympy go to the (lazily started) :class:`CheckerPool`."""
        from sparq_stream.verify.equivalence import CheckResult, prepare

        pairs = list(pairs)
        results: list[Any] = [prepare(gold, response) for gold, response in pairs]
        symbolic = [i for i, r in enumerate(results) if not isinstance(r, CheckResult)]
        if symbolic:
            if self._pool is None:
                from sparq_stream.verify.pool import CheckerPool

                self._pool = CheckerPool(workers=self.workers)
            for i, checked in zip(symbolic, self._pool.check_many([pairs[i] for i in symbolic])):
                results[i] = checked
        return results

    def close(self) -> None:
        """Stop the pool if one was started."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _score(chunk: Sequence[Seed], results: Sequence[Any], k: int, checker: Checker) -> list[dict[str, Any]]:
    """Check every sample of a chunk against its gold answer; a failed prompt scores 0 with its error."""
    pairs: list[tuple[str, str]] = []
    for seed, result in zip(chunk, results):
        if result.ok:
            pairs.extend((seed.answer, c.text) for c in result.completions[:k])
    verdicts = iter(checker.check_many(pairs))
    details = []
    for seed, result in zip(chunk, results):
        if not result.ok:
            details.append({"id": seed.id, "answer": seed.answer, "correct": [], "extracted": [], "error": result.error})
            continue
        checked = [next(verdicts) for _ in result.completions[:k]]
        details.append(
            {
                "id": seed.id,
                "answer": seed.answer,
                "correct": [bool(v.equal) for v in checked],
                "extracted": [v.extracted for v in checked],
                "error": None,
            }
        )
    return details


def _summarise(details: list[dict[str, Any]], k: int, seconds: float, backend: Any, heldout: str) -> EvalResult:
    """Aggregate per-problem details into an :class:`EvalResult`."""
    n = len(details)
    rates = [sum(d["correct"]) / k for d in details]
    return EvalResult(
        accuracy=sum(rates) / n if n else 0.0,
        n=n,
        k=k,
        pass_at_k=sum(1 for d in details if any(d["correct"])) / n if n else 0.0,
        correct_samples=sum(sum(d["correct"]) for d in details),
        no_answer=sum(1 for d in details for e in d["extracted"] if e is None),
        errors=sum(1 for d in details if d["error"] is not None),
        seconds=seconds,
        model=str(getattr(backend, "model_name", "")),
        model_version=int(getattr(backend, "model_version", 0) or 0),
        heldout=heldout,
        details=details,
    )


def _write_details(path: Path, result: EvalResult) -> None:
    """Write the summary line then one line per problem as JSONL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"summary": result.to_dict()}) + "\n")
        for row in result.details:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
