"""Topic names (with a configurable prefix) and topic bootstrap: create and describe."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from sparq_stream.errors import BrokerUnavailable, ConfigError
from sparq_stream.settings import KafkaSettings

__all__ = ["LOGICAL_TOPICS", "COMPACTED", "SINGLE_PARTITION", "TopicNames", "admin_client", "create_topics", "describe_topics"]

log = logging.getLogger(__name__)

#: Every logical topic of the loop, in pipeline order.
LOGICAL_TOPICS: tuple[str, ...] = (
    "seeds",
    "candidates",
    "novel",
    "drops",
    "solved",
    "elites",
    "archive",
    "models",
    "metrics",
    "dlq",
    "mutator-state",
)
#: Topics whose state is the last value per key.
COMPACTED: frozenset[str] = frozenset({"elites", "models", "mutator-state"})
#: Topics where a total order matters more than parallelism.
SINGLE_PARTITION: frozenset[str] = frozenset({"models", "mutator-state"})


@dataclass(frozen=True)
class TopicNames:
    """Maps logical topic names to Kafka topic names under a prefix."""

    prefix: str = "sparq"

    def __getattr__(self, logical: str) -> str:
        if logical.startswith("_") or logical not in LOGICAL_TOPICS:
            raise AttributeError(logical)
        return self.topic(logical)

    def topic(self, logical: str) -> str:
        """Return the Kafka topic for a logical name; unknown names raise ConfigError."""
        if logical not in LOGICAL_TOPICS:
            raise ConfigError(f"unknown topic {logical!r}; allowed: {', '.join(LOGICAL_TOPICS)}")
        return f"{self.prefix}.{logical}"

    def logical(self, topic: str) -> str | None:
        """Return the logical name of a Kafka topic under this prefix, or None."""
        head, _, tail = topic.rpartition(".")
        return tail if head == self.prefix and tail in LOGICAL_TOPICS else None

    def resolve(self, name: str) -> str:
        """Accept a logical name or a full topic name; return the full Kafka topic name."""
        return self.topic(name) if name in LOGICAL_TOPICS else name

    def all(self) -> list[str]:
        """Return every Kafka topic of the loop."""
        return [self.topic(name) for name in LOGICAL_TOPICS]


def admin_client(settings: KafkaSettings, timeout_s: float = 10.0) -> KafkaAdminClient:
    """Connect an admin client, turning 'no broker' into a clear BrokerUnavailable."""
    try:
        return KafkaAdminClient(**settings.client_options(), request_timeout_ms=int(timeout_s * 1000))
    except KafkaTimeoutError:
        raise BrokerUnavailable(f"no Kafka broker answered at {settings.bootstrap}") from None


def create_topics(
    settings: KafkaSettings,
    partitions: int = 3,
    replication_factor: int = 1,
    logical: tuple[str, ...] = LOGICAL_TOPICS,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the loop's topics (compacted where the state is last-value-per-key); return those created."""
    names = TopicNames(settings.prefix)
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        wanted = []
        for name in logical:
            topic = names.topic(name)
            if topic in existing:
                continue
            configs = {"cleanup.policy": "compact"} if name in COMPACTED else {}
            count = 1 if name in SINGLE_PARTITION else partitions
            wanted.append(NewTopic(topic, num_partitions=count, replication_factor=replication_factor, topic_configs=configs))
        created = []
        for new in wanted:
            try:
                admin.create_topics([new], timeout_ms=int(timeout_s * 1000))
                created.append(new.name)
            except TopicAlreadyExistsError:
                pass
        _wait_for_topics(admin, [names.topic(n) for n in logical], timeout_s)
        return created
    finally:
        admin.close()


def _wait_for_topics(admin: KafkaAdminClient, topics: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            meta = admin.describe_topics(topics)
            if all(t.get("error_code", 0) == 0 and t.get("partitions") for t in meta):
                return
        except KafkaError:
            pass
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"topics {topics} did not appear within {timeout_s}s")
        time.sleep(0.2)


def describe_topics(settings: KafkaSettings, topics: list[str] | None = None) -> list[dict[str, Any]]:
    """Describe topics: partitions, leaders and (where the broker keeps them) configs."""
    names = TopicNames(settings.prefix)
    admin = admin_client(settings)
    try:
        present = set(admin.list_topics())
        topics = [names.resolve(t) for t in topics] if topics else [t for t in names.all() if t in present]
        missing = [t for t in topics if t not in present]
        if missing:
            raise ConfigError(f"unknown topic(s): {', '.join(missing)}")
        meta = admin.describe_topics(topics)
        configs: dict[str, Any] = {}
        try:
            answer = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
            configs = answer.get("topic", {}) if isinstance(answer, dict) else {}
        except KafkaError as exc:  # some brokers (Tansu) answer partially
            log.debug("describe_configs failed: %s", exc)
        out = []
        for t in meta:
            name = t.get("name") or t.get("topic")
            parts = t.get("partitions", [])
            raw = configs.get(name) or {}
            out.append(
                {
                    "topic": name,
                    "partitions": len(parts),
                    "replication_factor": len(parts[0].get("replica_nodes", [])) if parts else 0,
                    "configs": {k: _config_value(v) for k, v in raw.items()},
                }
            )
        return out
    finally:
        admin.close()


def _config_value(value: Any) -> Any:
    """Config entries come back as plain values or as dicts holding a 'value'."""
    return value.get("value") if isinstance(value, dict) else value
