"""What the wrapper's parts pass between them: decoded inputs, encoded outputs, dead letters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sparq_stream.bus.topics import LOGICAL_TOPICS, TopicNames, spec_of
from sparq_stream.core import Inbound, Outgoing
from sparq_stream.errors import FatalError
from sparq_stream.ids import check_id, check_key
from sparq_stream.messages import decode

__all__ = [
    "Coords",
    "DeadLetter",
    "Encoded",
    "OutputCopy",
    "UnexpectedTombstone",
    "coords",
    "decode_record",
    "flatten",
    "spreads",
    "to_inbound",
]

#: (topic, partition, offset) of a record: how an input is named across retries.
Coords = tuple[str, int, int]


class UnexpectedTombstone(FatalError):
    """A tombstone (null value) on a topic whose records are never deleted (not retriable)."""


@dataclass
class DeadLetter:
    """A record bound for the dead-letter topic."""

    record: Any
    error_type: str
    error: str


@dataclass
class OutputCopy:
    """A record-like copy of an output that has no input to dead-letter in its place."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int = -1
    offset: int = -1


@dataclass
class Encoded:
    """One encoded output and the input record (None for tick outputs) that produced it."""

    outgoing: Outgoing
    source: Any
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int | None = None


def coords(record: Any) -> Coords:
    """The (topic, partition, offset) of a record."""
    return (record.topic, record.partition, record.offset)


def flatten(polled: dict[Any, list[Any]]) -> list[Any]:
    """The records of one poll, partition by partition."""
    return [rec for tp in sorted(polled, key=lambda t: (t.topic, t.partition)) for rec in polled[tp]]


def to_inbound(names: TopicNames, rec: Any, message: Any) -> Inbound:
    """The core's view of a decoded record: logical topic, text key, headers as bytes."""
    key = rec.key.decode("utf-8", "replace") if rec.key is not None else None
    topic = names.logical(rec.topic) or rec.topic
    headers = tuple((str(k), bytes(v or b"")) for k, v in (rec.headers or ()))
    return Inbound(topic, key, message, rec.partition, rec.offset, rec.timestamp or 0, headers)


def decode_record(names: TopicNames, rec: Any) -> Any:
    """Decode a record under the wire contract; a breach raises a non-retriable error (dead-lettered).

    A tombstone on a topic that carries no deletes, a value that does not decode, an id that
    is not its problem text's hash (IdMismatch) and a key that is not the message's own key
    (KeyMismatch) are all refused.
    """
    if rec.value is None:
        if not _carries_deletes(names, rec.topic):
            raise UnexpectedTombstone(f"tombstone on topic {rec.topic}, which carries no deletes")
        return None
    message = decode(rec.value)
    check_id(message)
    check_key(rec.key, message)
    return message


def spreads(names: TopicNames, topic: str) -> bool:
    """True for a topic whose keyless outputs go to its partitions in turn (``spread``)."""
    logical = names.logical(topic)
    return logical is not None and logical in LOGICAL_TOPICS and spec_of(logical).spread


def _carries_deletes(names: TopicNames, topic: str) -> bool:
    logical = names.logical(topic)
    return logical is None or logical not in LOGICAL_TOPICS or spec_of(logical).deletes
