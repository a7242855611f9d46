"""Dead letters, retries, table restore and compacted-topic rebuilds on real brokers."""

from __future__ import annotations

import hashlib
import threading
from typing import Sequence

import msgpack
import pytest
from kafka import KafkaProducer
from kafka.admin import NewTopic

from tests._scores import scores
from sparq_stream.bus import ServiceProcess, create_topics, dead_letter_from_record, read_latest
from sparq_stream.bus.topics import admin_client
from sparq_stream.core import BaseCore, Inbound, Outgoing
from sparq_stream.cores.relay import RelayCore
from sparq_stream.errors import FatalError, RetriableError
from sparq_stream.ids import problem_id
from sparq_stream.messages import Elite, ModelVersion, Seed, decode, encode
from sparq_stream.settings import ServiceSettings

from ._util import produce, read_all, run_in_thread

pytestmark = pytest.mark.broker


def _seed(i: int) -> Seed:
    return Seed(id=problem_id(f"problem {i}"), problem=f"problem {i}", answer=str(i))


def _version(i: int) -> ModelVersion:
    return ModelVersion(name=f"k{i % 50}", number=i, path=f"/models/{i}", created_at=0.0)


def _key(i: int) -> bytes:
    return _seed(i).id.encode()


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
        text = f"problem of {slot} at {quality}"
        return Elite(id=problem_id(text), problem=text, solution="s", answer="1", **scores(quality), slot=slot)

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
    for i in range(300):  # versions of 50 keyed records stand in for elite slots (their own key is their name)
        producer.send(f"{prefix}.elites", key=f"k{i % 50}".encode(), value=encode(_version(i)))
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
    assert restored["k7"] == _version(257)


# ---------------------------------------------------------------------- size limits (issue 12, item 1)
_LIMIT = 1_048_576  # the producer's default max_request_size


def test_a_near_limit_poison_value_is_dead_lettered_truncated_and_the_partition_moves_on(
    broker: str, prefix: str, group: str
) -> None:
    settings = ServiceSettings(bootstrap=broker, prefix=prefix, group_id=group)
    create_topics(settings, partitions=1)
    huge = (b"\xc1" + bytes(range(256)) * 4096)[: _LIMIT - 100]  # not msgpack; fits the producer alone, not with DLQ headers
    produce(broker, f"{prefix}.seeds", [(_key(0), encode(_seed(0))), (b"huge", huge), (_key(1), encode(_seed(1)))])
    proc = ServiceProcess(RelayCore("seeds", "candidates"), settings, install_signals=False)
    thread = run_in_thread(proc)
    try:
        out = read_all(broker, f"{prefix}.candidates", until=lambda r: len(r) >= 2, timeout_s=60)
        dlq = read_all(broker, f"{prefix}.dlq", until=lambda r: len(r) >= 1, timeout_s=60)
    finally:
        proc.stop()
        thread.join(30)
    assert {r.key for r in out} == {_key(0), _key(1)}
    assert [r.key for r in dlq] == [b"huge"]
    headers = dict(dlq[0].headers)
    assert headers["sparq.dlq.truncated"] == b"true"
    assert int(headers["sparq.dlq.original_size"]) == len(huge)
    assert headers["sparq.dlq.original_sha256"] == hashlib.sha256(huge).hexdigest().encode()
    letter = dead_letter_from_record(dlq[0].key, dlq[0].value, dlq[0].headers)
    assert letter.error_type == "DecodeError" and letter.offset == 1
    assert 0 < len(letter.original) < len(huge) and huge.startswith(letter.original)
    assert proc.metrics.counters.get("produce_failures", 0) == 0


class _InflateCore(BaseCore):
    """Relays seeds; the seed keyed ``big`` becomes an output of ``size`` bytes."""

    name = "inflate"
    inputs = ("seeds",)

    def __init__(self, size: int) -> None:
        self.size = size

    def handle(self, inbound: Inbound) -> list[Outgoing]:
        message = inbound.message
        if inbound.message is not None and inbound.message.problem == "big":
            message = Seed(id="big", problem="x" * self.size, answer="1")
        return [Outgoing("candidates", message), Outgoing("solved", inbound.message)]


def test_an_output_over_the_producer_limit_dead_letters_its_input(broker: str, prefix: str, group: str) -> None:
    settings = ServiceSettings(bootstrap=broker, prefix=prefix, group_id=group)
    create_topics(settings, partitions=1)
    items = [_seed(0), Seed(id=problem_id("big"), problem="big", answer="1"), _seed(1)]
    produce(broker, f"{prefix}.seeds", [(m.id.encode(), encode(m)) for m in items])
    proc = ServiceProcess(_InflateCore(_LIMIT + 10), settings, install_signals=False)
    thread = run_in_thread(proc)
    try:
        out = read_all(broker, f"{prefix}.candidates", until=lambda r: len(r) >= 2, timeout_s=60)
        dlq = read_all(broker, f"{prefix}.dlq", until=lambda r: len(r) >= 1, timeout_s=60)
        solved = read_all(broker, f"{prefix}.solved", until=lambda r: len(r) >= 2, timeout_s=30)
    finally:
        proc.stop()
        thread.join(30)
    assert {r.key for r in out} == _FINE
    assert {r.key for r in solved} == _FINE  # none of the culprit's outputs went out
    letter = dead_letter_from_record(dlq[0].key, dlq[0].value, dlq[0].headers)
    assert [r.key for r in dlq] == [_BIG] and letter.offset == 1
    assert letter.error_type == "MessageSizeTooLargeError" and "max_request_size" in letter.error
    assert decode(letter.original) == items[1]


_FINE = {_seed(0).id.encode(), _seed(1).id.encode()}
_BIG = problem_id("big").encode()


def _refusing_candidates(settings: ServiceSettings) -> list[Seed]:
    """Topics where candidates refuse records over 20,000 bytes; seeds 0, big, 1 published; return them."""
    admin = admin_client(settings)
    try:
        admin.create_topics([NewTopic(f"{settings.prefix}.candidates", 1, 1, topic_configs={"max.message.bytes": "20000"})])
    finally:
        admin.close()
    create_topics(settings, partitions=1)
    items = [_seed(0), Seed(id=problem_id("big"), problem="big", answer="1"), _seed(1)]
    produce(settings.bootstrap, f"{settings.prefix}.seeds", [(m.id.encode(), encode(m)) for m in items])
    return items


def test_an_output_the_broker_refuses_dead_letters_its_input(broker: str, broker_name: str, prefix: str, group: str) -> None:
    if broker_name != "kafka":
        pytest.skip("Tansu keeps no topic configs (no per-topic max.message.bytes)")
    settings = ServiceSettings(bootstrap=broker, prefix=prefix, group_id=group)
    items = _refusing_candidates(settings)
    proc = ServiceProcess(_InflateCore(50_000), settings, install_signals=False)
    thread = run_in_thread(proc)
    try:
        dlq = read_all(broker, f"{prefix}.dlq", until=lambda r: len(r) >= 1, timeout_s=60)
        out = read_all(broker, f"{prefix}.candidates", until=lambda r: _FINE <= {x.key for x in r}, timeout_s=60)
    finally:
        proc.stop()
        thread.join(30)
    assert {r.key for r in out} == _FINE
    letter = dead_letter_from_record(dlq[0].key, dlq[0].value, dlq[0].headers)
    assert [r.key for r in dlq] == [_BIG] and letter.error_type == "MessageSizeTooLargeError"
    assert decode(letter.original) == items[1]


# ---------------------------------------------------------------------- table records (issue 12, item 8)
class _SeedTableCore(BaseCore):
    """Follows seeds and elites as tables; the elite keyed like seed 2 makes ``on_table`` fail."""

    name = "follower"
    inputs = ()
    tables = ("seeds", "elites")

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_table(self, inbound: Inbound) -> list[Outgoing]:
        if inbound.topic == "elites" and inbound.key == _seed(2).id:
            raise ValueError("cannot apply this elite")
        self.seen.append(inbound.key or "")
        return []


def test_bad_table_records_are_dead_lettered_with_reason_and_counted(broker: str, prefix: str) -> None:
    settings = ServiceSettings(bootstrap=broker, prefix=prefix, instance="replica-a")
    create_topics(settings, partitions=1)
    produce(
        broker,
        f"{prefix}.seeds",
        [(_key(0), encode(_seed(0))), (b"junk", b"\xc1 not msgpack"), (_key(0), None), (_key(1), encode(_seed(1))), (b"foreign", encode(_seed(3)))],
    )
    produce(broker, f"{prefix}.elites", [(_key(2), encode(_seed(2))), (b"ok", None)])  # elites carry deletes
    core = _SeedTableCore()
    proc = ServiceProcess(core, settings, install_signals=False)
    thread = run_in_thread(proc)
    try:
        dlq = read_all(broker, f"{prefix}.dlq", until=lambda r: len(r) >= 4, timeout_s=60)
    finally:
        proc.stop()
        thread.join(30)
    letters = {(r.key, dead_letter_from_record(r.key, r.value, r.headers).error_type): r for r in dlq}
    assert set(letters) == {
        (b"junk", "DecodeError"), (_key(0), "UnexpectedTombstone"), (_key(2), "ValueError"), (b"foreign", "KeyMismatch")
    }
    tombstone = dead_letter_from_record(_key(0), None, letters[(_key(0), "UnexpectedTombstone")].headers)
    assert "carries no deletes" in tombstone.error and tombstone.offset == 2
    assert letters[(b"junk", "DecodeError")].value == b"\xc1 not msgpack"
    assert dict(letters[(_key(2), "ValueError")].headers)["sparq.dlq.instance"] == b"replica-a"
    assert sorted(core.seen) == sorted(["ok", _seed(0).id, _seed(1).id])
    assert proc.metrics.counters["table_dead_lettered"] == 4
    assert proc.metrics.counters["table_tombstones_rejected"] == 1


def test_input_tombstones_and_foreign_keys_are_dead_lettered(broker: str, prefix: str, group: str) -> None:
    settings = ServiceSettings(bootstrap=broker, prefix=prefix, group_id=group)
    create_topics(settings, partitions=1)
    produce(broker, f"{prefix}.seeds", [(_key(0), encode(_seed(0))), (_key(1), None), (_key(2), encode(_seed(3))), (_key(4), encode(_seed(4)))])
    proc = ServiceProcess(RelayCore("seeds", "candidates"), settings, install_signals=False)
    thread = run_in_thread(proc)
    try:
        out = read_all(broker, f"{prefix}.candidates", until=lambda r: len(r) >= 2, timeout_s=60)
        dlq = read_all(broker, f"{prefix}.dlq", until=lambda r: len(r) >= 2, timeout_s=60)
    finally:
        proc.stop()
        thread.join(30)
    assert {r.key for r in out} == {_key(0), _key(4)}
    reasons = {r.key: dead_letter_from_record(r.key, r.value, r.headers).error_type for r in dlq}
    assert reasons == {_key(1): "UnexpectedTombstone", _key(2): "KeyMismatch"}


# ---------------------------------------------------------------------- restore bound (issue 12, item 12)
def test_table_restore_past_its_timeout_ends_the_service_with_a_retriable_error(broker: str, prefix: str) -> None:
    settings = ServiceSettings(bootstrap=broker, prefix=prefix, max_poll_records=1, restore_timeout_s=0.001)
    create_topics(settings, partitions=1)
    produce(broker, f"{prefix}.seeds", [(_seed(i).id.encode(), encode(_seed(i))) for i in range(20)])
    proc = ServiceProcess(_SeedTableCore(), settings, install_signals=False)
    with pytest.raises(RetriableError, match="not read to their end within") as caught:
        proc.run()
    assert caught.value.retriable and "restore-timeout-s" in str(caught.value)


class _ChangelogCore(_InflateCore):
    """Like ``_InflateCore``, and records each input in a state changelog (elites stands in for one)."""

    def handle(self, inbound: Inbound) -> list[Outgoing]:
        return [Outgoing("elites", inbound.message, key=inbound.key), *super().handle(inbound)]


def test_changelog_writes_share_the_transaction_of_outputs_and_offsets(broker: str, broker_name: str, prefix: str, group: str) -> None:
    if broker_name != "kafka":
        pytest.skip("Tansu accepts transactions but its read_committed consumers still see aborted records")
    settings = ServiceSettings(bootstrap=broker, prefix=prefix, group_id=group, processing_guarantee="exactly_once", instance="eos")
    _refusing_candidates(settings)
    proc = ServiceProcess(_ChangelogCore(50_000), settings, install_signals=False)
    thread = run_in_thread(proc)
    try:
        read_all(broker, f"{prefix}.dlq", until=lambda r: len(r) >= 1, timeout_s=60, isolation_level="read_committed")
        committed = read_all(broker, f"{prefix}.elites", isolation_level="read_committed")
        everything = read_all(broker, f"{prefix}.elites")
    finally:
        proc.stop()
        thread.join(30)
    assert {r.key for r in committed} == _FINE  # the refused input's state change was aborted
    assert _BIG in {r.key for r in everything}, "no transaction was aborted: the test proves nothing"
