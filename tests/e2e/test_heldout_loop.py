"""On a clone with no development data folder: held-out seeds are refused, nothing built on them is exported,
and the base model is evaluated as version 0 on the packaged GSM8K test and MATH500 (issue 17, part 1).

``sparq up`` runs as a user would start it: its own process, no ``SPARQ_*`` variable set, from a working
folder with no development data folder beside it, the scripted backend and the hash embedder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparq_stream.heldout import HeldOutCheck, packaged_paths
from sparq_stream.ids import problem_id
from sparq_stream.models.hashing_embedder import HashingEmbedder
from sparq_stream.qd.archive_log import read_archive

pytestmark = [pytest.mark.broker, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "examples" / "seeds" / "gsm8k_train_512.jsonl"
HELD_OUT_SEEDS = 5  # verbatim GSM8K test problems
NORMAL_SEEDS = 24


def _seed_file(path: Path) -> tuple[set[str], set[str]]:
    """Write GSM8K test problems (verbatim and one reworded) among training seeds; return (held-out ids, normal ids)."""
    test = [json.loads(line) for line in packaged_paths()[0].read_text(encoding="utf-8").splitlines()[:HELD_OUT_SEEDS + 1]]
    reworded = dict(test[-1], question="Every single day, " + test[-1]["question"])  # shares its 13-grams: refused too
    held = [*test[:-1], reworded]
    # training problems 22 on: the 21st shares a 13-gram with a GSM8K test problem (it would be refused too)
    normal = [json.loads(line) for line in TRAIN.read_text(encoding="utf-8").splitlines()[21 : 21 + NORMAL_SEEDS]]
    mixed = [row for pair in zip(held, normal) for row in pair] + normal[len(held):]  # interleaved
    path.write_text("".join(json.dumps(r) + "\n" for r in mixed), encoding="utf-8")
    return {problem_id(r["question"]) for r in held}, {problem_id(r["question"]) for r in normal}


def _up(cwd: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARQ_") or k == "SPARQ_CACHE_DIR"}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "sparq_stream.cli", "up", "--backend", "scripted", "--embedder", "hash", "--steps", "2",
           "--batch-size", "8", "--k", "4", "--seed", "7", "--no-label-seeds", "--timeout", "300", *flags]  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=420)


def test_held_out_seeds_are_refused_nothing_built_on_them_is_exported_and_version_0_is_evaluated(tmp_path: Path) -> None:
    work = tmp_path / "clone"
    work.mkdir()
    assert not (work.parent / "shared").exists() and not (work / ".." / ".." / "shared" / "data").exists()
    held, normal = _seed_file(work / "seeds.jsonl")
    done = _up(work, "--seeds", "seeds.jsonl", "--out", "run", "--eval-base")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "refused 6 held-out seed(s)" in done.stderr, done.stderr[-4000:]
    out = work / "run"
    summary = json.loads((out / "summary.json").read_text())
    check = summary["contamination_check"]
    assert check["on"] and check["status"] == "contamination check on" and check["seeds_refused"] == 6
    assert check["heldout"] == ["gsm8k_test.jsonl", "math500_test.jsonl"] and check["heldout_problems"] == 1819
    # nothing built on a held-out problem: no archived child descends from one, none shares a 13-gram with one
    rows = read_archive(out / "archive")
    assert rows, "the loop archived nothing"
    archived = {r.id for r in rows}
    for row in rows:
        assert set(row.parent_ids) <= normal | archived and not set(row.parent_ids) & held, row.parent_ids
    exported = [json.loads(line) for line in (out / "export" / "train.jsonl").read_text().splitlines()]
    ngrams = HeldOutCheck.build(packaged_paths(), HashingEmbedder(dim=64)).ngrams
    assert ngrams is not None
    for example in exported:
        assert not set(example["parent_ids"]) & held and example["problem_id"] not in held
        assert ngrams.match(example["problem"]) is None
    # version 0 (the base model) is scored on both packaged sets and recorded like a trained version
    versions = summary["model_versions"]
    assert [(v["version"], v["base"]) for v in versions] == [(0, True)]
    assert {name: scored["n"] for name, scored in versions[0]["eval"].items()} == {"gsm8k": 8, "math500": 8}
    page = (out / "report.html").read_text()
    assert "0 (base)" in page and "contamination check on" in page and "6 seed(s) refused" in page


def test_a_run_without_the_check_says_so_in_its_summary_and_page(tmp_path: Path) -> None:
    work = tmp_path / "clone"
    work.mkdir()
    _seed_file(work / "seeds.jsonl")
    done = _up(work, "--seeds", "seeds.jsonl", "--out", "run", "--no-contamination-check", "--steps", "1")
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["contamination_check"]["status"] == "contamination check OFF" and not summary["contamination_check"]["on"]
    assert summary["contamination_check"]["seeds_refused"] == 0
    assert "contamination check OFF" in (work / "run" / "report.html").read_text()
