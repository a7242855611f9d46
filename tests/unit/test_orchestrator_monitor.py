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
