"""The process wrapper under faults: SIGTERM with the broker gone, a kill -9 under exactly-once with the default instance."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from sparq_stream.brokers.tansu import EmbeddedBroker
from sparq_stream.bus import create_topics
from sparq_stream.messages import Seed, encode
from sparq_stream.settings import ServiceSettings

from ._util import produce, read_all, start_service

pytestmark = pytest.mark.broker


def _items(n: int) -> list[tuple[bytes, bytes]]:
    seeds = [Seed(id=f"p{i:05d}", problem=f"Problem {i}: " + "x" * 500, answer=str(i)) for i in range(n)]
    return [(s.id.encode(), encode(s)) for s in seeds]


def _relay(bootstrap: str, prefix: str, *extra: str) -> list[str]:
    return ["relay", "--bootstrap", bootstrap, "--prefix", prefix, "--group-id", f"{prefix}-g", "--metrics-interval-s", "1", *extra]


@pytest.mark.slow
def test_sigterm_stops_the_service_when_the_broker_is_gone(tmp_path: Path, prefix: str) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    broker.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        create_topics(ServiceSettings(bootstrap=broker.bootstrap, prefix=prefix), partitions=1)
        produce(broker.bootstrap, f"{prefix}.seeds", _items(50))
        proc = start_service(*_relay(broker.bootstrap, prefix), log_path=tmp_path / "relay.log")
        read_all(broker.bootstrap, f"{prefix}.candidates", until=lambda r: len(r) >= 50, timeout_s=60)
        broker.stop()
        time.sleep(3.0)  # the service is now polling, flushing metrics and committing into the void
        assert proc.poll() is None, (tmp_path / "relay.log").read_text()[-2000:]
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail("the service ignored SIGTERM with its broker gone:\n" + (tmp_path / "relay.log").read_text()[-2000:])
        assert code in (0, 128 + signal.SIGTERM)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        broker.stop()


@pytest.mark.slow
def test_a_restarted_exactly_once_replica_fences_its_predecessor_by_default(
    broker: str, broker_name: str, prefix: str, tmp_path: Path
) -> None:
    if broker_name == "tansu":
        pytest.skip("Tansu accepts transactions but its read_committed consumers still see aborted records")
    create_topics(ServiceSettings(bootstrap=broker, prefix=prefix), partitions=3)
    items = _items(4000)
    produce(broker, f"{prefix}.seeds", items)
    args = _relay(broker, prefix, "--max-poll-records", "50", "--processing-guarantee", "exactly_once")  # no --instance
    first = start_service(*args, log_path=tmp_path / "eos1.log")
    second = None
    try:
        read_all(broker, f"{prefix}.candidates", until=lambda r: len(r) >= 500, timeout_s=120)
        first.kill()  # most likely inside a transaction: the relay spends its time in them
        first.wait(10)
        second = start_service(*args, log_path=tmp_path / "eos2.log")
        # Without fencing, the killed replica's open transaction holds read_committed readers back until the
        # broker times it out (60 s); with the same transactional id the restart aborts it at once.
        out = read_all(
            broker,
            f"{prefix}.candidates",
            until=lambda r: len({x.key for x in r}) >= len(items),
            timeout_s=45,
            isolation_level="read_committed",
        )
        assert len({r.key for r in out}) == len(items), (tmp_path / "eos2.log").read_text()[-2000:]
        out = read_all(broker, f"{prefix}.candidates", isolation_level="read_committed")
    finally:
        if second is not None:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        if first.poll() is None:
            first.kill()
    counts = Counter(r.key for r in out)
    assert set(counts) == {k for k, _ in items}
    assert max(counts.values()) == 1, "a committed output appeared twice under exactly-once"
