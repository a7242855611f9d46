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

One active replica: a core with ``exclusive = True`` (its state is one global structure) runs
as one active replica and hot standbys (:mod:`sparq_stream.bus.lease`). Only the replica the
group gives the partitions (of its inputs, or of a lease topic for a core without inputs)
handles input and ticks. Every replica starts reading its tables on start and follows them in
every step; on taking over, it first takes the role's transactional id ``<group>.active`` under exactly-once (fencing
the previous active: its open transaction, which would hold the read-committed tables back
until it timed out, is aborted), then reads its tables to their end (what the previous active
wrote), then goes on from the committed offsets. The group prefers the replica that started
first, so a hot standby wins over a replica just (re)started with cold tables. An active
replica that loses the partitions (it stalled past the session timeout) exits, so it is
restarted as a standby.

SIGTERM/SIGINT finish the batch in flight, commit, close and return 0; every
flush/commit/close is bounded, and a watchdog ends the process
``shutdown_timeout_s`` after the signal whatever it is blocked on (the broker
gone, say), without committing: at-least-once redelivers, exactly-once aborts.
A core given as a builder (:func:`serve_service`) is built, its models loaded, in a
worker thread with progress lines; a signal during that load exits at once with
``128 + signal`` (:mod:`sparq_stream.bus.loading`).

With ``http_port`` set, the process serves ``/metrics`` (Prometheus), ``/healthz`` and
``/readyz`` (:mod:`sparq_stream.bus.ops_http`) from the start, the model load included.
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
    RebalanceInProgressError,
    RecordListTooLargeError,
)
from kafka.structs import MemberState, OffsetAndMetadata

from sparq_stream.bus.client import make_consumer, make_producer, max_request_size
from sparq_stream.bus.compacted import caught_up, partitions_of
from sparq_stream.bus.dlq import dlq_headers, fit_record, record_size
from sparq_stream.bus.lease import LeaseWatch, OneActiveAssignor, active_transactional_id
from sparq_stream.bus.loading import load_in_thread
from sparq_stream.bus.metrics import PartitionLag, ServiceMetrics
from sparq_stream.bus.ops_http import OpsServer, Probes
from sparq_stream.bus.topics import LOGICAL_TOPICS, TopicNames, spec_of
from sparq_stream.core import EVERY_PARTITION, FANOUT_HEADER, Core, Inbound, Outgoing
from sparq_stream.errors import ConfigError, FatalError, RetriableError, SparqError
from sparq_stream.ids import check_id, check_key
from sparq_stream.messages import decode, encode
from sparq_stream.settings import ServiceSettings

__all__ = ["ServiceProcess", "UnexpectedTombstone", "run_service", "serve_service"]

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
    """Runs one core against Kafka; the same code for every service.

    Give the core, or ``build`` (a function that builds it, loading its models) and ``name``:
    then :meth:`run` builds it in a worker thread first, serving the probes meanwhile.
    """

    def __init__(
        self,
        core: Core | None,
        settings: ServiceSettings,
        *,
        install_signals: bool = True,
        build: Callable[[], Core] | None = None,
        name: str | None = None,
    ) -> None:
        if (core is None) == (build is None) or (core is None and name is None):
            raise ValueError("give either a core, or build and name")
        self.core: Core = core  # type: ignore[assignment]  # built by run() when None
        self._build = build
        self.name = core.name if core is not None else str(name)
        self.settings = settings
        self.names = TopicNames(settings.prefix)
        self.group_id = settings.group_id or f"{settings.prefix}.{self.name}"
        self.log = logging.getLogger(f"sparq.{self.name}")
        self.metrics = ServiceMetrics(self.name, settings.instance, settings.metrics_interval_s)
        self.probes = Probes(
            stale_after_s=settings.max_poll_interval_ms / 1000,
            broker_stale_s=max(3 * settings.metrics_interval_s, settings.session_timeout_ms / 1000),
        )
        self.ops: OpsServer | None = None
        self._stop = threading.Event()
        self._install_signals = install_signals
        self._txn = settings.processing_guarantee == "exactly_once"
        self._consumer: Any = None
        self._tables: Any = None
        self._producer: Any = None
        self._dlq_topic = self.names.topic("dlq")
        self._redo: _Redo | None = None  # a batch whose delivery failed, to be delivered again as it is
        self._max_record = max_request_size(settings)
        self._poisoned: dict[_Coords, tuple[str, str]] = {}  # input -> (error type, reason): dead-letter on redo
        self._poisoned_ticks: dict[int, tuple[str, str]] = {}  # id() of a carried tick output -> reason
        self._shrink: set[_Coords] = set()  # dead letters the broker refused: resend without their value
        self._watchdog: threading.Timer | None = None
        self._stop_at: float | None = None
        self._outside_since: float | None = None  # since when the input consumer is outside its group
        self._failed_deliveries = 0  # deliveries failed in a row (not counting refused records)
        self._isolate = False  # after a refused record: one record per batch until a delivery succeeds
        self._exclusive = False
        self._lease: LeaseWatch | None = None
        self._lease_consumer: Any = None  # an exclusive core without inputs holds its lease here
        self._active = True
        if core is not None:
            self._init_role(core)
        self._eager = False  # the last tick emitted: poll without waiting
        self._table_wakeup = False  # the core can act on a table record: input polls wait in slices
        self._turns: dict[str, int] = {}  # spread topics: the next partition's turn (starts at a hash of the instance)

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask the loop to finish the batch in flight, commit and exit (thread- and signal-safe)."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self.probes.stopping()
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
        assignor = OneActiveAssignor(self.settings.instance) if self._exclusive else None
        if topics:
            spread = any(self._spreads(t) for t in topics)  # members take the spread partitions in turn
            self._consumer = make_consumer(self.settings, self.group_id, assignor=assignor, round_robin=spread)
            self._await_metadata(topics)
            self._consumer.subscribe(topics, listener=self._lease)
        elif self._exclusive:
            lease_topic = self.names.resolve(getattr(self.core, "lease_topic", None) or self.core.tables[0])
            self._lease_consumer = make_consumer(self.settings, self.group_id, lease_topic, assignor=assignor, listener=self._lease)
        if self._exclusive:
            self._tell_role(False)
        if self.core.tables:
            self._tables = make_consumer(self.settings, None)
            self._table_wakeup = bool(getattr(self.core, "wakes_on_tables", False))
            self._restore_tables()
        self.probes.met("tables")
        if self._consumer is None:
            self.probes.met("partitions")

    def _await_metadata(self, topics: list[str]) -> None:
        """Know the input topics' partitions before joining the group.

        A topic created a moment ago may not be in the broker's metadata answer yet; the group
        leader would then assign nothing and the consumer would idle until its next metadata
        refresh (``metadata_max_age_ms``, minutes). A topic still unknown after a few seconds is
        subscribed to anyway: it is picked up when it appears.
        """
        for topic in topics:
            try:
                partitions_of(self._consumer, topic, timeout_s=min(10.0, self.settings.connect_timeout_s))
            except ConfigError:
                self.log.warning("input topic %s does not exist yet: waiting for it", topic)

    def _close(self) -> None:
        bound_ms = int(min(self.settings.client_timeout_s, self.settings.shutdown_timeout_s / 2) * 1000)
        for name in ("_consumer", "_tables", "_lease_consumer"):
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
            self._serve_http()
            if self._build is not None:
                self.core = load_in_thread(
                    self._build, what=f"the {self.name} core", log=self.log, on_wait=self.probes.beat, exit_on_signal=self._install_signals
                )
                self._build = None
                self._init_role(self.core)
            self.probes.met("model")
            self._open()
            opened = True
            self.log.info(
                "%s running: group=%s instance=%s inputs=%s tables=%s guarantee=%s",
                self.name,
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
            if self._build is None:
                self.core.close()
            self._close()
            if self.ops is not None:
                self.ops.close()
                self.ops = None
            self.log.info("%s stopped", self.name)
        return 0

    def _serve_http(self) -> None:
        """Start the /metrics, /healthz, /readyz endpoint when ``http_port`` is set."""
        if self.settings.http_port is None or self.ops is not None:
            return
        from sparq_stream.bus.prometheus import service_registry

        registry = service_registry(self.metrics, self.group_id, self.probes.ready)
        self.ops = OpsServer(self.settings.http_host, self.settings.http_port, self.probes, registry).start()

    # ------------------------------------------------------------------ tables
    def _restore_tables(self) -> None:
        """Read every table topic from the beginning up to its high watermark before handling input.

        Raises a retriable error (the service exits non-zero; its supervisor restarts it) when the
        tables are not read to their end within ``restore_timeout_s``.
        """
        parts = [tp for logical in self.core.tables for tp in partitions_of(self._tables, self.names.resolve(logical))]
        self._tables.assign(parts)
        self._tables.seek_to_beginning(*parts)
        if not self._exclusive:  # a standby follows in every step; it reads to the end on taking over
            self._read_tables_to_end(parts)

    def _read_tables_to_end(self, parts: list[TopicPartition], min_s: float = 0.0, what: str = "restored") -> None:
        """Poll the tables until every partition reached its high watermark (and ``min_s`` passed)."""
        n = 0
        started = time.monotonic()
        deadline = started + self.settings.restore_timeout_s
        next_report = started + 10.0
        while True:
            self.probes.beat()
            n += self._poll_tables(timeout_ms=200)
            if caught_up(self._tables, parts) and time.monotonic() - started >= min_s:
                break
            now = time.monotonic()
            if self._stop.is_set():
                self.log.info("stop requested while restoring tables (%d record(s) read)", n)
                return
            if now >= deadline:
                raise RetriableError(
                    f"{self.name}: table topics not read to their end within {self.settings.restore_timeout_s:.0f}s "
                    f"({n} record(s) read; behind: {self._table_lag(parts)}); exiting so the service is restarted "
                    "(raise --restore-timeout-s for large tables)"
                )
            if now >= next_report:
                self.log.info("restoring tables: %d record(s) read in %.0fs; behind: %s", n, now - started, self._table_lag(parts))
                next_report = now + 10.0
        topics = sorted({tp.topic for tp in parts})
        self.log.info("%s %d table record(s) from %s in %.1fs", what, n, topics, time.monotonic() - started)

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
        for rec in _flatten(polled):
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
        self.probes.beat()
        if self._redo is not None:
            self._redeliver()
            self._publish_metrics()
            return False
        if self._consumer is None and self._lease_consumer is not None:
            records: list[Any] = []
            self._poll_lease()  # waits the poll timeout
        else:
            records = self._poll_input()
        if self._consumer is not None:
            self._watch_membership()
            if self._consumer.assignment() or (self._lease is not None and self._lease.joined):  # a standby has joined
                self.probes.met("partitions")
            else:
                self.probes.waiting("partitions")
            self.metrics.set("in_flight", len(records))
        if self._exclusive and not self._check_role():
            self._poll_tables()  # a hot standby: follow the tables, handle nothing
            self._publish_metrics()
            return False
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
            self.metrics.handle_seconds.observe(time.monotonic() - started)
            pairs.extend(handled)
            dead.extend(failed)
        ticked = self.core.tick(time.time())
        self._eager = bool(ticked)
        pairs.extend((out, None) for out in ticked)
        if records or pairs or dead:
            if not self._deliver(pairs, dead, offsets):
                self._hold(_Redo(pairs, dead, offsets))
        self.metrics.set("in_flight", 0)
        if records:
            self.metrics.inc("consumed", len(records))
            self.metrics.inc("batches")
            self.metrics.set("batch_seconds", time.monotonic() - started)
        self._publish_metrics()
        return bool(records)

    def _hold(self, redo: "_Redo") -> None:
        """Keep a batch whose delivery failed, to deliver exactly it again; pause input meanwhile.

        The core has already applied the batch to its state, so handling the records again would
        not give the same outputs (the archivist, for one, sees its results as duplicates and writes
        no watermark): the outputs computed once are resent, with the same offsets, until they are
        acknowledged. Input stays paused (and polled, so the group keeps this member) until then.
        """
        self._redo = redo
        if self._consumer is not None:
            assigned = set(self._consumer.assignment())
            redo.paused = assigned - set(self._consumer.paused())
            if redo.paused:
                self._consumer.pause(*redo.paused)

    def _redeliver(self) -> None:
        """Try the held batch again; on success resume the input it paused."""
        redo = self._redo
        assert redo is not None
        if self._consumer is not None:
            self._consumer.poll(timeout_ms=_HOLD_POLL_MS)  # paused: fetches nothing; keeps the membership, lets a rebalance finish
        if not self._deliver(redo.pairs, redo.dead, redo.offsets):
            return
        self._redo = None
        if self._consumer is not None and redo.paused:
            still = redo.paused & set(self._consumer.assignment())
            if still:
                self._consumer.resume(*still)

    def _init_role(self, core: Core) -> None:
        """An ``exclusive`` core runs as the one active replica or a hot standby; a ``group_member`` core has a group of its own."""
        self._exclusive = bool(getattr(core, "exclusive", False))
        self._lease = LeaseWatch() if self._exclusive else None
        self._active = not self._exclusive
        member = getattr(core, "group_member", None)
        if member is not None and not self.settings.group_id:  # a replica that reads every partition of its inputs
            self.group_id = f"{self.settings.prefix}.{self.name}.{member}"

    def _poll_lease(self) -> None:
        """Keep the lease consumer in its group; its partitions stay paused (nothing is fetched)."""
        self._lease_consumer.poll(timeout_ms=self.settings.poll_timeout_ms, max_records=1)  # records, if any, are not ours to read
        held = self._lease_consumer.assignment()
        if held and set(held) - set(self._lease_consumer.paused()):
            self._lease_consumer.pause(*held)

    def _check_role(self) -> bool:
        """Follow the group's choice of the active replica; return True while this one is it."""
        assert self._lease is not None
        active = self._lease.active
        if active and not self._active:
            self._take_over()
        elif self._active and not active and self._lease.joined:
            self.metrics.inc("leases_lost")
            raise RetriableError(
                f"{self.core.name}: instance {self.settings.instance} lost the active role (the group gave it to another "
                "replica, e.g. after a stall past the session timeout): exiting so it is restarted as a standby"
            )
        return self._active

    def _take_over(self) -> None:
        """Become the active replica: the role's transactional id (exactly-once), then the tables read to their end."""
        started = time.monotonic()
        self._active = True
        if self._txn:  # init_transactions under <group>.active fences the previous active and aborts its transaction
            _force_close(self._producer)
            self._producer = None
            self._producer = self._new_producer()
        if self._tables is not None:
            # two fetch rounds at least: the high watermarks seen must postdate the previous active's last writes
            self._read_tables_to_end(sorted(self._tables.assignment(), key=lambda t: (t.topic, t.partition)), min_s=0.5, what="caught up with")
        self._tell_role(True)
        self.metrics.inc("takeovers")
        self.log.info(
            "%s: instance %s is now the active replica (tables caught up in %.2fs)",
            self.core.name, self.settings.instance, time.monotonic() - started,
        )

    def _tell_role(self, active: bool) -> None:
        """Tell an exclusive core its role (``set_active``, optional for cores not built on BaseCore)."""
        tell = getattr(self.core, "set_active", None)
        if callable(tell):
            tell(active)

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
            service=self.name,
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

    def _replace_wedged_producer(self) -> None:
        """Replace a producer whose deliveries keep timing out; keep it while no broker answers a new one."""
        try:
            fresh = self._new_producer()
        except (SparqError, KafkaError) as exc:
            self.log.warning("%d deliveries failed in a row; no new producer yet: %s", self._failed_deliveries, exc)
            return
        self.log.warning("%d deliveries failed in a row: replaced the producer", self._failed_deliveries)
        self.metrics.inc("producer_replacements")
        self._failed_deliveries = 0
        _force_close(self._producer)
        self._producer = fresh

    def _new_producer(self) -> Any:
        txn_id = self._txn_id() if self._txn else None
        producer = make_producer(self.settings, transactional_id=txn_id)
        if self._txn:
            producer.init_transactions()
        return producer

    def _txn_id(self) -> str:
        """``<group>.<instance>``: stable per replica; the active replica of an exclusive core uses the role's id."""
        if self._exclusive and self._active:
            return active_transactional_id(self.group_id)
        return f"{self.group_id}.{self.settings.instance}"

    def _deliver(
        self,
        pairs: Sequence[tuple[Outgoing, Any]],
        dead: Sequence[_Dead],
        offsets: dict[TopicPartition, OffsetAndMetadata],
    ) -> bool:
        """Send outputs and dead letters, wait for the broker's acknowledgement, then commit offsets.

        Returns False when the sends failed (the caller holds the batch to deliver it again).
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
                try:
                    self._consumer.commit(offsets, timeout_ms=int(bound * 1000))
                except RebalanceInProgressError as exc:
                    # The outputs are acknowledged: resending them would only duplicate them, and a
                    # held batch polls too briefly for the group's rebalance to finish (seen: minutes
                    # of resends). As after a finished rebalance, the records come again to their owner.
                    raise CommitFailedError(str(exc)) from exc
        except _FENCED_ERRORS as exc:
            raise FatalError(
                f"another process took over transactional id {self._txn_id()} ({exc}); "
                "give each replica its own --instance"
            ) from None
        except CommitFailedError as exc:
            # The group rebalanced: another member now owns (and will redeliver) these records. The
            # outputs and dead letters are acknowledged all the same: account for them below.
            self.metrics.inc("commit_failures")
            self.log.warning("commit failed after a rebalance; records will be redelivered: %s", exc)
        except KafkaError as exc:
            self.metrics.inc("produce_failures")
            self.log.warning("send/commit failed (%s: %s): delivering the same batch again", type(exc).__name__, exc)
            if not isinstance(exc, _RecordsRejected):  # else the producer was replaced: nothing open to abort
                self._abort()
                self._failed_deliveries += 1
                if self._failed_deliveries >= _REPLACE_PRODUCER_AFTER:
                    # A producer whose sends still time out after its broker came back can stay wedged
                    # (seen after an Apache Kafka restart): a fresh one resends the carried outputs.
                    self._replace_wedged_producer()
            if not isinstance(exc, _RecordsRejected):
                self._stop.wait(self.settings.retry_backoff_ms / 1000)
            return False
        self._isolate = False
        self._failed_deliveries = 0
        for d in dead:
            self._poisoned.pop(_coords(d.record), None)
            self._shrink.discard(_coords(d.record))
        self.metrics.inc("produced", len(outs))
        if dead:
            self.metrics.inc("dead_lettered", len(dead))
        return True

    def _watch_membership(self) -> None:
        """Raise a retriable error when the input consumer stayed outside its group for ``join_timeout_s``.

        A member that never completes its join (seen once on Apache Kafka under heavy load: no
        assignment, no error, for minutes) would idle silently; exiting lets the supervisor (or the
        orchestrator) start a fresh consumer. A stable member with no partitions (a standby) is fine.
        """
        limit = self.settings.join_timeout_s
        coordinator = getattr(self._consumer, "_coordinator", None)
        state = getattr(coordinator, "state", None)
        if limit <= 0 or state is None:
            return
        now = time.monotonic()
        if state is MemberState.STABLE:
            self._outside_since = None
            return
        if self._outside_since is None:
            self._outside_since = now
        elif now - self._outside_since > limit:
            raise RetriableError(
                f"{self.core.name}: the input consumer has not joined group {self.group_id} within {limit:.0f}s "
                f"(state {getattr(state, 'name', state)}); exiting so the service is restarted"
            )

    def _publish_metrics(self, force: bool = False) -> None:
        if not (force or self.metrics.due()):
            return
        parts = self._partition_lag()
        self.metrics.partition_lag = parts
        # nothing is known yet while joining the group (a standby has joined: it has no input)
        joining = self._consumer is not None and not self._consumer.assignment() and not (self._lease is not None and self._lease.joined)
        unknown = sum(p.lag is None for p in parts) + int(joining)
        self.metrics.set("lag", sum(p.lag for p in parts if p.lag is not None))
        if self._exclusive:
            self.metrics.set("active", float(self._active))
            if self._consumer is None and self._lease is not None and not self._lease.joined:
                unknown += 1  # no role yet
        self.metrics.set("lag_unknown", unknown)
        snap = self.metrics.snapshot(self.core.metrics() if self._active else None)
        self.log.debug("metrics %s", snap.counters)
        try:
            if self._txn:
                self._producer.begin_transaction()
            self.probes.sent()  # before the send: its acknowledgement may come first
            future = self._producer.send(self.names.topic("metrics"), key=snap.kafka_key().encode(), value=encode(snap))
            future.add_callback(self.probes.acknowledged)
            future.add_errback(self.probes.failed)
            if self._txn:
                self._producer.commit_transaction()
            # at-least-once: no flush; the producer sends within linger_ms and close() flushes the last one
        except _FENCED_ERRORS as exc:
            raise FatalError(f"another process took over transactional id {self._txn_id()}: {exc}") from None
        except KafkaError as exc:  # metrics are best effort: the next snapshot carries the same counters
            self.log.warning("publishing metrics failed: %s: %s", type(exc).__name__, exc)
            self._abort()

    def _partition_lag(self) -> list[PartitionLag]:
        """Records behind per assigned partition: the end offset minus the consumer's position.

        The position steps over transaction markers, so a drained partition reads 0 under both
        guarantees. The end offset is the last stable offset under exactly-once (read_committed:
        an open upstream transaction's records are not readable yet, so they are not lag), asked
        of the broker once per metrics interval; else the high watermark of the last fetch. None:
        not known yet (no fetch answered, or the broker did not answer in time).
        """
        out: list[PartitionLag] = []
        for reader, client in (("input", self._consumer), ("table", self._tables)):
            if client is None:
                continue
            assigned = sorted(client.assignment())
            ends = self._end_offsets(client, assigned)
            for tp in assigned:
                end = ends.get(tp)
                position = client.position(tp, timeout_ms=0) if end is not None else None
                lag = None if end is None or position is None else max(0, end - position)
                out.append(PartitionLag(reader, tp.topic, tp.partition, lag))
        return out

    def _end_offsets(self, client: Any, parts: list[TopicPartition]) -> dict[TopicPartition, int]:
        if not parts:
            return {}
        if self._txn:  # ListOffsets under read_committed answers the last stable offset
            try:
                return dict(client.end_offsets(parts, timeout_ms=int(min(2.0, self.settings.client_timeout_s) * 1000)))
            except KafkaError as exc:
                self.log.debug("end offsets: %s", exc)
                return {}
        return {tp: hw for tp in parts if (hw := client.highwater(tp)) is not None}

    def _abort(self) -> None:
        """Abort the open transaction, if any (exactly-once only)."""
        if self._txn:
            try:
                self._producer.abort_transaction()
            except KafkaError as exc:
                self.log.warning("abort_transaction: %s", exc)


@dataclass
class _Redo:
    """A batch whose delivery failed: its outputs, dead letters and offsets, delivered again as they are."""

    pairs: list[tuple[Outgoing, Any]]
    dead: list[_Dead]
    offsets: dict[TopicPartition, OffsetAndMetadata]
    paused: set[TopicPartition] = field(default_factory=set)


#: Failed deliveries in a row after which the producer is replaced (each waits up to client_timeout_s).
_REPLACE_PRODUCER_AFTER = 2
#: How long a held batch's input poll waits: long enough for a group's join and sync to complete.
_HOLD_POLL_MS = 200


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


def _configure_logging(settings: ServiceSettings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_service(core: Core, settings: ServiceSettings, **kwargs: Any) -> int:
    """Run ``core`` with the process wrapper until stopped; return the exit code."""
    _configure_logging(settings)
    return ServiceProcess(core, settings).run(**kwargs)


def serve_service(name: str, build: Callable[[], Core], settings: ServiceSettings, **kwargs: Any) -> int:
    """Build the service's core (its models load in a thread, with progress; SIGTERM exits at once), then run it."""
    _configure_logging(settings)
    return ServiceProcess(None, settings, build=build, name=name).run(**kwargs)
