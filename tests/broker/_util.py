"""Helpers for broker tests: produce, collect from the beginning, run services as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from sparq_stream.bus.compacted import caught_up, partitions_of

REPO = Path(__file__).resolve().parents[2]


def start_or_skip(broker: Any, what: str) -> None:
    """Start a broker or cluster; in CI a failure fails the test, elsewhere it skips it with the reason."""
    import pytest

    try:
        broker.start()
    except Exception as exc:
        (getattr(broker, "close", None) or broker.stop)()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{what} could not start here: {exc}")


def produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes | None]], headers: Any = None) -> None:
    """Produce keyed records and wait for every acknowledgement."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    futures = [producer.send(topic, key=k, value=v, headers=headers) for k, v in items]
    producer.flush()
    for fut in futures:
        fut.get(timeout=30)
    producer.close()


def read_all(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Any]], bool] | None = None,
    timeout_s: float = 60.0,
    isolation_level: str = "read_uncommitted",
) -> list[Any]:
    """Read a topic from the beginning: until ``until(records)`` holds, or to its end when no predicate."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation_level)
    try:
        parts = partitions_of(consumer, topic, timeout_s=20)
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for tp, recs in consumer.poll(timeout_ms=200, max_records=5000).items():
                records.extend(recs)
            if until is not None:
                if until(records):
                    return records
            elif caught_up(consumer, parts):
                return records
        return records
    finally:
        consumer.close(autocommit=False)


def sparq(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run the sparq CLI in a subprocess and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "sparq_stream.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=kwargs.pop("timeout", 300),
        **kwargs,
    )


def start_service(*args: str, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``sparq run ...`` as a subprocess (its log goes to ``log_path``)."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "sparq_stream.cli", "run", *args], stdout=out, stderr=subprocess.STDOUT)


def keys_of(records: list[Any]) -> list[bytes]:
    """The keys of a list of records."""
    return [r.key for r in records]


def run_in_thread(proc: Any) -> threading.Thread:
    """Run a ServiceProcess in a daemon thread; stop it with ``proc.stop()`` and join the thread."""
    thread = threading.Thread(target=proc.run, daemon=True)
    thread.start()
    return thread


def get(url: str) -> tuple[int, str]:
    """GET ``url``: (status, body), an error status included; (0, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError as exc:
        return 0, str(exc.reason)


def scrape(address: str) -> dict[str, list[Any]]:
    """The samples of ``address``/metrics by name (the text must parse as Prometheus exposition)."""
    status, text = get(address + "/metrics")
    assert status == 200
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


__all__ = ["produce", "read_all", "sparq", "start_service", "keys_of", "run_in_thread", "get", "scrape", "TopicPartition"]
