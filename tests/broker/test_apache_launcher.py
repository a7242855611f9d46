"""The Apache Kafka launcher against a real KRaft node: topics, groups, transactions, compaction, stop."""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from sparq_stream.brokers.apache import ApacheKafka, KafkaLaunchError, kafka_home, kafka_version
from sparq_stream.errors import ConfigError

GROUP_SETTINGS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500}


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    node = ApacheKafka(workdir=tmp_path_factory.mktemp("apache-kafka"))
    try:
        node.start()
    except ConfigError as exc:
        node.close()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Apache Kafka cannot run here: {exc}")
    yield node
    node.close()
    assert not node.running


@pytest.fixture
def admin(kafka: ApacheKafka) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    yield client
    client.close()


def _create(admin: KafkaAdminClient, topic: str, partitions: int = 1, configs: dict[str, str] | None = None) -> None:
    admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1, "configs": configs or {}}})
    admin.wait_for_topics([topic], timeout_ms=20000)


def _drain(consumer: KafkaConsumer, want: int, timeout_s: float = 30.0) -> list:
    """Poll until ``want`` records came or the time is up; return what came."""
    records: list = []
    deadline = time.monotonic() + timeout_s
    while len(records) < want and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    return records


def _read_all(bootstrap: str, topic: str, isolation_level: str = "read_uncommitted", timeout_s: float = 30.0) -> list:
    """Read a topic from the beginning without a group, up to its end offsets (the LSO for read_committed)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation_level,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        records: list = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            assert time.monotonic() < deadline, f"could not read {topic} to {ends} within {timeout_s}s"
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


@pytest.mark.slow
@pytest.mark.broker
def test_version_is_kafka_4(kafka: ApacheKafka) -> None:
    version = kafka_version()
    assert int(version.split(".")[0]) == 4, version
    assert (kafka.workdir / "data" / "meta.properties").is_file()


@pytest.mark.slow
@pytest.mark.broker
def test_keyed_produce_consume_group_join_and_commit(kafka: ApacheKafka, admin: KafkaAdminClient) -> None:
    topic, group = _name("keyed"), _name("group")
    _create(admin, topic, partitions=3)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    sent = {f"k{i}".encode(): f"v{i}".encode() for i in range(30)}
    metas = {key: producer.send(topic, key=key, value=value).get(timeout=30) for key, value in sent.items()}
    producer.close()
    assert len({m.partition for m in metas.values()}) > 1  # keys spread over partitions

    consumer = KafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False, **GROUP_SETTINGS)
    t0 = time.monotonic()
    records = _drain(consumer, len(sent))
    joined_s = time.monotonic() - t0
    assert {r.key: r.value for r in records} == sent
    assert all(metas[r.key].partition == r.partition for r in records)  # same key, same partition
    assert joined_s < 15.0, f"group join + fetch took {joined_s:.1f}s"
    consumer.commit()
    consumer.close()

    committed = admin.list_group_offsets({group: None})[group]
    ends = {tp.partition: off.offset for tp, off in committed.items() if tp.topic == topic}
    expected: dict[int, int] = {}
    for meta in metas.values():
        expected[meta.partition] = max(expected.get(meta.partition, 0), meta.offset + 1)
    assert ends == expected

    # A new member of the same group resumes after the commit: nothing is delivered again.
    again = KafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, group_id=group,
                          auto_offset_reset="earliest", enable_auto_commit=False, **GROUP_SETTINGS)
    redelivered: list = []
    deadline = time.monotonic() + 20
    while not again.assignment() and time.monotonic() < deadline:
        for batch in again.poll(timeout_ms=300).values():
            redelivered.extend(batch)
    assert again.assignment(), "the second member never joined"
    redelivered += _drain(again, 1, timeout_s=1.0)
    assert redelivered == []
    assert {tp.partition: again.position(tp) for tp in again.assignment()} == {p: expected.get(p, 0) for p in range(3)}
    again.close()


@pytest.mark.slow
@pytest.mark.broker
def test_read_committed_skips_aborted_transactions(kafka: ApacheKafka, admin: KafkaAdminClient) -> None:
    topic = _name("txn")
    _create(admin, topic)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, transactional_id=_name("tx"))
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(3):
        producer.send(topic, key=b"c", value=f"committed-{i}".encode())
    producer.commit_transaction()
    producer.begin_transaction()
    for i in range(2):
        producer.send(topic, key=b"a", value=f"aborted-{i}".encode())
    producer.flush()  # the aborted records really reach the log
    producer.abort_transaction()
    producer.begin_transaction()
    producer.send(topic, key=b"c", value=b"committed-3")
    producer.commit_transaction()
    producer.close()

    committed = [r.value for r in _read_all(kafka.bootstrap, topic, "read_committed")]
    everything = [r.value for r in _read_all(kafka.bootstrap, topic, "read_uncommitted")]
    assert committed == [b"committed-0", b"committed-1", b"committed-2", b"committed-3"]
    assert sorted(everything) == sorted(committed + [b"aborted-0", b"aborted-1"])


@pytest.mark.slow
@pytest.mark.broker
def test_exactly_once_relay_commits_offsets_in_the_transaction(kafka: ApacheKafka, admin: KafkaAdminClient) -> None:
    source, sink, group = _name("eos-in"), _name("eos-out"), _name("eos-group")
    _create(admin, source)
    _create(admin, sink)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    for i in range(5):
        producer.send(source, key=str(i).encode(), value=str(i).encode())
    producer.close()

    consumer = KafkaConsumer(source, bootstrap_servers=kafka.bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             isolation_level="read_committed", **GROUP_SETTINGS)
    relay = KafkaProducer(bootstrap_servers=kafka.bootstrap, transactional_id=_name("relay"))
    relay.init_transactions()
    records = _drain(consumer, 5)
    assert len(records) == 5
    relay.begin_transaction()
    for record in records:
        relay.send(sink, key=record.key, value=record.value * 2)
    relay.send_offsets_to_transaction({TopicPartition(source, 0): OffsetAndMetadata(5, "", -1)},
                                      consumer.group_metadata())
    relay.commit_transaction()
    relay.close()
    consumer.close()

    committed = admin.list_group_offsets({group: None})[group]
    assert committed[TopicPartition(source, 0)].offset == 5
    out = [r.value for r in _read_all(kafka.bootstrap, sink, "read_committed")]
    assert out == [str(i).encode() * 2 for i in range(5)]


@pytest.mark.slow
@pytest.mark.broker
def test_compacted_topic_keeps_last_value_per_key(kafka: ApacheKafka, admin: KafkaAdminClient) -> None:
    topic = _name("compact")
    _create(admin, topic, configs={"cleanup.policy": "compact", "segment.ms": "200",
                                   "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "100"})
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    for version in range(5):
        for key in ("a", "b", "c"):
            producer.send(topic, key=key.encode(), value=f"{key}{version}".encode())
        producer.flush()
        time.sleep(0.3)  # each round lands in a new segment
    deadline = time.monotonic() + 90
    records: list = []
    while time.monotonic() < deadline:
        producer.send(topic, key=b"roll", value=b"x").get(timeout=30)  # rolls the active segment
        records = [r for r in _read_all(kafka.bootstrap, topic) if r.key != b"roll"]
        if len(records) == 3:
            break
        time.sleep(1)
    producer.close()
    assert {r.key: r.value for r in records} == {b"a": b"a4", b"b": b"b4", b"c": b"c4"}
    assert len(records) == 3, f"not compacted: {[(r.key, r.value) for r in records]}"


@pytest.mark.slow
@pytest.mark.broker
def test_stop_closes_port_and_restart_keeps_topics(kafka: ApacheKafka, admin: KafkaAdminClient) -> None:
    topic = _name("durable")
    _create(admin, topic)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    producer.send(topic, key=b"k", value=b"kept").get(timeout=30)
    producer.close()
    admin.close()
    pid, port, bootstrap = kafka.pid, kafka.port, kafka.bootstrap
    assert pid is not None and _pid_alive(pid)

    kafka.stop()
    assert not kafka.running
    assert not _pid_alive(pid)
    assert not _port_open(port)
    assert not (kafka.workdir / "kafka.pid").exists()

    assert kafka.start() == bootstrap  # same port, same storage
    assert [r.value for r in _read_all(bootstrap, topic)] == [b"kept"]


@pytest.mark.slow
@pytest.mark.broker
def test_failed_start_reports_the_log_tail(tmp_path: Path) -> None:
    node = ApacheKafka(workdir=tmp_path, startup_timeout=60, overrides={"num.io.threads": "not-a-number"})
    with pytest.raises(KafkaLaunchError) as info:
        node.start()
    assert "num.io.threads" in str(info.value)
    assert not node.running


@pytest.mark.slow
@pytest.mark.broker
def test_busy_port_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        node = ApacheKafka(port=port, workdir=tmp_path)
        with pytest.raises(KafkaLaunchError, match="already in use"):
            node.start()
        assert not node.running


def test_missing_java_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("JAVA", raising=False)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="java"):
        ApacheKafka(workdir=tmp_path).start()


def test_missing_maven_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "kafka-home"
    home.mkdir()
    for name in ("run-kafka.sh", "pom.xml"):
        shutil.copy(kafka_home() / name, home / name)  # no target/lib: the jars must be resolved
    monkeypatch.setenv("SPARQ_KAFKA_HOME", str(home))
    monkeypatch.setenv("MVN", str(tmp_path / "no-such-mvn"))
    monkeypatch.setenv("JAVA", shutil.which("java") or "/usr/bin/java")
    with pytest.raises(ConfigError, match="mvn"):
        ApacheKafka(workdir=tmp_path / "node").start()
    assert kafka_home() == home


def test_bad_kafka_home_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPARQ_KAFKA_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="SPARQ_KAFKA_HOME"):
        kafka_home()


def test_bootstrap_before_start_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        _ = ApacheKafka(workdir=tmp_path).bootstrap


def test_cluster_commands_check_their_arguments(tmp_path: Path) -> None:
    import subprocess

    script = str(kafka_home() / "run-kafka.sh")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", script, "cluster", *args], capture_output=True, text=True, timeout=60)

    assert run("stop-node").returncode == 2  # no node number
    assert run("stop-node", "x").returncode == 2
    missing = run("stop-node", "1", "--dir", str(tmp_path / "none"))
    assert missing.returncode == 1 and "no cluster" in missing.stderr


def test_cluster_object_checks_nodes_and_ports(tmp_path: Path) -> None:
    from sparq_stream.brokers.apache import KafkaCluster

    with pytest.raises(ConfigError):
        KafkaCluster(nodes=0, workdir=tmp_path)
    cluster = KafkaCluster(nodes=3, workdir=tmp_path, port=30100)
    assert cluster.bootstrap == "127.0.0.1:30100,127.0.0.1:30101,127.0.0.1:30102"
    assert cluster.node_port(3) == 30102
    with pytest.raises(ConfigError):
        cluster.node_port(4)
    with pytest.raises(ConfigError):
        _ = KafkaCluster(nodes=3, workdir=tmp_path / "other").bootstrap
