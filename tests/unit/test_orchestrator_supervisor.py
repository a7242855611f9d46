"""The supervisor's restart policy: a limit per time window, a back-off, optional services."""

from __future__ import annotations

import sys
from pathlib import Path

from sparq_stream.orchestrator.supervisor import RestartPolicy, Supervisor

CRASH = [sys.executable, "-c", "import sys; sys.exit(3)"]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _crashed(sup: Supervisor) -> None:
    for svc in sup.services:
        if svc.proc is not None:
            svc.proc.wait(30)


def test_crashes_spread_over_time_are_restarted_without_end(tmp_path: Path) -> None:
    clock = _Clock()
    sup = Supervisor(tmp_path, RestartPolicy(max_restarts=2, window_s=100, backoff_s=0), launcher=CRASH, clock=clock)
    svc = sup.add("novelty", "novelty", [])
    for _ in range(6):  # six crashes, one every 150 s: never more than 2 within 100 s
        _crashed(sup)
        assert sup.check() == []
        clock.now += 150
    assert svc.restarts == 6 and not svc.gave_up


def test_too_many_crashes_within_the_window_give_up(tmp_path: Path) -> None:
    clock = _Clock()
    sup = Supervisor(tmp_path, RestartPolicy(max_restarts=2, window_s=100, backoff_s=0), launcher=CRASH, clock=clock)
    svc = sup.add("archivist", "archivist", [])
    results = []
    for _ in range(3):
        _crashed(sup)
        results.append(sup.check())
        clock.now += 10
    assert results == [[], [], ["archivist"]]
    assert svc.restarts == 2 and svc.gave_up
    assert sup.check() == ["archivist"]  # stays given up, is not started again
    assert not svc.alive


def test_restarts_wait_a_doubling_back_off(tmp_path: Path) -> None:
    clock = _Clock()
    sup = Supervisor(tmp_path, RestartPolicy(max_restarts=5, window_s=1000, backoff_s=2, max_backoff_s=5), launcher=CRASH, clock=clock)
    svc = sup.add("solver-0", "solver", [])
    waits = []
    for _ in range(4):
        _crashed(sup)
        sup.check()
        start = clock.now
        while svc.restarts == len(waits):
            clock.now += 0.5
            sup.check()
        waits.append(clock.now - start)
    assert waits == [2.0, 4.0, 5.0, 5.0]


def test_an_optional_service_given_up_does_not_fail_the_run(tmp_path: Path) -> None:
    clock = _Clock()
    sup = Supervisor(tmp_path, RestartPolicy(max_restarts=1, window_s=100, backoff_s=0), launcher=CRASH, clock=clock)
    trainer = sup.add("trainer", "trainer", [])
    for _ in range(3):
        _crashed(sup)
        assert sup.check() == []
    assert trainer.gave_up and trainer.optional
    assert sup.given_up() == ["trainer"]
