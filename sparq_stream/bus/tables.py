"""Table recovery and following: table topics read whole on start, then followed in every step.

Table topics are read whole on start (bounded by ``restore_timeout_s``; past it the service
ends with a retriable error and a non-zero exit). A table record that does not decode,
fails in ``on_table``, or is a tombstone on a topic that carries no deletes is dead-lettered
by each replica's reader (headers name the service and instance) and counted.
"""

from __future__ import annotations

import time
from typing import Any

from kafka import TopicPartition

from sparq_stream.bus.client import make_consumer
from sparq_stream.bus.compacted import caught_up, partitions_of
from sparq_stream.bus.context import ProcessContext
from sparq_stream.bus.delivery import Delivery
from sparq_stream.bus.records import DeadLetter, UnexpectedTombstone, decode_record, flatten, to_inbound
from sparq_stream.core import Core, Outgoing
from sparq_stream.errors import RetriableError, SparqError
from sparq_stream.messages import EndMarker

__all__ = ["TableFollower"]


class TableFollower:
    """Reads a core's table topics from the beginning and hands each record to ``on_table``.

    Outputs of table records are delivered at once, retried in place until stopped (they are
    not redelivered). A hot standby (``defer_restore``) only starts reading on open: it follows
    in every step and reads to the end when it takes over.
    """

    def __init__(self, ctx: ProcessContext, core: Core, delivery: Delivery) -> None:
        self.ctx = ctx
        self.core = core
        self.delivery = delivery
        self.consumer: Any = None
        self.wakeup = False  # the core can act on a table record: input polls wait in slices

    def open(self, defer_restore: bool) -> None:
        """Start reading the tables from the beginning; unless deferred, read them to their end first."""
        if not self.core.tables:
            return
        self.consumer = make_consumer(self.ctx.settings, None)
        self.wakeup = bool(self.core.wakes_on_tables)
        parts = [tp for logical in self.core.tables for tp in partitions_of(self.consumer, self.ctx.names.resolve(logical))]
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)
        if not defer_restore:
            self.read_to_end(parts)

    def catch_up(self) -> None:
        """Read every assigned table partition to its end, over two fetch rounds at least.

        The high watermarks seen must postdate the writes of a previous active replica.
        """
        if self.consumer is not None:
            self.read_to_end(sorted(self.consumer.assignment(), key=lambda t: (t.topic, t.partition)), min_s=0.5, what="caught up with")

    def read_to_end(self, parts: list[TopicPartition], min_s: float = 0.0, what: str = "restored") -> None:
        """Poll the tables until every partition reached its high watermark (and ``min_s`` passed).

        Raises a retriable error (the service exits non-zero; its supervisor restarts it) when the
        tables are not read to their end within ``restore_timeout_s``.
        """
        n = 0
        timeout_s = self.ctx.settings.restore_timeout_s
        started = time.monotonic()
        deadline = started + timeout_s
        next_report = started + 10.0
        while True:
            self.ctx.probes.beat()
            n += self.poll(timeout_ms=200)
            if caught_up(self.consumer, parts) and time.monotonic() - started >= min_s:
                break
            now = time.monotonic()
            if self.ctx.lifecycle.stopping:
                self.ctx.log.info("stop requested while restoring tables (%d record(s) read)", n)
                return
            if now >= deadline:
                raise RetriableError(
                    f"{self.ctx.name}: table topics not read to their end within {timeout_s:.0f}s "
                    f"({n} record(s) read; behind: {self._lag(parts)}); exiting so the service is restarted "
                    "(raise --restore-timeout-s for large tables)"
                )
            if now >= next_report:
                self.ctx.log.info("restoring tables: %d record(s) read in %.0fs; behind: %s", n, now - started, self._lag(parts))
                next_report = now + 10.0
        topics = sorted({tp.topic for tp in parts})
        self.ctx.log.info("%s %d table record(s) from %s in %.1fs", what, n, topics, time.monotonic() - started)

    def _lag(self, parts: list[TopicPartition]) -> dict[str, Any]:
        lag: dict[str, Any] = {}
        for tp in parts:
            hw = self.consumer.highwater(tp)
            lag[f"{tp.topic}[{tp.partition}]"] = "unknown" if hw is None else max(0, hw - self.consumer.position(tp, timeout_ms=0))
        return lag

    def poll(self, timeout_ms: int = 0) -> int:
        """Apply the table records one poll brings (none without tables); return how many."""
        if self.consumer is None:
            return 0
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.ctx.settings.max_poll_records)
        n = 0
        pairs: list[tuple[Outgoing, Any]] = []
        dead: list[DeadLetter] = []
        for rec in flatten(polled):
            n += 1
            failure = self.apply(rec, pairs)
            if failure is not None:
                dead.append(failure)
        if n:
            self.ctx.metrics.inc("table_records", n)
        if dead:
            self.ctx.metrics.inc("table_dead_lettered", len(dead))
        while (pairs or dead) and not self.delivery.deliver(pairs, dead, {}):
            if self.ctx.lifecycle.stopping:  # outputs of table records are not redelivered: retry in place until stopped
                break
        return n

    def apply(self, rec: Any, pairs: list[tuple[Outgoing, Any]]) -> DeadLetter | None:
        """Hand one table record to the core; return a dead letter when it cannot be applied."""
        where = f"table record {rec.topic}[{rec.partition}]@{rec.offset}"
        try:
            message = decode_record(self.ctx.names, rec)
        except SparqError as exc:
            self.ctx.log.warning("%s dead-lettered: %s", where, exc)
            self.ctx.metrics.inc("table_tombstones_rejected" if isinstance(exc, UnexpectedTombstone) else "table_decode_errors")
            return DeadLetter(rec, type(exc).__name__, str(exc))
        if isinstance(message, EndMarker):  # the wrapper's, never the core's
            if self.ctx.ends is not None and message.run == self.ctx.settings.prefix:
                logical = self.ctx.names.logical(rec.topic) or rec.topic
                self.ctx.ends.book.add(logical, rec.partition, message)
            self.ctx.metrics.inc("end_markers_seen")
            return None
        try:
            outputs = self.core.on_table(to_inbound(self.ctx.names, rec, message))
        except Exception as exc:  # noqa: BLE001 - a bad table record must not stop the service
            self.ctx.log.error("%s failed: %s: %s", where, type(exc).__name__, exc)
            self.ctx.metrics.inc("table_errors")
            return DeadLetter(rec, type(exc).__name__, str(exc) or repr(exc))
        pairs.extend((out, rec) for out in outputs)
        return None
