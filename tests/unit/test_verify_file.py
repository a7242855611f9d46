"""The JSONL checker behind `sparq verify`: one result per line, bad lines never crash it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparq_stream.errors import ConfigError
from sparq_stream.verify.jsonl import verify_file, verify_jsonl, verify_lines
from sparq_stream.verify.pool import CheckerPool

pytestmark = pytest.mark.timeout(120)

INPUT_LINES = [
    json.dumps({"id": "a", "gold": "72", "response": "She sold 72 clips.\n#### 72"}),
    json.dumps({"id": 2, "gold": "\\frac{\\sqrt{3}}{2}", "response": "\\boxed{\\sqrt{3}/2}"}),
    "{not json",
    "",
    json.dumps({"id": "no-response", "gold": "5"}),
    json.dumps({"gold": 18, "response": "\\boxed{18}"}),
    json.dumps(["a", "list"]),
    json.dumps({"id": "c", "gold": "5", "response": "\\boxed{6}"}),
    json.dumps({"id": "d", "gold": None, "response": "\\boxed{6}"}),
    json.dumps({"id": "e", "gold": "5", "response": "\\boxed{5"}),
]


@pytest.fixture(scope="module")
def pool() -> Iterator[CheckerPool]:
    with CheckerPool(workers=1, timeout_s=5.0) as p:
        yield p


def _rows(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_verify_lines_one_result_per_line(pool: CheckerPool) -> None:
    out = io.StringIO()
    summary = verify_lines(INPUT_LINES, out, pool, batch_size=3)
    rows = _rows(out.getvalue())
    assert len(rows) == len(INPUT_LINES) - 1  # the blank line gives nothing
    by_line = {row["line"]: row for row in rows}
    assert [row["line"] for row in rows] == [1, 2, 3, 5, 6, 7, 8, 9, 10]

    assert by_line[1] == {"line": 1, "id": "a", "extracted": "72", "equal": True, "reason": "numeric"}
    assert by_line[2] == {
        "line": 2,
        "id": 2,
        "extracted": "\\sqrt{3}/2",
        "equal": True,
        "reason": "symbolic",
    }
    assert by_line[3]["equal"] is False and by_line[3]["reason"] == "bad input: not JSON (line 3)"
    assert by_line[5]["id"] == "no-response"
    assert by_line[5]["reason"] == "bad input: missing 'response' (line 5)"
    assert by_line[6]["equal"] is True and "id" not in by_line[6]
    assert by_line[7]["reason"] == "bad input: not a JSON object (line 7)"
    assert (by_line[8]["equal"], by_line[8]["reason"]) == (False, "numeric")
    assert by_line[9]["reason"] == "bad input: 'gold' is not a string (line 9)"
    assert (by_line[10]["extracted"], by_line[10]["reason"]) == (None, "unclosed box")

    assert summary == {
        "total": 9,
        "equal": 3,
        "bad_lines": 4,
        "reasons": {"numeric": 3, "symbolic": 1, "bad input": 4, "unclosed box": 1},
    }


def test_verify_jsonl_files(tmp_path: Path, pool: CheckerPool) -> None:
    src = tmp_path / "in.jsonl"
    dst = tmp_path / "out.jsonl"
    src.write_text("\n".join(INPUT_LINES) + "\n\n", encoding="utf-8")
    summary = verify_jsonl(str(src), str(dst), pool)
    rows = _rows(dst.read_text(encoding="utf-8"))
    assert len(rows) == summary["total"] == 9
    assert rows[0]["id"] == "a" and rows[0]["equal"] is True


def test_hostile_lines_do_not_crash(tmp_path: Path, pool: CheckerPool) -> None:
    src = tmp_path / "hostile.jsonl"
    lines = [
        json.dumps({"gold": "5", "response": "\\boxed{" + "{" * 5000}),
        json.dumps({"gold": "5", "response": "\\boxed{\ud800}"}),
        json.dumps({"gold": "5", "response": "\\boxed{10^{10^{10^{10}}}}"}),
        "[" * 100_000,
        "\x00\x01\x02",
    ]
    src.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass") + b"\xff\xfe\n")
    dst = tmp_path / "out.jsonl"
    summary = verify_jsonl(str(src), str(dst), pool)
    rows = _rows(dst.read_text(encoding="utf-8"))
    assert len(rows) == summary["total"] == 6
    assert not any(row["equal"] for row in rows)
    assert rows[3]["reason"] == "bad input: not JSON (line 4)"
    assert rows[5]["reason"] == "bad input: not JSON (line 6)"


def test_verify_file_builds_its_own_pool(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    dst = tmp_path / "out.jsonl"
    src.write_text(INPUT_LINES[0] + "\n" + INPUT_LINES[1] + "\n", encoding="utf-8")
    summary = verify_file(str(src), str(dst), workers=1, timeout_s=5.0)
    assert summary["equal"] == 2
    assert [row["equal"] for row in _rows(dst.read_text(encoding="utf-8"))] == [True, True]


def test_missing_input_is_a_config_error(tmp_path: Path, pool: CheckerPool) -> None:
    with pytest.raises(ConfigError, match="cannot open"):
        verify_jsonl(str(tmp_path / "absent.jsonl"), str(tmp_path / "out.jsonl"), pool)
