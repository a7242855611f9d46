"""The archivist core: owns the working set W and the archive A.

Message flow: ``solved`` (:class:`SolveResult`, key = problem id) in; out go ``archive``
(the same result, key = problem id: every scored child once) and ``elites`` (compacted, key
= slot: an :class:`Elite` for every slot the update policy U writes, a tombstone for every
slot it empties). The ``elites`` topic is read back as a table: it IS the state of W.
W is one global structure (its caps span every partition of ``solved``), so the archivist is
``exclusive``: of its replicas one is active and the others are hot standbys
(:mod:`sparq_stream.bus.lease`). A standby keeps W, the watermarks and the statistics up to
date from the tables and mirrors the archive topic into its own ``archive_dir`` (give each
replica its own folder); when the active one dies it reads the tables to their end and goes
live like a restarted archivist, from the committed ``solved`` offsets.

Restart: the wrapper replays the ``elites`` table (and ``seeds``, with ``track_seeds``; and
``archive``, with ``publish_archive`` and ``restore_from_topic``) through
:meth:`ArchivistCore.on_table` before the first input. The ``archive`` topic (compacted,
kept forever) is the archive A: every archived id it holds that the disk does not is
counted in the statistics and the id window and appended to the disk export again, so a
wiped ``archive_dir`` is rebuilt from Kafka alone (the disk is an export and a cache). The first
:meth:`~ArchivistCore.handle_batch` or :meth:`~ArchivistCore.tick` then goes *live*: it
applies :meth:`WorkingSet.reconcile` (a restore may break a cap after a crash between a
write and its tombstone, or after a cap change) and publishes the records that fix the
topic. If the table held no record at all but the archive directory holds results (the
embedded broker keeps topics in memory only, so ``sparq up`` resumes from disk), W is
rebuilt by offering every archived result again: U keeps the best ``cap`` of whatever was
offered in any order, so that gives the same W. Once live, table records are the
archivist's own writes coming back and are ignored (re-applying a stale echo could
regress a slot).

Idempotence: a result whose id was already archived is not archived again (an id window
of ``dedupe_window`` ids, rebuilt from disk on start) and is offered to W again, which is a
no-op unless its elite records were lost (then it repairs them: a group's members only
ever get better, so a result once rejected or evicted is rejected again). Two cases
re-publish records, all of them equal to the current state, so the topics do not change:

- the wrapper redelivers the *same offset* in the same process (its send or commit failed
  and it rewound the batch): the result's archive record and those of its elite records
  that are still current are sent again;
- after a restart the id is known only from disk: its archive record is sent again (the
  crash may have come between the disk flush and the broker's acknowledgement).

A duplicate with a new offset in the same process (the solver published it twice)
publishes nothing.

Watermarks: after every batch the archivist writes a :class:`~sparq_stream.messages.Watermark`
to every partition of ``elites`` (key ``~watermark``, flagged ``after``: sent once the
batch's elite records are acknowledged) saying how far into each ``solved`` partition it
has applied results. The mutator's synchronous barrier waits for it instead of re-deriving
W. On restart the last watermarks are read back from the elites table, so they only grow.

The archive on disk: JSONL appended and flushed at the end of every batch, before the
wrapper commits (at-least-once: a crash after the flush and before the commit redelivers
the batch; the id window and the readers' de-duplication make that harmless); Parquet part
files of ``parquet_rows`` rows, with a small ``parquet.offset`` file saying how much of the
JSONL the parts cover, so the rows of a part lost in a crash are recovered from the JSONL
on restart. :func:`~sparq_stream.qd.archive_log.read_archive` reads the directory back the same way.

Lineage: every result is archived with the partition and offset of the ``solved`` record it
came from (the archive's ``solved_partition`` / ``solved_offset`` columns, and the
``sparq.solved.at`` header, ``b"<partition>/<offset>"``, on its ``archive`` record), and every
:class:`Elite` names the same coordinates, so an exported example can name its solved record.
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sparq_stream.core import EVERY_PARTITION, BaseCore, Inbound, Outgoing
from sparq_stream.errors import ConfigError, FatalError, RetriableError
from sparq_stream.messages import WATERMARK_KEY, Elite, Seed, SolveResult, Watermark
from sparq_stream.qd.archive_log import (
    JSONL_NAME,
    OFFSET_NAME,
    ArchiveLog,
    SolvedAt,
    dedupe_by_id,
    iter_archive_lineage,
    iter_batches,
    iter_jsonl,
    lineage_of,
    part_files,
    solved_at_header,
    solved_at_of,
)
from sparq_stream.qd.archive_summary import INVALID_NICHE, SUMMARY_COLUMNS, SummaryAccumulator, batch_of
from sparq_stream.descriptors import DescriptorError, niche_of
from sparq_stream.qd.quality import T_HIGH, T_LOW
from sparq_stream.qd.update import Update
from sparq_stream.qd.working_set import WorkingSet, make_working_set
from sparq_stream.settings import Variant

__all__ = [
    "OFFSET_NAME",
    "INVALID_NICHE",
    "ArchivistConfig",
    "ArchivistCore",
    "build_archivist",
    "run_summary",
    "summarize_archive",
]

log = logging.getLogger(__name__)

_NEVER = 1 << 62  # rows_per_part of the inner logs: this core decides when to flush
_RESTORE_FLUSH_ROWS = 1000  # rows restored from the archive topic buffered before a flush


class ArchivistConfig(BaseModel):
    """Every setting of the archivist core, with the paper's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    variant: Variant = Field(
        default="qd", description="the SPARQ variant: its update policy U and cap"
    )
    cap: int | None = Field(
        default=None, ge=1, description="T: top-T for dynamic-uniform (1000), per skill-set for qd (1); None = the variant's"
    )
    archive_dir: str = Field(default="sparq-archive", description="folder of the archive A on disk")
    archive_formats: tuple[Literal["jsonl", "parquet"], ...] = Field(
        default=("jsonl", "parquet"),
        min_length=1,
        description="formats of the archive on disk, e.g. jsonl,parquet (Parquet alone: one small part per batch)",
    )
    parquet_rows: int = Field(default=10_000, ge=1, description="rows per Parquet part file")
    fsync: bool = Field(default=False, description="fsync the archive files on every flush")
    publish_archive: bool = Field(default=True, description="also publish every scored child on the archive topic")
    track_seeds: bool = Field(default=True, description="read the seeds table into W (a child equal to a seed never becomes an elite)")
    restore_from_archive: bool = Field(
        default=True, description="rebuild W from the archive on disk when the elites topic is empty"
    )
    restore_from_topic: bool = Field(
        default=True, description="read the archive topic on start: ids, statistics and disk rows missing locally are restored from it"
    )
    dedupe_window: int = Field(default=1_000_000, ge=0, description="archived ids remembered to drop redeliveries (0 = all)")
    replay_cache: int = Field(default=10_000, ge=0, description="recent results whose records are re-sent on a rewound batch")
    sr_bins: int = Field(default=10, ge=1, description="bins of the solve-rate histogram in the metrics")

    @field_validator("archive_formats", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


@dataclass(frozen=True)
class _Handled:
    """What handling one result produced, to re-send on a rewound batch."""

    where: tuple[str, int, int]
    update: Update


class ArchivistCore(BaseCore):
    """Owns W (policy U of one variant) and A (disk and topic); see the module docstring."""

    name = "archivist"
    inputs: tuple[str, ...] = ("solved",)
    exclusive = True

    def __init__(self, config: ArchivistConfig | None = None, *, working_set: WorkingSet | None = None) -> None:
        """Open (or resume) the archive in ``config.archive_dir`` and start with an empty W."""
        self.config = config or ArchivistConfig()
        tables = ["elites"]
        if self.config.track_seeds:
            tables.append("seeds")
        if self.config.publish_archive and self.config.restore_from_topic:
            tables.append("archive")
        self.tables = tuple(tables)
        self.ws = working_set if working_set is not None else make_working_set(self.config.variant, self.config.cap)
        self.directory = Path(self.config.archive_dir)
        formats = self.config.archive_formats
        self._jsonl = ArchiveLog(self.directory, formats=("jsonl",), rows_per_part=_NEVER, fsync=self.config.fsync) if "jsonl" in formats else None
        self._parquet = ArchiveLog(self.directory, formats=("parquet",), rows_per_part=_NEVER, fsync=self.config.fsync) if "parquet" in formats else None
        self._live = False
        self._table_elites = 0
        self._pending: list[Outgoing] = []
        self._seen: OrderedDict[str, bool] = OrderedDict()  # id -> archived by this process
        self._replay: OrderedDict[str, _Handled] = OrderedDict()
        self._counters: dict[str, float] = {}
        self._best: dict[str, float] = {}
        self._sr_counts = [0] * self.config.sr_bins
        self._scored = 0
        self._kept = 0
        self._max_step = 0
        self._marks: dict[str, int] = {}  # solved partition -> next offset applied
        self._resume()

    # ------------------------------------------------------------------ the core contract
    def handle(self, inbound: Inbound) -> list[Outgoing]:
        """Archive one result and offer it to W (the per-message fallback of :meth:`handle_batch`)."""
        return self.handle_batch([inbound])[0]

    def handle_batch(self, batch: Sequence[Inbound]) -> list[list[Outgoing]]:
        """Archive and offer every result; flush the archive; return each result's records."""
        self._go_live()
        outputs = [self._handle_one(item) for item in batch]
        self.flush()
        if self._pending and outputs:
            outputs[0] = self._pending + outputs[0]
            self._pending = []
        if outputs and self._advance_marks(batch):
            outputs[-1].append(self._watermark())
        return outputs

    def _advance_marks(self, batch: Sequence[Inbound]) -> bool:
        """Record how far into each solved partition this batch reached; True if any moved."""
        moved = False
        for item in batch:
            if item.topic == "solved" and item.offset + 1 > self._marks.get(str(item.partition), 0):
                self._marks[str(item.partition)] = item.offset + 1
                moved = True
        return moved

    def _watermark(self) -> Outgoing:
        """A watermark on every elites partition, sent once this batch's elite records are acknowledged."""
        self._inc("watermarks")
        return Outgoing("elites", Watermark(offsets=dict(self._marks)), key=WATERMARK_KEY, partition=EVERY_PARTITION, after=True)

    def on_table(self, inbound: Inbound) -> list[Outgoing]:
        """Restore one elites record into W (before going live) or add a seed; never raises."""
        message = inbound.message
        try:
            if inbound.topic == "seeds":
                if isinstance(message, Seed):
                    self.ws.add_seed(message)
                return []
            if inbound.topic == "archive":
                self._restore_archived(message, solved_at_of(inbound.headers))
                return []
            if inbound.topic != "elites":
                return []
            if inbound.key == WATERMARK_KEY:
                if isinstance(message, Watermark) and not self._live:
                    for part, offset in message.offsets.items():
                        self._marks[part] = max(self._marks.get(part, 0), offset)
                return []
            self._inc("table_records")
            if self._live:
                self._inc("table_echoes")
                return []
            if inbound.key is None or not (message is None or isinstance(message, Elite)):
                self._inc("table_skipped")
                log.warning("elites record at offset %d has no key or is not an Elite: skipped", inbound.offset)
                return []
            self._table_elites += 1
            self.ws.restore(inbound.key, message)
        except Exception as exc:  # noqa: BLE001 - a bad table record must not stop the service
            self._inc("table_errors")
            log.warning("cannot apply %s record %r: %s", inbound.topic, inbound.key, exc)
        return []

    def _restore_archived(self, message: Any, solved_at: SolvedAt | None = None) -> None:
        """Before going live: count an archived result the disk does not hold, and write it to disk again."""
        if self._live:
            return  # our own records coming back
        if not isinstance(message, SolveResult):
            self._inc("table_skipped")
            return
        if message.id in self._seen:
            self._seen[message.id] = True  # on the topic: a redelivery need not publish it again
            return
        self._remember_id(message.id, True)
        self._append(message, solved_at)
        self._inc("restored_from_topic")
        if self._jsonl is not None and self._jsonl.pending >= _RESTORE_FLUSH_ROWS:
            self.flush()  # a standby mirrors the whole topic: bounded memory

    def tick(self, now: float) -> list[Outgoing]:
        """Go live (reconcile or rebuild W) if no batch did yet; emit what that produced."""
        self._go_live()
        pending, self._pending = self._pending, []
        return pending

    def metrics(self) -> dict[str, float]:
        """Counters and gauges for the live view: scored, kept, coverage, QD-score, |W|, |A|, SR bins."""
        out = dict(self._counters)
        out.update(
            scored=float(self._scored),
            kept=float(self._kept),
            yield_rate=self._kept / self._scored if self._scored else 0.0,
            coverage=float(len(self._best)),
            qd_score=math.fsum(self._best.values()),
            w_size=float(len(self.ws)),
            w_elites=float(len(self.ws.elites())),
            archive_size=float(self._scored),
            step=float(self._max_step),
            pending_rows=float(self._parquet.pending if self._parquet is not None else 0),
        )
        for i, count in enumerate(self._sr_counts):
            out[f"sr_bin_{i}"] = float(count)
        return out

    def close(self) -> None:
        """Flush everything, Parquet parts included (a failure is logged: the JSONL already holds every row)."""
        try:
            self.flush(final=True)
        except RetriableError as exc:
            log.error("final archive flush failed: %s", exc)

    # ------------------------------------------------------------------ views
    @property
    def working_set(self) -> WorkingSet:
        """The working set W."""
        return self.ws

    @property
    def restored_from_topic(self) -> int:
        """Archived results restored from the archive topic (missing on disk) on this start."""
        return int(self._counters.get("restored_from_topic", 0))

    @property
    def live(self) -> bool:
        """True once W was reconciled (or rebuilt) and the core handles input."""
        return self._live

    def flush(self, final: bool = False) -> None:
        """Write buffered rows: JSONL always, a Parquet part when ``parquet_rows`` are buffered (or ``final``)."""
        try:
            if self._jsonl is not None:
                self._jsonl.flush()
            if self._parquet is not None and self._parquet.pending and (
                final or self._jsonl is None or self._parquet.pending >= self.config.parquet_rows
            ):
                self._parquet.flush()
                if self._jsonl is not None:
                    self._write_offset(_size(self.directory / JSONL_NAME))
        except OSError as exc:
            raise RetriableError(f"cannot write the archive in {self.directory}: {exc}") from exc

    # ------------------------------------------------------------------ one result
    def _handle_one(self, item: Inbound) -> list[Outgoing]:
        result = item.message
        if result is None:
            return []
        if not isinstance(result, SolveResult):
            raise FatalError(f"the archivist takes SolveResult messages, got {type(result).__name__}")
        where = (item.topic, item.partition, item.offset)
        solved_at = (item.partition, item.offset) if item.topic == "solved" and item.partition >= 0 and item.offset >= 0 else None
        outputs: list[Outgoing] = []
        known = self._seen.get(result.id)
        if known is None:
            self._remember_id(result.id, True)
            self._append(result, solved_at)
            if self.config.publish_archive:
                outputs.append(_archive_record(result, solved_at))
        else:
            self._inc("duplicates")
            earlier = self._replay.get(result.id)
            if earlier is not None and earlier.where == where:
                self._inc("replays")
                if self.config.publish_archive:
                    outputs.append(_archive_record(result, solved_at))
                outputs.extend(self._records(self._still_current(earlier.update)))
            elif not known:
                # Known only from disk: the crash may have come before the broker acknowledged it.
                self._seen[result.id] = True
                if self.config.publish_archive:
                    outputs.append(_archive_record(result, solved_at))
        update = self._offer(result, solved_at)
        outputs.extend(self._records(update))
        if known is None or update:
            self._remember_update(result.id, _Handled(where, update))
        return outputs

    def _offer(self, result: SolveResult, solved_at: SolvedAt | None = None) -> Update:
        try:
            return self.ws.offer(result, solved_at=solved_at)
        except DescriptorError as exc:
            self._inc("bad_niche")
            log.warning("result %s has no valid niche (%s): archived, not offered to W", result.id, exc)
            return Update()

    def _records(self, update: Update) -> list[Outgoing]:
        if update.deleted:
            self._inc("elites_deleted", len(update.deleted))
        if update.written:
            self._inc("elites_written", len(update.written))
        return [Outgoing("elites", elite, key=slot) for slot, elite in update.records()]

    def _still_current(self, update: Update) -> Update:
        current = self.ws.elites()
        written = {slot: e for slot, e in update.written.items() if current.get(slot) == e}
        deleted = tuple(slot for slot in update.deleted if slot not in current)
        return Update(written, deleted)

    def _append(self, result: SolveResult, solved_at: SolvedAt | None = None) -> None:
        if self._jsonl is not None:
            self._jsonl.append(result, solved_at)
        if self._parquet is not None:
            self._parquet.append(result, solved_at)
        self._observe(result.quality, result.solve_rate, _niche(result), result.step, result.early_stopped)

    # ------------------------------------------------------------------ restart
    def _go_live(self) -> None:
        if self._live:
            return
        self._live = True
        if self.restored_from_topic:
            self.flush()  # the rows restored from the topic are on disk before anything reads it
            log.info("restored %d archived result(s) from the archive topic into %s", self.restored_from_topic, self.directory)
        update = Update()
        if self._table_elites == 0 and self.config.restore_from_archive and self.ws.update_policy.dynamic and self._scored:
            count = 0
            for result, solved_at in self._archived():
                count += 1
                self._offer(result, solved_at)
            update = Update(self.ws.elites(), ())
            log.info("elites topic empty: rebuilt W from %d archived result(s): %d elite(s)", count, len(self.ws.elites()))
            self._inc("rebuilt_from_archive", count)
        else:
            update = self.ws.reconcile()
        self._pending.extend(self._records(update))

    def _resume(self) -> None:
        """Recover the Parquet tail from the JSONL, and the id window and statistics from disk."""
        parquet_ids: set[str] = set()
        if self._parquet is not None:
            for part in part_files(self.directory):
                table = pq.read_table(part, columns=["id", "quality", "solve_rate", "niche", "skills", "step", "early_stopped"])
                for row in table.to_pylist():
                    if row["id"] in parquet_ids:
                        continue
                    parquet_ids.add(row["id"])
                    self._remember_id(row["id"], False)
                    self._observe(row["quality"], row["solve_rate"], _niche(_Row(row)), row["step"], row["early_stopped"])
        if self._jsonl is not None:
            start = self._read_offset() if self._parquet is not None and part_files(self.directory) else 0
            tail = 0
            for result, solved_at in _read_jsonl(self.directory / JSONL_NAME, start):
                if result.id in parquet_ids or result.id in self._seen:
                    continue
                self._remember_id(result.id, False)
                self._observe(result.quality, result.solve_rate, _niche(result), result.step, result.early_stopped)
                if self._parquet is not None:
                    self._parquet.append(result, solved_at)
                tail += 1
            if tail and self._parquet is not None:
                log.info("%d archived row(s) were not in a Parquet part yet: buffered again", tail)
        if self._scored:
            log.info("resumed the archive in %s: %d result(s), %d kept", self.directory, self._scored, self._kept)

    def _archived(self) -> Iterator[tuple[SolveResult, SolvedAt | None]]:
        """Yield every archived result once with its solved coordinates (Parquet parts, then the JSONL-only rows)."""
        yield from iter_archive_lineage(self.directory)

    def _read_offset(self) -> int:
        path = self.directory / OFFSET_NAME
        try:
            return max(0, int(path.read_text(encoding="utf-8").strip()))
        except (OSError, ValueError):
            return 0  # no offset file: re-read the whole JSONL (rows already in parts are skipped by id)

    def _write_offset(self, offset: int) -> None:
        path = self.directory / OFFSET_NAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(f"{offset}\n", encoding="utf-8")
        os.replace(tmp, path)

    # ------------------------------------------------------------------ bookkeeping
    def _remember_id(self, problem_id: str, here: bool) -> None:
        self._seen[problem_id] = here
        limit = self.config.dedupe_window
        if limit and len(self._seen) > limit:
            self._seen.popitem(last=False)

    def _remember_update(self, problem_id: str, handled: _Handled) -> None:
        limit = self.config.replay_cache
        if limit <= 0:
            return
        self._replay[problem_id] = handled
        self._replay.move_to_end(problem_id)
        while len(self._replay) > limit:
            self._replay.popitem(last=False)

    def _observe(self, quality: float, solve_rate: float, niche: str, step: int, early: bool) -> None:
        self._scored += 1
        if quality > 0.0:
            self._kept += 1
            if niche != INVALID_NICHE and quality > self._best.get(niche, 0.0):
                self._best[niche] = quality
        bins = self.config.sr_bins
        self._sr_counts[max(0, min(int(math.floor(solve_rate * bins + 1e-9)), bins - 1))] += 1
        self._max_step = max(self._max_step, int(step))
        if early:
            self._inc("early_stopped")

    def _inc(self, name: str, by: float = 1.0) -> None:
        self._counters[name] = self._counters.get(name, 0.0) + by


class _Row:
    """Attribute view of an Arrow row for :func:`niche_of`."""

    def __init__(self, row: Mapping[str, Any]) -> None:
        self.niche = row.get("niche") or ""
        self.skills = row.get("skills") or []


def _niche(item: Any) -> str:
    """Return the item's niche, or ``(invalid)`` when its skills cannot form one."""
    try:
        return niche_of(item)
    except DescriptorError:
        return INVALID_NICHE


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_jsonl(path: Path, start: int = 0) -> Iterator[tuple[SolveResult, SolvedAt | None]]:
    """Yield the results of a JSONL archive from byte offset ``start`` with their solved coordinates (unreadable lines skipped)."""
    for row in iter_jsonl(path, start):
        solved_at = lineage_of(row)
        yield SolveResult.model_validate(row), solved_at


def _archive_record(result: SolveResult, solved_at: SolvedAt | None) -> Outgoing:
    """The archive record of a result, naming its solved record in the ``sparq.solved.at`` header when known."""
    return Outgoing("archive", result, headers=(solved_at_header(solved_at),) if solved_at is not None else ())


def build_archivist(config: ArchivistConfig) -> ArchivistCore:
    """Build an archivist core from its settings."""
    if not isinstance(config, ArchivistConfig):
        raise ConfigError(f"build_archivist needs an ArchivistConfig, got {type(config).__name__}")
    return ArchivistCore(config)


# ---------------------------------------------------------------------- the run summary
def run_summary(results: Iterable[SolveResult], **options: Any) -> dict[str, Any]:
    """Return the JSON-ready summary of a run: counts, yield, coverage, QD-score, SR histogram, coverage over steps.

    ``results`` are de-duplicated by id first. Options (see :func:`_summarize`): ``stages``
    (counts per stage from the services' metrics) and ``elites`` (the final W by slot) are
    copied in when given; ``t_low``, ``t_high``, ``bins``.
    """
    return _summarize([batch_of(dedupe_by_id(results))], **options)


def _summarize(
    batches: Iterable[Any],
    *,
    stages: Mapping[str, float] | None = None,
    elites: Mapping[str, Elite] | None = None,
    t_low: float = T_LOW,
    t_high: float = T_HIGH,
    bins: int = 10,
) -> dict[str, Any]:
    """Fold record batches into the summary; add the stage counts and the working-set figures."""
    acc = SummaryAccumulator(t_low=t_low, t_high=t_high, bins=bins)
    for batch in batches:
        acc.add(batch)
    out = acc.result()
    if stages is not None:
        out["stages"] = {k: float(v) for k, v in sorted(stages.items())}
    if elites is not None:
        out["working_set"] = {
            "elites": len(elites),
            "niches": len({niche_of(e) for e in elites.values()}),
            "mean_quality": math.fsum(e.quality for e in elites.values()) / len(elites) if elites else 0.0,
        }
    return out


def summarize_archive(directory: str | Path, **options: Any) -> dict[str, Any]:
    """Return :func:`run_summary` of an archive directory, streamed batch by batch (bounded memory)."""
    return _summarize(iter_batches(directory, SUMMARY_COLUMNS), **options)
