"""Read a compacted topic as a table: the last value per key, tombstones delete.

Brokers that do not compact (Tansu keeps no topic configs) still hold every
version of every key, so readers always fold the log themselves.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from kafka import KafkaConsumer, TopicPartition

from sparq_stream.bus.client import make_consumer
from sparq_stream.errors import BrokerUnavailable, ConfigError
from sparq_stream.messages import END_KEY_PREFIX, Message, decode
from sparq_stream.settings import ServiceSettings

__all__ = ["partitions_of", "caught_up", "iter_records", "read_latest"]


def partitions_of(consumer: KafkaConsumer, topic: str, timeout_s: float = 10.0) -> list[TopicPartition]:
    """Return the partitions of ``topic``; an unknown topic raises ConfigError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        ids = consumer.partitions_for_topic(topic)
        if ids:
            return [TopicPartition(topic, p) for p in sorted(ids)]
        if time.monotonic() > deadline:
            raise ConfigError(f"unknown topic {topic!r}")
        consumer.topics()  # refresh metadata
        time.sleep(0.1)


def caught_up(consumer: KafkaConsumer, parts: list[TopicPartition]) -> bool:
    """True once every partition's position reached the high watermark of the last fetch.

    The fetch high watermark is used rather than ``end_offsets()``, which Tansu answers wrongly.
    """
    for tp in parts:
        hw = consumer.highwater(tp)
        if hw is None or consumer.position(tp) < hw:
            return False
    return True


def iter_records(settings: ServiceSettings, topic: str, *, timeout_s: float = 60.0) -> Iterator[Any]:
    """Yield every record of ``topic`` (kafka ConsumerRecords, undecoded) from the beginning to its end."""
    consumer = make_consumer(settings, None)
    try:
        parts = partitions_of(consumer, topic)
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        deadline = time.monotonic() + timeout_s
        while True:
            polled = consumer.poll(timeout_ms=200, max_records=5000)
            for tp in sorted(polled, key=lambda t: t.partition):
                yield from polled[tp]
            if caught_up(consumer, parts):
                return
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"reading {topic} did not reach its end within {timeout_s}s")
    finally:
        consumer.close(autocommit=False)


def read_latest(
    settings: ServiceSettings,
    topic: str,
    *,
    decoder: Callable[[bytes], Any] = decode,
    timeout_s: float = 60.0,
) -> dict[str, Message | Any]:
    """Rebuild key -> latest value from a (compacted) topic read from the beginning (a run's end markers left out)."""
    table: dict[str, Any] = {}
    for rec in iter_records(settings, topic, timeout_s=timeout_s):
        key = rec.key.decode("utf-8", "replace") if rec.key is not None else ""
        if key.startswith(END_KEY_PREFIX):
            continue
        if rec.value is None:
            table.pop(key, None)
        else:
            table[key] = decoder(rec.value)
    return table
