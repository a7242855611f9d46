"""The archivist core with in-memory messages: W and A, restart exactness, idempotence, the summary."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from sparq_stream.core import EVERY_PARTITION, Core, Inbound, Outgoing
from sparq_stream.cores.archivist import (
    OFFSET_NAME,
    ArchivistConfig,
    ArchivistCore,
    build_archivist,
    run_summary,
    summarize_archive,
)
from sparq_stream.errors import FatalError
from sparq_stream.messages import WATERMARK_KEY, Candidate, Elite, Seed, SolveResult, Watermark
from sparq_stream.qd.archive_log import JSONL_NAME, part_files, read_archive, read_table
from sparq_stream.qd.stats import summary
from sparq_stream.qd.working_set import VARIANTS, make_working_set

SKILLS = [("algebra",), ("geometry",), ("algebra", "ratio"), ("counting",), ("fraction", "ratio")]


def _result(i: int, q: float, skills: tuple[str, ...] = ("algebra",), step: int | None = None) -> SolveResult:
    sr = 1.0 - q if q > 0 else (1.0 if i % 2 else 0.0)
    return SolveResult(
        id=f"p{i:04d}",
        problem=f"problem {i}",
        solution="s",
        answer=str(i),
        skills=list(skills),
        k=16,
        rollouts_used=16,
        n_correct=round(sr * 16),
        solve_rate=sr,
        quality=q,
        step=i // 4 if step is None else step,
        correct_rollouts=[f"rollout {i}"] if q > 0 else [],
    )


def _stream(n: int = 60, seed: int = 3) -> list[SolveResult]:
    rng = random.Random(seed)
    qualities = [0.0, 0.125, 0.25, 0.5, 0.75, 0.875]
    return [_result(i, rng.choice(qualities), rng.choice(SKILLS)) for i in range(n)]


def _inbound(result: SolveResult | None, offset: int, key: str | None = None) -> Inbound:
    return Inbound("solved", key or (result.id if result else None), result, 0, offset)


def _core(tmp_path: Path, name: str = "a", **config: object) -> ArchivistCore:
    return ArchivistCore(ArchivistConfig(archive_dir=str(tmp_path / name), **config))


def _feed(core: ArchivistCore, results: list[SolveResult], batch: int = 7, start: int = 0) -> list[Outgoing]:
    """Go live like the wrapper (tick), then feed ``results`` in batches; return every output in order."""
    out = core.tick(0.0)
    for i in range(0, len(results), batch):
        chunk = [_inbound(r, start + i + j) for j, r in enumerate(results[i : i + batch])]
        for outs in core.handle_batch(chunk):
            out.extend(outs)
    return out


def _elite_records(outputs: list[Outgoing]) -> list[tuple[str, Elite | None]]:
    """The elite records of the outputs (watermarks, checked on their own, left out)."""
    return [(o.resolved_key(), o.message) for o in outputs if o.topic == "elites" and o.resolved_key() != WATERMARK_KEY]


def _no_marks(outputs: list[Outgoing]) -> list[Outgoing]:
    return [o for o in outputs if o.resolved_key() != WATERMARK_KEY]


def _as_table(records: list[tuple[str, Elite | None]]) -> dict[str, Elite]:
    """The last value per key (what a reader of the compacted topic sees)."""
    table: dict[str, Elite] = {}
    for key, value in records:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


def _restore(core: ArchivistCore, records: list[tuple[str, Elite | None]]) -> None:
    for offset, (key, value) in enumerate(records):
        core.on_table(Inbound("elites", key, value, 0, offset))


# ---------------------------------------------------------------------- W and A


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_w_follows_the_update_policy_and_the_topic_holds_w(tmp_path: Path, variant: str) -> None:
    results = _stream()
    core = _core(tmp_path, variant=variant, cap=None if variant != "dynamic-uniform" else 5)
    outputs = _feed(core, results)
    reference = make_working_set(variant, None if variant != "dynamic-uniform" else 5)
    for offset, result in enumerate(results):  # _feed puts result i at offset i of solved partition 0
        reference.offer(result, solved_at=(0, offset))
    assert core.working_set == reference
    assert _as_table(_elite_records(outputs)) == reference.elites()
    assert [o.message for o in outputs if o.topic == "archive"] == results
    assert all(o.resolved_key() == o.message.id for o in outputs if o.topic == "archive")
    # lineage: every elite and every archive record names the solved record it came from
    offsets = {r.id: i for i, r in enumerate(results)}
    assert all((e.solved_partition, e.solved_offset) == (0, offsets[e.id]) for e in reference.elites().values())
    archived = [o for o in outputs if o.topic == "archive"]
    assert [o.headers for o in archived] == [(("sparq.solved.at", f"0/{offsets[o.message.id]}".encode()),) for o in archived]
    if not VARIANTS[variant].dynamic:
        assert _elite_records(outputs) == []
    else:
        assert reference.elites()  # the stream does produce elites


def test_qd_cap_evicts_with_tombstones_keyed_by_slot(tmp_path: Path) -> None:
    core = _core(tmp_path, variant="qd", cap=2)
    a, b, c = _result(1, 0.25), _result(2, 0.5), _result(3, 0.75)
    assert _elite_records(_feed(core, [a, b])) == [
        ("algebra/p0001", core.working_set.elites()["algebra/p0001"]),
        ("algebra/p0002", core.working_set.elites()["algebra/p0002"]),
    ]
    records = _elite_records(core.handle(_inbound(c, 10)))
    assert records[0] == ("algebra/p0001", None)  # the tombstone comes first
    assert records[1][0] == "algebra/p0003" and records[1][1].id == "p0003" and records[1][1].slot == "algebra/p0003"
    assert sorted(core.working_set.elites()) == ["algebra/p0002", "algebra/p0003"]
    m = core.metrics()
    assert m["elites_written"] == 3 and m["elites_deleted"] == 1 and m["w_elites"] == 2


def test_the_archive_on_disk_holds_every_result_once(tmp_path: Path) -> None:
    results = _stream(25)
    core = _core(tmp_path, parquet_rows=10)
    _feed(core, results, batch=4)
    # JSONL is flushed every batch; Parquet parts every 10 rows
    assert [r.id for r in read_archive(tmp_path / "a")] == [r.id for r in results]
    assert len(part_files(tmp_path / "a")) == 2
    core.close()
    assert len(part_files(tmp_path / "a")) == 3
    assert read_table(tmp_path / "a").column("id").to_pylist() == [r.id for r in results]
    lines = (tmp_path / "a" / JSONL_NAME).read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [r.id for r in results]


# ---------------------------------------------------------------------- restart


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_restarted_archivist_ends_in_exactly_the_same_state(tmp_path: Path, variant: str) -> None:
    results = _stream(80, seed=11)
    first = _core(tmp_path, variant=variant, cap=3)
    records = _elite_records(_feed(first, results[:50]))
    first.close()
    # a fresh core replays the compacted topic, then goes live: nothing to fix
    second = _core(tmp_path, variant=variant, cap=3)
    _restore(second, records)
    assert second.working_set == first.working_set
    assert second.tick(0.0) == []
    # the same results again: W and A unchanged, no elite record, archive records re-sent (known only from disk)
    again = _feed(second, results[:50], start=1000)
    assert _elite_records(again) == [] and second.working_set == first.working_set
    assert [o.message.id for o in again if o.topic == "archive"] == [r.id for r in results[:50]]
    assert len(read_archive(tmp_path / "a")) == 50
    assert len((tmp_path / "a" / JSONL_NAME).read_text().splitlines()) == 50
    # and it goes on exactly like an uninterrupted archivist
    uninterrupted = _core(tmp_path, "b", variant=variant, cap=3)
    _feed(uninterrupted, results)
    records += _elite_records(_feed(second, results[50:], start=50))  # on from the committed offset, like the wrapper
    assert second.working_set == uninterrupted.working_set
    assert _as_table(records) == uninterrupted.working_set.elites()
    assert second.metrics()["scored"] == uninterrupted.metrics()["scored"] == 80


def test_a_duplicate_changes_nothing_and_publishes_nothing(tmp_path: Path) -> None:
    results = _stream(20)
    core = _core(tmp_path)
    _feed(core, results)
    before = core.working_set.elites()
    dup = _feed(core, results, start=500)  # the solver published them again: new offsets
    assert _no_marks(dup) == [] and core.working_set.elites() == before
    assert {o.message.offsets["0"] for o in dup} == {507, 514, 520}  # the watermark still moves on
    assert core.metrics()["duplicates"] == 20
    assert len(read_archive(tmp_path / "a")) == 20
    assert len((tmp_path / "a" / JSONL_NAME).read_text().splitlines()) == 20


def test_a_rewound_batch_resends_only_records_that_are_still_current(tmp_path: Path) -> None:
    core = _core(tmp_path, variant="qd", cap=1)
    a, b = _result(1, 0.25), _result(2, 0.5)
    first = core.handle_batch([_inbound(a, 0), _inbound(b, 1)])
    assert [(k, e.id) for k, e in _elite_records(first[0])] == [("algebra", "p0001")]
    assert [(k, e.id) for k, e in _elite_records(first[1])] == [("algebra", "p0002")]
    # the wrapper's send failed and it rewound: the same offsets come again
    again = core.handle_batch([_inbound(a, 0), _inbound(b, 1)])
    assert [o.topic for o in again[0]] == ["archive"]  # a's elite was overwritten by b: not re-sent
    assert [(o.topic, o.resolved_key()) for o in again[1]] == [("archive", "p0002"), ("elites", "algebra")]
    assert again[1][1].message == core.working_set.elites()["algebra"] and again[1][1].message.id == "p0002"
    assert core.metrics()["replays"] == 2


def test_elite_records_lost_in_a_crash_are_repaired_on_redelivery(tmp_path: Path) -> None:
    results = _stream(35, seed=5) + [_result(900 + i, 0.875 - 0.01 * i, SKILLS[i]) for i in range(5)] + [_result(950, 0.8, ("probability",))]
    first = _core(tmp_path, variant="qd", cap=2)
    kept = _elite_records(_feed(first, results[:35]))
    lost = _elite_records(_feed(first, results[35:], start=35))
    assert any(v is None for _, v in lost) and len(lost) > 3  # the last batch wrote and evicted
    # crash: the archive was flushed (before the commit) but the last batch's records never reached the broker
    second = _core(tmp_path, variant="qd", cap=2)
    _restore(second, kept)
    out = _feed(second, results[35:], start=35)  # the uncommitted batch is redelivered
    assert _as_table(kept + _elite_records(out)) == first.working_set.elites()
    assert second.working_set == first.working_set
    assert len(read_archive(tmp_path / "a")) == 41


def test_reconcile_on_going_live_fixes_a_cap_broken_by_a_crash(tmp_path: Path) -> None:
    results = [_result(1, 0.25), _result(2, 0.5), _result(3, 0.75)]
    wide = _core(tmp_path, "wide", variant="qd", cap=3)
    records = _elite_records(_feed(wide, results))
    narrow = _core(tmp_path, "narrow", variant="qd", cap=2)  # restarted with a smaller cap
    _restore(narrow, records)
    assert len(narrow.working_set.elites()) == 3
    fix = narrow.tick(0.0)
    assert [(o.topic, o.resolved_key(), o.message) for o in fix] == [("elites", "algebra/p0001", None)]
    assert narrow.live and sorted(narrow.working_set.elites()) == ["algebra/p0002", "algebra/p0003"]
    assert narrow.tick(0.0) == []


def test_w_is_rebuilt_from_the_archive_when_the_topic_is_empty(tmp_path: Path) -> None:
    results = _stream(50, seed=8)
    first = _core(tmp_path, variant="qd", cap=2, parquet_rows=16)
    _feed(first, results)
    # no close(): the Parquet tail is recovered from the JSONL
    second = _core(tmp_path, variant="qd", cap=2, parquet_rows=16)
    out = second.tick(0.0)  # the broker lost every topic: no table record at all
    assert second.working_set == first.working_set
    assert _as_table(_elite_records(out)) == first.working_set.elites()
    assert second.metrics()["rebuilt_from_archive"] == 50
    # with the rebuild switched off W starts empty
    third = _core(tmp_path, variant="qd", cap=2, restore_from_archive=False)
    assert third.tick(0.0) == [] and third.working_set.elites() == {}


def test_parquet_rows_lost_in_a_crash_are_recovered_from_the_jsonl(tmp_path: Path) -> None:
    results = _stream(23)
    first = _core(tmp_path, parquet_rows=10)
    _feed(first, results, batch=5)  # a part is cut at each batch end with >= 10 rows buffered: 20 rows in parts
    covered = sum(pq.read_metadata(p).num_rows for p in part_files(tmp_path / "a"))
    assert covered == 20 and (tmp_path / "a" / OFFSET_NAME).exists()
    second = _core(tmp_path, parquet_rows=10)  # crash: `first` never closed
    assert second.metrics()["pending_rows"] == 3
    second.close()
    assert read_table(tmp_path / "a").column("id").to_pylist() == [r.id for r in results]
    assert [r.id for r in read_archive(tmp_path / "a")] == [r.id for r in results]


def test_live_table_echoes_are_ignored(tmp_path: Path) -> None:
    core = _core(tmp_path, variant="qd", cap=1)
    a, b = _result(1, 0.25), _result(2, 0.5)
    stale = _elite_records(_feed(core, [a]))
    core.handle(_inbound(b, 1))
    _restore(core, stale)  # our own first write comes back after the second one
    assert core.working_set.elites()["algebra"].id == "p0002"
    assert core.metrics()["table_echoes"] == 1


def test_a_child_equal_to_a_seed_never_becomes_an_elite(tmp_path: Path) -> None:
    core = _core(tmp_path)
    assert core.tables == ("elites", "seeds", "archive")
    core.on_table(Inbound("seeds", "p0001", Seed(id="p0001", problem="problem 1", answer="1", skills=["algebra"])))
    out = _feed(core, [_result(1, 0.5)])
    assert _elite_records(out) == [] and len(core.working_set) == 1
    assert _core(tmp_path, "b", track_seeds=False, restore_from_topic=False).tables == ("elites",)


def test_bad_records_never_stop_the_archivist(tmp_path: Path) -> None:
    core = _core(tmp_path)
    core.on_table(Inbound("elites", None, None))
    core.on_table(Inbound("elites", "x", Seed(id="s", problem="p", answer="1")))
    core.on_table(Inbound("seeds", "s", Seed(id="s", problem="p", answer="1", skills=["a", "b", "c", "d"])))
    m = core.metrics()
    assert m["table_skipped"] == 2 and m["table_errors"] == 1
    with pytest.raises(ValidationError, match="skills"):  # four skills: the message rules refuse it (a dead letter on the wire)
        _result(1, 0.5, ("a", "b", "c", "d"))
    out = _feed(core, [_result(2, 0.5)])
    assert [o.topic for o in _no_marks(out)] == ["archive", "elites"]
    assert core.metrics().get("bad_niche", 0) == 0 and len(read_archive(tmp_path / "a")) == 1
    with pytest.raises(FatalError, match="SolveResult"):
        core.handle(Inbound("solved", "c", Candidate(id="c", problem="p", solution="s", answer="1"), 0, 99))
    assert _no_marks(core.handle(Inbound("solved", "t", None, 0, 100))) == []


def test_archive_topic_can_be_switched_off(tmp_path: Path) -> None:
    out = _feed(_core(tmp_path, publish_archive=False), _stream(10))
    assert out and all(o.topic == "elites" for o in out)


# ---------------------------------------------------------------------- metrics and the summary


def test_metrics_agree_with_the_run_statistics(tmp_path: Path) -> None:
    results = _stream(60)
    core = _core(tmp_path, variant="qd")
    _feed(core, results)
    m, s = core.metrics(), summary(results)
    assert m["scored"] == s["scored"] == 60 and m["kept"] == s["kept"]
    assert m["coverage"] == s["coverage"] and m["qd_score"] == pytest.approx(s["qd_score"])
    assert m["w_elites"] == len(core.working_set.elites()) and m["step"] == max(r.step for r in results)
    assert sum(m[f"sr_bin_{i}"] for i in range(10)) == 60
    # the statistics survive a restart (read back from disk)
    assert _core(tmp_path, variant="qd").metrics()["qd_score"] == pytest.approx(m["qd_score"])


def test_run_summary_and_summarize_archive(tmp_path: Path) -> None:
    results = _stream(40)
    core = _core(tmp_path)
    _feed(core, results)
    core.close()
    elites = core.working_set.elites()
    summ = run_summary(results + results[:5], stages={"candidates": 50.0, "novel": 45.0}, elites=elites)
    assert summ["scored"] == 40 and summ["kept"] == sum(r.quality > 0 for r in results)
    assert summ["dropped"]["too_easy"] + summ["dropped"]["unsolvable"] == 40 - summ["kept"]
    assert sum(summ["sr_histogram"]["counts"]) == 40 and len(summ["sr_histogram"]["edges"]) == 11
    assert summ["coverage_over_steps"][-1][1] == summ["coverage"] == summary(results)["coverage"]
    assert summ["stages"] == {"candidates": 50.0, "novel": 45.0}
    assert summ["working_set"]["elites"] == len(elites)
    assert summ["rollouts"] == {"asked": 640, "used": 640, "saved_fraction": 0.0}
    json.dumps(summ)  # JSON-ready
    on_disk = summarize_archive(tmp_path / "a")
    assert {k: on_disk[k] for k in ("scored", "kept", "coverage", "qd_score")} == {
        k: summ[k] for k in ("scored", "kept", "coverage", "qd_score")
    }


def test_build_archivist_and_config_validation(tmp_path: Path) -> None:
    core = build_archivist(ArchivistConfig(archive_dir=str(tmp_path / "x"), variant="dynamic-uniform", cap=7))
    assert core.working_set.update_policy.cap == 7 and core.inputs == ("solved",)
    assert isinstance(core, Core) and core.name == "archivist"
    with pytest.raises(ValueError):
        ArchivistConfig(variant="dynamic-diverse")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ArchivistConfig(archive_formats=())
    assert ArchivistConfig(archive_formats="parquet, jsonl").archive_formats == ("parquet", "jsonl")
    only_jsonl = _core(tmp_path, "j", archive_formats="jsonl")
    _feed(only_jsonl, _stream(5))
    only_jsonl.close()
    assert part_files(tmp_path / "j") == [] and len(read_archive(tmp_path / "j")) == 5


def test_parquet_only_writes_a_part_per_batch(tmp_path: Path) -> None:
    core = _core(tmp_path, "p", archive_formats=("parquet",))
    _feed(core, _stream(10), batch=4)
    assert len(part_files(tmp_path / "p")) == 3 and not (tmp_path / "p" / JSONL_NAME).exists()
    assert len(read_archive(tmp_path / "p")) == 10
    assert _core(tmp_path, "p", archive_formats=("parquet",)).metrics()["scored"] == 10


def test_the_id_window_is_bounded_and_readers_still_dedupe(tmp_path: Path) -> None:
    results = _stream(12)
    core = _core(tmp_path, dedupe_window=5)
    _feed(core, results)
    before = core.working_set.elites()
    out = _feed(core, results[:2], start=100)  # forgotten by the window: archived again, W unchanged
    assert [o.topic for o in _no_marks(out)] == ["archive", "archive"] and core.working_set.elites() == before
    assert len((tmp_path / "a" / JSONL_NAME).read_text().splitlines()) == 14
    # once each; an id written twice sits at its newest write
    assert [r.id for r in read_archive(tmp_path / "a")] == [r.id for r in results[2:] + results[:2]]


def test_config_merges_with_service_settings(tmp_path: Path) -> None:
    from sparq_stream.errors import ConfigError
    from sparq_stream.settings import ServiceSettings, load_settings

    class ArchivistSettings(ServiceSettings, ArchivistConfig):
        pass

    settings = load_settings(ArchivistSettings, variant="dynamic-uniform", cap="50", archive_formats="jsonl")
    assert (settings.variant, settings.cap, settings.archive_formats) == ("dynamic-uniform", 50, ("jsonl",))
    with pytest.raises(ConfigError, match="variant"):
        load_settings(ArchivistSettings, variant="best")


def test_every_batch_ends_with_a_watermark_on_every_elites_partition(tmp_path: Path) -> None:
    core = _core(tmp_path)
    core.tick(0.0)
    results = _stream(6)
    batch = [Inbound("solved", r.id, r, partition=i % 2, offset=10 + i) for i, r in enumerate(results)]
    outs = core.handle_batch(batch)
    marks = [o for per in outs for o in per if o.resolved_key() == WATERMARK_KEY]
    assert len(marks) == 1 and outs[-1][-1] is marks[0]  # once, after the batch's records
    mark = marks[0]
    assert mark.topic == "elites" and mark.partition == EVERY_PARTITION and mark.after
    assert isinstance(mark.message, Watermark) and mark.message.offsets == {"0": 15, "1": 16}
    assert all(not o.after for per in outs for o in per if o is not mark)
    # A restarted archivist reads its watermarks back from the elites table: they only grow.
    again = _core(tmp_path)
    again.on_table(Inbound("elites", WATERMARK_KEY, Watermark(offsets={"0": 15, "1": 16}), partition=0))
    again.on_table(Inbound("elites", WATERMARK_KEY, Watermark(offsets={"0": 12, "2": 3}), partition=1))
    assert again.metrics().get("table_skipped", 0) == 0 and again.working_set.elites() == {}
    again.tick(0.0)
    late = _result(99, 0.5)
    outs = again.handle_batch([Inbound("solved", late.id, late, partition=1, offset=20)])
    assert outs[-1][-1].message.offsets == {"0": 15, "1": 21, "2": 3}


def test_a_wiped_archive_dir_is_rebuilt_from_the_topics_alone(tmp_path: Path) -> None:
    """Elites and archive topics are the state: a new archivist on an empty disk ends in the same state."""
    results = _stream(40)
    first = _core(tmp_path, "first", parquet_rows=16)
    outputs = _feed(first, results)
    first.close()
    elites_topic = [Inbound("elites", o.resolved_key(), o.message, o.partition or 0, i) for i, o in enumerate(outputs) if o.topic == "elites"]
    archive_topic = [Inbound("archive", o.resolved_key(), o.message, 0, i) for i, o in enumerate(outputs) if o.topic == "archive"]
    assert len(archive_topic) == len(results)
    wiped = _core(tmp_path, "wiped", parquet_rows=16)  # an empty archive_dir
    for record in elites_topic + archive_topic:
        wiped.on_table(record)
    assert wiped.tick(0.0) == []  # W from the elites table: nothing to fix
    assert wiped.working_set == first.working_set
    m_first, m_wiped = first.metrics(), wiped.metrics()
    for name in ("scored", "kept", "coverage", "qd_score", *(f"sr_bin_{i}" for i in range(10))):
        assert m_wiped[name] == m_first[name], name
    assert m_wiped["restored_from_topic"] == len(results)
    # the disk export is written again, and redeliveries are recognised without re-publishing
    assert [r.id for r in read_archive(tmp_path / "wiped")] == [r.id for r in results]
    again = wiped.handle_batch([_inbound(results[0], 900)])
    assert _no_marks(again[0]) == [] and wiped.metrics()["duplicates"] == 1
    wiped.close()
    assert sorted(p.name for p in (tmp_path / "wiped").iterdir()) == sorted(p.name for p in (tmp_path / "first").iterdir())
    # a third start with the disk intact restores nothing more from the topic
    third = _core(tmp_path, "wiped", parquet_rows=16)
    for record in archive_topic:
        third.on_table(record)
    third.tick(0.0)
    assert third.metrics().get("restored_from_topic", 0) == 0 and third.metrics()["scored"] == len(results)


def test_lineage_every_elite_and_archived_row_names_its_solved_record(tmp_path: Path) -> None:
    """Elites, archive records (header) and disk rows name the solved (partition, offset); a rebuild from the topic keeps them."""
    from sparq_stream.qd.archive_log import iter_archive_lineage, solved_at_of

    results = _stream(30, seed=5)
    first = _core(tmp_path, "first", parquet_rows=8)
    outputs = _feed(first, results, start=100)
    first.close()
    at = {r.id: (0, 100 + i) for i, r in enumerate(results)}
    elites = [o.message for o in outputs if o.topic == "elites" and isinstance(o.message, Elite)]
    assert elites and all((e.solved_partition, e.solved_offset) == at[e.id] for e in elites)
    archived = [o for o in outputs if o.topic == "archive"]
    assert {o.message.id: solved_at_of(o.headers) for o in archived} == at
    assert dict((r.id, a) for r, a in iter_archive_lineage(tmp_path / "first")) == at
    # a standby's (or a wiped) archive_dir rebuilt from the archive topic keeps the coordinates
    wiped = _core(tmp_path, "wiped", parquet_rows=8)
    for i, o in enumerate(archived):
        wiped.on_table(Inbound("archive", o.resolved_key(), o.message, 0, i, headers=o.headers))
    wiped.tick(0.0)
    wiped.close()
    assert dict((r.id, a) for r, a in iter_archive_lineage(tmp_path / "wiped")) == at
    # and W rebuilt from that archive (the elites topic lost) names them too
    rebuilt = _core(tmp_path, "wiped", parquet_rows=8)
    rebuilt.tick(0.0)
    assert rebuilt.working_set.elites() and all((e.solved_partition, e.solved_offset) == at[e.id] for e in rebuilt.working_set.elites().values())
