"""Run totals from the metrics topic: summed over a service's incarnations, and only this run's."""

from __future__ import annotations

from sparq_stream.messages import Metric
from sparq_stream.orchestrator.monitor import MetricsBook


def _m(service: str, started: float, ts: float, counters: dict | None = None, **gauges: float) -> Metric:
    return Metric(service=service, instance=service, ts=ts, counters=counters or {}, gauges={"started_at": started, **gauges})


def test_counters_add_up_over_restarts_and_gauges_come_from_the_newest() -> None:
    book = MetricsBook(since=100.0)
    # novelty: killed after accepting 240, the new process accepts 80 more (its counters start from 0)
    book.add(_m("novelty", 101, 110, {"consumed": 250}, accepted=100, lag=9))
    book.add(_m("novelty", 101, 120, {"consumed": 260}, accepted=240, lag=7))
    book.add(_m("novelty", 130, 131, {"consumed": 5}, accepted=0, lag=50))
    book.add(_m("novelty", 130, 140, {"consumed": 90}, accepted=80, lag=0))
    # archivist: restores its count from disk, so its new process goes on from 200
    book.add(_m("archivist", 101, 120, scored=190))
    book.add(_m("archivist", 125, 126, scored=200))
    book.add(_m("archivist", 125, 140, scored=320))
    snap = book.snapshot()
    assert snap["novelty"]["gauges"]["accepted"] == 320
    assert snap["novelty"]["counters"]["consumed"] == 350
    assert snap["novelty"]["gauges"]["lag"] == 0
    assert snap["novelty"]["incarnations"] == 2 and snap["novelty"]["instances"] == 1
    assert "started_at" not in snap["novelty"]["gauges"]
    assert snap["archivist"]["gauges"]["scored"] == 320


def test_metrics_of_an_earlier_run_on_the_same_prefix_are_ignored() -> None:
    book = MetricsBook(since=1000.0)
    assert not book.add(_m("mutator", 10, 50, done=1.0, emitted=320))
    assert book.add(_m("mutator", 1001, 1002, done=0.0, emitted=8))
    assert book.snapshot()["mutator"]["gauges"] == {"done": 0.0, "emitted": 8.0}


def _r(instance: str, started: float, ts: float, counters: dict | None = None, **gauges: float) -> Metric:
    return Metric(service="archivist", instance=instance, ts=ts, counters=counters or {}, gauges={"started_at": started, **gauges})


def test_one_active_replica_its_state_gauges_alone_and_every_replica_lag() -> None:
    book = MetricsBook(since=100.0)
    # archivist-0 active until killed at 130 with 190 scored; archivist-1, a standby, takes over with the whole state
    book.add(_r("archivist-0", 101, 120, {"consumed": 50}, active=1, scored=150, lag=0))
    book.add(_r("archivist-0", 101, 129, {"consumed": 90}, active=1, scored=190, lag=0))
    book.add(_r("archivist-1", 102, 125, {"consumed": 0}, active=0, lag=4))
    book.add(_r("archivist-1", 102, 140, {"consumed": 30}, active=1, scored=260, lag=0))
    # archivist-0 restarted by its supervisor: a standby now, still following the tables
    book.add(_r("archivist-0", 135, 141, {"consumed": 0}, active=0, lag=3))
    snap = book.snapshot()["archivist"]
    assert snap["gauges"]["scored"] == 260  # not 190 + 260: the standby that took over holds the whole state
    assert snap["gauges"]["lag"] == 3  # the run is not over while a standby is behind
    assert snap["counters"]["consumed"] == 120
    assert snap["active_instance"] == "archivist-1" and snap["instances"] == 2
    assert "active" not in snap["gauges"]


def test_a_replica_active_twice_counts_its_newest_active_incarnation_only() -> None:
    book = MetricsBook(since=100.0)
    book.add(_r("archivist-0", 101, 110, active=1, scored=100))
    book.add(_r("archivist-0", 120, 121, active=0))  # restarted: a standby first (no state gauges)
    book.add(_r("archivist-0", 120, 130, active=1, scored=180))  # then active again, state restored
    assert book.snapshot()["archivist"]["gauges"]["scored"] == 180
