"""The input side: the group consumer, its polls (linger, table slices), membership, and held batches."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition
from kafka.structs import MemberState, OffsetAndMetadata

from sparq_stream.bus.client import make_consumer
from sparq_stream.bus.compacted import partitions_of
from sparq_stream.bus.context import ProcessContext
from sparq_stream.bus.delivery import Delivery
from sparq_stream.bus.lease import LeaseWatch, OneActiveAssignor
from sparq_stream.bus.records import DeadLetter, flatten, spreads
from sparq_stream.bus.tables import TableFollower
from sparq_stream.core import Outgoing
from sparq_stream.errors import ConfigError, RetriableError

__all__ = ["HeldBatch", "Intake"]

#: Longest slice of an input poll's wait between two reads of the table topics (ms).
_TABLE_SLICE_MS = 20
#: How long a held batch's input poll waits: long enough for a group's join and sync to complete.
_HOLD_POLL_MS = 200


@dataclass
class HeldBatch:
    """A batch whose delivery failed: its outputs, dead letters and offsets, delivered again as they are."""

    pairs: list[tuple[Outgoing, Any]]
    dead: list[DeadLetter]
    offsets: dict[TopicPartition, OffsetAndMetadata]
    paused: set[TopicPartition] = field(default_factory=set)


class Intake:
    """Owns the input consumer (None for a core without inputs) and what waits on it."""

    def __init__(self, ctx: ProcessContext) -> None:
        self.ctx = ctx
        self.consumer: Any = None
        self.eager = False  # the last tick emitted: poll without waiting
        self.held: HeldBatch | None = None  # a batch whose delivery failed, to be delivered again as it is
        self.outside_since: float | None = None  # since when the input consumer is outside its group

    def open(self, topics: list[str], assignor: OneActiveAssignor | None, listener: LeaseWatch | None) -> None:
        """Join the group on the input topics (members take a ``spread`` topic's partitions in turn)."""
        spread = any(spreads(self.ctx.names, t) for t in topics)
        self.consumer = make_consumer(self.ctx.settings, self.ctx.group_id, assignor=assignor, round_robin=spread)
        self._await_metadata(topics)
        self.consumer.subscribe(topics, listener=listener)

    def _await_metadata(self, topics: list[str]) -> None:
        """Know the input topics' partitions before joining the group.

        A topic created a moment ago may not be in the broker's metadata answer yet; the group
        leader would then assign nothing and the consumer would idle until its next metadata
        refresh (``metadata_max_age_ms``, minutes). A topic still unknown after a few seconds is
        subscribed to anyway: it is picked up when it appears.
        """
        for topic in topics:
            try:
                partitions_of(self.consumer, topic, timeout_s=min(10.0, self.ctx.settings.connect_timeout_s))
            except ConfigError:
                self.ctx.log.warning("input topic %s does not exist yet: waiting for it", topic)

    def poll(self, tables: TableFollower) -> list[Any]:
        """Poll the inputs, waiting up to ``poll_timeout_ms``, or not at all after a tick that emitted.

        A tick that emitted may have more to emit at once (the mutator opens a step in one tick
        and generates it in the next): waiting the poll out there cost each synchronous step a
        whole poll timeout. For a core whose ``wakes_on_tables`` is true (a synchronous dynamic
        mutator) the wait is cut in slices with the tables read between them, so a table record
        (the archivist's watermark it waits for) ends the wait as an input record does.
        """
        settings = self.ctx.settings
        wait_ms = 0 if self.eager else settings.poll_timeout_ms
        if self.consumer is None:
            if wait_ms:
                time.sleep(wait_ms / 1000)
            return []
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            left_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            slice_ms = min(left_ms, _TABLE_SLICE_MS) if tables.wakeup else left_ms
            polled = self.consumer.poll(timeout_ms=slice_ms, max_records=settings.max_poll_records)
            if polled or left_ms <= slice_ms or tables.poll():
                break
        records = flatten(polled)
        return self._linger(records) if records else records

    def _linger(self, records: list[Any]) -> list[Any]:
        """Top a short batch up to ``batch_linger_records`` for at most ``batch_linger_ms`` (0: hand it over at once).

        For a latency-bound core (the solver: a backend call costs the same with 3 candidates
        as with 8) a batch that waits a few ms for the rest of a burst saves a whole call.
        """
        settings = self.ctx.settings
        want = min(settings.batch_linger_records, settings.max_poll_records)
        until = time.monotonic() + settings.batch_linger_ms / 1000
        while len(records) < want:
            left_ms = math.ceil((until - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            more = flatten(self.consumer.poll(timeout_ms=left_ms, max_records=settings.max_poll_records - len(records)))
            records.extend(more)
            if more:
                self.ctx.metrics.inc("lingered_records", len(more))
        return records

    def watch_membership(self) -> None:
        """Raise a retriable error when the input consumer stayed outside its group for ``join_timeout_s``.

        A member that never completes its join (seen once on Apache Kafka under heavy load: no
        assignment, no error, for minutes) would idle silently; exiting lets the supervisor (or the
        orchestrator) start a fresh consumer. A stable member with no partitions (a standby) is fine.
        """
        limit = self.ctx.settings.join_timeout_s
        coordinator = getattr(self.consumer, "_coordinator", None)
        state = getattr(coordinator, "state", None)
        if limit <= 0 or state is None:
            return
        now = time.monotonic()
        if state is MemberState.STABLE:
            self.outside_since = None
            return
        if self.outside_since is None:
            self.outside_since = now
        elif now - self.outside_since > limit:
            raise RetriableError(
                f"{self.ctx.name}: the input consumer has not joined group {self.ctx.group_id} within {limit:.0f}s "
                f"(state {getattr(state, 'name', state)}); exiting so the service is restarted"
            )

    def hold(self, held: HeldBatch) -> None:
        """Keep a batch whose delivery failed, to deliver exactly it again; pause input meanwhile.

        The core has already applied the batch to its state, so handling the records again would
        not give the same outputs (the archivist, for one, sees its results as duplicates and writes
        no watermark): the outputs computed once are resent, with the same offsets, until they are
        acknowledged. Input stays paused (and polled, so the group keeps this member) until then.
        """
        self.held = held
        if self.consumer is not None:
            assigned = set(self.consumer.assignment())
            held.paused = assigned - set(self.consumer.paused())
            if held.paused:
                self.consumer.pause(*held.paused)

    def redeliver(self, delivery: Delivery) -> None:
        """Try the held batch again; on success resume the input it paused."""
        held = self.held
        assert held is not None
        if self.consumer is not None:
            self.consumer.poll(timeout_ms=_HOLD_POLL_MS)  # paused: fetches nothing; keeps the membership, lets a rebalance finish
        if not delivery.deliver(held.pairs, held.dead, held.offsets):
            return
        self.held = None
        if self.consumer is not None and held.paused:
            still = held.paused & set(self.consumer.assignment())
            if still:
                self.consumer.resume(*still)
