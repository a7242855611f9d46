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
SIGTERM/SIGINT finish the batch in flight, commit, close and return 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from sparq_stream.bus.client import make_consumer, make_producer
from sparq_stream.bus.compacted import caught_up, partitions_of
from sparq_stream.bus.dlq import dlq_headers
from sparq_stream.bus.metrics import ServiceMetrics
from sparq_stream.bus.topics import TopicNames
from sparq_stream.core import Core, Inbound, Outgoing
from sparq_stream.errors import SparqError
from sparq_stream.messages import decode, encode
from sparq_stream.settings import ServiceSettings

__all__ = ["ServiceProcess", "run_service"]


@dataclass
class _Dead:
    """A record bound for the dead-letter topic."""

    record: Any
    error_type: str
    error: str


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

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask the loop to finish the batch in flight, commit and exit (thread- and signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop.is_set()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.log.info("received %s: finishing the batch in flight", signal.Signals(signum).name)
        self.stop()

    def _open(self) -> None:
        topics = [self.names.resolve(t) for t in self.core.inputs]
        txn_id = f"{self.group_id}.{self.settings.instance}" if self._txn else None
        self._producer = make_producer(self.settings, transactional_id=txn_id)
        if self._txn:
            self._producer.init_transactions()
        if topics:
            self._consumer = make_consumer(self.settings, self.group_id, *topics)
        if self.core.tables:
            self._tables = make_consumer(self.settings, None)
            self._restore_tables()

    def _close(self) -> None:
        for name in ("_consumer", "_tables"):
            client = getattr(self, name)
            if client is not None:
                try:
                    client.close(autocommit=False)
                except Exception as exc:  # closing must not mask the real exit reason
                    self.log.warning("closing %s: %s", name, exc)
                setattr(self, name, None)
        if self._producer is not None:
            try:
                self._producer.flush(timeout=10)
                self._producer.close(timeout=10)
            except Exception as exc:
                self.log.warning("closing producer: %s", exc)
            self._producer = None

    def run(self, until: Callable[[], bool] | None = None, max_idle_s: float | None = None) -> int:
        """Run until stopped (signal, :meth:`stop`, ``until()`` true, or idle for ``max_idle_s``); return 0."""
        if self._install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self._open()
        self.log.info(
            "%s running: group=%s inputs=%s tables=%s guarantee=%s",
            self.core.name,
            self.group_id,
            list(self.core.inputs),
            list(self.core.tables),
            self.settings.processing_guarantee,
        )
        last_input = time.monotonic()
        try:
            while not self._stop.is_set():
                if self._step():
                    last_input = time.monotonic()
                elif max_idle_s is not None and time.monotonic() - last_input > max_idle_s:
                    self.log.info("idle for %.1fs: stopping", max_idle_s)
                    break
                if until is not None and until():
                    break
        finally:
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
        """Read every table topic from the beginning up to its high watermark before handling input."""
        parts = [tp for logical in self.core.tables for tp in partitions_of(self._tables, self.names.resolve(logical))]
        self._tables.assign(parts)
        self._tables.seek_to_beginning(*parts)
        n = 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            n += self._poll_tables(timeout_ms=200)
            if caught_up(self._tables, parts):
                break
        self.log.info("restored %d table record(s) from %s", n, [tp.topic for tp in parts])

    def _poll_tables(self, timeout_ms: int = 0) -> int:
        if self._tables is None:
            return 0
        polled = self._tables.poll(timeout_ms=timeout_ms, max_records=self.settings.max_poll_records)
        n = 0
        outputs: list[Outgoing] = []
        dead: list[_Dead] = []
        for tp in sorted(polled, key=lambda t: (t.topic, t.partition)):
            for rec in polled[tp]:
                n += 1
                try:
                    message = None if rec.value is None else decode(rec.value)
                except SparqError as exc:
                    self.log.warning("table record %s[%d]@%d does not decode: %s", tp.topic, tp.partition, rec.offset, exc)
                    self.metrics.inc("table_decode_errors")
                    continue
                inbound = self._inbound(rec, message)
                try:
                    outputs.extend(self.core.on_table(inbound))
                except Exception as exc:  # noqa: BLE001 - a bad table record must not stop the service
                    self.log.error("table record %s[%d]@%d failed: %s: %s", tp.topic, tp.partition, rec.offset, type(exc).__name__, exc)
                    self.metrics.inc("table_errors")
                    if isinstance(exc, SparqError) and not exc.retriable:  # refused for good: dead-letter a copy
                        dead.append(_Dead(rec, type(exc).__name__, str(exc) or repr(exc)))
        if n:
            self.metrics.inc("table_records", n)
        if outputs or dead:
            self._send_and_commit(outputs, dead, {})
        return n

    # ------------------------------------------------------------------ one step
    def _inbound(self, rec: Any, message: Any) -> Inbound:
        key = rec.key.decode("utf-8", "replace") if rec.key is not None else None
        topic = self.names.logical(rec.topic) or rec.topic
        return Inbound(topic, key, message, rec.partition, rec.offset, rec.timestamp or 0)

    def _step(self) -> bool:
        """Run one poll-handle-produce-commit cycle; return True if it consumed input."""
        records: list[Any] = []
        if self._consumer is not None:
            polled = self._consumer.poll(timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_poll_records)
            for tp in sorted(polled, key=lambda t: (t.topic, t.partition)):
                records.extend(polled[tp])
        else:
            time.sleep(self.settings.poll_timeout_ms / 1000)
        self._poll_tables()
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        inbound: list[Inbound] = []
        dead: list[_Dead] = []
        for rec in records:
            offsets[TopicPartition(rec.topic, rec.partition)] = OffsetAndMetadata(rec.offset + 1, "", -1)
            try:
                message = None if rec.value is None else decode(rec.value)
            except SparqError as exc:
                self.metrics.inc("decode_errors")
                dead.append(_Dead(rec, type(exc).__name__, str(exc)))
                continue
            inbound.append(self._inbound(rec, message))
        started = time.monotonic()
        outputs: list[Outgoing] = []
        if inbound:
            handled, failed = self._handle(inbound, records)
            outputs.extend(handled)
            dead.extend(failed)
        ticked = self._carry + self.core.tick(time.time())
        self._carry = []
        outputs.extend(ticked)
        if records or outputs or dead:
            if not self._send_and_commit(outputs, dead, offsets, records):
                self._carry = ticked  # the rewound records redo their outputs; tick outputs are kept to resend
        if records:
            self.metrics.inc("consumed", len(records))
            self.metrics.inc("batches")
            self.metrics.set("batch_seconds", time.monotonic() - started)
        self._publish_metrics()
        return bool(records)

    def _handle(self, batch: list[Inbound], records: list[Any]) -> tuple[list[Outgoing], list[_Dead]]:
        """Handle a batch; on failure fall back to one message at a time so only the culprit is dead-lettered."""
        try:
            per_item = self._with_retries(lambda: self.core.handle_batch(batch), what=f"batch of {len(batch)}")
            return [out for outs in per_item for out in outs], []
        except Exception as exc:  # noqa: BLE001 - isolate the culprit below
            if len(batch) == 1:
                return [], [self._dead_for(batch[0], records, exc)]
            self.log.warning("batch failed (%s: %s): retrying one message at a time", type(exc).__name__, exc)
        outputs: list[Outgoing] = []
        dead: list[_Dead] = []
        for item in batch:
            try:
                outputs.extend(self._with_retries(lambda item=item: self.core.handle(item), what=f"offset {item.offset}"))
            except Exception as exc:  # noqa: BLE001 - any handler error dead-letters that message
                dead.append(self._dead_for(item, records, exc))
        return outputs, dead

    def _dead_for(self, item: Inbound, records: list[Any], exc: BaseException) -> _Dead:
        self.metrics.inc("handler_errors")
        self.log.error("message %s[%d]@%d dead-lettered: %s: %s", item.topic, item.partition, item.offset, type(exc).__name__, exc)
        topic = self.names.resolve(item.topic)
        rec = next(r for r in records if r.topic == topic and r.partition == item.partition and r.offset == item.offset)
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
    def _send(self, outputs: Sequence[Outgoing], dead: Sequence[_Dead]) -> list[Any]:
        futures = []
        for out in outputs:
            key = out.resolved_key()
            value = None if out.message is None else encode(out.message)
            futures.append(
                self._producer.send(
                    self.names.resolve(out.topic),
                    key=key.encode("utf-8") if key is not None else None,
                    value=value,
                    headers=list(out.headers) or None,
                )
            )
        for d in dead:
            headers = dlq_headers(
                source_topic=d.record.topic,
                partition=d.record.partition,
                offset=d.record.offset,
                error_type=d.error_type,
                error=d.error,
                service=self.core.name,
                original_headers=d.record.headers or (),
            )
            futures.append(self._producer.send(self._dlq_topic, key=d.record.key, value=d.record.value, headers=headers))
        return futures

    def _send_and_commit(
        self,
        outputs: Sequence[Outgoing],
        dead: Sequence[_Dead],
        offsets: dict[TopicPartition, OffsetAndMetadata],
        records: Sequence[Any] = (),
    ) -> bool:
        """Send outputs and dead letters, wait for the broker's acknowledgement, then commit offsets.

        Returns False when the sends failed and the batch was rewound to be handled again.
        """
        try:
            if self._txn:
                self._producer.begin_transaction()
            futures = self._send(outputs, dead)
            self._producer.flush()
            for fut in futures:
                fut.get(timeout=0)  # raises the send's error, if any
            if self._txn:
                if offsets:
                    self._producer.send_offsets_to_transaction(offsets, self._consumer.group_metadata())
                self._producer.commit_transaction()
            elif offsets:
                self._consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group rebalanced: another member now owns (and will redeliver) these records.
            self.metrics.inc("commit_failures")
            self.log.warning("commit failed after a rebalance; records will be redelivered: %s", exc)
            return True
        except KafkaError as exc:
            self.metrics.inc("produce_failures")
            self.log.warning("send/commit failed (%s: %s): rewinding the batch to retry it", type(exc).__name__, exc)
            if self._txn:
                try:
                    self._producer.abort_transaction()
                except KafkaError as abort_exc:
                    self.log.warning("abort_transaction: %s", abort_exc)
            self._rewind(records)
            self._stop.wait(self.settings.retry_backoff_ms / 1000)
            return False
        self.metrics.inc("produced", len(outputs))
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
                else:
                    lag += max(0, hw - position)
        self.metrics.set("lag", lag)
        self.metrics.set("lag_unknown", unknown)
        snap = self.metrics.snapshot(self.core.metrics())
        self.log.debug("metrics %s", snap.counters)
        if self._txn:
            self._producer.begin_transaction()
        self._producer.send(self.names.topic("metrics"), key=snap.kafka_key().encode(), value=encode(snap))
        if self._txn:
            self._producer.commit_transaction()
        else:
            self._producer.flush()


def run_service(core: Core, settings: ServiceSettings, **kwargs: Any) -> int:
    """Run ``core`` with the process wrapper until stopped; return the exit code."""
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return ServiceProcess(core, settings).run(**kwargs)
