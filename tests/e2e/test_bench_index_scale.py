"""``bench/index_scale.py`` at a small size (CI): the novelty index leaves the flat phase, and the
planted near duplicates are found against exact search; the full sizes (1M-20M) run in ``bench/``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_index_scale_small_run_measures_a_compressed_index(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    cmd = [
        sys.executable, str(REPO / "bench" / "index_scale.py"), "--items", "60000", "--threshold", "20000", "--train", "20000",
        "--nlist", "256", "--nprobe", "32", "--queries", "128", "--query-seconds", "0.5", "--dir", str(tmp_path), "--json", str(out),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["items"] == 60000 and row["phase"] == "ivfpq" and row["nlist"] == 256
    assert row["near_dup_queries"] >= 100  # the planted copies are near duplicates by exact search
    assert row["near_dup_recall"] >= 0.95 and row["false_positives"] == 0
    assert row["rss_bytes"] > 100 * 2**20 and row["disk_bytes"] >= 60000 * 384 * 2  # measured, float16 segments on disk
    assert row["adds_per_s"] > 0 and row["queries_per_s"] > 0
    assert not list(tmp_path.glob("index-scale-*"))  # the segment files are removed unless --keep
