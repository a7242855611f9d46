"""End markers of a bounded run (a final watermark): the bookkeeping, with no Kafka in it.

A marker (:class:`~sparq_stream.messages.EndMarker`) says: the stage that wrote it has ended the
input partitions it ``covers`` (of ``of``), at ``epoch``. On one partition of an input topic,
markers come from every instance of every stage that writes the topic; the partition is
*ended* at epoch e for a stage once each of that stage's ``of`` covers has a marker of epoch >= e
there (the union over its instances), and ended for the reader once it is ended for every
stage that must end it (:func:`end_writers`). A stage forwards (writes its own marker to every
partition of each output topic) for the input partitions it holds that are ended and that it
has not forwarded yet at that epoch; a stage that also writes its own input topic (novelty
moves a candidate to its bucket's partition) first writes a marker there covering the partitions
ended by the others, and forwards once its own markers, from all its replicas, ended them too.

Until a partition's markers are forwarded, its committed offset stays at the first of them
(:meth:`EndBook.hold_at`): a replica that takes the partition over, or this one restarted, reads
them again. Forwarding twice is harmless: readers take the union of covers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from sparq_stream.bus.topics import ALL_SERVICES, LOGICAL_TOPICS, spec_of
from sparq_stream.messages import EndMarker

__all__ = ["MARKED_TOPICS", "EndBook", "EndPlan", "Forward", "end_outputs", "end_writers"]

#: The loop's data topics, where markers travel (not seeds, metrics, dead letters or the mutator's state).
MARKED_TOPICS: tuple[str, ...] = ("candidates", "novel", "drops", "solved", "elites", "archive", "models")


def end_writers(logical: str) -> tuple[str, ...]:
    """The stages whose markers must end a partition of ``logical`` (its writers among the loop's services)."""
    if logical not in MARKED_TOPICS:
        return ()
    return tuple(s for s in spec_of(logical).writers if s in ALL_SERVICES)


def end_outputs(stage: str) -> tuple[str, ...]:
    """The topics a stage writes its markers to (the marked topics it writes), in pipeline order."""
    return tuple(t for t in LOGICAL_TOPICS if t in MARKED_TOPICS and stage in spec_of(t).writers)


@dataclass
class _Partition:
    """The markers read on one input partition."""

    of: dict[str, int] = field(default_factory=dict)  # stage -> how many covers make it whole
    epochs: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))  # stage -> cover -> newest epoch
    unsettled: list[tuple[int, int]] = field(default_factory=list)  # (offset, epoch) of markers not forwarded yet


class EndBook:
    """The markers read on each input partition ``(logical topic, partition)``: who ended what, and at which epoch."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], _Partition] = defaultdict(_Partition)
        self.seen = 0  # markers read

    def add(self, topic: str, partition: int, marker: EndMarker, offset: int = -1) -> None:
        """Note a marker read at ``offset`` of ``(topic, partition)`` (-1: a table's, never held)."""
        self.seen += 1
        part = self._parts[(topic, partition)]
        part.of[marker.stage] = max(part.of.get(marker.stage, 0), marker.of)
        covers = part.epochs[marker.stage]
        for c in marker.covers:
            covers[c] = max(covers.get(c, 0), marker.epoch)
        if offset >= 0:
            part.unsettled.append((offset, marker.epoch))

    def ended(self, topic: str, partition: int, stages: Iterable[str]) -> int:
        """The epoch at which every one of ``stages`` has ended the partition (0: not ended; no stage: 0)."""
        part = self._parts.get((topic, partition))
        stages = tuple(stages)
        if part is None or not stages:
            return 0
        epoch: int | None = None
        for stage in stages:
            of = part.of.get(stage, 0)
            covers = part.epochs.get(stage, {})
            if of == 0 or any(c not in covers for c in range(of)):
                return 0
            low = min(covers[c] for c in range(of))
            epoch = low if epoch is None else min(epoch, low)
        return epoch or 0

    def settle(self, topic: str, partition: int, epoch: int) -> None:
        """The partition's markers up to ``epoch`` are forwarded: its offset may be committed past them."""
        part = self._parts.get((topic, partition))
        if part is not None:
            part.unsettled = [(o, e) for o, e in part.unsettled if e > epoch]

    def hold_at(self, topic: str, partition: int) -> int | None:
        """The offset to commit at most on a partition (its first marker not forwarded yet), or None."""
        part = self._parts.get((topic, partition))
        if part is None or not part.unsettled:
            return None
        return min(o for o, _ in part.unsettled)


@dataclass(frozen=True)
class Forward:
    """A marker to write to every partition of each of ``topics``."""

    topics: tuple[str, ...]
    marker: EndMarker


class EndPlan:
    """One stage instance's end: what it has read and forwarded, and the markers now due.

    ``stage`` reads ``inputs`` (logical topics); ``source`` stages (the mutator) write markers of
    their own (:meth:`source_due`) and never forward what they read.
    """

    def __init__(self, run: str, stage: str, instance: str, inputs: Iterable[str], *, source: bool = False) -> None:
        self.run, self.stage, self.instance, self.source = run, stage, instance, source
        self.inputs = tuple(inputs)
        self.outputs = end_outputs(stage)
        self.book = EndBook()
        self.forwarded: dict[tuple[str, int], int] = {}  # input partition -> epoch forwarded to the outputs
        self.wrote_own: dict[tuple[str, int], int] = {}  # input partition -> epoch of our marker on our own input topic
        self.passed = 0  # the newest epoch this instance forwarded (a source: wrote)
        self.written = 0  # markers written (each to every partition of its topics)
        self._source_epoch = 0

    def _others(self, topic: str) -> tuple[str, ...]:
        return tuple(s for s in end_writers(topic) if s != self.stage)

    def due(self, assigned: dict[str, tuple[list[int], int]]) -> list[Forward]:
        """Markers due now; ``assigned``: per input topic, (the partitions this instance holds, the topic's count).

        A source forwards nothing. Partitions held but not ended wait; the others are forwarded,
        possibly in several markers over time (readers take the union of covers).
        """
        if self.source:
            return []
        out: list[Forward] = []
        for topic, (parts, count) in assigned.items():
            own_topic = self.stage in end_writers(topic)
            if own_topic:  # first our marker on our own input, for the partitions the others ended
                by_epoch = self._newly(topic, parts, self._others(topic), self.wrote_own)
                out.extend(Forward((topic,), self._marker(topic, covers, count, e)) for e, covers in by_epoch.items())
            targets = tuple(t for t in self.outputs if t != topic)
            by_epoch = self._newly(topic, parts, end_writers(topic), self.forwarded)
            for epoch, covers in by_epoch.items():
                for p in covers:
                    self.book.settle(topic, p, epoch)
                if targets:
                    out.append(Forward(targets, self._marker(topic, covers, count, epoch)))
                self.passed = max(self.passed, epoch)
        self.written += len(out)
        return out

    def _newly(self, topic: str, parts: list[int], stages: tuple[str, ...], done: dict[tuple[str, int], int]) -> dict[int, list[int]]:
        """Partitions ended by ``stages`` at a newer epoch than ``done`` records, by epoch (and noted in ``done``)."""
        by_epoch: dict[int, list[int]] = defaultdict(list)
        if not stages:
            return by_epoch
        for p in sorted(parts):
            epoch = self.book.ended(topic, p, stages)
            if epoch > done.get((topic, p), 0):
                done[(topic, p)] = epoch
                by_epoch[epoch].append(p)
        return by_epoch

    def source_due(self, epoch: int, share: int, shares: int) -> list[Forward]:
        """A source's marker when its share of the run is spent at ``epoch`` and not written at that epoch yet."""
        if not self.source or epoch <= self._source_epoch:
            return []
        self._source_epoch = epoch
        self.passed = max(self.passed, epoch)
        self.written += 1
        return [Forward(self.outputs, self._marker("", [share], shares, epoch))]

    def table_passed(self, tables: Iterable[str], partitions: dict[str, int]) -> int:
        """The epoch at which every partition of the marked ``tables`` written by other stages is ended (0: not yet)."""
        epoch: int | None = None
        for topic in tables:
            stages = self._others(topic)
            if not stages:
                continue
            for p in range(partitions.get(topic, 0)):
                e = self.book.ended(topic, p, stages)
                epoch = e if epoch is None else min(epoch, e)
        return epoch or 0

    def _marker(self, source: str, covers: list[int], of: int, epoch: int) -> EndMarker:
        return EndMarker(run=self.run, stage=self.stage, instance=self.instance, epoch=epoch, source=source, covers=sorted(covers), of=of)
