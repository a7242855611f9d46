"""``bench/index_quality.py``: recall and false positives of the novelty index against exhaustive truth.

The scoring, negative picking and edits are checked on synthetic vectors (fast); the script itself
runs at a tiny size with the real MiniLM (slow) and must print every field.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "index_quality.py"


def _bench():
    name = "index_quality_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # the dataclass needs its module registered
        spec.loader.exec_module(module)
    return sys.modules[name]


def _unit(rng: np.random.Generator, n: int, dim: int = 384) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _near(base: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise -= (noise @ base) * base
    noise /= np.linalg.norm(noise)
    return (cos * base + np.sqrt(1 - cos**2) * noise).astype(np.float32)


def test_an_exact_duplicate_is_a_positive_and_a_far_problem_is_not(tmp_path: Path) -> None:
    """Scores come from the index under test against exhaustive (IndexFlatIP) truth, not from the labels."""
    import faiss

    from sparq_stream.index.scalable import ScalableIndex

    bench = _bench()
    rng = np.random.default_rng(0)
    stored = _unit(rng, 50)
    exact_dup, far = stored[3], _unit(rng, 1)[0]
    close_but_below = _near(stored[7], 0.93, rng)
    queries = np.stack([exact_dup, far, close_but_below])
    labels = np.array([True, True, False])  # the far query is (wrongly) labelled a positive
    reference = faiss.IndexFlatIP(384)
    reference.add(stored)
    truth = reference.search(queries, 1)[0][:, 0]
    index = ScalableIndex(384, "auto", folder=tmp_path)
    index.add([f"{i:04x}" for i in range(50)], stored)
    found = bench.best_cosines(index.search, queries)
    assert found[0] == pytest.approx(1.0, abs=1e-5) and found[1] < 0.5 and 0.92 < found[2] < 0.94
    s = bench.score(found, truth, labels, 0.95)
    assert s.recall == 0.5  # the exact duplicate found, the far "positive" not
    assert s.false_positive_rate == 0.0
    assert (s.exhaustive_positives, s.exhaustive_negatives) == (1, 2)
    assert s.index_recall_vs_exhaustive == 1.0 and s.index_fp_rate_vs_exhaustive == 0.0
    # an index that reports the far query at 0.97 is a false positive against the exhaustive truth
    s = bench.score(np.array([1.0, 0.97, 0.5], np.float32), truth, labels, 0.95)
    assert s.index_fp_rate_vs_exhaustive == 0.5 and s.index_recall_vs_exhaustive == 1.0


def test_negatives_keep_their_nearest_stored_neighbour_in_the_band() -> None:
    """Picked negatives' nearest among the rows left stored is in [lo, hi), exactly as returned."""
    bench = _bench()
    rng = np.random.default_rng(1)
    base = _unit(rng, 40)
    vectors = np.concatenate([base, np.stack([_near(base[i], c, rng) for i, c in enumerate([0.82, 0.87, 0.93, 0.97, 0.6])])])
    neg, best = bench.pick_negatives(vectors, 0.80, 0.95)
    assert len(neg) >= 3
    stored = np.setdiff1d(np.arange(len(vectors)), neg)
    np.testing.assert_allclose(best, (vectors[neg] @ vectors[stored].T).max(1), atol=1e-6)
    assert ((best >= 0.80) & (best < 0.95)).all()
    assert sum(bench.band_counts(best, [0.80, 0.85, 0.90, 0.95]).values()) == len(neg)


def test_edits_are_deterministic_and_change_the_text() -> None:
    bench = _bench()
    text = "Natalia sold clips to 48 of her friends in April. She sold half as many in May. How many clips did she sell?"
    for kind in bench.EDIT_KINDS:
        out = bench.edit(text, kind)
        assert out and out != text and out == bench.edit(text, kind), kind
    assert "51" in bench.edit(text, "number") and "Natalia" not in bench.edit(text, "name")
    assert bench.edit("No digits here.", "number") == ""


@pytest.mark.slow
def test_index_quality_tiny_run_prints_every_field(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    cmd = [sys.executable, str(SCRIPT), "--limit", "40", "--positives", "20", "--timing-queries", "16", "--dir", str(tmp_path),
           "--json", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    assert result["threshold"] == 0.95 and result["positives"] > 0 and result["real_problems"] == 120
    assert set(result["negative_bands"]) == {"[0.80,0.85)", "[0.85,0.90)", "[0.90,0.95)"}
    assert sum(result["negative_bands"].values()) == result["negatives"]
    row = result["rows"][0]
    assert row["index"] == "service" and row["phase"] == "flat"
    for key in ("positives", "recall", "negatives", "false_positive_rate", "index_recall_vs_exhaustive",
                "index_fp_rate_vs_exhaustive", "queries_per_s_cold", "reference_queries_per_s", "qps_ratio", "edit_kinds"):
        assert key in row, key
    # the flat phase is exact: it agrees with the exhaustive truth
    assert row["index_recall_vs_exhaustive"] == 1.0 and row["index_fp_rate_vs_exhaustive"] == 0.0
    assert row["recall"] == result["positives_exhaustive_recall"]
    assert result["rows"][1]["index"] == "compressed" and "skipped" in result["rows"][1]
    assert not list(tmp_path.glob("index-quality-*"))
