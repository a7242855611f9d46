"""End markers on a real broker: a 2-replica stage passes the end only once both replicas forwarded it."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest

from sparq_stream.bus import ServiceProcess, create_topics
from sparq_stream.bus.markers import EndBook
from sparq_stream.core import BaseCore, Inbound, Outgoing
from sparq_stream.messages import EndMarker, decode, encode
from sparq_stream.settings import ServiceSettings

from ._util import read_all

pytestmark = pytest.mark.broker

PARTITIONS = 4


class _Solver(BaseCore):
    """A stand-in solver: reads ``novel``, counts what it is handed (never a marker), writes nothing."""

    name = "solver"
    inputs = ("novel",)

    def __init__(self) -> None:
        self.handled: list[Any] = []

    def handle(self, inbound: Inbound) -> list[Outgoing]:
        self.handled.append(inbound.message)
        return []


def _wait(predicate: Callable[[], bool], timeout_s: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _novelty_marker(prefix: str, instance: str, covers: list[int]) -> tuple[bytes, bytes]:
    marker = EndMarker(run=prefix, stage="novelty", instance=instance, source="candidates", covers=covers, of=2)
    return str(marker.kafka_key()).encode(), encode(marker)


def _markers(records: list[Any]) -> list[tuple[int, EndMarker]]:
    return [(r.partition, m) for r in records if r.value is not None and isinstance(m := decode(r.value), EndMarker)]


def test_a_marker_passes_a_two_replica_stage_only_once_both_replicas_forwarded(broker: str, prefix: str) -> None:
    settings = [ServiceSettings(bootstrap=broker, prefix=prefix, instance=f"solver-{i}", metrics_interval_s=1.0) for i in range(2)]
    create_topics(settings[0], partitions=PARTITIONS)
    procs = [ServiceProcess(_Solver(), s, install_signals=False) for s in settings]
    threads = [threading.Thread(target=p.run, daemon=True) for p in procs]
    for t in threads:
        t.start()
    novel, solved = f"{prefix}.novel", f"{prefix}.solved"
    try:
        def split() -> bool:  # the group has settled: each replica holds half of novel's partitions
            held = [p.intake.consumer.assignment() if getattr(p, "intake", None) and p.intake.consumer else set() for p in procs]
            return all(len(h) == PARTITIONS // 2 for h in held)

        assert _wait(split), "the two replicas did not share novel's partitions"
        assigned = {p.settings.instance: sorted(tp.partition for tp in p.intake.consumer.assignment()) for p in procs}
        # novelty replica 0 ends candidates partition 0 only: novel is not ended anywhere yet
        for part in range(PARTITIONS):
            _produce_to(broker, novel, part, *_novelty_marker(prefix, "novelty-0", [0]))
        assert _wait(lambda: all(p.metrics.counters["end_markers_seen"] >= PARTITIONS // 2 for p in procs))
        assert _markers(read_all(broker, solved)) == []  # both read half an end: neither forwards
        # novelty replica 1 ends candidates partition 1: every novel partition is ended
        for part in range(PARTITIONS):
            _produce_to(broker, novel, part, *_novelty_marker(prefix, "novelty-1", [1]))

        def both_forwarded(recs: list[Any]) -> bool:  # every solved partition ended (a replica may forward in pieces)
            book = EndBook()
            for part, m in _markers(recs):
                book.add("solved", part, m)
            return all(book.ended("solved", part, ["solver"]) == 1 for part in range(PARTITIONS))

        out = _markers(read_all(broker, solved, until=both_forwarded, timeout_s=90))
    finally:
        for p in procs:
            p.stop()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert all(p.core.handled == [] for p in procs)  # the core never saw a marker
    by_instance: dict[str, set[int]] = {}
    for _, m in out:
        assert (m.run, m.stage, m.source, m.of, m.epoch) == (prefix, "solver", "novel", PARTITIONS, 1)
        by_instance.setdefault(m.instance, set()).update(m.covers)
    # each covers what it held (a rebalance under load may have moved a partition since: then the union still is all)
    assert set().union(*by_instance.values()) == set(range(PARTITIONS)) and set(by_instance) == set(assigned)
    for part in range(PARTITIONS):  # on every solved partition: ended by the union of both, by neither alone
        mine = [m for p, m in out if p == part]
        assert {m.instance for m in mine} == {"solver-0", "solver-1"}
        for alone in ("solver-0", "solver-1"):
            if {c for m in mine if m.instance == alone for c in m.covers} == set(range(PARTITIONS)):
                continue  # it took every partition over in a rebalance: alone it ended them all
            book = EndBook()
            for m in mine:
                if m.instance == alone:
                    book.add("solved", part, m)
            assert book.ended("solved", part, ["solver"]) == 0
        book = EndBook()
        for m in mine:
            book.add("solved", part, m)
        assert book.ended("solved", part, ["solver"]) == 1
    assert all(p.metrics.gauges.get("end_passed") == 1.0 for p in procs)


def _produce_to(bootstrap: str, topic: str, partition: int, key: bytes, value: bytes) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(topic, key=key, value=value, partition=partition).get(timeout=30)
    finally:
        producer.close()
