"""The wrapper's part of ending a bounded run: end markers read off the inputs, written, forwarded, and held commits.

Cores never see a marker: :meth:`Ending.take` books it instead of handing it to ``handle``
(tables: :class:`~sparq_stream.bus.tables.TableFollower`). After every step :meth:`Ending.outputs`
gives the markers now due, sent in the ``after`` phase of the step's delivery, behind every
other output of the batch; :meth:`Ending.hold` keeps each input partition's committed offset at
its first marker not forwarded yet. The bookkeeping itself is :mod:`sparq_stream.bus.markers`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from sparq_stream.bus.context import ProcessContext
from sparq_stream.bus.markers import EndPlan, Forward
from sparq_stream.core import EVERY_PARTITION, Core, Outgoing
from sparq_stream.messages import EndMarker

__all__ = ["Ending"]


class Ending:
    """One process's end markers: its :class:`~sparq_stream.bus.markers.EndPlan` and the Kafka side of it."""

    def __init__(self, ctx: ProcessContext, core: Core) -> None:
        self.ctx = ctx
        self.core = core
        source = type(core).source_end is not None  # a core class that overrides Core.source_end is a bounded source
        self.plan = EndPlan(ctx.settings.prefix, core.name, ctx.settings.instance, core.inputs, source=source)
        self._passed = 0
        ctx.ends = self.plan

    def take(self, rec: Any, message: Any) -> bool:
        """True when ``message`` is an end marker (booked here; never handed to the core)."""
        if not isinstance(message, EndMarker):
            return False
        self.ctx.metrics.inc("end_markers_seen")
        if message.run != self.ctx.settings.prefix:
            self.ctx.metrics.inc("end_markers_foreign")
            self.ctx.log.warning("end marker of run %r on %s[%d]@%d ignored (this run is %r)",
                                 message.run, rec.topic, rec.partition, rec.offset, self.ctx.settings.prefix)
            return True
        logical = self.ctx.names.logical(rec.topic) or rec.topic
        self.plan.book.add(logical, rec.partition, message, -1 if self.plan.source else rec.offset)
        return True

    def outputs(self, consumer: Any, tables: Any) -> list[Outgoing]:
        """The markers due after this step (a source's own once it has ended; a stage's forwards), as ``after`` outputs."""
        plan = self.plan
        if plan.source:
            end = self.core.source_end
            due = plan.source_due(end.epoch, end.share, end.shares) if end is not None else []
        elif consumer is not None:
            due = plan.due(self._assigned(consumer)) if plan.book.seen else []  # nothing can be ended before a marker
        else:  # no inputs (the trainer): the end is passed once its tables are ended and its work settled
            due = []
            if tables is not None and plan.book.seen and self.core.settled:
                plan.passed = max(plan.passed, plan.table_passed(self.core.tables, self._counts(tables)))
        for fwd in due:
            self._log(fwd)
        self._passed = plan.passed  # reported once this step's delivery is acknowledged (:meth:`delivered`)
        return [Outgoing(topic, fwd.marker, partition=EVERY_PARTITION, after=True) for fwd in due for topic in fwd.topics]

    def delivered(self) -> None:
        """The step's outputs (its markers among them) are acknowledged: report the end passed (a source: written)."""
        self.ctx.metrics.set("end_passed", float(self._passed))

    def hold(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Keep each partition's commit at its first marker not forwarded yet (re-read after a restart or rebalance)."""
        if not self.plan.book.seen:
            return
        for tp, meta in list(offsets.items()):
            logical = self.ctx.names.logical(tp.topic) or tp.topic
            at = self.plan.book.hold_at(logical, tp.partition)
            if at is not None and at < meta.offset:
                offsets[tp] = OffsetAndMetadata(at, "", -1)

    def _assigned(self, consumer: Any) -> dict[str, tuple[list[int], int]]:
        """Per input topic (logical): the partitions this member holds, and how many the topic has."""
        held: dict[str, list[int]] = defaultdict(list)
        for tp in consumer.assignment():
            held[tp.topic].append(tp.partition)
        out: dict[str, tuple[list[int], int]] = {}
        for topic, parts in held.items():
            count = len(consumer.partitions_for_topic(topic) or ())
            if count:
                out[self.ctx.names.logical(topic) or topic] = (sorted(parts), count)
        return out

    def _counts(self, tables: Any) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for tp in tables.assignment():
            counts[self.ctx.names.logical(tp.topic) or tp.topic] += 1
        return counts

    def _log(self, fwd: Forward) -> None:
        m = fwd.marker
        self.ctx.metrics.inc("end_markers_written")
        self.ctx.log.info(
            "end marker (epoch %d) to %s: %s covers %s of %d%s", m.epoch, ", ".join(fwd.topics), m.stage, m.covers, m.of,
            f" partitions of {m.source}" if m.source else " shares of the run",
        )
