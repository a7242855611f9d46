"""A 3-node Apache Kafka cluster: replicated topics, and a relay that loses nothing when a leader stops."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from kafka import KafkaAdminClient

from sparq_stream.bus import ServiceProcess, create_topics
from sparq_stream.bus.topics import describe_topics
from sparq_stream.cores.relay import RelayCore
from sparq_stream.ids import problem_id
from sparq_stream.messages import Seed, decode, encode
from sparq_stream.settings import ServiceSettings

from ._util import produce, read_all

pytestmark = [pytest.mark.broker, pytest.mark.slow]

N = 3000


def _leaders(bootstrap: str, topics: list[str]) -> Counter[int]:
    """How many partitions of ``topics`` each node leads."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return Counter(p["leader_id"] for t in admin.describe_topics(topics) for p in t["partitions"])
    finally:
        admin.close()


def test_topics_get_three_replicas_and_two_in_sync(kafka_cluster, prefix: str) -> None:
    settings = ServiceSettings(bootstrap=kafka_cluster.bootstrap, prefix=prefix)
    create_topics(settings, partitions=6, replication_factor=3, logical=("seeds", "candidates"))
    (described,) = describe_topics(settings, ["seeds"])
    assert (described["partitions"], described["replication_factor"]) == (6, 3)
    for node in (1, 2, 3):  # the broker default every topic inherits
        props = (kafka_cluster.workdir / f"node-{node}" / "server.properties").read_text().splitlines()
        assert "min.insync.replicas=2" in props and "default.replication.factor=3" in props
    admin = KafkaAdminClient(bootstrap_servers=kafka_cluster.bootstrap)
    try:
        meta = admin.describe_topics([f"{prefix}.seeds"])[0]
        assert all(sorted(p["replica_nodes"]) == [1, 2, 3] for p in meta["partitions"])
        brokers = admin.describe_cluster()["brokers"]
        assert sorted(b["port"] for b in brokers) == [kafka_cluster.node_port(n) for n in (1, 2, 3)]
    finally:
        admin.close()


class _SlowRelay(RelayCore):
    """A relay that takes ~50 ms per batch of 10, so the node stops while most records are still to relay."""

    def handle_batch(self, batch):  # type: ignore[no-untyped-def]
        time.sleep(0.05)
        return super().handle_batch(batch)


def test_relay_loses_nothing_when_the_busiest_leader_stops_and_returns(kafka_cluster, prefix: str, group: str) -> None:
    bootstrap = kafka_cluster.bootstrap
    settings = ServiceSettings(bootstrap=bootstrap, prefix=prefix, group_id=group, max_poll_records=10)
    topics = [f"{prefix}.seeds", f"{prefix}.candidates"]
    create_topics(settings, partitions=6, replication_factor=3, logical=("seeds", "candidates"))
    items = []
    for i in range(N):
        text = f"Problem {i}: " + "x" * 300
        msg = Seed(id=problem_id(text), problem=text, answer=str(i))
        items.append((msg.id.encode(), encode(msg)))
    produce(bootstrap, topics[0], items)
    proc = ServiceProcess(_SlowRelay("seeds", "candidates"), settings, install_signals=False)
    thread = threading.Thread(target=proc.run, daemon=True)
    thread.start()
    victim = None
    try:
        partial = read_all(bootstrap, topics[1], until=lambda recs: len(recs) >= N // 5, timeout_s=180)
        assert N // 5 <= len(partial) < N, "the relay did not run, or finished before the stop: nothing proved"
        victim = _leaders(bootstrap, topics).most_common(1)[0][0]
        kafka_cluster.stop_node(victim)
        stopped_at = len(read_all(bootstrap, topics[1], timeout_s=60))
        wanted = {k for k, _ in items}
        out = read_all(bootstrap, topics[1], until=lambda recs: wanted <= {r.key for r in recs}, timeout_s=300)
        kafka_cluster.start_node(victim)
        victim = None
        time.sleep(1)
        again = read_all(bootstrap, topics[1], until=lambda recs: wanted <= {r.key for r in recs}, timeout_s=120)
    finally:
        if victim is not None:
            kafka_cluster.start_node(victim)
        proc.stop()
        thread.join(60)
    assert stopped_at < N, "everything was relayed before the leader stopped"
    assert {r.key for r in out} == wanted, f"lost {len(wanted - {r.key for r in out})} while a node was down"
    by_key = {r.key: r.value for r in again}
    assert set(by_key) == wanted  # the restarted node rejoined: the topic reads whole through every node
    assert all(decode(by_key[k]) == decode(v) for k, v in items)  # the reference: each input relayed unchanged
    assert sorted(kafka_cluster.running_nodes()) == [1, 2, 3]
