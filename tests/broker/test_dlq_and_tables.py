"""Dead letters, retries, table restore and compacted-topic rebuilds on real brokers."""

from __future__ import annotations

import threading
from typing import Sequence

import msgpack
import pytest
from kafka import KafkaProducer

from sparq_stream.bus import ServiceProcess, create_topics, dead_letter_from_record, read_latest
from sparq_stream.core import BaseCore, Inbound, Outgoing
from sparq_stream.cores.relay import RelayCore
from sparq_stream.errors import FatalError, RetriableError
from sparq_stream.ids import problem_id
from sparq_stream.messages import Elite, Seed, decode, encode
from sparq_stream.settings import ServiceSettings

from ._util import read_all, run_in_thread

pytestmark = pytest.mark.broker


def _seed(i: int) -> Seed:
    return Seed(id=problem_id(f"problem {i}"), problem=f"problem {i}", answer=str(i))


def test_poison_messages_go_to_dlq_with_bytes_and_reason(broker: str, prefix: str, group: str) -> None:
    settings = ServiceSettings(bootstrap=broker, prefix=prefix, group_id=group)
    create_topics(settings, partitions=1)
    garbage = b"\xc1 this is not msgpack"
    wrong_schema = msgpack.packb({"schema": "sparq.nope", "version": 1, "x": 1})
    wrong_version = msgpack.packb({**Seed(id="v", problem="p", answer="1").model_dump(), "schema": "sparq.seed", "version": 99})
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    for i in range(50):
        producer.send(f"{prefix}.seeds", key=_seed(i).id.encode(), value=encode(_seed(i)))
    producer.send(f"{prefix}.seeds", key=b"bad1", value=garbage, headers=[("trace", b"abc")])
    producer.send(f"{prefix}.seeds", key=b"bad2", value=wrong_schema)
    producer.send(f"{prefix}.seeds", key=b"bad3", value=wrong_version)
    for i in range(50, 100):
        producer.send(f"{prefix}.seeds", key=_seed(i).id.encode(), value=encode(_seed(i)))
    producer.flush()
    producer.close()

    proc = ServiceProcess(RelayCore("seeds", "candidates"), settings, install_signals=False)
    thread = run_in_thread(proc)
    try:
        out = read_all(broker, f"{prefix}.candidates", until=lambda r: len(r) >= 100, timeout_s=60)
        dlq = read_all(broker, f"{prefix}.dlq", until=lambda r: len(r) >= 3, timeout_s=60)
    finally:
        proc.stop()
        thread.join(30)
    assert sorted(r.key for r in out) == sorted(_seed(i).id.encode() for i in range(100))
    letters = {r.key: dead_letter_from_record(r.key, r.value, r.headers) for r in dlq}
    assert set(letters) == {b"bad1", b"bad2", b"bad3"}
    assert letters[b"bad1"].original == garbage
    assert letters[b"bad2"].original == wrong_schema
    assert letters[b"bad1"].source_topic == f"{prefix}.seeds"
    assert letters[b"bad1"].partition == 0 and letters[b"bad1"].offset == 50
    assert letters[b"bad3"].offset == 52
    assert all(letter.error_type == "DecodeError" for letter in letters.values())
    assert "not msgpack" in letters[b"bad1"].error
    assert "unknown schema 'sparq.nope'" in letters[b"bad2"].error
    assert "unsupported version 99" in letters[b"bad3"].error
    assert letters[b"bad1"].service == "relay"
    headers = dict(next(r for r in dlq if r.key == b"bad1").headers)
    assert headers["trace"] == b"abc"  # the original headers travel with the dead letter
    assert proc.metrics.counters["dead_lettered"] == 3


class _FlakyCore(BaseCore):
    """Fails one key for good, another twice with a retriable error, and relays the rest."""

    name = "flaky"
    inputs = ("seeds",)

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}

    def handle(self, inbound: Inbound) -> list[Outgoing]:
        key = inbound.message.problem if inbound.message is not None else ""  # ids are content hashes: key on the text
        self.attempts[key] = self.attempts.get(key, 0) + 1
        if key == "problem 7":
            raise FatalError("this problem is invalid for good")
        if key == "problem 11" and self.attempts[key] <= 2:
            raise RetriableError("backend busy")
        if key == "problem 13":
            raise KeyError("a bug in the core")
        return [Outgoing("candidates", inbound.message)]

    def handle_batch(self, batch: Sequence[Inbound]) -> list[list[Outgoing]]:
        return [self.handle(item) for item in batch]


def test_handler_errors_retry_or_dead_letter_only_the_culprit(broker: str, prefix: str, group: str) -> None:
    settings = ServiceSettings(bootstrap=broker, prefix=prefix, group_id=group, retry_backoff_ms=10)
    create_topics(settings, partitions=1)
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    for i in range(30):
        producer.send(f"{prefix}.seeds", key=_seed(i).id.encode(), value=encode(_seed(i)))
    producer.flush()
    producer.close()
    core = _FlakyCore()
    proc = ServiceProcess(core, settings, install_signals=False)
    thread = run_in_thread(proc)
    try:
        out = read_all(broker, f"{prefix}.candidates", until=lambda r: len({x.key for x in r}) >= 28, timeout_s=60)
        dlq = read_all(broker, f"{prefix}.dlq", until=lambda r: len(r) >= 2, timeout_s=60)
    finally:
        proc.stop()
        thread.join(30)
    bad7, bad13 = _seed(7).id.encode(), _seed(13).id.encode()
    assert {r.key for r in out} == {_seed(i).id.encode() for i in range(30)} - {bad7, bad13}
    letters = {r.key: dead_letter_from_record(r.key, r.value, r.headers) for r in dlq}
    assert set(letters) == {bad7, bad13}
    assert letters[bad7].error_type == "FatalError"
    assert letters[bad13].error_type == "KeyError"
    assert decode(letters[bad7].original) == _seed(7)
    assert core.attempts["problem 7"] == 2  # once in the batch, once alone to isolate it: never retried
    assert proc.metrics.counters["retries"] >= 2


def test_compacted_rebuild_returns_last_value_per_key(broker: str, prefix: str) -> None:
    settings = ServiceSettings(bootstrap=broker, prefix=prefix)
    create_topics(settings, partitions=3)
    topic = f"{prefix}.elites"

    def elite(slot: str, quality: float) -> Elite:
        return Elite(
            id=f"id-{slot}-{quality}", problem="p", solution="s", answer="1", k=16, rollouts_used=16,
            n_correct=8, solve_rate=0.5, quality=quality, slot=slot,
        )

    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    expected: dict[str, Elite] = {}
    for round_ in range(3):
        for n in range(20):
            slot = f"niche{n}"
            value = elite(slot, round(0.1 + round_ * 0.2 + n / 100, 3))
            producer.send(topic, key=slot.encode(), value=encode(value))
            expected[slot] = value
    for n in range(0, 20, 4):  # tombstones delete
        producer.send(topic, key=f"niche{n}".encode(), value=None)
        expected.pop(f"niche{n}")
    reinserted = elite("niche4", 0.77)
    producer.send(topic, key=b"niche4", value=encode(reinserted))  # re-inserted after its tombstone
    expected["niche4"] = reinserted
    producer.flush()
    producer.close()
    table = read_latest(settings, topic)
    assert table == expected


class _TableCore(BaseCore):
    name = "table"
    inputs = ()
    tables = ("elites",)

    def __init__(self) -> None:
        self.state: dict[str, object] = {}
        self.restored_before_first_tick: dict[str, object] | None = None

    def on_table(self, inbound: Inbound) -> list[Outgoing]:
        if inbound.message is None:
            self.state.pop(inbound.key or "", None)
        else:
            self.state[inbound.key or ""] = inbound.message
        return []

    def tick(self, now: float) -> list[Outgoing]:
        if self.restored_before_first_tick is None:
            self.restored_before_first_tick = dict(self.state)
        return []


def test_table_topics_are_restored_before_the_first_step(broker: str, prefix: str) -> None:
    settings = ServiceSettings(bootstrap=broker, prefix=prefix)
    create_topics(settings, partitions=3)
    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    for i in range(300):
        producer.send(f"{prefix}.elites", key=f"k{i % 50}".encode(), value=encode(_seed(i)))
    producer.send(f"{prefix}.elites", key=b"k3", value=None)
    producer.flush()
    producer.close()
    core = _TableCore()
    proc = ServiceProcess(core, settings, install_signals=False)
    thread = run_in_thread(proc)
    try:
        for _ in range(100):
            if core.restored_before_first_tick is not None:
                break
            threading.Event().wait(0.1)
    finally:
        proc.stop()
        thread.join(30)
    restored = core.restored_before_first_tick
    assert restored is not None and len(restored) == 49 and "k3" not in restored
    assert restored["k7"] == _seed(257)
