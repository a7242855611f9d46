"""Delivery and checkpoint: send a batch's outputs and dead letters, wait for the broker, commit its offsets.

Offsets are committed only once every send is acknowledged (at-least-once), or go in one
transaction with the outputs under exactly-once. A record the broker refuses for good (too
large, invalid) dead-letters the input that produced it; a dead-letter copy never exceeds
``max_request_size`` (:func:`sparq_stream.bus.dlq.fit_record`); a producer whose deliveries
keep timing out is replaced.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from kafka import TopicPartition
from kafka.errors import (
    CommitFailedError,
    CorruptRecordError,
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
    RebalanceInProgressError,
    RecordListTooLargeError,
)
from kafka.structs import OffsetAndMetadata

from sparq_stream.bus.client import max_request_size
from sparq_stream.bus.context import ProcessContext
from sparq_stream.bus.dlq import dlq_headers, fit_record
from sparq_stream.bus.outputs import send_phases
from sparq_stream.bus.placement import Placement
from sparq_stream.bus.producer import FENCED_ERRORS, ProducerSlot
from sparq_stream.bus.records import Coords, DeadLetter, Encoded, coords
from sparq_stream.core import Outgoing
from sparq_stream.errors import FatalError

__all__ = ["Delivery"]

#: Send errors that concern one record and that no retry can fix: the record's input is dead-lettered.
_RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError, CorruptRecordError)
#: Failed deliveries in a row after which the producer is replaced (each waits up to client_timeout_s).
_REPLACE_PRODUCER_AFTER = 2


class _RecordsRejected(KafkaError):
    """The broker refused some records for good; their inputs are dead-lettered on the redo."""


class Delivery:
    """Sends outputs and dead letters, then commits (or commits the transaction); one delivery at a time.

    ``consumer()`` answers the input consumer (None without inputs): offsets are committed to it.
    """

    def __init__(self, ctx: ProcessContext, producers: ProducerSlot, consumer: Callable[[], Any]) -> None:
        self.ctx = ctx
        self.producers = producers
        self.consumer = consumer
        self.placement = Placement(ctx, max_request_size(ctx.settings), lambda topic: self.producers.producer.partitions_for(topic))
        self._dlq_topic = ctx.names.topic("dlq")
        self._shrink: set[Coords] = set()  # dead letters the broker refused: resend without their value
        self._failed_deliveries = 0  # deliveries failed in a row (not counting refused records)
        self._isolate = False  # after a refused record: one record per batch until a delivery succeeds

    def refused(self, record: Any) -> tuple[str, str] | None:
        """(error type, reason) when the broker refused an output of this input for good: dead-letter it."""
        return self.placement.poisoned.get(coords(record))

    def deliver(
        self,
        pairs: Sequence[tuple[Outgoing, Any]],
        dead: Sequence[DeadLetter],
        offsets: dict[TopicPartition, OffsetAndMetadata],
    ) -> bool:
        """Send outputs and dead letters, wait for the broker's acknowledgement, then commit offsets.

        Returns False when the sends failed (the caller holds the batch to deliver it again).
        """
        dead = list(dead)
        outs = self.placement.screen(pairs, dead)
        bound = self.ctx.settings.client_timeout_s
        txn = self.producers.txn
        try:
            if txn:
                self.producers.producer.begin_transaction()
            # Two phases: outputs flagged ``after`` (state records) only once the others are acknowledged.
            first, last = send_phases(outs, lambda o: o.outgoing.after)
            for phase, phase_dead in ((first, dead), (last, [])):
                if phase or phase_dead:
                    sent = self._send(phase, phase_dead)
                    self.producers.flush(bound)
                    self._check_sends(sent)
            if txn:
                if offsets:
                    self.producers.producer.send_offsets_to_transaction(offsets, self.consumer().group_metadata())
                self.producers.producer.commit_transaction()
            elif offsets:
                try:
                    self.consumer().commit(offsets, timeout_ms=int(bound * 1000))
                except RebalanceInProgressError as exc:
                    # The outputs are acknowledged: resending them would only duplicate them, and a
                    # held batch polls too briefly for the group's rebalance to finish (seen: minutes
                    # of resends). As after a finished rebalance, the records come again to their owner.
                    raise CommitFailedError(str(exc)) from exc
        except FENCED_ERRORS as exc:
            raise FatalError(
                f"another process took over transactional id {self.producers.transactional_id()} ({exc}); "
                "give each replica its own --instance"
            ) from None
        except CommitFailedError as exc:
            # The group rebalanced: another member now owns (and will redeliver) these records. The
            # outputs and dead letters are acknowledged all the same: account for them below.
            self.ctx.metrics.inc("commit_failures")
            self.ctx.log.warning("commit failed after a rebalance; records will be redelivered: %s", exc)
        except KafkaError as exc:
            self._failed(exc)
            return False
        self._isolate = False
        self._failed_deliveries = 0
        for d in dead:
            self.placement.poisoned.pop(coords(d.record), None)
            self._shrink.discard(coords(d.record))
        self.ctx.metrics.inc("produced", len(outs))
        if dead:
            self.ctx.metrics.inc("dead_lettered", len(dead))
        return True

    def _failed(self, exc: KafkaError) -> None:
        """Account for a failed delivery: abort, replace a wedged producer, back off."""
        self.ctx.metrics.inc("produce_failures")
        self.ctx.log.warning("send/commit failed (%s: %s): delivering the same batch again", type(exc).__name__, exc)
        if isinstance(exc, _RecordsRejected):  # the producer was replaced: nothing open to abort, no wait
            return
        self.producers.abort()
        self._failed_deliveries += 1
        if self._failed_deliveries >= _REPLACE_PRODUCER_AFTER:
            # A producer whose sends still time out after its broker came back can stay wedged
            # (seen after an Apache Kafka restart): a fresh one resends the carried outputs.
            if self.producers.replace_wedged(self._failed_deliveries):
                self._failed_deliveries = 0
        self.ctx.lifecycle.wait(self.ctx.settings.retry_backoff_ms / 1000)

    def _send(self, outs: Sequence[Encoded], dead: Sequence[DeadLetter]) -> list[tuple[Any, Encoded | DeadLetter]]:
        """Send every output and dead letter; while isolating a refusal, one record per acknowledged batch."""
        sent: list[tuple[Any, Encoded | DeadLetter]] = []
        for what in [*outs, *dead]:
            sent.append((self._send_one(what), what))
            if self._isolate:
                self.producers.flush(self.ctx.settings.client_timeout_s)
                self._check_sends(sent[-1:])
        return sent

    def _send_one(self, what: Encoded | DeadLetter) -> Any:
        producer = self.producers.producer
        if isinstance(what, Encoded):
            return producer.send(what.topic, key=what.key, value=what.value, headers=what.headers or None, partition=what.partition)
        rec = what.record
        headers = dlq_headers(
            source_topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            error_type=what.error_type,
            error=what.error,
            service=self.ctx.name,
            instance=self.ctx.settings.instance,
            original_headers=rec.headers or (),
        )
        value = rec.value
        if coords(rec) in self._shrink:  # the broker refused the copy even within our limit
            headers.append(("sparq.dlq.original_size", str(len(value or b"")).encode()))
            value = b""
        value, headers = fit_record(rec.key, value, headers, self.placement.max_record)
        return producer.send(self._dlq_topic, key=rec.key, value=value, headers=headers)

    def _check_sends(self, sent: Sequence[tuple[Any, Encoded | DeadLetter]]) -> None:
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
            self.producers.reset()
            if not self._isolate:
                self._isolate = True
                raise _RecordsRejected(f"the broker refused a record ({exc}): resending one record at a time to find it")
            reason = (type(exc).__name__, f"the broker refused the record: {exc}")
            if isinstance(what, DeadLetter):
                self._shrink.add(coords(what.record))
            elif what.source is not None:
                self.placement.poisoned[coords(what.source)] = reason
            else:
                self.placement.poisoned_ticks[id(what.outgoing)] = reason
            raise _RecordsRejected(f"the broker refused a record for good ({exc}): dead-lettering its input")
