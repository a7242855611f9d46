"""The contract between a pure service core and the process wrapper that runs it.

A core never touches Kafka: it receives decoded :class:`Inbound` messages and
returns :class:`Outgoing` ones naming a *logical* topic ("candidates", "elites"...);
the wrapper maps logical names to prefixed Kafka topics, produces, waits for the
broker's acknowledgement and only then commits the input offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from sparq_stream.messages import Message

__all__ = ["EVERY_PARTITION", "FANOUT_HEADER", "Inbound", "Outgoing", "Core", "BaseCore", "SourceEnd", "fanout_of"]

#: ``Outgoing.partition`` meaning: one copy of the record on every partition of its topic.
EVERY_PARTITION = -1
#: Header the wrapper puts on each copy of an ``EVERY_PARTITION`` record: ``b"<partition>/<count>"``.
FANOUT_HEADER = "sparq.fanout"


@dataclass(frozen=True)
class Inbound:
    """One decoded input message and where it came from (``message`` is None for a tombstone)."""

    topic: str
    key: str | None
    message: Message | None
    partition: int = 0
    offset: int = 0
    timestamp_ms: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Outgoing:
    """One output: a message (or a tombstone when ``message`` is None) for a logical topic.

    ``partition``: None lets the key choose; an int names one; :data:`EVERY_PARTITION` writes a
    copy to each partition (a marker every reader of any partition meets in order). ``after``:
    sent only once every other output of the same batch is acknowledged (a state record that
    must never run ahead of the sends it accounts for); in a transaction all go together.
    """

    topic: str
    message: Message | None
    key: str | None = None
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)
    partition: int | None = None
    after: bool = False

    def resolved_key(self) -> str | None:
        """Return the explicit key, or the message's own key (the problem id)."""
        if self.key is not None:
            return self.key
        return self.message.kafka_key() if self.message is not None else None


def fanout_of(inbound: Inbound) -> tuple[int, int] | None:
    """Return (partition, partition count) of a copy of an ``EVERY_PARTITION`` record, else None."""
    for name, value in inbound.headers:
        if name == FANOUT_HEADER:
            head, _, tail = bytes(value).decode("ascii", "replace").partition("/")
            if head.isdigit() and tail.isdigit() and int(head) < int(tail):
                return int(head), int(tail)
    return None


@dataclass(frozen=True)
class SourceEnd:
    """A bounded source's end: its ``share`` (of ``shares``) of the run is spent and accounted for, at ``epoch``.

    ``epoch`` grows when the source is given more work after an end (a new model's steps); the
    wrapper then writes a new end marker behind that work.
    """

    epoch: int
    share: int = 0
    shares: int = 1


@runtime_checkable
class Core(Protocol):
    """What the process wrapper and the in-memory runner read of a service core.

    Everything with a value or a body here is optional: a core built on :class:`BaseCore`
    (which subclasses this protocol) inherits these defaults. ``exclusive``: one active
    replica, the others hot standbys (its state is one global structure); the wrapper holds
    the role through the consumer group of its inputs, or of ``lease_topic`` (default: its
    first table) when it has no inputs. ``group_member``: a replica that reads every
    partition of its inputs joins a group of its own, ``<group>.<group_member>``.
    ``wakes_on_tables``: a table record can let the core emit, so an input poll's wait is cut
    in slices with the tables read between them. ``done``: a bounded source has nothing left
    to do (the in-memory runner stops there). ``source_end``: a bounded source (the mutator)
    says here when its share of the run has ended; the wrapper then writes the end marker (cores
    never see or write markers). ``settled``: False while work in progress may still emit (a
    trainer's run): the wrapper does not report the end passed meanwhile.
    """

    name: str
    inputs: tuple[str, ...]
    tables: tuple[str, ...]
    exclusive: bool = False
    lease_topic: str | None = None
    group_member: str | None = None
    wakes_on_tables: bool = False
    done: bool = False
    source_end: SourceEnd | None = None
    settled: bool = True

    def handle(self, inbound: Inbound) -> list[Outgoing]:
        """Handle one message; raise a retriable SparqError to be retried, any other to dead-letter it."""
        ...

    def handle_batch(self, batch: Sequence[Inbound]) -> list[list[Outgoing]]:
        """Handle a batch; return one list of outputs per input, in order."""
        ...

    def on_table(self, inbound: Inbound) -> list[Outgoing]:
        """Apply one record of a table topic (read whole from the beginning by every replica)."""
        ...

    def tick(self, now: float) -> list[Outgoing]:
        """Called after every poll, also when idle: emit work that needs no input (sources, timers)."""
        ...

    def metrics(self) -> dict[str, float]:
        """Return the core's own counters and gauges for the metrics topic."""
        ...

    def set_active(self, active: bool) -> None:
        """Told by the wrapper when an ``exclusive`` core becomes a standby (on start) or the active replica."""

    def close(self) -> None:
        """Flush and release resources on shutdown."""
        ...


class BaseCore(Core):
    """Convenience base: per-message batches, no tables, no timers, no metrics (and :class:`Core`'s defaults)."""

    name: str = "core"
    inputs: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()

    def handle(self, inbound: Inbound) -> list[Outgoing]:
        """Handle one message (override this)."""
        raise NotImplementedError

    def handle_batch(self, batch: Sequence[Inbound]) -> list[list[Outgoing]]:
        """Handle each message of the batch in turn."""
        return [self.handle(item) for item in batch]

    def on_table(self, inbound: Inbound) -> list[Outgoing]:
        """Ignore table records unless overridden."""
        return []

    def tick(self, now: float) -> list[Outgoing]:
        """Emit nothing on ticks unless overridden."""
        return []

    def metrics(self) -> dict[str, float]:
        """No core metrics unless overridden."""
        return {}

    def close(self) -> None:
        """Nothing to release unless overridden."""
