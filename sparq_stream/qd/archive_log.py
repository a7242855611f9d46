"""The archive A on disk: every scored child, as JSONL and/or Parquet part files.

:class:`ArchiveLog` buffers appended results in memory and writes them on :meth:`flush`
(called automatically every ``rows_per_part`` rows): the JSONL file gets the lines
appended, the Parquet directory gets one new ``part-NNNNNNNN.parquet`` file, written
under a temporary name and renamed into place, so a part is either whole or absent.
A crash loses at most the unflushed buffer; a torn last JSONL line is cut off when the
log is reopened. Flush before committing the input offsets and nothing acknowledged is
ever lost (at-least-once: a redelivered result may be appended twice).

Readers de-duplicate by problem id, keeping the first occurrence, so a redelivered result
never counts twice. :func:`read_table` does it in Arrow (for archives too big for Python
objects); :func:`read_archive` / :func:`iter_archive` return :class:`SolveResult` objects.
"""

from __future__ import annotations

import json
import logging
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import ValidationError

from sparq_stream.errors import ConfigError
from sparq_stream.messages import SolveResult, to_jsonable

__all__ = [
    "JSONL_NAME",
    "PARTS_DIR",
    "FORMATS",
    "ARCHIVE_SCHEMA",
    "ArchiveLog",
    "part_files",
    "read_table",
    "iter_archive",
    "read_archive",
    "dedupe_by_id",
]

log = logging.getLogger(__name__)

#: The JSONL file of an archive directory.
JSONL_NAME = "archive.jsonl"
#: The directory of Parquet part files inside an archive directory.
PARTS_DIR = "parquet"
#: The formats an archive can be written in.
FORMATS = ("jsonl", "parquet")

_PART = re.compile(r"^part-(\d{8})\.parquet$")
_FIELDS = tuple(SolveResult.model_fields)


def _arrow_type(annotation: Any) -> pa.DataType:
    """Map a SolveResult field annotation to an Arrow type."""
    simple = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
    if annotation in simple:
        return simple[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and len(args) == 1:
        return pa.list_(_arrow_type(args[0]))
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _arrow_type(rest[0])
    raise TypeError(f"no Arrow type for annotation {annotation!r}")


#: The Arrow schema of archive rows: one column per SolveResult field.
ARCHIVE_SCHEMA = pa.schema(
    [pa.field(name, _arrow_type(info.annotation)) for name, info in SolveResult.model_fields.items()],
    metadata={b"sparq.schema": SolveResult.SCHEMA.encode(), b"sparq.version": str(SolveResult.VERSION).encode()},
)


def _row(result: SolveResult) -> dict[str, Any]:
    return {name: getattr(result, name) for name in _FIELDS}


def part_files(directory: str | Path) -> list[Path]:
    """Return the Parquet part files of an archive directory in write order."""
    parts = Path(directory) / PARTS_DIR
    if not parts.is_dir():
        return []
    return sorted(p for p in parts.iterdir() if _PART.match(p.name))


class ArchiveLog:
    """Append-only archive of scored children in ``directory`` (JSONL and/or Parquet parts)."""

    def __init__(
        self,
        directory: str | Path,
        *,
        formats: Sequence[str] = ("jsonl", "parquet"),
        rows_per_part: int = 10_000,
        fsync: bool = False,
    ) -> None:
        unknown = [f for f in formats if f not in FORMATS]
        if unknown or not formats:
            raise ConfigError(f"archive formats must be a non-empty subset of {FORMATS}, got {list(formats)}")
        if rows_per_part < 1:
            raise ConfigError(f"rows_per_part must be >= 1, got {rows_per_part}")
        self.directory = Path(directory)
        self.formats = tuple(dict.fromkeys(formats))
        self.rows_per_part = rows_per_part
        self.fsync = fsync
        self._buffer: list[SolveResult] = []
        self.directory.mkdir(parents=True, exist_ok=True)
        self._next_part = 1
        if "parquet" in self.formats:
            parts = self.directory / PARTS_DIR
            parts.mkdir(exist_ok=True)
            for stale in parts.glob("*.tmp"):
                stale.unlink()
            existing = part_files(self.directory)
            if existing:
                self._next_part = int(_PART.match(existing[-1].name).group(1)) + 1  # type: ignore[union-attr]
        if "jsonl" in self.formats:
            self._cut_torn_line(self.directory / JSONL_NAME)

    @property
    def pending(self) -> int:
        """Rows appended but not yet flushed."""
        return len(self._buffer)

    def append(self, result: SolveResult) -> None:
        """Buffer one scored child; flush when the buffer reaches ``rows_per_part``."""
        if not isinstance(result, SolveResult):
            raise TypeError(f"the archive holds SolveResult messages, got {type(result).__name__}")
        self._buffer.append(result)
        if len(self._buffer) >= self.rows_per_part:
            self.flush()

    def extend(self, results: Iterable[SolveResult]) -> None:
        """Append several results."""
        for result in results:
            self.append(result)

    def flush(self) -> None:
        """Write the buffered rows to disk (one JSONL append and one Parquet part)."""
        if not self._buffer:
            return
        rows = self._buffer
        if "jsonl" in self.formats:
            self._write_jsonl(rows)
        if "parquet" in self.formats:
            self._write_part(rows)
        self._buffer = []

    def close(self) -> None:
        """Flush what is buffered."""
        self.flush()

    def __enter__(self) -> ArchiveLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_jsonl(self, rows: list[SolveResult]) -> None:
        text = "".join(json.dumps(_jsonable(r), ensure_ascii=False) + "\n" for r in rows)
        with open(self.directory / JSONL_NAME, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())

    def _write_part(self, rows: list[SolveResult]) -> None:
        final = self.directory / PARTS_DIR / f"part-{self._next_part:08d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        table = pa.Table.from_pylist([_row(r) for r in rows], schema=ARCHIVE_SCHEMA)
        pq.write_table(table, tmp)
        if self.fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
        self._next_part += 1

    @staticmethod
    def _cut_torn_line(path: Path, block: int = 1 << 16) -> None:
        """Cut a partial last line (a crash mid-write), reading backwards from the end only."""
        if not path.exists():
            return
        size = path.stat().st_size
        with open(path, "rb+") as fh:
            end = size
            while end > 0:
                start = max(0, end - block)
                fh.seek(start)
                chunk = fh.read(end - start)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                end = start
            else:
                keep = 0
            if keep < size:
                log.warning("%s: cutting a torn last line of %d bytes", path, size - keep)
                fh.truncate(keep)


def _jsonable(result: SolveResult) -> dict[str, Any]:
    body = to_jsonable(result)
    if type(result) is not SolveResult:  # an Elite or other subclass: keep the SolveResult fields only
        body = {"schema": SolveResult.SCHEMA, "version": SolveResult.VERSION, **{k: body[k] for k in _FIELDS}}
    return body


def dedupe_by_id(results: Iterable[SolveResult]) -> list[SolveResult]:
    """Return the results with each problem id once, keeping the first occurrence."""
    seen: set[str] = set()
    kept = []
    for result in results:
        if result.id not in seen:
            seen.add(result.id)
            kept.append(result)
    return kept


def read_table(directory: str | Path) -> pa.Table:
    """Read the Parquet parts as one Arrow table, de-duplicated by id (first occurrence kept)."""
    parts = part_files(directory)
    if not parts:
        return ARCHIVE_SCHEMA.empty_table()
    table = pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")
    rows = pa.array(range(table.num_rows), type=pa.int64())
    first = table.select(["id"]).append_column("_row", rows).group_by("id", use_threads=False).aggregate([("_row", "min")])
    keep = pc.sort_indices(first.column("_row_min"))
    return table.take(pc.take(first.column("_row_min"), keep))


def _iter_jsonl(path: Path) -> Iterator[SolveResult]:
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                body = json.loads(line)
                if body.pop("schema", SolveResult.SCHEMA) != SolveResult.SCHEMA:
                    raise ValueError("not a sparq.solved row")
                body.pop("version", None)
                yield SolveResult.model_validate(body)
            except (ValueError, ValidationError) as exc:
                log.warning("%s:%d: skipping an unreadable row: %s", path, number, str(exc).splitlines()[0])


def iter_archive(directory: str | Path, fmt: str = "auto") -> Iterator[SolveResult]:
    """Yield the archived results once per id; ``fmt`` is ``parquet``, ``jsonl`` or ``auto``."""
    if fmt not in ("auto", *FORMATS):
        raise ConfigError(f"fmt must be auto, jsonl or parquet; got {fmt!r}")
    directory = Path(directory)
    if fmt == "parquet" or (fmt == "auto" and part_files(directory)):
        seen: set[str] = set()
        for part in part_files(directory):
            for row in pq.read_table(part).to_pylist():
                if row["id"] not in seen:
                    seen.add(row["id"])
                    yield SolveResult.model_validate(row)
        return
    seen = set()
    for result in _iter_jsonl(directory / JSONL_NAME):
        if result.id not in seen:
            seen.add(result.id)
            yield result


def read_archive(directory: str | Path, fmt: str = "auto") -> list[SolveResult]:
    """Return the archived results once per id, in the order first written."""
    return list(iter_archive(directory, fmt))
