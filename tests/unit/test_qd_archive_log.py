"""The archive A on disk: JSONL and Parquet parts, crash behaviour, de-duplication on read."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sparq_stream.errors import ConfigError
from sparq_stream.messages import Elite, SolveResult
from sparq_stream.qd.archive_log import (
    ARCHIVE_SCHEMA,
    JSONL_NAME,
    OFFSET_NAME,
    PARTS_DIR,
    LINEAGE_COLUMNS,
    ArchiveLog,
    dedupe_by_id,
    iter_archive_lineage,
    iter_batches,
    part_files,
    read_archive,
    read_offset,
    read_table,
    solved_at_header,
    solved_at_of,
)
from tests._scores import scores


def _result(i: int, q: float = 0.5) -> SolveResult:
    return SolveResult(
        id=f"id{i:04d}",
        problem=f"problem {i} \u00e9\u2211",
        solution="so \\boxed{1}",
        answer="1",
        parent_ids=[f"par{i}"],
        skills=["algebra", "ratio"],
        niche="algebra|ratio",
        nearest_id=None if i % 2 else "x",
        **{**scores(q), "early_stopped": True} if i % 3 else scores(q),
        correct_rollouts=["r1", "r2"] if i % 2 else [],
        step=i,
    )


def test_schema_has_a_column_per_field() -> None:
    assert ARCHIVE_SCHEMA.names == list(SolveResult.model_fields) + list(LINEAGE_COLUMNS)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    rows = [_result(i) for i in range(25)]
    with ArchiveLog(tmp_path, formats=[fmt], rows_per_part=10) as log:
        log.extend(rows)
        assert log.pending == 5
    assert read_archive(tmp_path, fmt) == rows
    assert read_archive(tmp_path) == rows
    if fmt == "parquet":
        assert [p.name for p in part_files(tmp_path)] == [f"part-0000000{i}.parquet" for i in (1, 2, 3)]
        assert [pq.read_metadata(p).num_rows for p in part_files(tmp_path)] == [10, 10, 5]


def test_both_formats_hold_the_same_rows(tmp_path: Path) -> None:
    rows = [_result(i) for i in range(7)]
    with ArchiveLog(tmp_path, rows_per_part=3) as log:
        log.extend(rows)
    assert read_archive(tmp_path, "jsonl") == read_archive(tmp_path, "parquet") == rows
    first = json.loads((tmp_path / JSONL_NAME).read_text().splitlines()[0])
    assert (first["schema"], first["version"]) == ("sparq.solved", SolveResult.VERSION)


def test_a_crash_loses_only_the_unflushed_buffer(tmp_path: Path) -> None:
    log = ArchiveLog(tmp_path, rows_per_part=4)
    log.extend(_result(i) for i in range(10))  # 8 flushed in two parts, 2 buffered
    del log  # crash: no close()
    for fmt in ("jsonl", "parquet"):
        assert [r.id for r in read_archive(tmp_path, fmt)] == [f"id{i:04d}" for i in range(8)]


def test_redelivered_results_count_once(tmp_path: Path) -> None:
    rows = [_result(i) for i in range(6)]
    with ArchiveLog(tmp_path, rows_per_part=4) as log:
        log.extend(rows)
        log.extend(rows[2:5])  # redelivered after a restart
    newest_last = rows[:2] + rows[5:] + rows[2:5]  # an id written twice sits at its newest write
    for fmt in ("jsonl", "parquet", "auto"):
        assert read_archive(tmp_path, fmt) == newest_last
    table = read_table(tmp_path)
    assert table.num_rows == 6 and table.column("id").to_pylist() == [r.id for r in newest_last]
    assert dedupe_by_id(rows + rows[:2]) == rows


def test_the_one_reader_reads_the_jsonl_past_the_parts_and_the_newest_row_wins(tmp_path: Path) -> None:
    old = [_result(i, q=0.25) for i in range(5)]
    with ArchiveLog(tmp_path, rows_per_part=5) as log:
        log.extend(old)  # one part and its JSONL rows; parquet.offset marks the end of them
    assert read_offset(tmp_path) == (tmp_path / JSONL_NAME).stat().st_size > 0
    newer = [_result(1, q=0.75), _result(7, q=0.5), _result(3, q=0.0)]
    with ArchiveLog(tmp_path, formats=["jsonl"]) as tail:
        tail.extend(newer)  # rows newer than every part: only in the JSONL
    assert len(part_files(tmp_path)) == 1
    back = {r.id: r for r in read_archive(tmp_path)}
    assert sorted(back) == sorted({r.id for r in old + newer})
    assert back["id0001"].quality == 0.75 and back["id0003"].quality == 0.0 and back["id0000"].quality == 0.25
    assert [r.id for r in read_archive(tmp_path)] == ["id0000", "id0002", "id0004", "id0007", "id0001", "id0003"]
    # no offset file: the whole JSONL is read after the parts; the rows both hold fold away
    (tmp_path / OFFSET_NAME).unlink()
    assert {r.id: r.quality for r in read_archive(tmp_path)} == {r.id: r.quality for r in back.values()}
    # the batches give the same rows and only the columns asked for
    batches = list(iter_batches(tmp_path, ["quality"], batch_size=2))
    assert all(b.schema.names == ["id", "quality"] for b in batches)
    assert {i: q for b in batches for i, q in zip(b.column(0).to_pylist(), b.column(1).to_pylist())} == {
        r.id: r.quality for r in back.values()
    }


def test_reopening_continues_the_parts_and_cuts_a_torn_line(tmp_path: Path) -> None:
    with ArchiveLog(tmp_path, rows_per_part=2) as log:
        log.extend(_result(i) for i in range(4))
    with open(tmp_path / JSONL_NAME, "a", encoding="utf-8") as fh:
        fh.write('{"schema": "sparq.solved", "id": "torn')  # a crash mid-write
    (tmp_path / PARTS_DIR / "part-00000003.parquet.tmp").write_bytes(b"half a part")
    assert [r.id for r in read_archive(tmp_path, "jsonl")] == [f"id{i:04d}" for i in range(4)]
    with ArchiveLog(tmp_path, rows_per_part=2) as log:
        log.extend(_result(i) for i in range(4, 6))
    assert not list((tmp_path / PARTS_DIR).glob("*.tmp"))
    assert [p.name for p in part_files(tmp_path)][-1] == "part-00000003.parquet"
    expected = [f"id{i:04d}" for i in range(6)]
    for fmt in ("jsonl", "parquet"):
        assert [r.id for r in read_archive(tmp_path, fmt)] == expected


def test_an_elite_is_archived_as_its_solve_result(tmp_path: Path) -> None:
    base = _result(1)
    elite = Elite(**base.model_dump(), slot="algebra|ratio", inserted_step=3)
    with ArchiveLog(tmp_path) as log:
        log.append(elite)
        with pytest.raises(TypeError):
            log.append({"id": "x"})  # type: ignore[arg-type]
    for fmt in ("jsonl", "parquet"):
        (back,) = read_archive(tmp_path, fmt)
        assert type(back) is SolveResult and back == base


def test_empty_and_bad_settings(tmp_path: Path) -> None:
    assert read_archive(tmp_path) == [] and read_table(tmp_path).num_rows == 0
    with pytest.raises(ConfigError):
        ArchiveLog(tmp_path, formats=["csv"])
    with pytest.raises(ConfigError):
        ArchiveLog(tmp_path, rows_per_part=0)
    with pytest.raises(ConfigError):
        read_archive(tmp_path, "csv")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_rows_keep_the_solved_record_they_came_from(tmp_path: Path, fmt: str) -> None:
    rows = [_result(i) for i in range(5)]
    with ArchiveLog(tmp_path, formats=[fmt], rows_per_part=3) as log:
        for i, row in enumerate(rows[:4]):
            log.append(row, (i % 2, 10 + i))
        log.append(rows[4])  # coordinates unknown
    got = list(iter_archive_lineage(tmp_path, fmt))
    assert [r for r, _ in got] == rows  # the SolveResult objects are unchanged
    assert [at for _, at in got] == [(0, 10), (1, 11), (0, 12), (1, 13), None]
    assert read_archive(tmp_path, fmt) == rows
    table = read_table(tmp_path, ["id", *LINEAGE_COLUMNS])
    assert table.column("solved_offset").to_pylist() == [10, 11, 12, 13, -1]


def test_an_elite_archives_its_own_coordinates_and_old_rows_read_as_unknown(tmp_path: Path) -> None:
    elite = Elite(**_result(1).model_dump(), slot="s", solved_partition=2, solved_offset=7)
    with ArchiveLog(tmp_path) as log:
        log.append(elite)
    assert [at for _, at in iter_archive_lineage(tmp_path)] == [(2, 7)]
    old = tmp_path / "old"  # a JSONL archive written before the lineage columns existed
    old.mkdir()
    body = {"schema": "sparq.solved", "version": 1, **_result(2).model_dump(mode="json")}
    (old / JSONL_NAME).write_text(json.dumps(body) + "\n")
    assert [at for _, at in iter_archive_lineage(old)] == [None]


def test_the_solved_at_header_round_trips() -> None:
    assert solved_at_header((3, 42)) == ("sparq.solved.at", b"3/42")
    assert solved_at_of([("other", b"x"), solved_at_header((3, 42))]) == (3, 42)
    assert solved_at_of([("sparq.solved.at", b"nonsense")]) is None
    assert solved_at_of([]) is None
