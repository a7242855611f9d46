"""Replicas against the 3-node Apache Kafka cluster, one test per service: two processes of it, one (for a standby
service, the active one) ``kill -9``-ed mid-run; the run ends equal to the in-memory reference of the same seed
(scripted backend), or, for the trainer, publishes every version once."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from sparq_stream.drill.common import compare_with_reference, read_elites, result_checks
from sparq_stream.orchestrator.local import run_local
from sparq_stream.orchestrator.up import UpConfig, run_up

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.e2e]


def _config(shared_data: Path, out: Path, bootstrap: str | None, **over: Any) -> UpConfig:
    """The drills' run (scripted backend, hash embedder, b=64 in chunks of 16, K=4, 40 seeds) at 6 steps (room to act mid-run)."""
    values: dict[str, Any] = dict(
        seeds=shared_data / "gsm8k_train.jsonl", out=out, steps=6, batch_size=64, k=4, backend="scripted",
        embedder="hash", seed_limit=40, seed=7, label_seeds=False, timeout_s=240.0, bootstrap=bootstrap,
        prefix=f"rep{uuid.uuid4().hex[:8]}", extra={"mutator": ["--chunk-size", "16"]},
    )
    values.update(over)
    return UpConfig(**values)


@pytest.fixture(scope="module")
def reference(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The undisturbed run of the same seed and settings, in memory (one per module: the replicas do not change it)."""
    return run_local(_config(shared_data, tmp_path_factory.mktemp("reference"), None, prefix=None))


class _KillActive:
    """on_tick: ``kill -9`` the active replica of ``service`` once ``ready(monitor)`` holds, while the mutator still works."""

    def __init__(self, service: str, ready: Any) -> None:
        self.service = service
        self.ready = ready
        self.killed: str | None = None
        self.step_at_kill = -1.0

    def __call__(self, supervisor: Any, monitor: Any) -> None:
        if self.killed is not None or not self.ready(monitor):
            return
        active = monitor.snapshot().get(self.service, {}).get("active_instance")
        svc = next((s for s in supervisor.services if s.name == active and s.alive), None)
        if svc is None or monitor.value("mutator", "done") >= 1.0:
            return
        os.kill(svc.proc.pid, signal.SIGKILL)
        self.killed, self.step_at_kill = active, monitor.value("mutator", "step")


class _KillOnce:
    """on_tick: ``kill -9`` the process ``name`` once the first result is scored and it has consumed input, while the mutator still works."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.scored_at_kill: list[float] = []

    def __call__(self, supervisor: Any, monitor: Any) -> None:
        svc = next(s for s in supervisor.services if s.name == self.name)
        if self.scored_at_kill or not svc.alive or monitor.value("archivist", "scored") < 1 or monitor.value("mutator", "done") >= 1.0:
            return
        service = self.name.rsplit("-", 1)[0]
        if monitor.per_instance(service, "consumed").get(self.name, 0.0) < 1:
            return  # the victim must have taken part (reported input of its own) before it dies
        os.kill(svc.proc.pid, signal.SIGKILL)
        self.scored_at_kill.append(monitor.value("archivist", "scored"))


def test_archivist_hot_standby_takes_over_a_kill_9_with_nothing_lost(
    kafka_cluster, reference: Any, shared_data: Path, tmp_path: Path
) -> None:
    config = _config(shared_data, tmp_path / "run", kafka_cluster.bootstrap, replicas={"archivist": 2})
    chaos = _KillActive("archivist", lambda monitor: monitor.value("archivist", "scored") >= 1)
    up = run_up(config, on_tick=chaos)
    assert up.reason == "budget reached", up.detail
    assert chaos.killed is not None, "the active archivist was never killed mid-run"
    assert up.restarts.get(chaos.killed) == 1
    elites = read_elites(config, up.bootstrap, up.prefix)
    # replica 0's folder is the run's archive; replica 1 keeps its own copy: both whole, once
    for folder in (config.out / "archive", config.out / "replicas" / "archivist-1" / "archive"):
        diff = compare_with_reference(reference, folder, elites)
        assert all(result_checks(diff).values()), (folder, diff)
    stages = up.summary["stages"]
    assert stages["archivist.takeovers"] >= 2  # the first active one, then the standby after the kill
    assert stages["archivist.instances"] == 2
    assert stages["archivist.scored"] == len(reference.results)  # the active replica's state, not a sum over both


def test_two_novelty_replicas_one_killed_route_by_bucket_and_end_equal_to_one(
    kafka_cluster, reference: Any, shared_data: Path, tmp_path: Path
) -> None:
    config = _config(shared_data, tmp_path / "run", kafka_cluster.bootstrap, replicas={"novelty": 2})
    chaos = _KillOnce("novelty-1")
    up = run_up(config, on_tick=chaos)
    assert up.reason == "budget reached", up.detail
    assert chaos.scored_at_kill and up.restarts.get("novelty-1") == 1
    diff = compare_with_reference(reference, config.out / "archive", read_elites(config, up.bootstrap, up.prefix))
    assert all(result_checks(diff).values()), diff
    stages = up.summary["stages"]
    assert stages["novelty.instances"] == 2 and stages["novelty.routed"] > 0  # candidates moved to their bucket's partition
    assert (config.out / "state" / up.prefix / "novelty-1").is_dir()  # each replica snapshots its own index, bound to its run


def test_two_solver_replicas_one_killed_end_equal_to_one(kafka_cluster, reference: Any, shared_data: Path, tmp_path: Path) -> None:
    config = _config(shared_data, tmp_path / "run", kafka_cluster.bootstrap, replicas={"solver": 2})
    chaos = _KillOnce("solver-1")  # its uncommitted records go to solver-0 (rebalance) or come back with it
    up = run_up(config, on_tick=chaos)
    assert up.reason == "budget reached", up.detail
    assert chaos.scored_at_kill and chaos.scored_at_kill[0] < len(reference.results) and up.restarts.get("solver-1") == 1
    diff = compare_with_reference(reference, config.out / "archive", read_elites(config, up.bootstrap, up.prefix))
    assert all(result_checks(diff).values()), diff
    assert up.summary["stages"]["solver.instances"] == 2


@pytest.mark.parametrize("victim", ["mutator-0", "mutator-1"])
def test_two_mutator_replicas_share_the_steps_and_a_kill_9_of_either_ends_equal_to_one(
    kafka_cluster, reference: Any, shared_data: Path, tmp_path: Path, victim: str
) -> None:
    config = _config(shared_data, tmp_path / "run", kafka_cluster.bootstrap, replicas={"mutator": 2})
    killed: list[float] = []

    def chaos(supervisor: Any, monitor: Any) -> None:
        svc = next(s for s in supervisor.services if s.name == victim)
        steps = monitor.per_instance("mutator", "step")
        if killed or not svc.alive or min(steps.values(), default=0.0) < 2 or len(steps) < 2:
            return  # both replicas in step 2 or later (victim 0 plans, victim 1 holds a share)
        os.kill(svc.proc.pid, signal.SIGKILL)
        killed.append(monitor.value("archivist", "scored"))

    up = run_up(config, on_tick=chaos)
    assert up.reason == "budget reached", up.detail
    assert killed and up.restarts.get(victim) == 1
    diff = compare_with_reference(reference, config.out / "archive", read_elites(config, up.bootstrap, up.prefix))
    assert all(result_checks(diff).values()), diff
    emitted = up.summary["emitted_by_mutator"]
    assert set(emitted) == {"mutator-0", "mutator-1"} and all(v > 0 for v in emitted.values()), emitted
    assert up.summary["stages"]["mutator.instances"] == 2


def _elite(i: int) -> Any:
    from sparq_stream.ids import problem_id
    from sparq_stream.messages import Elite

    text = f"Trainer replica problem {i}"
    return Elite(
        id=problem_id(text), problem=text, solution=f"\\boxed{{{i}}}", answer=str(i), k=4, rollouts_used=4, n_correct=2,
        solve_rate=0.5, quality=0.5, correct_rollouts=[f"r{j} \\boxed{{{i}}}" for j in range(2)], slot=f"slot{i}",
        niche="a|b", skills=["a", "b"], created_at=1.0,
    )


def _wait(predicate: Any, what: str, limit_s: float = 90.0) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_trainer_standby_takes_over_a_kill_9_during_training_without_a_duplicate_version(
    kafka_cluster, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from sparq_stream.bus.client import publish_all
    from sparq_stream.bus.topics import create_topics
    from sparq_stream.messages import ModelVersion, decode
    from sparq_stream.settings import ServiceSettings
    from sparq_stream.training.export import read_examples
    from tests.broker._util import read_all

    bootstrap, prefix = kafka_cluster.bootstrap, f"rep{uuid.uuid4().hex[:8]}"
    settings = ServiceSettings(bootstrap=bootstrap, prefix=prefix)
    create_topics(settings, partitions=3, replication_factor=3)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp_path / f"{name}.log" for name in ("trainer-0", "trainer-1")}
    for name, log in logs.items():
        with open(log, "wb") as out:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "tests.e2e._trainer_replica", "--bootstrap", bootstrap, "--prefix", prefix,
                 "--instance", name, "--models-dir", str(tmp_path / "models"), "--export-dir", str(tmp_path / "export")],
                stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2],
            )

    def active() -> str | None:
        live = [n for n, log in logs.items() if procs[n].poll() is None and "is now the active replica" in log.read_text()]
        return live[0] if len(live) == 1 else None

    def versions() -> list[int]:
        records = read_all(bootstrap, f"{prefix}.models", timeout_s=30)
        return [decode(r.value, expect=ModelVersion).number for r in records]

    try:
        first = _wait(active, "an active trainer")
        publish_all(settings, f"{prefix}.elites", [_elite(i) for i in range(4)])
        _wait(lambda: versions() == [1], "version 1")
        publish_all(settings, f"{prefix}.elites", [_elite(i) for i in range(4, 8)])
        _wait(lambda: (tmp_path / "models" / ".pending-student-v0002").exists(), "training of version 2")
        procs[first].kill()  # kill -9 while version 2 trains
        procs[first].wait(10)
        second = _wait(active, "the standby taking over")
        assert second != first
        _wait(lambda: versions() == [1, 2], "version 2 from the new active replica")
        publish_all(settings, f"{prefix}.elites", [_elite(i) for i in range(8, 12)])
        _wait(lambda: len(versions()) >= 3, "version 3")
        time.sleep(2)  # a duplicate publication would show up by now
        final = versions()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.wait(30)
    assert final == [1, 2, 3]  # each version published once, numbered on across the takeover
    assert {p.name for p in (tmp_path / "models").iterdir()} == {"student-v0001", "student-v0002", "student-v0003"}
    assert len({r["problem_id"] for r in read_examples(tmp_path / "export")}) == 12
    assert "Traceback" not in logs[second].read_text()
