"""The embedded broker's journal: every record and committed offset survives into a fresh broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from sparq_stream.brokers.tansu import EmbeddedBroker
from sparq_stream.orchestrator.journal import TopicJournal, has_snapshot, restore
from sparq_stream.settings import ServiceSettings

pytestmark = pytest.mark.broker


def _everything(bootstrap: str, topics: dict[str, int]) -> list[tuple]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100)
    parts = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    rows: list[tuple] = []
    for _ in range(30):
        for records in consumer.poll(timeout_ms=200).values():
            rows += [(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers)) for r in records]
    consumer.close()
    return sorted(rows)


def test_a_journal_replays_into_a_fresh_broker_with_offsets_and_commits(tansu_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    topics = {f"{prefix}.a": 2, f"{prefix}.b": 1}
    admin = KafkaAdminClient(bootstrap_servers=tansu_bootstrap)
    admin.create_topics([NewTopic(t, num_partitions=n, replication_factor=1) for t, n in topics.items()])
    producer = KafkaProducer(bootstrap_servers=tansu_bootstrap, linger_ms=5)
    for i in range(60):
        topic = f"{prefix}.a" if i % 3 else f"{prefix}.b"
        producer.send(topic, key=f"k{i}".encode(), value=b"\x00" + bytes([i]) * i, headers=[("n", str(i).encode())],
                      partition=i % topics[topic])
    producer.send(f"{prefix}.a", key=b"tomb", value=None, partition=0)  # a tombstone too
    producer.flush()
    group = f"{prefix}.archivist"
    committed = {TopicPartition(f"{prefix}.a", 0): OffsetAndMetadata(7, "", -1), TopicPartition(f"{prefix}.b", 0): OffsetAndMetadata(3, "", -1)}
    admin.alter_group_offsets(group, committed)
    journal = TopicJournal(ServiceSettings(bootstrap=tansu_bootstrap, prefix=prefix), tmp_path / "journal").start()
    journal.stop(final_snapshot=True)
    assert journal.error is None and journal.snapshots >= 1 and has_snapshot(tmp_path / "journal")
    before = _everything(tansu_bootstrap, topics)
    assert len(before) == 61
    # a crash mid-write leaves a torn last frame: it is cut off, not replayed
    with (tmp_path / "journal" / f"{prefix}.b" / "0.log").open("ab") as fh:
        fh.write(b"\x00\x00\x01\x00partial")
    with EmbeddedBroker() as fresh:
        info = restore(ServiceSettings(bootstrap=fresh.bootstrap, prefix=prefix), tmp_path / "journal")
        assert info["records"] == 61 and info["groups"] == 1 and info["moved_partitions"] == 0
        assert _everything(fresh.bootstrap, topics) == before
        again = KafkaAdminClient(bootstrap_servers=fresh.bootstrap)
        got = again.list_group_offsets({group: None})[group]
        assert {tp: meta.offset for tp, meta in got.items()} == {tp: m.offset for tp, m in committed.items()}
        again.close()
    admin.close()
    producer.close()
