"""The CLI against real brokers: topics, seed + tail round trip, clear errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sparq_stream.messages import Seed
from sparq_stream.seeds import read_seeds

from ._util import sparq

pytestmark = pytest.mark.broker


def test_seed_then_tail_round_trips_the_shared_seed_file(broker: str, prefix: str, shared_data: Path) -> None:
    seeds_file = shared_data / "gsm8k_train.jsonl"
    # two of the 512 training problems share a word 13-gram with a GSM8K test problem: refused
    expected = [s for s in read_seeds(seeds_file) if isinstance(s, Seed) and s.line not in (21, 407)]
    assert len(expected) == 510
    assert sparq("topics", "create", "-b", broker, "--prefix", prefix).returncode == 0
    done = sparq("seed", str(seeds_file), "-b", broker, "--prefix", prefix, "--embedder", "hash", "--no-label")
    assert done.returncode == 0, done.stderr
    assert "published 510 seed(s)" in done.stderr and "refused 2 held-out seed(s)" in done.stderr
    assert "gsm8k_train.jsonl:21: a held-out test problem (contamination_ngram: gsm8k_test.jsonl" in done.stderr
    tailed = sparq("tail", "seeds", "-b", broker, "--prefix", prefix, "--from-beginning", "--max", "510")
    assert tailed.returncode == 0, tailed.stderr
    rows = [json.loads(line) for line in tailed.stdout.splitlines()]
    assert len(rows) == 510
    got = Counter(
        (r["key"], r["id"], r["problem"], r["answer"], r["solution"], r["line"], r["schema"], r["version"]) for r in rows
    )
    want = Counter((s.id, s.id, s.problem, s.answer, s.solution, s.line, "sparq.seed", Seed.VERSION) for s in expected)
    assert got == want


def test_seed_reports_bad_lines_and_publishes_only_good_ones(broker: str, prefix: str, tmp_path: Path) -> None:
    path = tmp_path / "seeds.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}),
                "{not json",
                json.dumps({"question": "No final answer here", "answer": "it is four"}),
                json.dumps({"problem": "Find x if x+1=3.", "solution": "x=2, \\boxed{2}", "answer": "2"}),
                json.dumps(["a", "list"]),
                "",
                json.dumps({"problem": "", "answer": "1"}),
            ]
        )
        + "\n"
    )
    sparq("topics", "create", "-b", broker, "--prefix", prefix)
    done = sparq("seed", str(path), "-b", broker, "--prefix", prefix, "--embedder", "hash", "--no-label")
    assert done.returncode == 0
    assert "published 2 seed(s)" in done.stderr and "skipped 4 bad line(s)" in done.stderr
    for line in (2, 3, 5, 7):
        assert f"seeds.jsonl:{line}:" in done.stderr
    tailed = sparq("tail", "seeds", "-b", broker, "--prefix", prefix, "--from-beginning", "--timeout", "3")
    problems = sorted(json.loads(line)["problem"] for line in tailed.stdout.splitlines())
    assert problems == ["Find x if x+1=3.", "What is 2+2?"]


def test_seed_names_a_too_long_or_non_utf8_line_and_publishes_the_rest(broker: str, prefix: str, tmp_path: Path) -> None:
    path = tmp_path / "seeds.jsonl"
    good = json.dumps({"question": "What is 2+2?", "answer": "#### 4"})
    huge = json.dumps({"question": "x" * 3_000_000, "answer": "#### 1"})
    path.write_bytes(f"{good}\n{huge}\n".encode() + b'{"question": "\xff", "answer": "#### 1"}\n' + good.replace("2+2", "3+3").encode() + b"\n")
    sparq("topics", "create", "-b", broker, "--prefix", prefix)
    done = sparq("seed", str(path), "-b", broker, "--prefix", prefix, "--max-line-bytes", "1000000", "--embedder", "hash", "--no-label")
    assert done.returncode == 0, done.stderr
    assert f"seeds.jsonl:2: line of {len(huge) + 1:,} bytes is longer than the 1,000,000-byte limit (skipped)" in done.stderr
    assert "seeds.jsonl:3: not UTF-8: byte 0xff at byte 15 (skipped)" in done.stderr
    assert "published 2 seed(s)" in done.stderr and "skipped 2 bad line(s)" in done.stderr


def test_seed_of_nothing_but_junk_reports_briefly_and_fails(broker: str, prefix: str, tmp_path: Path) -> None:
    path = tmp_path / "junk.jsonl"
    path.write_bytes(b"\n".join(b"junk %d \x00\x01" % i for i in range(5000)) + b"\n")
    sparq("topics", "create", "-b", broker, "--prefix", prefix)
    done = sparq("seed", str(path), "-b", broker, "--prefix", prefix, "--no-label")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 22
    assert lines[20] == f"error: {path}: ... and 4,980 more bad line(s) not shown"
    assert lines[21] == f"error: {path}: no valid seed line (5,000 bad line(s)); nothing published"


def test_topics_describe_and_unknown_topic(broker: str, broker_name: str, prefix: str) -> None:
    assert sparq("topics", "create", "-b", broker, "--prefix", prefix, "--partitions", "2").returncode == 0
    again = sparq("topics", "create", "-b", broker, "--prefix", prefix)
    assert again.returncode == 0 and "already exist" in again.stdout
    described = sparq("topics", "describe", "-b", broker, "--prefix", prefix)
    rows = {r["topic"]: r for r in map(json.loads, described.stdout.splitlines())}
    assert set(rows) == {f"{prefix}.{t}" for t in ("seeds", "candidates", "novel", "drops", "solved", "elites", "archive", "models", "metrics", "dlq", "mutator-state")}
    assert rows[f"{prefix}.seeds"]["partitions"] == 2
    assert rows[f"{prefix}.models"]["partitions"] == 1
    if broker_name == "kafka":  # Tansu does not keep topic configs
        assert rows[f"{prefix}.elites"]["configs"]["cleanup.policy"] == "compact"
        assert rows[f"{prefix}.models"]["configs"]["cleanup.policy"] == "compact"
        assert rows[f"{prefix}.seeds"]["configs"]["cleanup.policy"] == "compact"  # read whole on start: kept forever
    missing = sparq("tail", "no-such-topic", "-b", broker, "--prefix", prefix, "--max", "1")
    assert missing.returncode != 0
    assert missing.stderr.strip() == "error: unknown topic 'no-such-topic'"


def test_broker_command_prints_address_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparq_stream.cli", "broker", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline().strip() if proc.stdout else ""
        host, _, port = line.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
        from sparq_stream.brokers.tansu import wait_for_kafka

        wait_for_kafka(line, 10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
