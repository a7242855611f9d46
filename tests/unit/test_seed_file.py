"""Seed files: a too-long line and bytes that are not UTF-8 are bad lines with their numbers; bounded reports."""

from __future__ import annotations

import json
from pathlib import Path

from sparq_stream.messages import Seed
from sparq_stream.seeds import BadLine, bad_line_report, collect_seeds

GOOD = json.dumps({"question": "What is 2+2?", "answer": "#### 4"})


def test_too_long_and_non_utf8_lines_are_named_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "seeds.jsonl"
    big = json.dumps({"question": "x" * 5000, "answer": "#### 1"})
    path.write_bytes(
        "\n".join([GOOD, GOOD.replace("2+2", "3+3"), big, json.dumps({"problem": "P", "answer": "1"})]).encode()
        + b'\n{"question": "caf\xe9 \xff?", "answer": "#### 2"}\n'
        + GOOD.replace("2+2", "5+5").encode() + b"\n"
    )
    seeds, bad = collect_seeds(path, max_line_bytes=1024)
    assert [s.line for s in seeds] == [1, 2, 4, 6] and all(isinstance(s, Seed) for s in seeds)
    assert bad == [
        BadLine(3, f"line of {len(big) + 1:,} bytes is longer than the 1,024-byte limit"),
        BadLine(5, "not UTF-8: byte 0xe9 at byte 18"),
    ]


def test_a_flood_of_bad_lines_is_reported_in_bounded_form(tmp_path: Path) -> None:
    bad = [BadLine(i, "not JSON") for i in range(1, 100_001)]
    lines = bad_line_report("f.jsonl", bad)
    assert len(lines) == 21
    assert lines[0] == "f.jsonl:1: not JSON (skipped)"
    assert lines[-1] == "f.jsonl: ... and 99,980 more bad line(s) not shown"
