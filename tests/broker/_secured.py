"""Helpers of the secured-cluster tests: the scripted loop run with logins, and reads and writes as one principal."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, TopicAuthorizationFailedError

from sparq_stream.bus.compacted import iter_records, read_latest
from sparq_stream.security import client_security_options
from sparq_stream.messages import Elite, decode
from sparq_stream.orchestrator.up import UpConfig
from sparq_stream.settings import ServiceSettings

#: Topics every scripted run writes to (drops and dlq may stay empty; models only with a trainer publishing).
WRITTEN = ("seeds", "candidates", "novel", "solved", "elites", "archive", "metrics", "mutator-state")


def loop_config(shared_data: Path, out: Path, bootstrap: str | None, clients: Path | None, **over: Any) -> UpConfig:
    """The drills' scripted run, smaller (3 steps of 32 parents in chunks of 16, K=4, 40 seeds), with each service's login."""
    values: dict[str, Any] = dict(
        seeds=shared_data / "gsm8k_train.jsonl", out=out, steps=3, batch_size=32, k=4, backend="scripted",
        embedder="hash", seed_limit=40, seed=7, label_seeds=False, timeout_s=240.0, bootstrap=bootstrap,
        prefix=f"sec{uuid.uuid4().hex[:8]}", kafka_auth_dir=clients, extra={"mutator": ["--chunk-size", "16"]},
    )
    values.update(over)
    return UpConfig(**values)


def login(bootstrap: str, prefix: str, clients: Path, principal: str) -> ServiceSettings:
    """Connection settings that log in as ``principal``."""
    return ServiceSettings(bootstrap=bootstrap, prefix=prefix, kafka_client_config=clients / f"{principal}.properties",
                           connect_timeout_s=10.0)  # fmt: skip


def count_records(settings: ServiceSettings, topic: str) -> int:
    """How many records ``topic`` holds, read from the beginning to its end with ``settings``' login."""
    return sum(1 for _ in iter_records(settings, topic, timeout_s=30.0))


def elites_as(settings: ServiceSettings) -> dict[str, Any]:
    """W as the elites topic holds it (watermarks and foreign records left out), read with ``settings``' login."""

    def lenient(value: bytes) -> Any:
        try:
            return decode(value, expect=Elite)
        except Exception:
            return None

    table = read_latest(settings, f"{settings.prefix}.elites", decoder=lenient)
    return {k: v for k, v in table.items() if v is not None}


def refused_writes(bootstrap: str, clients: Path, principal: str, topics: list[str]) -> dict[str, str]:
    """Try one record on each topic as ``principal``: topic -> how it ended ('refused', or what happened instead)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", retries=0, max_block_ms=10_000,
                             request_timeout_ms=10_000, **client_security_options(clients / f"{principal}.properties"))  # fmt: skip
    out: dict[str, str] = {}
    try:
        for topic in topics:
            started = time.monotonic()
            try:
                meta = producer.send(topic, key=b"intruder", value=b"not a sparq message").get(timeout=15)
                out[topic] = f"written at {meta.partition}/{meta.offset}"
            except TopicAuthorizationFailedError:
                out[topic] = "refused"
            except KafkaError as exc:
                out[topic] = f"{type(exc).__name__} after {time.monotonic() - started:.1f}s"
    finally:
        producer.close(timeout=5)
    return out
