"""The process wrapper shared by every service: consume, handle, produce, acknowledge, commit.

One loop iteration: poll a batch; decode each record (a record that does not decode
goes to the dead-letter topic); hand the decoded batch to the pure core; send its
outputs keyed by problem id; wait until the broker has acknowledged every send;
only then commit the input offsets (at-least-once). With
``processing_guarantee=exactly_once`` the outputs and the offsets go in one Kafka
transaction instead (honoured by Apache Kafka; Tansu accepts but does not honour it).

Retriable errors back off and retry; other errors send that message to the
dead-letter topic with its original bytes and the reason, and its offset is
committed, so a poison message never blocks a partition and is never lost.
A dead-letter copy never exceeds the producer's ``max_request_size``: a larger
value is truncated and the copy says so (``sparq.dlq.truncated``, original size
and SHA-256). An output the broker can never take (too large, invalid record)
dead-letters the input that produced it instead of being retried forever.

Table topics are read whole on start (bounded by ``restore_timeout_s``; past it
the service ends with a retriable error and a non-zero exit). A table record
that does not decode, fails in ``on_table``, or is a tombstone on a topic that
carries no deletes is dead-lettered by each replica's reader (headers name the
service and instance) and counted.

Exactly-once: everything a core returns, changelog writes included, is an
ordinary output, so it goes in the same transaction as the other outputs and
the input offsets; a restarted replica with the same ``instance`` keeps the
transactional id ``<group>.<instance>`` and fences its predecessor.

SIGTERM/SIGINT finish the batch in flight, commit, close and return 0; every
flush/commit/close is bounded, and a watchdog ends the process
``shutdown_timeout_s`` after the signal whatever it is blocked on (the broker
gone, say), without committing: at-least-once redelivers, exactly-once aborts.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from kafka import TopicPartition
from kafka.errors import (
    CommitFailedError,
    CorruptRecordError,
    InvalidProducerEpochError,
    InvalidRecordError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerFencedError,
    RecordListTooLargeError,
)
from kafka.structs import OffsetAndMetadata

from sparq_stream.bus.client import make_consumer, make_producer, max_request_size
from sparq_stream.bus.compacted import caught_up, partitions_of
from sparq_stream.bus.dlq import dlq_headers, fit_record, record_size
from sparq_stream.bus.metrics import ServiceMetrics
from sparq_stream.bus.topics import LOGICAL_TOPICS, TopicNames, spec_of
from sparq_stream.core import EVERY_PARTITION, FANOUT_HEADER, Core, Inbound, Outgoing
from sparq_stream.errors import FatalError, RetriableError, SparqError
from sparq_stream.ids import check_id, check_key
from sparq_stream.messages import decode, encode
from sparq_stream.settings import ServiceSettings

__all__ = ["ServiceProcess", "UnexpectedTombstone", "run_service"]

#: Send errors that concern one record and that no retry can fix: the record's input is dead-lettered.
_RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError, CorruptRecordError)
#: Another producer took over this transactional id: this process must end.
_FENCED_ERRORS = (ProducerFencedError, InvalidProducerEpochError)
_Coords = tuple[str, int, int]
#: Longest slice of an input poll's wait between two reads of the table topics (ms).
_TABLE_SLICE_MS = 20


@dataclass
class _Dead:
    """A record bound for the dead-letter topic."""

    record: Any
    error_type: str
    error: str


@dataclass
class _Copy:
    """A record-like copy of an output that has no input to dead-letter in its place."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int = -1
    offset: int = -1


@dataclass
class _Out:
    """One encoded output and the input record (None for tick outputs) that produced it."""

    outgoing: Outgoing
    source: Any
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int | None = None


class UnexpectedTombstone(FatalError):
    """A tombstone (null value) on a topic whose records are never deleted."""


class _RecordsRejected(KafkaError):
    """The broker refused some records for good; their inputs are dead-lettered on the redo."""


def _coords(record: Any) -> _Coords:
    return (record.topic, record.partition, record.offset)


class ServiceProcess:
    """Runs one core against Kafka; the same code for every service."""

    def __init__(self, core: Core, settings: ServiceSettings, *, install_signals: bool = True) -> None:
        self.core = core
        self.settings = settings
        self.names = TopicNames(settings.prefix)
        self.group_id = settings.group_id or f"{settings.prefix}.{core.name}"
        self.log = logging.getLogger(f"sparq.{core.name}")
        self.metrics = ServiceMetrics(core.name, settings.instance, settings.metrics_interval_s)
        self._stop = threading.Event()
        self._install_signals = install_signals
        self._txn = settings.processing_guarantee == "exactly_once"
        self._consumer: Any = None
        self._tables: Any = None
        self._producer: Any = None
        self._dlq_topic = self.names.topic("dlq")
        self._carry: list[Outgoing] = []
        self._max_record = max_request_size(settings)
        self._poisoned: dict[_Coords, tuple[str, str]] = {}  # input -> (error type, reason): dead-letter on redo
        self._poisoned_ticks: dict[int, tuple[str, str]] = {}  # id() of a carried tick output -> reason
        self._shrink: set[_Coords] = set()  # dead letters the broker refused: resend without their value
        self._watchdog: threading.Timer | None = None
        self._stop_at: float | None = None
        self._isolate = False  # after a refused record: one record per batch until a delivery succeeds
        self._eager = False  # the last tick emitted: poll without waiting
        self._table_wakeup = False  # the core can act on a table record: input polls wait in slices
        self._turns: dict[str, int] = {}  # spread topics: the next partition's turn (starts at a hash of the instance)

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask the loop to finish the batch in flight, commit and exit (thread- and signal-safe)."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop.is_set()

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        self.log.info("received %s: finishing the batch in flight (at most %.0fs)", name, self.settings.shutdown_timeout_s)
        self.stop()
        if self._watchdog is None:
            self._watchdog = threading.Timer(self.settings.shutdown_timeout_s, self._force_exit, args=(128 + signum,))
            self._watchdog.daemon = True
            self._watchdog.start()

    def _force_exit(self, code: int) -> None:
        """The stop did not finish in time (a broker gone, a blocked call): exit now, without a final commit."""
        frame = sys._current_frames().get(threading.main_thread().ident or 0)
        where = "".join(traceback.format_stack(frame, limit=6)) if frame is not None else "?"
        self.log.error(
            "did not stop within %.0fs of the signal (broker unreachable?): exiting without a final commit; "
            "uncommitted input is redelivered. Blocked in:\n%s",
            self.settings.shutdown_timeout_s,
            where,
        )
        logging.shutdown()
        os._exit(code)

    def _open(self) -> None:
        topics = [self.names.resolve(t) for t in self.core.inputs]
        self._producer = self._new_producer()
        if topics:
            spread = any(self._spreads(t) for t in topics)  # members take the spread partitions in turn
            self._consumer = make_consumer(self.settings, self.group_id, *topics, round_robin=spread)
        if self.core.tables:
            self._tables = make_consumer(self.settings, None)
            self._table_wakeup = bool(getattr(self.core, "wakes_on_tables", False))
            self._restore_tables()

    def _close(self) -> None:
        bound_ms = int(min(self.settings.client_timeout_s, self.settings.shutdown_timeout_s / 2) * 1000)
        for name in ("_consumer", "_tables"):
            client = getattr(self, name)
            if client is not None:
                try:
                    client.close(autocommit=False, timeout_ms=bound_ms)
                except Exception as exc:  # closing must not mask the real exit reason
                    self.log.warning("closing %s: %s", name, exc)
                setattr(self, name, None)
        if self._producer is not None:
            try:
                self._producer.close(timeout=bound_ms / 1000)
            except Exception as exc:  # records still unsent (the broker is gone): drop them, they are uncommitted
                self.log.warning("closing producer: %s: dropping unsent records", exc)
                _force_close(self._producer)
            self._producer = None

    def run(self, until: Callable[[], bool] | None = None, max_idle_s: float | None = None) -> int:
        """Run until stopped (signal, :meth:`stop`, ``until()`` true, or idle for ``max_idle_s``); return 0."""
        if self._install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        opened = False
        try:
            self._open()
            opened = True
            self.log.info(
                "%s running: group=%s instance=%s inputs=%s tables=%s guarantee=%s",
                self.core.name,
                self.group_id,
                self.settings.instance,
                list(self.core.inputs),
                list(self.core.tables),
                self.settings.processing_guarantee,
            )
            last_input = time.monotonic()
            while not self._stop.is_set():
                if self._step():
                    last_input = time.monotonic()
                elif max_idle_s is not None and time.monotonic() - last_input > max_idle_s:
                    self.log.info("idle for %.1fs: stopping", max_idle_s)
                    break
                if until is not None and until():
                    break
        finally:
            if opened:
                try:
                    self._publish_metrics(force=True)
                except Exception as exc:
                    self.log.warning("final metrics: %s", exc)
            self.core.close()
            self._close()
            self.log.info("%s stopped", self.core.name)
        return 0

    # ------------------------------------------------------------------ tables
    def _restore_tables(self) -> None:
        """Read every table topic from the beginning up to its high watermark before handling input.

        Raises a retriable error (the service exits non-zero; its supervisor restarts it) when the
        tables are not read to their end within ``restore_timeout_s``.
        """
        parts = [tp for logical in self.core.tables for tp in partitions_of(self._tables, self.names.resolve(logical))]
        self._tables.assign(parts)
        self._tables.seek_to_beginning(*parts)
        n = 0
        started = time.monotonic()
        deadline = started + self.settings.restore_timeout_s
        next_report = started + 10.0
        while True:
            n += self._poll_tables(timeout_ms=200)
            if caught_up(self._tables, parts):
                break
            now = time.monotonic()
            if self._stop.is_set():
                self.log.info("stop requested while restoring tables (%d record(s) read)", n)
                return
            if now >= deadline:
                raise RetriableError(
                    f"{self.core.name}: table topics not read to their end within {self.settings.restore_timeout_s:.0f}s "
                    f"({n} record(s) read; behind: {self._table_lag(parts)}); exiting so the service is restarted "
                    "(raise --restore-timeout-s for large tables)"
                )
            if now >= next_report:
                self.log.info("restoring tables: %d record(s) read in %.0fs; behind: %s", n, now - started, self._table_lag(parts))
                next_report = now + 10.0
        self.log.info("restored %d table record(s) from %s in %.1fs", n, [tp.topic for tp in parts], time.monotonic() - started)

    def _table_lag(self, parts: list[TopicPartition]) -> dict[str, Any]:
        lag: dict[str, Any] = {}
        for tp in parts:
            hw = self._tables.highwater(tp)
            lag[f"{tp.topic}[{tp.partition}]"] = "unknown" if hw is None else max(0, hw - self._tables.position(tp, timeout_ms=0))
        return lag

    def _poll_tables(self, timeout_ms: int = 0) -> int:
        if self._tables is None:
            return 0
        polled = self._tables.poll(timeout_ms=timeout_ms, max_records=self.settings.max_poll_records)
        n = 0
        pairs: list[tuple[Outgoing, Any]] = []
        dead: list[_Dead] = []
        for tp in sorted(polled, key=lambda t: (t.topic, t.partition)):
            for rec in polled[tp]:
                n += 1
                failure = self._apply_table_record(rec, pairs)
                if failure is not None:
                    dead.append(failure)
        if n:
            self.metrics.inc("table_records", n)
        if dead:
            self.metrics.inc("table_dead_lettered", len(dead))
        while (pairs or dead) and not self._deliver(pairs, dead, {}):
            if self._stop.is_set():  # outputs of table records are not redelivered: retry in place until stopped
                break
        return n

    def _apply_table_record(self, rec: Any, pairs: list[tuple[Outgoing, Any]]) -> _Dead | None:
        """Hand one table record to the core; return a dead letter when it cannot be applied."""
        where = f"table record {rec.topic}[{rec.partition}]@{rec.offset}"
        try:
            message = self._decode_record(rec)
        except SparqError as exc:
            self.log.warning("%s dead-lettered: %s", where, exc)
            self.metrics.inc("table_tombstones_rejected" if isinstance(exc, UnexpectedTombstone) else "table_decode_errors")
            return _Dead(rec, type(exc).__name__, str(exc))
        try:
            outputs = self.core.on_table(self._inbound(rec, message))
        except Exception as exc:  # noqa: BLE001 - a bad table record must not stop the service
            self.log.error("%s failed: %s: %s", where, type(exc).__name__, exc)
            self.metrics.inc("table_errors")
            return _Dead(rec, type(exc).__name__, str(exc) or repr(exc))
        pairs.extend((out, rec) for out in outputs)
        return None

    def _decode_record(self, rec: Any) -> Any:
        """Decode a record under the wire contract; a breach raises a non-retriable error (dead-lettered).

        A tombstone on a topic that carries no deletes, a value that does not decode, an id that
        is not its problem text's hash (IdMismatch) and a key that is not the message's own key
        (KeyMismatch) are all refused.
        """
        if rec.value is None:
            if not self._table_carries_deletes(rec.topic):
                raise UnexpectedTombstone(f"tombstone on topic {rec.topic}, which carries no deletes")
            return None
        message = decode(rec.value)
        check_id(message)
        check_key(rec.key, message)
        return message

    def _table_carries_deletes(self, topic: str) -> bool:
        logical = self.names.logical(topic)
        return logical is None or logical not in LOGICAL_TOPICS or spec_of(logical).deletes

    def _spreads(self, topic: str) -> bool:
        logical = self.names.logical(topic)
        return logical is not None and logical in LOGICAL_TOPICS and spec_of(logical).spread

    # ------------------------------------------------------------------ one step
    def _inbound(self, rec: Any, message: Any) -> Inbound:
        key = rec.key.decode("utf-8", "replace") if rec.key is not None else None
        topic = self.names.logical(rec.topic) or rec.topic
        headers = tuple((str(k), bytes(v or b"")) for k, v in (rec.headers or ()))
        return Inbound(topic, key, message, rec.partition, rec.offset, rec.timestamp or 0, headers)

    def _poll_input(self) -> list[Any]:
        """Poll the inputs, waiting up to ``poll_timeout_ms``, or not at all after a tick that emitted.

        A tick that emitted may have more to emit at once (the mutator opens a step in one tick
        and generates it in the next): waiting the poll out there cost each synchronous step a
        whole poll timeout. For a core whose ``wakes_on_tables`` is true (a synchronous dynamic
        mutator) the wait is cut in slices with the tables read between them, so a table record
        (the archivist's watermark it waits for) ends the wait as an input record does.
        """
        wait_ms = 0 if self._eager else self.settings.poll_timeout_ms
        if self._consumer is None:
            if wait_ms:
                time.sleep(wait_ms / 1000)
            return []
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            left_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            slice_ms = min(left_ms, _TABLE_SLICE_MS) if self._table_wakeup else left_ms
            polled = self._consumer.poll(timeout_ms=slice_ms, max_records=self.settings.max_poll_records)
            if polled or left_ms <= slice_ms or self._poll_tables():
                break
        records = _flatten(polled)
        return self._linger(records) if records else records

    def _linger(self, records: list[Any]) -> list[Any]:
        """Top a short batch up to ``batch_linger_records`` for at most ``batch_linger_ms`` (0: hand it over at once).

        For a latency-bound core (the solver: a backend call costs the same with 3 candidates
        as with 8) a batch that waits a few ms for the rest of a burst saves a whole call.
        """
        want = min(self.settings.batch_linger_records, self.settings.max_poll_records)
        until = time.monotonic() + self.settings.batch_linger_ms / 1000
        while len(records) < want:
            left_ms = math.ceil((until - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            more = _flatten(self._consumer.poll(timeout_ms=left_ms, max_records=self.settings.max_poll_records - len(records)))
            records.extend(more)
            if more:
                self.metrics.inc("lingered_records", len(more))
        return records

    def _step(self) -> bool:
        """Run one poll-handle-produce-commit cycle; return True if it consumed input."""
        records = self._poll_input()
        self._poll_tables()
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        inbound: list[Inbound] = []
        dead: list[_Dead] = []
        for rec in records:
            offsets[TopicPartition(rec.topic, rec.partition)] = OffsetAndMetadata(rec.offset + 1, "", -1)
            poisoned = self._poisoned.get(_coords(rec))
            if poisoned is not None:  # its outputs were refused for good on an earlier try
                dead.append(_Dead(rec, *poisoned))
                continue
            try:
                message = self._decode_record(rec)
            except SparqError as exc:
                self.metrics.inc("decode_errors")
                dead.append(_Dead(rec, type(exc).__name__, str(exc)))
                continue
            inbound.append(self._inbound(rec, message))
        started = time.monotonic()
        pairs: list[tuple[Outgoing, Any]] = []
        if inbound:
            handled, failed = self._handle(inbound, records)
            pairs.extend(handled)
            dead.extend(failed)
        ticked = self._carry + self.core.tick(time.time())
        self._carry = []
        self._eager = bool(ticked)
        pairs.extend((out, None) for out in ticked)
        if records or pairs or dead:
            if not self._deliver(pairs, dead, offsets, records):
                self._carry = ticked  # the rewound records redo their outputs; tick outputs are kept to resend
        if records:
            self.metrics.inc("consumed", len(records))
            self.metrics.inc("batches")
            self.metrics.set("batch_seconds", time.monotonic() - started)
        self._publish_metrics()
        return bool(records)

    def _handle(self, batch: list[Inbound], records: list[Any]) -> tuple[list[tuple[Outgoing, Any]], list[_Dead]]:
        """Handle a batch; on failure fall back to one message at a time so only the culprit is dead-lettered.

        Returns each output with the input record that produced it.
        """
        by_coords = {_coords(r): r for r in records}

        def source(item: Inbound) -> Any:
            return by_coords[(self.names.resolve(item.topic), item.partition, item.offset)]

        try:
            per_item = self._with_retries(lambda: self.core.handle_batch(batch), what=f"batch of {len(batch)}")
            if len(per_item) != len(batch):
                raise FatalError(f"handle_batch returned {len(per_item)} output lists for {len(batch)} inputs")
            return [(out, source(item)) for item, outs in zip(batch, per_item) for out in outs], []
        except Exception as exc:  # noqa: BLE001 - isolate the culprit below
            if len(batch) == 1:
                return [], [self._dead_for(batch[0], source(batch[0]), exc)]
            self.log.warning("batch failed (%s: %s): retrying one message at a time", type(exc).__name__, exc)
        pairs: list[tuple[Outgoing, Any]] = []
        dead: list[_Dead] = []
        for item in batch:
            try:
                outs = self._with_retries(lambda item=item: self.core.handle(item), what=f"offset {item.offset}")
                pairs.extend((out, source(item)) for out in outs)
            except Exception as exc:  # noqa: BLE001 - any handler error dead-letters that message
                dead.append(self._dead_for(item, source(item), exc))
        return pairs, dead

    def _dead_for(self, item: Inbound, rec: Any, exc: BaseException) -> _Dead:
        self.metrics.inc("handler_errors")
        self.log.error("message %s[%d]@%d dead-lettered: %s: %s", item.topic, item.partition, item.offset, type(exc).__name__, exc)
        return _Dead(rec, type(exc).__name__, str(exc) or repr(exc))

    def _with_retries(self, fn: Callable[[], Any], what: str) -> Any:
        delay = self.settings.retry_backoff_ms / 1000
        for attempt in range(1, self.settings.retry_max_attempts + 1):
            try:
                return fn()
            except SparqError as exc:
                if not exc.retriable or attempt == self.settings.retry_max_attempts:
                    raise
                self.metrics.inc("retries")
                self.log.warning("%s: retriable %s (attempt %d): %s; retrying in %.2fs", what, type(exc).__name__, attempt, exc, delay)
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2 or 0.05, self.settings.retry_backoff_max_ms / 1000)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ output
    def _screen(self, pairs: Sequence[tuple[Outgoing, Any]], dead: list[_Dead]) -> list[_Out]:
        """Encode outputs; an input with an output that can never be sent is dead-lettered instead, with the reason."""
        outs: list[_Out] = []
        refused: dict[_Coords, tuple[str, str]] = {}
        for out, source in pairs:
            key = out.resolved_key()
            item = _Out(
                out,
                source,
                self.names.resolve(out.topic),
                key.encode("utf-8") if key is not None else None,
                None if out.message is None else encode(out.message),
                list(out.headers),
                out.partition,
            )
            size = record_size(item.key, item.value, item.headers)
            reason = self._poisoned.get(_coords(source)) if source is not None else self._poisoned_ticks.pop(id(out), None)
            if reason is None and size > self._max_record:
                reason = (
                    "MessageSizeTooLargeError",
                    f"output to {item.topic} is {size} bytes, over max_request_size {self._max_record}",
                )
            if reason is None:
                outs.extend(self._placed(item))
            elif source is None:  # a tick output: its own (truncated) copy is the dead letter
                self.log.error("output to %s dead-lettered: %s", item.topic, reason[1])
                dead.append(_Dead(_Copy(item.topic, item.key, item.value, item.headers), *reason))
            else:
                refused.setdefault(_coords(source), reason)
        if refused:
            outs = [o for o in outs if o.source is None or _coords(o.source) not in refused]
            sources = {_coords(s): s for _, s in pairs if s is not None}
            for coords, (error_type, error) in refused.items():
                self.log.error("%s[%d]@%d dead-lettered: %s", *coords, error)
                self.metrics.inc("output_refused")
                dead.append(_Dead(sources[coords], error_type, error))
        return outs

    def _placed(self, item: _Out) -> list[_Out]:
        """One output, or one copy per partition (with the fan-out header) for an ``EVERY_PARTITION`` output.

        On a ``spread`` topic (``novel``) an output without a partition goes to the next partition
        round-robin, and its consumers' group assigns partition i to member i mod N: any run of n
        records gives each of N members n/N (+-1) when N divides the partition count, where key
        hashing gave a synchronous step's 64 ids to the replicas unevenly and the replica holding
        the most set the step's pace. The key stays the problem id (compaction, key checks, DLQ).
        """
        if item.partition is None and self._spreads(item.topic):
            parts = sorted(self._producer.partitions_for(item.topic) or ())
            if parts:
                turn = self._turns.get(item.topic, zlib.crc32(self.settings.instance.encode()))
                self._turns[item.topic] = turn + 1
                item.partition = parts[turn % len(parts)]
            return [item]
        if item.partition != EVERY_PARTITION:
            return [item]
        parts = sorted(self._producer.partitions_for(item.topic) or ())
        return [
            _Out(item.outgoing, item.source, item.topic, item.key, item.value, [*item.headers, (FANOUT_HEADER, f"{p}/{len(parts)}".encode())], p)
            for p in parts
        ]

    def _send(self, outs: Sequence[_Out], dead: Sequence[_Dead]) -> list[tuple[Any, _Out | _Dead]]:
        """Send every output and dead letter; while isolating a refusal, one record per acknowledged batch."""
        sent: list[tuple[Any, _Out | _Dead]] = []
        for what in [*outs, *dead]:
            sent.append((self._send_one(what), what))
            if self._isolate:
                self._flush(self.settings.client_timeout_s)
                self._check_sends(sent[-1:])
        return sent

    def _send_one(self, what: _Out | _Dead) -> Any:
        if isinstance(what, _Out):
            return self._producer.send(what.topic, key=what.key, value=what.value, headers=what.headers or None, partition=what.partition)
        rec = what.record
        headers = dlq_headers(
            source_topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            error_type=what.error_type,
            error=what.error,
            service=self.core.name,
            instance=self.settings.instance,
            original_headers=rec.headers or (),
        )
        value = rec.value
        if _coords(rec) in self._shrink:  # the broker refused the copy even within our limit
            headers.append(("sparq.dlq.original_size", str(len(value or b"")).encode()))
            value = b""
        value, headers = fit_record(rec.key, value, headers, self._max_record)
        return self._producer.send(self._dlq_topic, key=rec.key, value=value, headers=headers)

    def _flush(self, bound_s: float) -> None:
        """Flush in short slices: give up after ``bound_s``, or soon after a stop request (the broker may be gone)."""
        deadline = time.monotonic() + bound_s
        while True:
            try:
                self._producer.flush(timeout=0.5)
                return
            except KafkaTimeoutError:
                now = time.monotonic()
                if now >= deadline or (self._stop_at is not None and now - self._stop_at > 1.0):
                    raise

    def _check_sends(self, sent: Sequence[tuple[Any, _Out | _Dead]]) -> None:
        """Raise the first send error.

        A record the broker refuses for good (too large, invalid) also fails the producer's other
        batches, so the culprit is not known yet: the producer is replaced and the redo sends one
        record per batch; the record that fails then is the culprit, and its input is remembered
        to be dead-lettered on the next redo.
        """
        for fut, what in sent:
            exc = fut.exception if fut.is_done else None
            if exc is None:
                if not fut.is_done:
                    fut.get(timeout=0)  # raises a timeout: not acknowledged in time
                continue
            if not isinstance(exc, _RECORD_ERRORS):
                raise exc
            self._reset_producer()
            if not self._isolate:
                self._isolate = True
                raise _RecordsRejected(f"the broker refused a record ({exc}): resending one record at a time to find it")
            reason = (type(exc).__name__, f"the broker refused the record: {exc}")
            if isinstance(what, _Dead):
                self._shrink.add(_coords(what.record))
            elif what.source is not None:
                self._poisoned[_coords(what.source)] = reason
            else:
                self._poisoned_ticks[id(what.outgoing)] = reason
            raise _RecordsRejected(f"the broker refused a record for good ({exc}): dead-lettering its input")

    def _reset_producer(self) -> None:
        """Replace the producer (a refused record leaves kafka-python's idempotent producer failed for good)."""
        _force_close(self._producer)
        self._producer = None
        self._producer = self._new_producer()  # exactly-once: init_transactions aborts the old one's transaction

    def _new_producer(self) -> Any:
        txn_id = f"{self.group_id}.{self.settings.instance}" if self._txn else None
        producer = make_producer(self.settings, transactional_id=txn_id)
        if self._txn:
            producer.init_transactions()
        return producer

    def _deliver(
        self,
        pairs: Sequence[tuple[Outgoing, Any]],
        dead: Sequence[_Dead],
        offsets: dict[TopicPartition, OffsetAndMetadata],
        records: Sequence[Any] = (),
    ) -> bool:
        """Send outputs and dead letters, wait for the broker's acknowledgement, then commit offsets.

        Returns False when the sends failed and the batch was rewound to be handled again.
        """
        dead = list(dead)
        outs = self._screen(pairs, dead)
        bound = self.settings.client_timeout_s
        try:
            if self._txn:
                self._producer.begin_transaction()
            # Two phases: outputs flagged ``after`` (state records) only once the others are acknowledged.
            for phase, phase_dead in (([o for o in outs if not o.outgoing.after], dead), ([o for o in outs if o.outgoing.after], [])):
                if phase or phase_dead:
                    sent = self._send(phase, phase_dead)
                    self._flush(bound)
                    self._check_sends(sent)
            if self._txn:
                if offsets:
                    self._producer.send_offsets_to_transaction(offsets, self._consumer.group_metadata())
                self._producer.commit_transaction()
            elif offsets:
                self._consumer.commit(offsets, timeout_ms=int(bound * 1000))
        except _FENCED_ERRORS as exc:
            raise FatalError(
                f"another process took over transactional id {self.group_id}.{self.settings.instance} ({exc}); "
                "give each replica its own --instance"
            ) from None
        except CommitFailedError as exc:
            # The group rebalanced: another member now owns (and will redeliver) these records.
            self.metrics.inc("commit_failures")
            self.log.warning("commit failed after a rebalance; records will be redelivered: %s", exc)
            return True
        except KafkaError as exc:
            self.metrics.inc("produce_failures")
            self.log.warning("send/commit failed (%s: %s): rewinding the batch to retry it", type(exc).__name__, exc)
            if not isinstance(exc, _RecordsRejected):  # else the producer was replaced: nothing open to abort
                self._abort()
            self._rewind(records)
            if not isinstance(exc, _RecordsRejected):
                self._stop.wait(self.settings.retry_backoff_ms / 1000)
            return False
        self._isolate = False
        for d in dead:
            self._poisoned.pop(_coords(d.record), None)
            self._shrink.discard(_coords(d.record))
        self.metrics.inc("produced", len(outs))
        if dead:
            self.metrics.inc("dead_lettered", len(dead))
        return True

    def _rewind(self, records: Sequence[Any]) -> None:
        first: dict[TopicPartition, int] = {}
        for rec in records:
            tp = TopicPartition(rec.topic, rec.partition)
            first[tp] = min(first.get(tp, rec.offset), rec.offset)
        for tp, offset in first.items():
            try:
                self._consumer.seek(tp, offset)
            except (KafkaError, AssertionError, ValueError) as exc:  # partition no longer ours
                self.log.warning("seek %s to %d: %s", tp, offset, exc)

    def _publish_metrics(self, force: bool = False) -> None:
        if not (force or self.metrics.due()):
            return
        lag = unknown = 0
        for client in (self._consumer, self._tables):  # input lag, and how far behind the tables are
            if client is None:
                continue
            assigned = client.assignment()
            if client is self._consumer and not assigned:
                unknown += 1  # still joining the group: nothing is known yet
            for tp in assigned:
                hw = client.highwater(tp)
                position = client.position(tp, timeout_ms=0) if hw is not None else None
                if hw is None or position is None:
                    unknown += 1  # no fetch answered yet for this partition
                else:  # the position steps over transaction markers: 0 when caught up under both guarantees
                    lag += max(0, hw - position)
        self.metrics.set("lag", lag)
        self.metrics.set("lag_unknown", unknown)
        snap = self.metrics.snapshot(self.core.metrics())
        self.log.debug("metrics %s", snap.counters)
        try:
            if self._txn:
                self._producer.begin_transaction()
            self._producer.send(self.names.topic("metrics"), key=snap.kafka_key().encode(), value=encode(snap))
            if self._txn:
                self._producer.commit_transaction()
            # at-least-once: no flush; the producer sends within linger_ms and close() flushes the last one
        except _FENCED_ERRORS as exc:
            raise FatalError(f"another process took over transactional id {self.group_id}.{self.settings.instance}: {exc}") from None
        except KafkaError as exc:  # metrics are best effort: the next snapshot carries the same counters
            self.log.warning("publishing metrics failed: %s: %s", type(exc).__name__, exc)
            self._abort()

    def _abort(self) -> None:
        """Abort the open transaction, if any (exactly-once only)."""
        if self._txn:
            try:
                self._producer.abort_transaction()
            except KafkaError as exc:
                self.log.warning("abort_transaction: %s", exc)


def _flatten(polled: dict[Any, list[Any]]) -> list[Any]:
    """The records of one poll, partition by partition."""
    return [rec for tp in sorted(polled, key=lambda t: (t.topic, t.partition)) for rec in polled[tp]]


def _force_close(producer: Any) -> None:
    """Close a producer whose records cannot be delivered: stop its sender (aborting them), then close."""
    sender = getattr(producer, "_sender", None)
    try:
        if sender is not None:
            sender.force_close()
            sender.join(2)
        producer.close(timeout=1)
    except Exception:  # noqa: BLE001 - best effort at exit
        pass


def run_service(core: Core, settings: ServiceSettings, **kwargs: Any) -> int:
    """Run ``core`` with the process wrapper until stopped; return the exit code."""
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return ServiceProcess(core, settings).run(**kwargs)
