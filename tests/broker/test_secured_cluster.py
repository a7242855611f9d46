"""The scripted loop on a secured 3-node Apache Kafka cluster (SASL/SCRAM-SHA-512 between clients and brokers and
between the brokers, ACLs): two mutator replicas (consumer groups under the mutator's prefix) and two solvers, each
service logged in as itself; the run ends equal to the in-memory reference and ``reader`` reads every topic, writes none."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from sparq_stream.bus.topics import LOGICAL_TOPICS, TopicNames, admin_client
from sparq_stream.drill.common import compare_with_reference, result_checks
from sparq_stream.orchestrator.local import run_local
from sparq_stream.orchestrator.up import run_up

from ._util import start_or_skip
from ._secured import WRITTEN, count_records, elites_as, login, loop_config, refused_writes

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.e2e]



@pytest.fixture(scope="module")
def secured_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A 3-node KRaft cluster with --auth scram for the module (a ``KafkaCluster``; logins in ``clients_dir``)."""
    from sparq_stream.brokers.apache import KafkaCluster

    cluster = KafkaCluster(nodes=3, workdir=tmp_path_factory.mktemp("kafka-secured-cluster"), auth="scram")
    start_or_skip(cluster, "a secured Apache Kafka cluster")
    yield cluster
    cluster.close()


def test_the_loop_runs_secured_on_three_nodes(secured_cluster: Any, shared_data: Path, tmp_path: Path) -> None:
    clients = secured_cluster.clients_dir
    config = loop_config(shared_data, tmp_path / "run", secured_cluster.bootstrap, clients, replicas={"mutator": 2, "solver": 2})
    reference = run_local(loop_config(shared_data, tmp_path / "reference", None, None, prefix=None))
    up = run_up(config)
    assert up.reason == "budget reached", up.detail
    assert not up.restarts, up.restarts
    reader = login(secured_cluster.bootstrap, up.prefix, clients, "reader")
    diff = compare_with_reference(reference, config.out / "archive", elites_as(reader))
    assert all(result_checks(diff).values()), diff
    names = TopicNames(up.prefix)
    counts = {t: count_records(reader, names.topic(t)) for t in LOGICAL_TOPICS}
    assert all(counts[t] > 0 for t in WRITTEN), counts
    assert refused_writes(secured_cluster.bootstrap, clients, "reader", names.all()) == {t: "refused" for t in names.all()}
    # the brokers replicate to each other over SCRAM (as admin): the groups' offsets are in sync on all three nodes
    for node in (1, 2, 3):
        props = (secured_cluster.workdir / f"node-{node}" / "server.properties").read_text().splitlines()
        assert "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512" in props and "inter.broker.listener.name=SASL_PLAINTEXT" in props
    admin = admin_client(login(secured_cluster.bootstrap, up.prefix, clients, "admin"))
    try:
        (offsets,) = admin.describe_topics(["__consumer_offsets"])
    finally:
        admin.close()
    assert offsets["partitions"] and all(len(p["isr_nodes"]) == 3 for p in offsets["partitions"]), offsets
