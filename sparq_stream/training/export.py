"""The training set: kept problems paired with their correct rollouts, exported as JSONL and Parquet.

One training example per (problem, target): for the *filtered* set (the paper's), every
problem with QUALITY > 0 is paired with each of its correct solver rollouts; for the
*unfiltered* baseline, every scored child is paired with its own (possibly wrong)
self-generated solution. Each example is a chat (``messages``: the rendered solve prompt,
then the assistant's target) plus provenance columns.

Exports are deterministic and atomic: rows are sorted by (problem id, rollout index), no
timestamp is written, and each file is written under a temporary name then renamed into
place, so two exports of the same state are byte-identical and a reader never sees a
half-written file. Both files load with ``datasets.load_dataset("json"|"parquet", ...)``.

Lineage: every example names its run (``run``: the topic prefix), the solved record it came
from (``solved_topic``, ``solved_partition``, ``solved_offset``; "" / -1 when unknown), the
problem (``problem_id``), its parents (``parent_ids``) and the model versions that wrote and
solved it (``model_version``, ``solver_version``); ``export.json`` sums them up under
``lineage``. ``sparq export --verify`` checks those chains against the run's topics
(:mod:`sparq_stream.training.lineage`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sparq_stream.errors import ConfigError
from sparq_stream.messages import Elite, SolveResult
from sparq_stream.prompts import SOLVE, PromptTemplate, load_prompt

SolvedAt = tuple[int, int]  # (partition, offset) of a record of the solved topic

__all__ = [
    "EXPORT_SCHEMA",
    "JSONL_NAME",
    "MANIFEST_NAME",
    "PARQUET_NAME",
    "ExportInfo",
    "build_examples",
    "example_id",
    "export_from_archive",
    "export_training_set",
    "read_examples",
    "write_examples",
    "LINEAGE_FIELDS",
    "solved_topic_of",
]

log = logging.getLogger(__name__)

#: File names inside an export directory.
JSONL_NAME = "train.jsonl"
PARQUET_NAME = "train.parquet"
MANIFEST_NAME = "export.json"
_MANIFEST_SCHEMA = "sparq.training_set"
_MANIFEST_VERSION = 1

_MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])

#: The Arrow schema of one training example (the JSONL rows hold the same fields, in this order).
EXPORT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("problem_id", pa.string()),
        pa.field("rollout_index", pa.int64()),
        pa.field("messages", pa.list_(_MESSAGE)),
        pa.field("problem", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("response", pa.string()),
        pa.field("target", pa.string()),
        pa.field("source", pa.string()),
        pa.field("slot", pa.string()),
        pa.field("niche", pa.string()),
        pa.field("skills", pa.list_(pa.string())),
        pa.field("parent_ids", pa.list_(pa.string())),
        pa.field("solve_rate", pa.float64()),
        pa.field("quality", pa.float64()),
        pa.field("novelty", pa.float64()),
        pa.field("k", pa.int64()),
        pa.field("n_correct", pa.int64()),
        pa.field("model", pa.string()),
        pa.field("model_version", pa.int64()),
        pa.field("solver_model", pa.string()),
        pa.field("solver_version", pa.int64()),
        pa.field("prompt_hash", pa.string()),
        pa.field("solve_prompt", pa.string()),
        pa.field("solve_prompt_hash", pa.string()),
        pa.field("operator", pa.string()),
        pa.field("step", pa.int64()),
        pa.field("variant", pa.string()),
        pa.field("run", pa.string()),
        pa.field("solved_topic", pa.string()),
        pa.field("solved_partition", pa.int64()),
        pa.field("solved_offset", pa.int64()),
    ],
    metadata={b"sparq.schema": _MANIFEST_SCHEMA.encode(), b"sparq.version": str(_MANIFEST_VERSION).encode()},
)
_COLUMNS = tuple(EXPORT_SCHEMA.names)
_ROW_GROUP = 32_768  # rows per Parquet row group of an export (bounded memory while streaming)
#: The columns that name where an example came from (``sparq export --verify`` follows them).
LINEAGE_FIELDS = ("run", "problem_id", "parent_ids", "model_version", "solver_version", "solved_topic", "solved_partition", "solved_offset")


def solved_topic_of(run: str) -> str:
    """Return the Kafka topic of a run's solved records (``<prefix>.solved``), "" when the run is unknown."""
    return f"{run}.solved" if run else ""


@dataclass(frozen=True)
class ExportInfo:
    """What one export wrote: its files, how many problems and examples, and what was skipped why."""

    out_dir: Path
    jsonl_path: Path
    parquet_path: Path
    manifest_path: Path
    problems: int
    examples: int
    skipped: dict[str, int] = field(default_factory=dict)
    sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the info as a JSON-ready dict."""
        return {
            "out_dir": str(self.out_dir),
            "jsonl": str(self.jsonl_path),
            "parquet": str(self.parquet_path),
            "manifest": str(self.manifest_path),
            "problems": self.problems,
            "examples": self.examples,
            "skipped": dict(self.skipped),
            "sha256": self.sha256,
        }


def example_id(problem_id: str, rollout_index: int) -> str:
    """Return the id of the example pairing ``problem_id`` with its rollout (or -1: its own solution)."""
    return f"{problem_id}/{rollout_index}"


def build_examples(
    results: Iterable[SolveResult],
    *,
    filtered: bool = True,
    source: str = "elites",
    solve_prompt: PromptTemplate | None = None,
    limit: int | None = None,
    skipped: Counter[str] | None = None,
    include_flagged: bool = False,
    run: str = "",
    solved_at: Mapping[str, SolvedAt] | None = None,
) -> list[dict[str, Any]]:
    """Turn results into sorted example rows (filtered: quality > 0 x correct rollouts; else own solution).

    A problem id met twice keeps its first occurrence. ``limit`` keeps the first ``limit``
    examples in (problem id, rollout index) order: an id-hash order, so a deterministic
    pseudo-random subset (use it to compare filtered and unfiltered sets at equal size).
    Problems the validity audit flagged are left out unless ``include_flagged``. ``run`` (the
    topic prefix) and ``solved_at`` (problem id -> solved partition and offset; an Elite
    names its own) fill the lineage columns.
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    template = solve_prompt or load_prompt(SOLVE)
    counts: Counter[str] = skipped if skipped is not None else Counter()
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for result in results:
        if not isinstance(result, SolveResult):
            raise TypeError(f"expected SolveResult or Elite messages, got {type(result).__name__}")
        if result.id in seen:
            counts["duplicate"] += 1
            continue
        seen.add(result.id)
        if result.audit and not include_flagged:
            counts["audit_flagged"] += 1
            continue
        at = solved_at.get(result.id) if solved_at is not None else None
        rows.extend(_examples_of(result, filtered, source, template, counts, run=run, solved_at=at))
    rows.sort(key=lambda r: (r["problem_id"], r["rollout_index"]))
    if limit is not None and len(rows) > limit:
        counts["over_limit"] += len(rows) - limit
        rows = rows[:limit]
    return rows


def _examples_of(
    result: SolveResult,
    filtered: bool,
    source: str,
    template: PromptTemplate,
    counts: Counter[str],
    *,
    run: str = "",
    solved_at: SolvedAt | None = None,
) -> list[dict[str, Any]]:
    """The example rows of one result (none when it gives no target)."""
    targets = _targets(result, filtered, counts)
    if not targets:
        return []
    prompt = template.render(problem=result.problem)
    base = _provenance(result, source, template, run, solved_at)
    rows = []
    for index, text in targets:
        messages = [dict(turn) for turn in prompt] + [{"role": "assistant", "content": text}]
        rows.append(
            {
                "id": example_id(result.id, index),
                "problem_id": result.id,
                "rollout_index": index,
                "messages": messages,
                "problem": result.problem,
                "answer": result.answer,
                "response": text,
                "target": "rollout" if index >= 0 else "solution",
                **base,
            }
        )
    return rows


def _targets(result: SolveResult, filtered: bool, counts: Counter[str]) -> list[tuple[int, str]]:
    """The (index, text) assistant targets of one result, counting why a result gives none."""
    if filtered:
        if not result.quality > 0:
            counts["quality_zero"] += 1
            return []
        targets = [(i, text) for i, text in enumerate(result.correct_rollouts) if text.strip()]
        if not targets:
            counts["no_correct_rollouts"] += 1
        return targets
    if not result.solution.strip():
        counts["no_solution"] += 1
        return []
    return [(-1, result.solution)]


def _provenance(result: SolveResult, source: str, template: PromptTemplate, run: str = "", solved_at: SolvedAt | None = None) -> dict[str, Any]:
    """The provenance and lineage columns shared by every example of one problem."""
    if solved_at is None and isinstance(result, Elite) and result.solved_partition >= 0 and result.solved_offset >= 0:
        solved_at = (result.solved_partition, result.solved_offset)
    partition, offset = solved_at if solved_at is not None else (-1, -1)
    return {
        "source": source,
        "slot": result.slot if isinstance(result, Elite) else "",
        "niche": result.niche,
        "skills": list(result.skills),
        "parent_ids": list(result.parent_ids),
        "solve_rate": float(result.solve_rate),
        "quality": float(result.quality),
        "novelty": float(result.novelty),
        "k": int(result.k),
        "n_correct": int(result.n_correct),
        "model": result.model,
        "model_version": int(result.model_version),
        "solver_model": result.solver_model,
        "solver_version": int(result.solver_version),
        "prompt_hash": result.prompt_hash,
        "solve_prompt": template.ref,
        "solve_prompt_hash": template.sha256,
        "operator": result.operator,
        "step": int(result.step),
        "variant": result.variant,
        "run": run,
        "solved_topic": solved_topic_of(run) if solved_at is not None else "",
        "solved_partition": int(partition),
        "solved_offset": int(offset),
    }


def write_examples(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    skipped: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
    fsync: bool = False,
) -> ExportInfo:
    """Write sorted example rows to ``out_dir``: every file goes to a temporary name first, then all are renamed."""
    out = _prepare_out(out_dir)
    return _write_sorted(out, [list(rows)], skipped=dict(skipped or {}), extra=extra, fsync=fsync)


def _write_sorted(
    out: Path,
    chunks: Iterable[Sequence[Mapping[str, Any]]],
    *,
    skipped: dict[str, int],
    extra: Mapping[str, Any] | None,
    fsync: bool,
    lines: bool = False,
) -> ExportInfo:
    """Stream already-sorted example chunks (row dicts, or JSONL lines with ``lines``) to the three files atomically.

    One chunk is in memory at a time: JSONL bytes and the SHA-256 are written as they go,
    the Parquet file one row group per chunk; then every file is renamed into place.
    """
    digest = hashlib.sha256()
    examples = problems = 0
    last_problem: str | None = None
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_jsonl, tmp_parquet = out / f".{JSONL_NAME}.tmp-{tag}", out / f".{PARQUET_NAME}.tmp-{tag}"
    written = [(tmp_jsonl, out / JSONL_NAME), (tmp_parquet, out / PARQUET_NAME)]
    group: list[dict[str, Any]] = []  # rows of the Parquet row group being filled
    lineage = _LineageTally()
    try:
        with open(tmp_jsonl, "wb") as jf, pq.ParquetWriter(tmp_parquet, EXPORT_SCHEMA, compression="zstd") as writer:
            for chunk in chunks:
                if not chunk:
                    continue
                if lines:
                    text = "".join(chunk).encode()  # type: ignore[arg-type]
                    rows = [json.loads(line) for line in chunk]  # type: ignore[arg-type]
                else:
                    rows = [{c: row[c] for c in _COLUMNS} for row in chunk]
                    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
                jf.write(text)
                digest.update(text)
                group.extend(rows)
                if len(group) >= _ROW_GROUP:
                    writer.write_table(pa.Table.from_pylist(group, schema=EXPORT_SCHEMA))
                    group = []
                for row in rows:
                    lineage.add(row)
                    if row["problem_id"] != last_problem:
                        problems += 1
                        last_problem = row["problem_id"]
                examples += len(rows)
            if group or not examples:
                writer.write_table(pa.Table.from_pylist(group, schema=EXPORT_SCHEMA))
            if fsync:
                jf.flush()
                os.fsync(jf.fileno())
        manifest = {
            "schema": _MANIFEST_SCHEMA,
            "version": _MANIFEST_VERSION,
            "examples": examples,
            "problems": problems,
            "files": {"jsonl": JSONL_NAME, "parquet": PARQUET_NAME},
            "jsonl_sha256": digest.hexdigest(),
            "skipped": dict(sorted(skipped.items())),
            "lineage": lineage.summary(),
            **dict(extra or {}),
        }
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        _atomic_write_all(
            [
                (out / PARQUET_NAME, lambda tmp: os.replace(tmp_parquet, tmp)),
                (out / JSONL_NAME, lambda tmp: os.replace(tmp_jsonl, tmp)),
                (out / MANIFEST_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8")),
            ],
            fsync,
        )
    finally:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
    return ExportInfo(
        out_dir=out,
        jsonl_path=out / JSONL_NAME,
        parquet_path=out / PARQUET_NAME,
        manifest_path=out / MANIFEST_NAME,
        problems=problems,
        examples=examples,
        skipped=dict(manifest["skipped"]),
        sha256=manifest["jsonl_sha256"],
    )


def export_training_set(
    elites: Iterable[Elite | SolveResult],
    out_dir: str | Path,
    *,
    filtered: bool = True,
    limit: int | None = None,
    source: str = "elites",
    solve_prompt: PromptTemplate | None = None,
    include_flagged: bool = False,
    run: str = "",
    solved_at: Mapping[str, SolvedAt] | None = None,
) -> ExportInfo:
    """Export the training set of ``elites`` (or any scored results) to ``out_dir`` as JSONL + Parquet."""
    skipped: Counter[str] = Counter()
    template = solve_prompt or load_prompt(SOLVE)
    rows = build_examples(
        elites, filtered=filtered, source=source, solve_prompt=template, limit=limit, skipped=skipped, include_flagged=include_flagged,
        run=run, solved_at=solved_at,
    )  # fmt: skip
    extra = {"filtered": filtered, "source": source, "limit": limit, "include_flagged": include_flagged, "run": run}
    info = write_examples(rows, out_dir, skipped=skipped, extra=extra)
    log.info("exported %d examples of %d problems to %s (skipped: %s)", info.examples, info.problems, out_dir, dict(skipped))
    return info


def export_from_archive(
    archive_dir: str | Path,
    out_dir: str | Path,
    filtered: bool = True,
    *,
    limit: int | None = None,
    fmt: str = "auto",
    solve_prompt: PromptTemplate | None = None,
    include_flagged: bool = False,
    buckets_dir: str | Path | None = None,
    run: str = "",
) -> ExportInfo:
    """Export from an archive A on disk: filtered (quality > 0, correct rollouts) or every child with its own solution.

    ``run`` (the run's topic prefix) and the archive's solved coordinates fill the lineage columns.

    Bounded memory at any archive size: the one archive reader streams record batches
    (each id once, newest row winning); each example line goes to a bucket file by the
    first two characters of its problem id; then the buckets are sorted one at a time and
    streamed to the export files, so the output is the same sorted, byte-identical set as
    :func:`export_training_set` gives for the same results.
    """
    from sparq_stream.qd.archive_log import JSONL_NAME as ARCHIVE_JSONL
    from sparq_stream.qd.archive_log import iter_batches, lineage_of, part_files

    archive = Path(archive_dir)
    if not archive.is_dir() or not (part_files(archive) or (archive / ARCHIVE_JSONL).is_file()):
        raise ConfigError(f"{archive} is not an archive directory (no {ARCHIVE_JSONL} and no Parquet parts)")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    out = _prepare_out(out_dir)
    template = solve_prompt or load_prompt(SOLVE)
    counts: Counter[str] = Counter()
    spill = Path(tempfile.mkdtemp(prefix=".export-buckets-", dir=buckets_dir or out))
    try:
        files: dict[str, Any] = {}
        paths: dict[str, Path] = {}
        total = 0
        try:
            for batch in iter_batches(archive, fmt=fmt, batch_size=8192):
                if filtered:
                    keep = pc.greater(batch.column(batch.schema.get_field_index("quality")), 0.0)
                    counts["quality_zero"] += batch.num_rows - (pc.sum(pc.cast(keep, pa.int64())).as_py() or 0)
                    batch = batch.filter(keep)
                for row in batch.to_pylist():
                    at = lineage_of(row)
                    result = SolveResult.model_validate(row)
                    if result.audit and not include_flagged:
                        counts["audit_flagged"] += 1
                        continue
                    for example in _examples_of(result, filtered, "archive", template, counts, run=run, solved_at=at):
                        bucket = example["problem_id"][:2]
                        fh = files.get(bucket)
                        if fh is None:
                            paths[bucket] = spill / f"{len(files):06d}"
                            fh = files[bucket] = open(paths[bucket], "w", encoding="utf-8")
                        key = json.dumps([example["problem_id"], example["rollout_index"]], ensure_ascii=False)
                        fh.write(key + "\t" + json.dumps({c: example[c] for c in _COLUMNS}, ensure_ascii=False) + "\n")
                        total += 1
        finally:
            for fh in files.values():
                fh.close()
        if limit is not None and total > limit:
            counts["over_limit"] += total - limit
        extra = {"filtered": filtered, "source": "archive", "limit": limit, "include_flagged": include_flagged, "run": run}
        info = _write_sorted(
            out, _sorted_buckets([paths[b] for b in sorted(paths)], limit), skipped=dict(counts), extra=extra, fsync=False, lines=True
        )
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    log.info("exported %d examples of %d problems to %s (skipped: %s)", info.examples, info.problems, out, dict(counts))
    return info


class _LineageTally:
    """Counts for the manifest's ``lineage`` summary, one example row at a time."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.topics: Counter[str] = Counter()
        self.model_versions: Counter[str] = Counter()
        self.solver_versions: Counter[str] = Counter()
        self.located = 0
        self.unlocated = 0

    def add(self, row: Mapping[str, Any]) -> None:
        """Count one example row."""
        self.runs[str(row.get("run") or "")] += 1
        self.model_versions[str(row.get("model_version"))] += 1
        self.solver_versions[str(row.get("solver_version"))] += 1
        partition, offset = row.get("solved_partition"), row.get("solved_offset")
        if isinstance(partition, int) and isinstance(offset, int) and partition >= 0 and offset >= 0 and row.get("solved_topic"):
            self.located += 1
            self.topics[str(row["solved_topic"])] += 1
        else:
            self.unlocated += 1

    def summary(self) -> dict[str, Any]:
        """The JSON-ready summary: runs, solved topics, examples with and without a solved record, versions."""
        return {
            "runs": dict(sorted(self.runs.items())),
            "solved_topics": dict(sorted(self.topics.items())),
            "with_solved_record": self.located,
            "without_solved_record": self.unlocated,
            "model_versions": dict(sorted(self.model_versions.items())),
            "solver_versions": dict(sorted(self.solver_versions.items())),
        }


def _sorted_buckets(paths: Sequence[Path], limit: int | None, chunk: int = 4096) -> Iterator[list[str]]:
    """Yield the example lines of the bucket files in (problem id, rollout index) order, ``limit`` lines at most."""
    left = limit
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            keyed = []
            for line in fh:
                key, _, body = line.partition("\t")
                problem, index = json.loads(key)
                keyed.append((problem, index, body))
        keyed.sort(key=lambda item: (item[0], item[1]))
        lines = [body for _, _, body in keyed]
        del keyed
        if left is not None:
            lines = lines[:left]
            left -= len(lines)
        for start in range(0, len(lines), chunk):
            yield lines[start : start + chunk]
        if left == 0:
            return


def read_examples(path: str | Path, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Read example rows from an export directory, a ``.parquet`` file or a ``.jsonl`` file."""
    path = Path(path)
    if path.is_dir():
        path = path / PARQUET_NAME if (path / PARQUET_NAME).is_file() else path / JSONL_NAME
    if not path.is_file():
        raise ConfigError(f"training set {path} does not exist")
    if path.suffix == ".parquet":
        try:
            return pq.read_table(path, columns=list(columns) if columns else None).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise ConfigError(f"cannot read the training set {path}: {exc}") from exc
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{number}: expected a JSON object")
            rows.append({c: row.get(c) for c in columns} if columns else row)
    return rows


def _atomic_write_all(files: Sequence[tuple[Path, Callable[[Path], Any]]], fsync: bool) -> None:
    """Write every file under a temporary sibling name, then rename them all into place (manifest last)."""
    written: list[tuple[Path, Path]] = []
    try:
        for final, write in files:
            tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            written.append((tmp, final))
            write(tmp)
            if fsync:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in written:
        os.replace(tmp, final)


def _prepare_out(out_dir: str | Path) -> Path:
    """Create the export directory and clear what a killed export left in it."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the export directory {out}: {exc}") from exc
    _remove_stale_tmp(out)
    return out


def _remove_stale_tmp(out: Path) -> None:
    """Delete temporary files and bucket folders a killed export left behind."""
    for stale in out.glob(".*.tmp-*"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
    for stale in out.glob(".export-buckets-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
