"""A consumer in another language (examples/java-consumer) reads a live run and validates every record.

A scripted ``sparq up`` runs against Apache Kafka; before it starts, the test publishes what
a real run meets now and then: a poison record and a candidate whose id is not its text's
hash (both dead-lettered), a candidate that repeats a seed (dropped as an exact duplicate),
and a finished but unpublished model version in the run's models folder (the trainer
publishes it on start, as after a crash). So every schema appears on the wire.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sparq_stream.bus import create_topics, dead_letter_from_record
from sparq_stream.messages import MESSAGE_TYPES, Candidate, encode
from sparq_stream.seeds import read_seeds
from sparq_stream.settings import ServiceSettings

from ..broker._util import produce, read_all

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "java-consumer"
IN_CI = bool(os.environ.get("CI"))


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if IN_CI:
            pytest.fail(f"{tool} is needed to build the Java example")
        pytest.skip(f"{tool} is not installed")
    return path


def _build() -> None:
    """Build offline when the local Maven repository has everything, else online."""
    mvn = _need("mvn")
    _need("java")
    for extra in (["-o"], []):
        done = subprocess.run([mvn, "-q", "-B", *extra, "package"], cwd=EXAMPLE, capture_output=True, text=True, timeout=600)
        if done.returncode == 0:
            return
    pytest.fail(f"mvn package failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")


def _finished_model_version(models: Path) -> None:
    """A version folder as the trainer leaves it when it stops between saving and publishing."""
    folder = models / "student-v0001"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "train_result.json").write_text(json.dumps({"base_model": "smollm2", "examples": 8, "steps": 4, "loss_first": 2.5, "loss_last": 1.5}))


def test_the_java_consumer_validates_every_schema_of_a_live_run(kafka_bootstrap: str, prefix: str, shared_data: Path, tmp_path: Path) -> None:
    _build()
    seeds_file = shared_data / "gsm8k_train.jsonl"
    create_topics(ServiceSettings(bootstrap=kafka_bootstrap, prefix=prefix), partitions=2)
    seed = next(s for s in read_seeds(seeds_file) if hasattr(s, "problem"))
    text = "A made-up problem: what is 2 + 2?"
    repeat = Candidate(id=seed.id, problem=seed.problem, solution="\\boxed{1}", answer="1", variant="qd")
    wrong_id = Candidate(id="0" * 32, problem=text, solution="\\boxed{4}", answer="4", variant="qd")
    produce(kafka_bootstrap, f"{prefix}.candidates", [
        (b"poison", b"\xc1 not msgpack"), (wrong_id.id.encode(), encode(wrong_id)), (repeat.id.encode(), encode(repeat)),
    ])  # fmt: skip
    out = tmp_path / "run"
    _finished_model_version(out / "models")
    up = subprocess.run(
        [sys.executable, "-m", "sparq_stream.cli", "up", "--seeds", str(seeds_file), "--out", str(out), "--bootstrap", kafka_bootstrap,
         "--prefix", prefix, "--partitions", "2", "--backend", "scripted", "--embedder", "hash", "--steps", "2", "--batch-size", "8",
         "--k", "4", "--seed-limit", "20", "--seed", "3", "--timeout", "300"],
        cwd=REPO, capture_output=True, text=True, timeout=420, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert up.returncode == 0, up.stderr[-4000:]

    check = subprocess.run(
        ["java", "-cp", f"target/classes{os.pathsep}target/lib/*", "io.sparq.example.WireCheck", kafka_bootstrap, prefix, str(REPO / "schemas")],
        cwd=EXAMPLE, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = check.stdout.splitlines()
    counts = {p[1]: int(p[2]) for p in (line.split() for line in lines) if len(p) == 3 and p[0] == "count"}
    assert check.returncode == 0, check.stdout[-4000:] + check.stderr[-4000:]
    assert "invalid 0" in lines
    assert set(MESSAGE_TYPES) <= set(counts), f"schemas never seen: {sorted(set(MESSAGE_TYPES) - set(counts))}; seen {counts}"
    assert counts["sparq.dead_letter"] >= 2 and counts["sparq.model"] == 1
    assert all(n >= 1 for n in counts.values())
    assert f"dead-lettered {prefix}.candidates[" in check.stdout  # the poison record: invalid, but rejected by the services
    letters = [dead_letter_from_record(r.key, r.value, r.headers) for r in read_all(kafka_bootstrap, f"{prefix}.dlq")]
    assert sorted((d.original_key, d.error_type, d.service) for d in letters) == sorted(
        [(b"poison", "DecodeError", "novelty"), (wrong_id.id.encode(), "IdMismatch", "novelty")]
    )
