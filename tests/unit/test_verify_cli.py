"""`sparq verify` reads JSONL pairs and writes one result per line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_sparq_verify_file(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(
        "\n".join(
            [
                json.dumps({"id": "a", "gold": "1/2", "response": "We get \\boxed{\\dfrac12}."}),
                json.dumps({"id": "b", "gold": "4", "response": "#### -4"}),
                "not json",
            ]
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "sparq_stream.cli", "verify", str(src), "--out", str(out), "--workers", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r.get("id"), r["equal"]) for r in rows] == [("a", True), ("b", False), (None, False)]
    assert rows[0]["extracted"] == "\\dfrac12" and "line 3" in rows[2]["reason"]
    assert json.loads(done.stderr.strip().splitlines()[-1])["total"] == 3
