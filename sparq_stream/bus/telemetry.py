"""Ops endpoints and the metrics topic: what a service reports about itself."""

from __future__ import annotations

from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError

from sparq_stream.bus.context import ProcessContext
from sparq_stream.bus.intake import Intake
from sparq_stream.bus.metrics import PartitionLag
from sparq_stream.bus.ops_http import OpsServer
from sparq_stream.bus.producer import FENCED_ERRORS, ProducerSlot
from sparq_stream.bus.role import Role
from sparq_stream.bus.tables import TableFollower
from sparq_stream.core import Core
from sparq_stream.errors import FatalError
from sparq_stream.messages import encode

__all__ = ["MetricsPublisher", "serve_ops"]


def serve_ops(ctx: ProcessContext) -> OpsServer | None:
    """Start the /metrics, /healthz, /readyz endpoint when ``http_port`` is set (else None)."""
    if ctx.settings.http_port is None:
        return None
    from sparq_stream.bus.prometheus import service_registry

    registry = service_registry(ctx.metrics, ctx.group_id, ctx.probes.ready)
    return OpsServer(ctx.settings.http_host, ctx.settings.http_port, ctx.probes, registry).start()


class MetricsPublisher:
    """Publishes a metrics snapshot (lag per partition, the role, the core's own counters) every interval."""

    def __init__(self, ctx: ProcessContext, core: Core, producers: ProducerSlot, intake: Intake, tables: TableFollower, role: Role) -> None:
        self.ctx = ctx
        self.core = core
        self.producers = producers
        self.intake = intake
        self.tables = tables
        self.role = role

    def publish(self, force: bool = False) -> None:
        """Send a snapshot when one is due (or ``force``); best effort: a failed send is logged, not raised."""
        metrics = self.ctx.metrics
        if not (force or metrics.due()):
            return
        parts = self._partition_lag()
        metrics.partition_lag = parts
        consumer = self.intake.consumer
        # nothing is known yet while joining the group (a standby has joined: it has no input)
        joining = consumer is not None and not consumer.assignment() and not self.role.joined
        unknown = sum(p.lag is None for p in parts) + int(joining)
        metrics.set("lag", sum(p.lag for p in parts if p.lag is not None))
        if self.role.exclusive:
            metrics.set("active", float(self.role.active))
            if consumer is None and self.role.lease is not None and not self.role.joined:
                unknown += 1  # no role yet
        metrics.set("lag_unknown", unknown)
        snap = metrics.snapshot(self.core.metrics() if self.role.active else None)
        self.ctx.log.debug("metrics %s", snap.counters)
        producer = self.producers.producer
        try:
            if self.producers.txn:
                producer.begin_transaction()
            self.ctx.probes.sent()  # before the send: its acknowledgement may come first
            future = producer.send(self.ctx.names.topic("metrics"), key=snap.kafka_key().encode(), value=encode(snap))
            future.add_callback(self.ctx.probes.acknowledged)
            future.add_errback(self.ctx.probes.failed)
            if self.producers.txn:
                producer.commit_transaction()
            # at-least-once: no flush; the producer sends within linger_ms and close() flushes the last one
        except FENCED_ERRORS as exc:
            raise FatalError(f"another process took over transactional id {self.producers.transactional_id()}: {exc}") from None
        except KafkaError as exc:  # metrics are best effort: the next snapshot carries the same counters
            self.ctx.log.warning("publishing metrics failed: %s: %s", type(exc).__name__, exc)
            self.producers.abort()

    def _partition_lag(self) -> list[PartitionLag]:
        """Records behind per assigned partition: the end offset minus the consumer's position.

        The position steps over transaction markers, so a drained partition reads 0 under both
        guarantees. The end offset is the last stable offset under exactly-once (read_committed:
        an open upstream transaction's records are not readable yet, so they are not lag), asked
        of the broker once per metrics interval; else the high watermark of the last fetch. None:
        not known yet (no fetch answered, or the broker did not answer in time).
        """
        out: list[PartitionLag] = []
        for reader, client in (("input", self.intake.consumer), ("table", self.tables.consumer)):
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
        if self.producers.txn:  # ListOffsets under read_committed answers the last stable offset
            try:
                return dict(client.end_offsets(parts, timeout_ms=int(min(2.0, self.ctx.settings.client_timeout_s) * 1000)))
            except KafkaError as exc:
                self.ctx.log.debug("end offsets: %s", exc)
                return {}
        return {tp: hw for tp in parts if (hw := client.highwater(tp)) is not None}
