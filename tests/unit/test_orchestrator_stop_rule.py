"""The stop rule of ``sparq up``: the end markers passing; the lag check (a live process's own zero lag) as a fallback."""

from __future__ import annotations

import time
from pathlib import Path

from sparq_stream.messages import Metric
from sparq_stream.orchestrator.monitor import MetricsBook
from sparq_stream.orchestrator.supervisor import ServiceProc
from sparq_stream.orchestrator.up import FALLBACK_IDLE_S, _finished

_SERVICES = ("mutator", "novelty", "solver", "archivist", "trainer")
#: Idle for longer than the fallback window (seconds).
_LONG = FALLBACK_IDLE_S + 10


class _Proc:
    def __init__(self, alive: bool = True) -> None:
        self._alive = alive

    def poll(self) -> int | None:
        return None if self._alive else -9


class _Monitor:
    """The monitor's two queries, over a real MetricsBook."""

    def __init__(self, book: MetricsBook) -> None:
        self.book = book

    def snapshot(self) -> dict:
        return self.book.snapshot()

    def newest_start(self, service: str, instance: str) -> float | None:
        return self.book.newest_start(service, instance)

    def last_report(self, service: str, instance: str) -> float | None:
        return self.book.last_report(service, instance)

    def per_instance(self, service: str, name: str) -> dict[str, float]:
        return self.book.per_instance(service, name)


class _Supervisor:
    def __init__(self, procs: list[ServiceProc]) -> None:
        self.services = procs


def _report(book: MetricsBook, service: str, instance: str, started: float, **gauges: float) -> None:
    book.add(Metric(service=service, instance=instance, ts=time.time(), counters={}, gauges={"started_at": started, **gauges}))


def _world(now: float) -> tuple[MetricsBook, list[ServiceProc]]:
    book = MetricsBook()
    procs = []
    for name in _SERVICES:
        instance = "solver-0" if name == "solver" else name
        proc = ServiceProc(instance, ["run", name], Path("/dev/null"), proc=_Proc(), started_wall=now - 100)  # type: ignore[arg-type]
        procs.append(proc)
        _report(book, name, instance, now - 99, lag=0.0, lag_unknown=0.0, done=1.0 if name == "mutator" else 0.0)
    return book, procs


def test_without_markers_the_lag_check_ends_the_run_only_after_the_fallback_window() -> None:
    now = time.time()
    book, procs = _world(now)
    idle: dict[str, float] = {}
    assert not _finished(_Monitor(book), idle, _Supervisor(procs))  # idle only just now
    for name in idle:
        idle[name] -= 3.0
    assert not _finished(_Monitor(book), idle, _Supervisor(procs))  # the old 2 s: no longer enough
    for name in idle:
        idle[name] -= FALLBACK_IDLE_S
    assert _finished(_Monitor(book), idle, _Supervisor(procs))


def test_the_run_ends_once_the_archivist_passed_the_mutators_end() -> None:
    now = time.time()
    book, procs = _world(now)
    _report(book, "mutator", "mutator", now - 99, lag=0.0, lag_unknown=0.0, done=1.0, end_passed=3.0)
    _report(book, "archivist", "archivist", now - 99, lag=5.0, lag_unknown=0.0, end_passed=2.0)  # an earlier end only
    idle: dict[str, float] = {}
    assert not _finished(_Monitor(book), idle, _Supervisor(procs))
    _report(book, "archivist", "archivist", now - 99, lag=5.0, lag_unknown=0.0, end_passed=3.0)
    assert _finished(_Monitor(book), {}, _Supervisor(procs))  # no lag to watch: the marker says it all


def test_a_mutator_given_more_work_after_its_end_is_not_finished() -> None:
    now = time.time()
    book, procs = _world(now)
    _report(book, "mutator", "mutator", now - 99, lag=0.0, lag_unknown=0.0, done=0.0, end_passed=3.0)
    _report(book, "archivist", "archivist", now - 99, lag=0.0, lag_unknown=0.0, end_passed=3.0)
    assert not _finished(_Monitor(book), {}, _Supervisor(procs))


def test_with_training_the_trainer_must_pass_the_end_too() -> None:
    now = time.time()
    book, procs = _world(now)
    _report(book, "mutator", "mutator", now - 99, lag=0.0, lag_unknown=0.0, done=1.0, end_passed=3.0, model_seen=2.0)
    _report(book, "archivist", "archivist", now - 99, lag=0.0, lag_unknown=0.0, end_passed=3.0)
    _report(book, "trainer", "trainer", now - 99, lag=0.0, lag_unknown=0.0, latest_version=2.0, end_passed=0.0)
    assert not _finished(_Monitor(book), {}, _Supervisor(procs), training=True)
    assert _finished(_Monitor(book), {}, _Supervisor(procs))  # without training the archivist is the last stage
    _report(book, "trainer", "trainer", now - 99, lag=0.0, lag_unknown=0.0, latest_version=2.0, end_passed=3.0)
    assert _finished(_Monitor(book), {}, _Supervisor(procs), training=True)


def test_after_a_hold_the_markers_and_the_lag_check_must_both_hold() -> None:
    now = time.time()
    book, procs = _world(now)
    _report(book, "mutator", "mutator", now - 99, lag=0.0, lag_unknown=0.0, done=1.0, end_passed=1.0)
    _report(book, "archivist", "archivist", now - 99, lag=4.0, lag_unknown=0.0, end_passed=1.0)  # a drill's records
    assert not _finished(_Monitor(book), {}, _Supervisor(procs), held=True)
    _report(book, "archivist", "archivist", now - 99, lag=0.0, lag_unknown=0.0, end_passed=1.0)
    idle = {name: time.monotonic() - 3 for name in _SERVICES}
    assert _finished(_Monitor(book), idle, _Supervisor(procs), held=True)


def test_a_dead_service_with_a_stale_zero_lag_holds_the_stop() -> None:
    now = time.time()
    book, procs = _world(now)
    archivist = next(p for p in procs if p.name == "archivist")
    archivist.proc = _Proc(alive=False)  # type: ignore[assignment]  # killed: waits for its restart
    idle = {name: time.monotonic() - _LONG for name in _SERVICES}
    assert not _finished(_Monitor(book), idle, _Supervisor(procs))
    assert "archivist" not in idle


def test_a_restarted_service_counts_only_once_its_new_process_reported() -> None:
    now = time.time()
    book, procs = _world(now)
    archivist = next(p for p in procs if p.name == "archivist")
    archivist.started_wall = now - 5  # restarted 5 s ago; the book holds only the old process's lag 0
    idle = {name: time.monotonic() - _LONG for name in _SERVICES}
    assert not _finished(_Monitor(book), idle, _Supervisor(procs))
    _report(book, "archivist", "archivist", now - 4, lag=0.0, lag_unknown=0.0)
    idle = {name: time.monotonic() - _LONG for name in _SERVICES}
    assert _finished(_Monitor(book), idle, _Supervisor(procs))


def test_a_given_up_optional_service_is_not_waited_for() -> None:
    now = time.time()
    book, procs = _world(now)
    trainer = next(p for p in procs if p.name == "trainer")
    trainer.proc = _Proc(alive=False)  # type: ignore[assignment]
    trainer.gave_up = True
    idle = {name: time.monotonic() - _LONG for name in _SERVICES}
    assert _finished(_Monitor(book), idle, _Supervisor(procs))


def test_every_mutator_replica_must_be_done() -> None:
    now = time.time()
    book, procs = _world(now)
    first = next(p for p in procs if p.name == "mutator")
    first.name = "mutator-0"
    second = ServiceProc("mutator-1", ["run", "mutator"], Path("/dev/null"), proc=_Proc(), started_wall=now - 100)  # type: ignore[arg-type]
    procs.append(second)
    book = MetricsBook()
    for proc in procs:
        done = 1.0 if proc.name == "mutator-0" else 0.0
        _report(book, proc.service, proc.name, now - 99, lag=0.0, lag_unknown=0.0, done=done)
    idle = {name: time.monotonic() - _LONG for name in _SERVICES}
    assert not _finished(_Monitor(book), idle, _Supervisor(procs))  # replica 1 still holds credits
    book.add(Metric(service="mutator", instance="mutator-1", ts=time.time(), counters={}, gauges={"started_at": now - 99, "lag": 0.0, "lag_unknown": 0.0, "done": 1.0}))
    idle = {name: time.monotonic() - _LONG for name in _SERVICES}
    assert _finished(_Monitor(book), idle, _Supervisor(procs))


def test_a_zero_lag_report_older_than_fresh_s_holds_the_stop() -> None:
    """A process too busy to report may be reading records that came after its last lag 0."""
    now = time.time()
    book, procs = _world(now)
    idle = {name: time.monotonic() - _LONG for name in _SERVICES}
    assert _finished(_Monitor(book), idle, _Supervisor(procs), fresh_s=5.0)
    time.sleep(0.3)
    assert not _finished(_Monitor(book), idle, _Supervisor(procs), fresh_s=0.2)  # every report is 0.3 s old now
    assert "mutator" not in idle  # its idle window starts again
    for proc in procs:
        _report(book, proc.service, proc.name, now - 99, lag=0.0, lag_unknown=0.0, done=1.0 if proc.service == "mutator" else 0.0)
    idle = {name: time.monotonic() - _LONG for name in _SERVICES}
    assert _finished(_Monitor(book), idle, _Supervisor(procs), fresh_s=0.2)  # fresh reports: the stop stands
