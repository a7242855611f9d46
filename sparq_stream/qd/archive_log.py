"""The archive A on disk: every scored child, as JSONL and/or Parquet part files.

:class:`ArchiveLog` buffers appended results in memory and writes them on :meth:`flush`
(called automatically every ``rows_per_part`` rows): the JSONL file gets the lines
appended, the Parquet directory gets one new ``part-NNNNNNNN.parquet`` file, written
under a temporary name and renamed into place, so a part is either whole or absent.
A crash loses at most the unflushed buffer; a torn last JSONL line is cut off when the
log is reopened. Flush before committing the input offsets and nothing acknowledged is
ever lost (at-least-once: a redelivered result may be appended twice).

With both formats, each flush also records in ``parquet.offset`` how much of the JSONL the
parts hold. There is ONE reader, :func:`iter_batches` (Arrow record batches, bounded
memory): the Parquet parts, then the JSONL rows past that offset, each problem id once,
the newest row of an id winning, so a redelivered result never counts twice and rows
written after the last part are never missed. :func:`iter_archive` / :func:`read_archive`
give :class:`SolveResult` objects and :func:`read_table` one Arrow table, all from it.

Lineage: besides the :class:`SolveResult` fields every row has :data:`LINEAGE_COLUMNS`, the
partition and offset of the ``<prefix>.solved`` record it was archived from (-1: unknown, e.g.
rows of an archive written before these columns existed, which read back as -1). The archive
topic carries the same coordinates in the :data:`SOLVED_AT_HEADER` record header, so a
directory rebuilt from the topic keeps them.
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

import numpy as np
import pyarrow as pa
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
    "OFFSET_NAME",
    "dedupe_by_id",
    "read_offset",
    "iter_jsonl",
    "iter_batches",
    "LINEAGE_COLUMNS",
    "SOLVED_AT_HEADER",
    "SolvedAt",
    "solved_at_header",
    "solved_at_of",
    "lineage_of",
    "iter_archive_lineage",
]

log = logging.getLogger(__name__)

#: The JSONL file of an archive directory.
JSONL_NAME = "archive.jsonl"
#: The directory of Parquet part files inside an archive directory.
PARTS_DIR = "parquet"
#: The formats an archive can be written in.
FORMATS = ("jsonl", "parquet")

#: The file holding the JSONL byte offset up to which the Parquet parts hold every row.
OFFSET_NAME = "parquet.offset"

_PART = re.compile(r"^part-(\d{8})\.parquet$")
_FIELDS = tuple(SolveResult.model_fields)

#: The archive's columns beyond the SolveResult fields: where its ``solved`` record is (-1: unknown).
LINEAGE_COLUMNS = ("solved_partition", "solved_offset")
#: Record header of an ``archive`` record: ``b"<partition>/<offset>"`` of the ``solved`` record it copies.
SOLVED_AT_HEADER = "sparq.solved.at"

#: (partition, offset) of a record of the ``solved`` topic.
SolvedAt = tuple[int, int]


def solved_at_header(solved_at: SolvedAt) -> tuple[str, bytes]:
    """Return the :data:`SOLVED_AT_HEADER` header naming ``solved_at``."""
    partition, offset = solved_at
    return (SOLVED_AT_HEADER, f"{int(partition)}/{int(offset)}".encode("ascii"))


def solved_at_of(headers: Iterable[tuple[str, bytes]]) -> SolvedAt | None:
    """Return the (partition, offset) a :data:`SOLVED_AT_HEADER` header names, or None (absent or malformed)."""
    for name, value in headers:
        if name == SOLVED_AT_HEADER:
            head, _, tail = bytes(value or b"").decode("ascii", "replace").partition("/")
            if head.isdigit() and tail.isdigit():
                return int(head), int(tail)
    return None


def lineage_of(row: dict[str, Any]) -> SolvedAt | None:
    """Pop the lineage columns from an archive row dict; return its (partition, offset), None when unknown."""
    partition, offset = (row.pop(name, None) for name in LINEAGE_COLUMNS)
    if isinstance(partition, int) and isinstance(offset, int) and partition >= 0 and offset >= 0:
        return partition, offset
    return None


def _arrow_type(annotation: Any) -> pa.DataType:
    """Map a SolveResult field annotation to an Arrow type."""
    simple = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
    if annotation in simple:
        return simple[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:  # a constrained type (pattern, bounds): its base type
        return _arrow_type(args[0])
    if origin is list and len(args) == 1:
        return pa.list_(_arrow_type(args[0]))
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _arrow_type(rest[0])
    raise TypeError(f"no Arrow type for annotation {annotation!r}")


#: The Arrow schema of archive rows: one column per SolveResult field, then the lineage columns.
ARCHIVE_SCHEMA = pa.schema(
    [pa.field(name, _arrow_type(info.annotation)) for name, info in SolveResult.model_fields.items()]
    + [pa.field(name, pa.int64()) for name in LINEAGE_COLUMNS],
    metadata={b"sparq.schema": SolveResult.SCHEMA.encode(), b"sparq.version": str(SolveResult.VERSION).encode()},
)


def _at(result: SolveResult, solved_at: SolvedAt | None) -> tuple[int, int]:
    """The lineage of a row: ``solved_at``, else what an Elite names, else (-1, -1)."""
    if solved_at is not None:
        return int(solved_at[0]), int(solved_at[1])
    return int(getattr(result, "solved_partition", -1)), int(getattr(result, "solved_offset", -1))


def _row(result: SolveResult, solved_at: SolvedAt | None = None) -> dict[str, Any]:
    row = {name: getattr(result, name) for name in _FIELDS}
    row.update(zip(LINEAGE_COLUMNS, _at(result, solved_at)))
    return row


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
        self._buffer: list[tuple[SolveResult, SolvedAt | None]] = []
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

    def append(self, result: SolveResult, solved_at: SolvedAt | None = None) -> None:
        """Buffer one scored child (``solved_at``: its solved record's partition and offset); flush at ``rows_per_part``."""
        if not isinstance(result, SolveResult):
            raise TypeError(f"the archive holds SolveResult messages, got {type(result).__name__}")
        self._buffer.append((result, solved_at))
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
            if "jsonl" in self.formats:
                _write_offset(self.directory, (self.directory / JSONL_NAME).stat().st_size)
        self._buffer = []

    def close(self) -> None:
        """Flush what is buffered."""
        self.flush()

    def __enter__(self) -> ArchiveLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_jsonl(self, rows: list[tuple[SolveResult, SolvedAt | None]]) -> None:
        text = "".join(json.dumps(_jsonable(r, at), ensure_ascii=False) + "\n" for r, at in rows)
        with open(self.directory / JSONL_NAME, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())

    def _write_part(self, rows: list[tuple[SolveResult, SolvedAt | None]]) -> None:
        final = self.directory / PARTS_DIR / f"part-{self._next_part:08d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        table = pa.Table.from_pylist([_row(r, at) for r, at in rows], schema=ARCHIVE_SCHEMA)
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


def _jsonable(result: SolveResult, solved_at: SolvedAt | None = None) -> dict[str, Any]:
    body = to_jsonable(result)
    if type(result) is not SolveResult:  # an Elite or other subclass: keep the SolveResult fields only
        body = {"schema": SolveResult.SCHEMA, "version": SolveResult.VERSION, **{k: body[k] for k in _FIELDS}}
    body.update(zip(LINEAGE_COLUMNS, _at(result, solved_at)))
    return body


def dedupe_by_id(results: Iterable[SolveResult]) -> list[SolveResult]:
    """Return the results with each problem id once, keeping the first occurrence (in-memory lists only)."""
    seen: set[str] = set()
    kept = []
    for result in results:
        if result.id not in seen:
            seen.add(result.id)
            kept.append(result)
    return kept


def read_offset(directory: str | Path) -> int:
    """Return the JSONL byte offset up to which the Parquet parts hold every row (0: none recorded)."""
    try:
        return max(0, int((Path(directory) / OFFSET_NAME).read_text(encoding="utf-8").strip()))
    except (OSError, ValueError):
        return 0


def _write_offset(directory: Path, offset: int) -> None:
    path = directory / OFFSET_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{offset}\n", encoding="utf-8")
    os.replace(tmp, path)


def iter_jsonl(path: str | Path, start: int = 0) -> Iterator[dict[str, Any]]:
    """Yield the rows (field dicts) of a JSONL archive from byte offset ``start``; unreadable lines are skipped."""
    path = Path(path)
    if not path.exists():
        return
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if start > size:
            log.warning("%s is shorter than the recorded Parquet offset %d: reading it whole", path, start)
            start = 0
        fh.seek(start)
        for line in fh:
            if not line.strip():
                continue
            try:
                body = json.loads(line)
                if not isinstance(body, dict) or body.pop("schema", SolveResult.SCHEMA) != SolveResult.SCHEMA:
                    raise ValueError("not a sparq.solved row")
                body.pop("version", None)
                at = lineage_of(body)
                yield _row(SolveResult.model_validate(body), at)
            except (ValueError, ValidationError) as exc:
                log.warning("%s: skipping an unreadable row: %s", path, str(exc).splitlines()[0])


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Return ``batch`` with exactly ``schema``'s columns: missing ones as nulls, others cast."""
    if batch.schema.equals(schema, check_metadata=False):
        return batch
    columns = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            fill = -1 if field.name in LINEAGE_COLUMNS else None  # rows written before the lineage columns
            columns.append(pa.nulls(batch.num_rows, field.type) if fill is None else pa.array([fill] * batch.num_rows, field.type))
        else:
            column = batch.column(index)
            columns.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _raw_batches(directory: Path, fmt: str, schema: pa.Schema, batch_size: int) -> Iterator[pa.RecordBatch]:
    """Every stored row in write order, duplicates included: the Parquet parts, then the JSONL rows past them."""
    parts = part_files(directory) if fmt in ("auto", "parquet") else []
    for part in parts:
        pf = pq.ParquetFile(part)
        have = set(pf.schema_arrow.names)
        wanted = [name for name in schema.names if name in have]
        for batch in pf.iter_batches(batch_size=batch_size, columns=wanted):
            yield _conform(batch, schema)
    if fmt == "parquet":
        return
    start = read_offset(directory) if parts else 0
    chunk: list[dict[str, Any]] = []
    for row in iter_jsonl(directory / JSONL_NAME, start):
        chunk.append(row)
        if len(chunk) >= batch_size:
            yield _conform(pa.RecordBatch.from_pylist(chunk, schema=ARCHIVE_SCHEMA), schema)
            chunk = []
    if chunk:
        yield _conform(pa.RecordBatch.from_pylist(chunk, schema=ARCHIVE_SCHEMA), schema)


def _duplicate_hashes(directory: Path, fmt: str, batch_size: int) -> tuple[set[int], int]:
    """Pass 1: the 64-bit hashes held by more than one row, and the row count (16 bytes per row for a moment)."""
    chunks = []
    id_schema = pa.schema([ARCHIVE_SCHEMA.field("id")])
    for batch in _raw_batches(directory, fmt, id_schema, batch_size):
        ids = batch.column(0).to_pylist()
        chunks.append(np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(ids)))
    if not chunks:
        return set(), 0
    hashes = np.concatenate(chunks)
    del chunks
    hashes.sort()
    repeated = hashes[1:][hashes[1:] == hashes[:-1]]
    return set(np.unique(repeated).tolist()), int(hashes.size)


def iter_batches(
    directory: str | Path,
    columns: Sequence[str] | None = None,
    *,
    fmt: str = "auto",
    batch_size: int = 65_536,
) -> Iterator[pa.RecordBatch]:
    """Yield the archive as Arrow record batches, each problem id once, the newest row of an id winning.

    THE archive reader (export, report and the archivist's restart all use it). ``auto``
    reads the Parquet parts and then the JSONL rows past ``parquet.offset`` (all of the
    JSONL when no offset is recorded: rows the parts already hold are duplicates and fold
    away), so rows written after the last part are never missed; ``parquet`` / ``jsonl``
    read one format only. Memory is bounded: pass 1 hashes every id to 64 bits (16 bytes a
    row, freed before pass 2) to find the ids written more than once; pass 2 streams the
    batches and holds back only the rows of those ids (a hash collision only holds a row
    back, never drops it), emitting the newest of each at the end. Row order: write order,
    except that an id written more than once comes after the others, at its newest write.
    """
    if fmt not in ("auto", *FORMATS):
        raise ConfigError(f"fmt must be auto, jsonl or parquet; got {fmt!r}")
    directory = Path(directory)
    names = list(columns) if columns else list(ARCHIVE_SCHEMA.names)
    if "id" not in names:
        names = ["id", *names]
    unknown = [n for n in names if n not in ARCHIVE_SCHEMA.names]
    if unknown:
        raise ConfigError(f"unknown archive column(s) {unknown}; the archive has {ARCHIVE_SCHEMA.names}")
    schema = pa.schema([ARCHIVE_SCHEMA.field(n) for n in names], metadata=ARCHIVE_SCHEMA.metadata)
    repeated, _ = _duplicate_hashes(directory, fmt, batch_size)
    held: dict[str, dict[str, Any]] = {}
    for batch in _raw_batches(directory, fmt, schema, batch_size):
        if repeated:
            ids = batch.column(0).to_pylist()
            hold = [hash(i) in repeated for i in ids]
            if any(hold):
                for index in (i for i, h in enumerate(hold) if h):
                    row = batch.slice(index, 1).to_pylist()[0]
                    held.pop(row["id"], None)  # move to the end: the newest write wins and sets the order
                    held[row["id"]] = row
                batch = batch.filter(pa.array([not h for h in hold]))
        if batch.num_rows:
            yield batch
    if held:
        yield pa.RecordBatch.from_pylist(list(held.values()), schema=schema)


def read_table(directory: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read the archive as one Arrow table, each id once (newest wins); for archives that fit in memory."""
    schema = pa.schema([ARCHIVE_SCHEMA.field(n) for n in (columns or ARCHIVE_SCHEMA.names)])
    batches = list(iter_batches(directory, columns))
    if not batches:
        return schema.empty_table()
    return pa.Table.from_batches(batches).select(schema.names)


def iter_archive(directory: str | Path, fmt: str = "auto") -> Iterator[SolveResult]:
    """Yield the archived results once per id (newest wins) as :class:`SolveResult`; ``fmt``: auto, jsonl, parquet."""
    for result, _ in iter_archive_lineage(directory, fmt):
        yield result


def iter_archive_lineage(directory: str | Path, fmt: str = "auto") -> Iterator[tuple[SolveResult, SolvedAt | None]]:
    """Like :func:`iter_archive`, with each result's solved (partition, offset) (None: unknown)."""
    for batch in iter_batches(directory, fmt=fmt, batch_size=8192):
        for row in batch.to_pylist():
            at = lineage_of(row)
            yield SolveResult.model_validate(row), at


def read_archive(directory: str | Path, fmt: str = "auto") -> list[SolveResult]:
    """Return the archived results once per id, newest write winning (see :func:`iter_batches` for the order)."""
    return list(iter_archive(directory, fmt))
