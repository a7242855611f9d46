"""kafka-python clients configured for the loop: fast group joins, manual commits, acks=all.

Every client takes its login from the settings (``KafkaSettings.client_options``: the security settings
and ``kafka_client_config``, a Java client properties file; see :mod:`sparq_stream.security`)."""

from __future__ import annotations

from typing import Any, Sequence

from kafka import KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.errors import KafkaTimeoutError

from sparq_stream.security import login_hint
from sparq_stream.errors import BrokerUnavailable
from sparq_stream.messages import Message, encode
from sparq_stream.settings import KafkaSettings, ServiceSettings

__all__ = ["consumer_options", "producer_options", "make_consumer", "make_producer", "max_request_size", "publish_all"]

_DEFAULT_MAX_REQUEST_SIZE = 1_048_576  # kafka-python's and the Java client's default


def max_request_size(settings: KafkaSettings) -> int:
    """The producer's record size limit: ``kafka_options['max_request_size']``, else the setting, else 1 MiB."""
    explicit = settings.kafka_options.get("max_request_size")
    if explicit is not None:
        return int(explicit)
    return int(getattr(settings, "max_request_size", _DEFAULT_MAX_REQUEST_SIZE))


def consumer_options(settings: ServiceSettings, group_id: str | None) -> dict[str, Any]:
    """Consumer options: manual commit after acknowledgement, and a group join of seconds, not 20+."""
    svc = settings
    opts: dict[str, Any] = {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": svc.auto_offset_reset,
        "session_timeout_ms": svc.session_timeout_ms,
        "heartbeat_interval_ms": svc.heartbeat_interval_ms,
        "max_poll_records": svc.max_poll_records,
        "max_poll_interval_ms": svc.max_poll_interval_ms,
        "fetch_max_wait_ms": 100,
    }
    if svc.processing_guarantee == "exactly_once":
        opts["isolation_level"] = "read_committed"
    opts.update(settings.client_options())
    return opts


def producer_options(settings: KafkaSettings, transactional_id: str | None = None) -> dict[str, Any]:
    """Producer options: every send acknowledged by all in-sync replicas, small linger for batching."""
    opts: dict[str, Any] = {
        "acks": "all",
        "linger_ms": 5,
        "retries": 5,
        "max_in_flight_requests_per_connection": 5,
        "max_request_size": max_request_size(settings),
    }
    if transactional_id:
        opts["transactional_id"] = transactional_id
        opts["enable_idempotence"] = True
    opts.update(settings.client_options())
    return opts


def make_consumer(
    settings: ServiceSettings,
    group_id: str | None,
    *topics: str,
    assignor: Any = None,
    listener: Any = None,
    round_robin: bool = False,
) -> KafkaConsumer:
    """Create a consumer (subscribed to ``topics`` when given, with ``assignor`` and rebalance ``listener``).

    ``round_robin``: the group assigns partition i to member i mod N (kafka-python's round-robin
    assignor) instead of contiguous ranges, so records spread round-robin over the partitions
    (a ``spread`` topic) reach the members in turn: an even share of any run of records
    whenever the member count divides the partition count. An explicit ``assignor`` wins.
    No broker raises BrokerUnavailable.
    """
    options = consumer_options(settings, group_id)
    if assignor is not None:
        options["partition_assignment_strategy"] = [assignor]
    elif round_robin:
        options.setdefault("partition_assignment_strategy", (RoundRobinPartitionAssignor,))
    try:
        consumer = KafkaConsumer(**options)
    except KafkaTimeoutError:
        raise BrokerUnavailable(f"no Kafka broker answered at {settings.bootstrap}{login_hint(options)}") from None
    if topics:
        consumer.subscribe(list(topics), listener=listener)
    return consumer


def make_producer(settings: KafkaSettings, transactional_id: str | None = None) -> KafkaProducer:
    """Create a producer; no broker raises BrokerUnavailable."""
    options = producer_options(settings, transactional_id)
    try:
        return KafkaProducer(**options)
    except KafkaTimeoutError:
        raise BrokerUnavailable(f"no Kafka broker answered at {settings.bootstrap}{login_hint(options)}") from None


def publish_all(settings: KafkaSettings, topic: str, messages: Sequence[Message]) -> int:
    """Send messages keyed by their own key, wait until the broker acknowledged every one; return the count."""
    producer = make_producer(settings)
    try:
        futures = [producer.send(topic, key=(m.kafka_key() or "").encode(), value=encode(m)) for m in messages]
        producer.flush()
        for fut in futures:
            fut.get(timeout=0)
    finally:
        producer.close(timeout=10)
    return len(messages)
