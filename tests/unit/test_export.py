"""The training-set export: examples, provenance, determinism, atomicity, `datasets` loading, archive modes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sparq_stream.errors import ConfigError
from sparq_stream.messages import Elite, SolveResult
from sparq_stream.prompts import SOLVE, load_prompt
from sparq_stream.qd.archive_log import ArchiveLog
from sparq_stream.training import export as export_mod
from sparq_stream.training.export import (
    EXPORT_SCHEMA,
    JSONL_NAME,
    LINEAGE_FIELDS,
    MANIFEST_NAME,
    PARQUET_NAME,
    export_from_archive,
    export_training_set,
    read_examples,
)
from tests._scores import scores


def _result(i: int, quality: float = 0.5, rollouts: int = 2, cls: type[SolveResult] = Elite) -> SolveResult:
    extra = {"slot": f"niche{i % 3}/{i}"} if cls is Elite else {}
    return cls(
        id=f"{i:032x}",
        problem=f"Problem {i}: what is {i} + {i}? \u00e9",
        solution=f"{i} + {i} = {2 * i}. \\boxed{{{2 * i + (0 if quality else 1)}}}",
        answer=str(2 * i),
        parent_ids=[f"parent{i}"],
        skills=["addition", "doubling"],
        niche="addition|doubling",
        novelty=0.25,
        **scores(quality),
        correct_rollouts=[f"rollout {j} of {i}: \\boxed{{{2 * i}}}" for j in range(rollouts)],
        model="gen",
        model_version=3,
        solver_model="solv",
        solver_version=4,
        prompt_hash="ab" * 32,
        step=i,
        variant="qd",
        **extra,
    )


def _files(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in (JSONL_NAME, PARQUET_NAME, MANIFEST_NAME)}


def test_one_example_per_kept_problem_and_correct_rollout(tmp_path: Path) -> None:
    results = [_result(1, rollouts=3), _result(2, quality=0.0), _result(3, rollouts=1), _result(4, rollouts=0)]
    info = export_training_set(results, tmp_path)
    rows = read_examples(tmp_path)
    assert (info.problems, info.examples) == (2, 4)
    assert info.skipped == {"quality_zero": 1, "no_correct_rollouts": 1}
    assert [(r["problem_id"], r["rollout_index"]) for r in rows] == [
        (f"{1:032x}", 0), (f"{1:032x}", 1), (f"{1:032x}", 2), (f"{3:032x}", 0)
    ]  # fmt: skip
    solve = load_prompt(SOLVE)
    first = rows[0]
    assert first["messages"][:-1] == solve.render(problem=results[0].problem)
    assert first["messages"][-1] == {"role": "assistant", "content": "rollout 0 of 1: \\boxed{2}"}
    assert first["response"] == first["messages"][-1]["content"] and first["target"] == "rollout"
    provenance = {k: first[k] for k in ("parent_ids", "niche", "skills", "solve_rate", "quality", "model", "model_version")}
    assert provenance == {
        "parent_ids": ["parent1"], "niche": "addition|doubling", "skills": ["addition", "doubling"],
        "solve_rate": 0.5, "quality": 0.5, "model": "gen", "model_version": 3,
    }  # fmt: skip
    assert (first["prompt_hash"], first["solve_prompt_hash"], first["solve_prompt"]) == ("ab" * 32, solve.sha256, "solve@v1")
    assert (first["slot"], first["source"], first["id"]) == ("niche1/1", "elites", f"{1:032x}/0")
    assert set(first) == set(EXPORT_SCHEMA.names)


def test_same_state_gives_byte_identical_files_whatever_the_input_order(tmp_path: Path) -> None:
    results = [_result(i, rollouts=1 + i % 3) for i in range(12)]
    export_training_set(results, tmp_path / "a")
    export_training_set(list(reversed(results)), tmp_path / "b")
    export_training_set(results, tmp_path / "a")  # re-export over itself
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    manifest = json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())
    assert manifest["examples"] == sum(1 + i % 3 for i in range(12)) and manifest["problems"] == 12


def test_duplicate_problem_ids_keep_the_first(tmp_path: Path) -> None:
    first, again = _result(5, rollouts=1), _result(5, rollouts=3)
    info = export_training_set([first, again], tmp_path)
    assert (info.examples, info.skipped) == (1, {"duplicate": 1})


def test_loadable_with_datasets_json_and_parquet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    info = export_training_set([_result(i, rollouts=2) for i in range(5)], tmp_path / "out")
    cache = str(tmp_path / "hf-cache")
    from_json = datasets.load_dataset("json", data_files=str(info.jsonl_path), split="train", cache_dir=cache)
    from_parquet = datasets.load_dataset("parquet", data_files=str(info.parquet_path), split="train", cache_dir=cache)
    expected = read_examples(info.jsonl_path)
    for ds in (from_json, from_parquet):
        assert ds.num_rows == 10
        assert set(ds.column_names) == set(EXPORT_SCHEMA.names)
        assert ds[3]["messages"] == expected[3]["messages"] and ds[3]["id"] == expected[3]["id"]
        assert ds["rollout_index"] == [0, 1] * 5


def test_export_is_atomic_a_failed_write_keeps_the_previous_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export_training_set([_result(1)], tmp_path)
    before = _files(tmp_path)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(export_mod.pq.ParquetWriter, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        export_training_set([_result(1), _result(2)], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)  # no temporary file left behind
    assert _files(tmp_path) == before  # all three files are still the previous export's


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / f".{JSONL_NAME}.tmp-1-deadbeef"
    stale.write_text("half")
    export_training_set([_result(1)], tmp_path)
    assert not stale.exists()


def test_export_from_archive_filtered_and_unfiltered_with_limit(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    results = [_result(i, quality=0.5 if i % 2 else 0.0, rollouts=3 if i % 2 else 0, cls=SolveResult) for i in range(10)]
    with ArchiveLog(archive, rows_per_part=4) as log:
        log.extend(results)
        log.append(results[1])  # a redelivered result is read once
    filtered = export_from_archive(archive, tmp_path / "filtered")
    unfiltered = export_from_archive(archive, tmp_path / "unfiltered", filtered=False)
    assert (filtered.problems, filtered.examples) == (5, 15)
    assert (unfiltered.problems, unfiltered.examples) == (10, 10)
    rows = read_examples(unfiltered.parquet_path)
    assert {r["target"] for r in rows} == {"solution"} and {r["rollout_index"] for r in rows} == {-1}
    assert rows[0]["response"] == results[0].solution and rows[0]["quality"] == 0.0  # wrong answers stay in
    equal = export_from_archive(archive, tmp_path / "equal", filtered=True, limit=unfiltered.examples)
    assert equal.examples == 10 and equal.skipped["over_limit"] == 5
    assert [r["id"] for r in read_examples(equal.jsonl_path)] == [r["id"] for r in read_examples(filtered.jsonl_path)][:10]
    assert all(r["source"] == "archive" and r["slot"] == "" for r in read_examples(equal.jsonl_path))


def test_bad_inputs_raise_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an archive"):
        export_from_archive(tmp_path, tmp_path / "out")
    with pytest.raises(ConfigError, match="does not exist"):
        read_examples(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\nnot json\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        read_examples(tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError, match="limit"):
        export_training_set([_result(1)], tmp_path / "x", limit=-1)
    with pytest.raises(TypeError):
        export_training_set([{"id": "x"}], tmp_path / "y")  # type: ignore[list-item]


def test_empty_state_exports_empty_but_valid_files(tmp_path: Path) -> None:
    info = export_training_set([], tmp_path)
    assert info.examples == 0 and (tmp_path / JSONL_NAME).read_bytes() == b""
    assert pq.read_table(tmp_path / PARQUET_NAME).schema.equals(EXPORT_SCHEMA, check_metadata=False)
    assert os.listdir(tmp_path) and read_examples(tmp_path) == []


def test_sparq_export_reads_the_jsonl_rows_newer_than_the_parts_and_matches_the_in_memory_export(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    results = [_result(i * 7919, quality=0.5 if i % 3 else 0.0, rollouts=2 if i % 3 else 0, cls=SolveResult) for i in range(60)]
    with ArchiveLog(archive, rows_per_part=25) as log:
        log.extend(results[:50])  # two parts of 25 rows
    with ArchiveLog(archive, formats=["jsonl"]) as tail:  # newer rows only in the JSONL: a part not written yet
        tail.extend(results[50:])
        tail.append(_result(0, quality=0.75, rollouts=1, cls=SolveResult))  # id 0 again, now kept: the newest wins
    info = export_from_archive(archive, tmp_path / "streamed")
    ids = {r["problem_id"] for r in read_examples(info.jsonl_path)}
    assert {r.id for r in results[50:] if r.quality > 0} <= ids and f"{0:032x}" in ids
    kept = sum(1 for r in results if r.quality > 0) + 1
    assert (info.problems, info.examples) == (kept, 2 * (kept - 1) + 1)
    from sparq_stream.qd.archive_log import read_archive

    reference = export_training_set(read_archive(archive), tmp_path / "in-memory", source="archive")
    assert _files(tmp_path / "streamed") == _files(tmp_path / "in-memory")
    assert reference.sha256 == info.sha256
    assert not list((tmp_path / "streamed").glob(".export-buckets-*"))  # the spill folder is gone


# ---------------------------------------------------------------------- lineage
def test_every_example_names_its_run_solved_record_and_model_versions(tmp_path: Path) -> None:
    elite = _result(1, rollouts=2).model_copy(update={"solved_partition": 2, "solved_offset": 40})
    archived = _result(2, rollouts=1, cls=SolveResult)
    unknown = _result(3, rollouts=1, cls=SolveResult)
    info = export_training_set([elite, archived, unknown], tmp_path, run="sparq-ab12", solved_at={archived.id: (0, 7)})
    rows = {(r["problem_id"], r["rollout_index"]): r for r in read_examples(tmp_path)}
    lineage = {k: {f: r[f] for f in LINEAGE_FIELDS} for k, r in rows.items()}
    assert lineage[(elite.id, 1)] == {
        "run": "sparq-ab12", "problem_id": elite.id, "parent_ids": list(elite.parent_ids), "model_version": elite.model_version,
        "solver_version": elite.solver_version, "solved_topic": "sparq-ab12.solved", "solved_partition": 2, "solved_offset": 40,
    }  # fmt: skip
    assert (lineage[(archived.id, 0)]["solved_partition"], lineage[(archived.id, 0)]["solved_offset"]) == (0, 7)
    assert (lineage[(unknown.id, 0)]["solved_topic"], lineage[(unknown.id, 0)]["solved_offset"]) == ("", -1)
    manifest = json.loads(info.manifest_path.read_text())
    assert manifest["run"] == "sparq-ab12"
    assert manifest["lineage"] == {
        "runs": {"sparq-ab12": 4}, "solved_topics": {"sparq-ab12.solved": 3}, "with_solved_record": 3,
        "without_solved_record": 1, "model_versions": {str(elite.model_version): 4}, "solver_versions": {str(elite.solver_version): 4},
    }  # fmt: skip
    parquet = pq.read_table(info.parquet_path, columns=list(LINEAGE_FIELDS)).to_pylist()
    assert parquet == [{f: r[f] for f in LINEAGE_FIELDS} for r in read_examples(info.jsonl_path)]


def test_export_from_archive_names_each_rows_solved_record(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    results = [_result(i, rollouts=1, cls=SolveResult) for i in range(6)]
    with ArchiveLog(archive, rows_per_part=4) as log:  # one part of 4 rows, then 2 rows in the JSONL only
        for i, result in enumerate(results):
            log.append(result, (i % 3, 100 + i))
    info = export_from_archive(archive, tmp_path / "out", run="runx")
    rows = read_examples(info.jsonl_path)
    assert {r["problem_id"]: (r["solved_topic"], r["solved_partition"], r["solved_offset"]) for r in rows} == {
        r.id: ("runx.solved", i % 3, 100 + i) for i, r in enumerate(results)
    }
    assert json.loads(info.manifest_path.read_text())["lineage"]["with_solved_record"] == 6
    from sparq_stream.qd.archive_log import iter_archive_lineage

    pairs = list(iter_archive_lineage(archive))
    export_training_set([r for r, _ in pairs], tmp_path / "mem", source="archive", run="runx", solved_at={r.id: at for r, at in pairs})
    assert (tmp_path / "out" / JSONL_NAME).read_bytes() == (tmp_path / "mem" / JSONL_NAME).read_bytes()
