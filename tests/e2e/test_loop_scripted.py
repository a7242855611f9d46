"""The whole loop on a real broker with the scripted backend: exact W and A, plug-in consumers, restarts."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from sparq_stream.bus import read_latest
from sparq_stream.bus.process import ServiceProcess
from sparq_stream.cores.archivist import ArchivistConfig, ArchivistCore
from sparq_stream.messages import WATERMARK_KEY, Elite, EndMarker, MutatorState, SolveResult, Watermark, decode
from sparq_stream.orchestrator.local import run_local
from sparq_stream.orchestrator.up import UpConfig, run_up
from sparq_stream.qd.archive_log import read_archive
from sparq_stream.descriptors import niche_of
from sparq_stream.settings import ServiceSettings

pytestmark = [pytest.mark.broker, pytest.mark.e2e]

STEPS, BATCH, K, SEEDS = 3, 8, 4, 40


def _config(shared_data: Path, out: Path, variant: str, **extra) -> UpConfig:
    return UpConfig(
        seeds=shared_data / "gsm8k_train.jsonl",
        out=out,
        steps=extra.pop("steps", STEPS),
        batch_size=extra.pop("batch_size", BATCH),
        k=K,
        backend="scripted",
        embedder="hash",
        variant=variant,
        seed_limit=SEEDS,
        seed=7,
        timeout_s=240,
        **extra,
    )


def _w(elites: dict) -> dict[str, tuple[str, float, str]]:
    return {slot: (e.id, e.quality, e.niche) for slot, e in elites.items()}


def _read_elites(bootstrap: str, prefix: str) -> dict[str, Elite]:
    """W as the elites table holds it (the archivist's watermark records left out)."""
    table = read_latest(ServiceSettings(bootstrap=bootstrap, prefix=prefix), f"{prefix}.elites")
    marks = {k: v for k, v in table.items() if k == WATERMARK_KEY}
    assert all(isinstance(v, Watermark) for v in marks.values())
    return {k: v for k, v in table.items() if k != WATERMARK_KEY}


def _a(results) -> list[tuple[str, int, float, float, str, int]]:
    return sorted((r.id, r.n_correct, r.solve_rate, r.quality, r.niche, r.step) for r in results)


@pytest.fixture
def tansu(tansu_bootstrap: str) -> str:
    return tansu_bootstrap


@pytest.mark.parametrize("variant", ["static-uniform", "static-diverse", "dynamic-uniform", "qd"])
def test_each_variant_reaches_the_exact_reference_archive(variant: str, tansu: str, shared_data: Path, tmp_path: Path) -> None:
    reference = run_local(_config(shared_data, tmp_path / "local", variant))
    prefix = "e2e" + uuid.uuid4().hex[:8]
    config = _config(shared_data, tmp_path / "run", variant, bootstrap=tansu, prefix=prefix)
    result = run_up(config)
    assert result.reason == "budget reached"
    elites = _read_elites(tansu, prefix)
    archive = read_archive(tmp_path / "run" / "archive")
    # the streaming run equals the sequential in-memory reference, exactly
    assert _w(elites) == _w(reference.elites)
    assert _a(archive) == _a(reference.results)
    # and what that archive must look like for this variant
    assert len(archive) + len(reference.drops) == STEPS * BATCH
    assert len({r.id for r in archive}) == len(archive)
    assert {r.step for r in archive} == set(range(STEPS))
    assert all(r.k == K and r.rollouts_used == K and r.quality == (1 - r.solve_rate if 0.1 <= r.solve_rate <= 0.9 else 0.0) for r in archive)
    assert all(isinstance(e, Elite) and e.quality > 0 for e in elites.values())
    published = read_latest(ServiceSettings(bootstrap=tansu, prefix=prefix), f"{prefix}.seeds")
    # the 21st training problem shares a word 13-gram with a GSM8K test problem: refused as held-out
    assert len(published) == SEEDS - 1 and all(1 <= len(s.skills) <= 3 for s in published.values())
    if variant.startswith("static"):
        assert elites == {}  # static variants never put children into W
        parents = {p for r in archive for p in r.parent_ids}
        assert parents <= {s.id for s in _seeds(shared_data)}
    elif variant == "qd":
        per_niche = Counter(niche_of(e) for e in elites.values())
        assert per_niche and max(per_niche.values()) == 1  # default cap: one elite per skill-set
        kept = [r for r in archive if r.quality > 0]
        assert set(per_niche) == {r.niche for r in kept}
        for slot, elite in elites.items():
            best = max(r.quality for r in kept if r.niche == elite.niche)
            assert elite.quality == best
    else:
        kept = sorted((r for r in archive if r.quality > 0), key=lambda r: (-r.quality, r.id))
        assert {e.id for e in elites.values()} == {r.id for r in kept[:1000]}
    summary = result.summary
    assert summary["scored"] == len(archive)
    assert summary["coverage"] == len({r.niche for r in archive if r.quality > 0})
    assert (tmp_path / "run" / "plots" / "coverage.png").stat().st_size > 0
    assert (tmp_path / "run" / "summary.json").is_file()


def _seeds(shared_data: Path):
    from sparq_stream.messages import Seed
    from sparq_stream.seeds import read_seeds

    return [s for s in read_seeds(shared_data / "gsm8k_train.jsonl") if isinstance(s, Seed)][:SEEDS]


def test_an_independent_consumer_group_sees_every_result_while_the_loop_runs(tansu: str, shared_data: Path, tmp_path: Path) -> None:
    prefix = "plug" + uuid.uuid4().hex[:8]
    seen: list[SolveResult] = []
    stop = threading.Event()
    ready = threading.Event()

    def plug_in() -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=tansu, group_id="my-own-dashboard-" + prefix, auto_offset_reset="earliest",
            session_timeout_ms=6000, heartbeat_interval_ms=500,
        )
        while not stop.is_set():
            topics = consumer.topics()
            if f"{prefix}.solved" in topics:
                break
        consumer.subscribe([f"{prefix}.solved"])
        ready.set()
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=200).values():
                messages = [decode(r.value) for r in records]
                # the run's end markers are not results: a consumer skips them (docs/wire.md, "End markers")
                seen.extend(m for m in messages if not isinstance(m, EndMarker))
                assert all(isinstance(m, (SolveResult, EndMarker)) for m in messages)
        consumer.close()

    thread = threading.Thread(target=plug_in, daemon=True)
    thread.start()
    config = _config(shared_data, tmp_path / "run", "qd", bootstrap=tansu, prefix=prefix)
    first_seen: list[int] = []
    run_up(config, on_tick=lambda sup, mon: first_seen.append(len(seen)) if seen and not first_seen else None)
    stop.set()
    thread.join(30)
    archive = read_archive(tmp_path / "run" / "archive")
    assert ready.is_set() and first_seen, "the plug-in consumer saw nothing while the loop ran"
    assert Counter(r.id for r in seen) == Counter(r.id for r in archive)


@pytest.mark.parametrize("victim", ["mutator", "novelty", "solver-0", "archivist", "trainer"])
def test_kill_9_of_a_service_mid_run_ends_in_the_same_archive(victim: str, tansu: str, shared_data: Path, tmp_path: Path) -> None:
    steps = 6
    slow = {"latency_per_call_s": 0.4}  # a latency-bound backend, so the kill lands early in the run
    reference = run_local(_config(shared_data, tmp_path / "local", "qd", steps=steps))
    prefix = "kill" + uuid.uuid4().hex[:8]
    config = _config(shared_data, tmp_path / "run", "qd", bootstrap=tansu, prefix=prefix, steps=steps, backend_options=slow)
    killed_at_step: list[float] = []

    def chaos(supervisor, monitor) -> None:
        if killed_at_step:
            return
        if monitor.value("archivist", "scored") >= 1 and monitor.value("mutator", "step") <= 2:
            svc = next(s for s in supervisor.services if s.name == victim)
            if svc.alive:
                os.kill(svc.proc.pid, signal.SIGKILL)
                killed_at_step.append(monitor.value("mutator", "step"))

    result = run_up(config, on_tick=chaos)
    assert killed_at_step, "the victim was never killed"
    assert result.restarts == {victim: 1}
    assert result.reason == "budget reached"
    elites = _read_elites(tansu, prefix)
    archive = read_archive(tmp_path / "run" / "archive")
    assert _w(elites) == _w(reference.elites)
    assert _a(archive) == _a(reference.results)
    assert max(r.step for r in archive) > killed_at_step[0] + 1  # the loop went on after the kill
    # the summary's stage totals add up over the victim's two processes (its counters restart from 0)
    stages = result.summary["stages"]
    assert stages[f"{victim.split('-')[0]}.incarnations"] == 2
    assert stages["archivist.scored"] == len(archive) == reference.metrics["archivist"]["scored"]
    assert stages["mutator.emitted"] == reference.metrics["mutator"]["emitted"]
    # Counters are not durable: what a killed process counted after its last metrics snapshot is lost, and is
    # counted again (as redelivered) only when its input offsets were not committed yet. So the summed count
    # can fall short of the reference's (CI saw 40 of 48 with 0 redelivered), never exceed it; the archive and
    # W above are the exact checks. Durable counters belong to the framework's state (issue 18).
    accepted = reference.metrics["novelty"]["accepted"]
    assert 0 < stages["novelty.accepted"] <= accepted
    assert stages["solver.candidates"] >= len(archive)
    export = (tmp_path / "run" / "export")
    assert any(export.glob("*.jsonl"))


@pytest.mark.slow
def test_kill_9_of_the_mutator_mid_chunked_steps_ends_in_the_reference(broker: str, broker_name: str, shared_data: Path, tmp_path: Path) -> None:
    """b=64 in chunks of 16: the mutator killed twice mid-step restores from its changelog topic alone.

    On Apache Kafka every service runs exactly-once: the state record rides in the transaction.
    """
    flags = {"mutator": ["--chunk-size", "16"]}
    if broker_name == "kafka":
        flags = {name: [*flags.get(name, []), "--processing-guarantee", "exactly_once"] for name in ("mutator", "novelty", "solver", "archivist", "trainer")}
    slow = {"latency_per_call_s": 0.3}  # a latency-bound backend, so the kills land mid-step
    reference = run_local(_config(shared_data, tmp_path / "local", "qd", batch_size=64, extra={"mutator": ["--chunk-size", "16"]}))
    prefix = "mkill" + uuid.uuid4().hex[:8]
    config = _config(
        shared_data, tmp_path / "run", "qd", bootstrap=broker, prefix=prefix, batch_size=64, extra=flags, backend_options=slow
    )
    kills: list[float] = []

    def chaos(supervisor, monitor) -> None:
        svc = next(s for s in supervisor.services if s.name == "mutator")
        emitted = monitor.value("mutator", "emitted")
        if svc.alive and ((not kills and emitted >= 16) or (len(kills) == 1 and emitted >= kills[0] + 48)):
            os.kill(svc.proc.pid, signal.SIGKILL)
            kills.append(emitted)

    result = run_up(config, on_tick=chaos)
    assert len(kills) == 2 and result.restarts == {"mutator": 2}
    assert result.reason == "budget reached"
    assert _w(_read_elites(broker, prefix)) == _w(reference.elites)
    assert _a(read_archive(tmp_path / "run" / "archive")) == _a(reference.results)
    state = read_latest(ServiceSettings(bootstrap=broker, prefix=prefix), f"{prefix}.mutator-state")["mutator"]
    assert isinstance(state, MutatorState) and (state.step, state.emitted, state.credit_ids) == (STEPS, 3 * 64, [])

    # The archivist's disk wiped: restarted, it rebuilds its export, ids and statistics from Kafka alone.
    archive_dir = tmp_path / "run" / "archive"
    before = sorted((r.id, r.quality) for r in read_archive(archive_dir))
    shutil.rmtree(archive_dir)
    core = ArchivistCore(ArchivistConfig(variant="qd", archive_dir=str(archive_dir)))
    ServiceProcess(core, ServiceSettings(bootstrap=broker, prefix=prefix), install_signals=False).run(max_idle_s=2.0)
    assert sorted((r.id, r.quality) for r in read_archive(archive_dir)) == before
    assert core.metrics()["scored"] == len(before) == core.metrics()["restored_from_topic"]
    assert _w(core.working_set.elites()) == _w(reference.elites)
