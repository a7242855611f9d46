"""``sparq up`` as a user runs it: killed, stopped, resumed, its broker lost, a service failing for good."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from sparq_stream.orchestrator.local import run_local
from sparq_stream.orchestrator.up import RunEnd, UpConfig, run_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BATCH, K, SEEDS = 8, 4, 40
SLOW = {"latency_per_call_s": 0.4}  # a latency-bound backend: the run lasts long enough to be hit mid-way


def _flags(shared_data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "up", "--seeds", str(shared_data / "gsm8k_train.jsonl"), "--out", str(out), "--steps", str(steps),
        "--batch-size", str(BATCH), "--k", str(K), "--backend", "scripted", "--embedder", "hash",
        "--seed-limit", str(SEEDS), "--seed", "7", "--timeout", "300", *extra,
    ]


def _config(shared_data: Path, out: Path, steps: int, **extra) -> UpConfig:
    return UpConfig(
        seeds=shared_data / "gsm8k_train.jsonl", out=out, steps=steps, batch_size=BATCH, k=K, backend="scripted",
        embedder="hash", seed_limit=SEEDS, seed=7, timeout_s=300, **extra,
    )


def _up(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sparq_stream.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _archive_lines(out: Path) -> list[str]:
    ids = []
    for path in sorted((out / "archive").glob("*.jsonl")):
        ids += [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]
    return ids


def _wait_for(predicate, what: str, limit_s: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"sparq up ended ({proc.returncode}) before {what}: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what}")
        time.sleep(0.2)


def _alive(pids: list[int]) -> list[int]:
    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


def test_kill_9_of_sparq_up_leaves_nothing_and_the_same_command_resumes_without_the_trainer(shared_data: Path, tmp_path: Path) -> None:
    steps = 6
    out = tmp_path / "run"
    reference = run_local(_config(shared_data, tmp_path / "local", steps))
    # the trainer fails for good in both runs: an optional service, the loop's data path goes on without it
    flags = _flags(
        shared_data, out, steps, "--backend-options", json.dumps(SLOW), "--with", "trainer --no-such-setting 1", "--max-restarts", "1"
    )
    first = _up(*flags)
    try:
        _wait_for(lambda: len(_archive_lines(out)) >= BATCH and (out / "journal" / "offsets.json").is_file(), "a scored step", proc=first)
        # a second run on the same --out fails at once, naming the owner
        second = subprocess.run([sys.executable, "-m", "sparq_stream.cli", *flags], capture_output=True, text=True, timeout=120)
        assert second.returncode == RunEnd.CONFIG
        assert second.stderr.strip() == f"error: --out {out} is in use by another run (pid {first.pid})"
        family = [p.pid for p in psutil.Process(first.pid).children(recursive=True)]
        assert len(family) >= 6  # the broker and five services (and their helpers)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        _wait_for(lambda: not _alive(family), "every process of the killed run gone", limit_s=60)
    finally:
        if first.poll() is None:
            first.kill()
    scored_before = len(_archive_lines(out))
    assert scored_before < steps * BATCH
    again = subprocess.run([sys.executable, "-m", "sparq_stream.cli", *flags], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    ids = _archive_lines(out)
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    assert sorted(ids) == sorted(r.id for r in reference.results)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == len(ids) and summary["exit_code"] == 0
    assert summary["given_up"] == ["trainer"]
    # counted over both runs' processes; what a process did after its last metrics snapshot is redone as redelivered
    accepted, stages = reference.metrics["novelty"]["accepted"], summary["stages"]
    assert accepted - stages["novelty.redelivered"] <= stages["novelty.accepted"] <= accepted
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished"


def _family_of(proc: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def test_sigterm_stops_in_order_and_writes_the_summary(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _up(*_flags(shared_data, out, 6, "--backend-options", json.dumps(SLOW)))
    try:
        _wait_for(lambda: len(_archive_lines(out)) >= 1, "a scored child", proc=proc)
        family = [p.pid for p in _family_of(proc)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == RunEnd.INTERRUPTED
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "interrupted (SIGTERM)" and summary["exit_code"] == 130
    assert summary["scored"] == len(set(_archive_lines(out))) >= 1
    assert not _alive(family)
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # the same command resumes it


def test_losing_the_embedded_broker_stops_the_run_with_its_own_exit_code(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _up(*_flags(shared_data, out, 6, "--backend-options", json.dumps(SLOW)))
    try:
        _wait_for(lambda: (out / "journal" / "offsets.json").is_file() and len(_family_of(proc)) >= 6, "the services up", proc=proc)
        family = _family_of(proc)
        broker = next(p for p in family if p.name() == "tansu")
        broker.kill()
        assert proc.wait(120) == RunEnd.BROKER_LOST
        assert "broker lost: the embedded broker exited" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"].startswith("broker lost") and summary["exit_code"] == RunEnd.BROKER_LOST
    assert not _alive([p.pid for p in family])


def test_an_essential_service_that_keeps_failing_ends_the_run_with_a_summary(shared_data: Path, tmp_path: Path) -> None:
    config = _config(shared_data, tmp_path / "run", 2, extra={"novelty": ["--no-such-setting", "1"]}, max_restarts=1)
    result = run_up(config)
    assert result.exit_code == RunEnd.SERVICE_FAILED
    assert result.reason.startswith("service failed: novelty kept failing")
    assert "unknown setting --no-such-setting" in result.detail
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["exit_code"] == RunEnd.SERVICE_FAILED and summary["given_up"] == ["novelty"]
    assert summary["restarts"] == {"novelty": 1}



def test_the_same_command_on_a_finished_run_ends_at_once_with_its_result_and_rewrites_nothing(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "sparq_stream.cli", *_flags(shared_data, out, 2)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    kept = ("summary.json", "report.html", "run.json", "archive/archive.jsonl")
    before = {name: (out / name).read_bytes() for name in kept}
    logs = {p.name: p.read_bytes() for p in (out / "logs").iterdir()}
    prefix = json.loads(before["run.json"])["prefix"]
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.startswith(f"already finished (run {prefix}: budget reached): scored {json.loads(before['summary.json'])['scored']}")
    assert f"outputs in {out}" in again.stdout and f"its result is in {out / 'summary.json'}" in again.stderr
    assert {name: (out / name).read_bytes() for name in kept} == before  # byte for byte: the finished summary stands
    assert {p.name: p.read_bytes() for p in (out / "logs").iterdir()} == logs  # no broker, no service was started
    assert [p.name for p in (out / "state").iterdir() if p.is_dir()] == [prefix]  # no new run, no new caches
