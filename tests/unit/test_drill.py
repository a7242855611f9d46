"""The drills' own pieces without a broker: kill plans, poison records, hostile texts, the table."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from sparq_stream.bus.topics import spec_of

from sparq_stream.drill import common
from sparq_stream.drill.common import BATCH, BUDGETS, DrillContext, DrillResult, archive_ids, compare_with_reference, drill_config, result_checks
from sparq_stream.drill.hostile import hostile_texts
from sparq_stream.drill.kill import kill_plan
from sparq_stream.drill.poison import KINDS, POISON_TOPICS, RECORD_LIMIT, _plan, make_poison
from sparq_stream.drill.stall import STALL_CAP, in_flight_checks
from sparq_stream.drill.table import render_table, row_counts
from sparq_stream.errors import SparqError
from sparq_stream.messages import SolveResult, decode, to_jsonable
from sparq_stream.qd.archive_log import JSONL_NAME


def test_kill_plan_kills_the_solver_often_and_every_service() -> None:
    full = BUDGETS["full"]
    plan = kill_plan(full.kills, full.kills_of_one, seed=1)
    counts = Counter(plan)
    assert len(plan) == 20 and counts["solver-0"] == 5
    assert set(counts) == {"mutator", "novelty", "solver-0", "archivist", "trainer"}


def test_poison_plan_covers_every_topic_and_kind_with_large_values_up_to_the_limit() -> None:
    plan = _plan(10_000, 14, seed=3)
    assert len(plan) == 10_000
    assert {t for t, _, _ in plan} == set(POISON_TOPICS)
    assert {k for _, k, _ in plan} == set(KINDS)
    expected = {(t, k) for t in POISON_TOPICS for k in KINDS if k != "large" and not (k == "tombstone" and spec_of(t).deletes)}
    assert {(t, k) for t, k, _ in plan if k != "large"} == expected  # tombstones delete legitimately on elites, models
    assert {t for t, k, s in plan if k == "large" and s == RECORD_LIMIT} == set(POISON_TOPICS)


@pytest.mark.parametrize("topic", sorted(POISON_TOPICS))
def test_every_poison_record_is_malformed_for_its_topic(topic: str) -> None:
    rng = random.Random(0)
    expected = POISON_TOPICS[topic]
    for n, kind in enumerate(KINDS):
        key, value = make_poison(topic, kind, n, rng, size=1000)
        if kind == "tombstone":
            assert value is None
            continue
        assert value is not None
        if kind == "key_not_id":
            message = decode(value, expect=expected)  # a valid message under a key it does not own
            assert key is not None and key.decode() != message.kafka_key()
            continue
        with pytest.raises(SparqError):
            decode(value, expect=expected)


def test_hostile_texts_hold_the_shapes_the_issue_names(tmp_path: Path) -> None:
    texts = hostile_texts(1, tmp_path / "sentinel")
    assert texts["newlines_20k"].count("\n") == 20_000
    assert len(texts["huge_plain"]) >= 1_000_000
    assert texts["deep_braces"].count("{") > 50_000
    assert str(tmp_path / "sentinel") in texts["injection_eval"]


def _result(i: int, step: int = 0) -> SolveResult:
    return SolveResult(id=f"id{i}", problem=f"p{i}", solution="s", answer="1", k=4, rollouts_used=4, n_correct=2,
                       solve_rate=0.5, quality=0.5, skills=["a"], step=step)


def test_compare_counts_lost_extra_changed_and_duplicate_lines(tmp_path: Path) -> None:
    rows = [_result(0), _result(1, step=1), _result(1, step=1), _result(3)]
    (tmp_path / JSONL_NAME).write_text("".join(json.dumps(to_jsonable(r)) + "\n" for r in rows))
    w = {"a": SimpleNamespace(id="id0", quality=0.5, niche="a"), "b": SimpleNamespace(id="id1", quality=0.25, niche="b")}
    reference = SimpleNamespace(results=[_result(0), _result(1), _result(2)], elites=w)
    assert archive_ids(tmp_path) == ["id0", "id1", "id1", "id3"]
    diff = compare_with_reference(reference, tmp_path, dict(w))
    assert (diff["lost"], diff["extra"], diff["changed"], diff["duplicate_lines"]) == (1, 1, 1, 1)
    assert diff["elites_equal"] is True and (diff["elites"], diff["reference_elites"]) == (2, 2)
    checks = result_checks(diff)
    assert checks["reference_not_empty"] and checks["elites_equal_reference"] and not checks["archive_equals_reference"]
    other = {**w, "b": SimpleNamespace(id="id3", quality=0.25, niche="b")}
    diff = compare_with_reference(reference, tmp_path, other)
    assert diff["elites_equal"] is False and diff["elites_differ"] == 2
    requalified = {**w, "b": SimpleNamespace(id="id1", quality=0.5, niche="b")}  # same id, another quality
    assert compare_with_reference(reference, tmp_path, requalified)["elites_differ"] == 2
    empty = compare_with_reference(SimpleNamespace(results=[], elites={}), tmp_path, {})
    assert not result_checks(empty)["reference_not_empty"]  # two empty sides are no evidence


def test_an_empty_result_fails_however_the_reference_compares(tmp_path: Path) -> None:
    reference = SimpleNamespace(results=[_result(0)], elites={"a": SimpleNamespace(id="id0", quality=0.5, niche="a")})
    (tmp_path / "empty").mkdir()
    diff = compare_with_reference(reference, tmp_path / "empty", {})
    checks = result_checks(diff)
    assert checks["reference_not_empty"] and not checks["result_not_empty"] and not checks["nothing_lost"]
    assert (diff["reference_rows"], diff["archive_rows"], diff["elites"]) == (1, 0, 0)
    (tmp_path / "one" / JSONL_NAME).parent.mkdir()
    (tmp_path / "one" / JSONL_NAME).write_text(json.dumps(to_jsonable(_result(0))) + "\n")
    rows_only = result_checks(compare_with_reference(reference, tmp_path / "one", {}), with_elites=False)
    assert all(rows_only.values()) and "elites_equal_reference" not in rows_only  # resume on Tansu: W not compared
    assert not result_checks(compare_with_reference(reference, tmp_path / "one", {}))["result_not_empty"]  # W empty


def test_the_stall_cap_binds_and_its_checks_can_fail() -> None:
    assert 0 < STALL_CAP < BATCH  # a step is larger than the cap: the mutator must wait for credits
    assert all(in_flight_checks([0.0, 16.0, float(STALL_CAP), 20.0], [float(STALL_CAP)] * 4).values())
    assert not in_flight_checks([], [])["in_flight_within_cap"] and not in_flight_checks([], [])["in_flight_seen"]
    assert not in_flight_checks([0.0, 0.0], [float(STALL_CAP)] * 2)["in_flight_seen"]
    assert not in_flight_checks([float(STALL_CAP + 1)], [float(STALL_CAP)])["in_flight_within_cap"]
    assert not in_flight_checks([float(STALL_CAP - 1)], [float(STALL_CAP)])["cap_reached"]
    assert not in_flight_checks([float(STALL_CAP)], [256.0])["cap_in_force"]  # the default cap: the flag was lost


def test_each_extra_flag_set_gets_its_own_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sparq_stream.orchestrator.local as local

    runs: list[list[str]] = []
    monkeypatch.setattr(local, "run_local", lambda config: runs.append(config.extra["mutator"]) or SimpleNamespace())
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"question": "q", "answer": "#### 1"}\n')
    ctx = DrillContext(out=tmp_path, broker="tansu", budget=BUDGETS["small"], seeds=seeds)
    plain = drill_config(ctx, tmp_path / "a")
    capped = drill_config(ctx, tmp_path / "b", extra={"mutator": ["--max-in-flight", "32"]})
    for config in (plain, capped, plain, capped):
        common.reference_for(ctx, config)
    assert runs == [["--chunk-size", "16"], ["--max-in-flight", "32"]]  # one run each, then cached


def test_row_counts_name_every_count_a_drill_has() -> None:
    figures = {"reference_rows": 128, "archive_rows": 128, "lost": 0, "extra": 0, "changed": 0, "duplicate_lines": 0,
               "reference_elites": 45, "elites": None, "injected": 600, "dead_lettered": 600, "kills": 6}
    line = row_counts(figures)
    assert line == ("reference rows 128, result rows 128, lost 0, extra 0, changed 0, duplicate lines 0, reference W 45, "
                    "injected 600, dead-lettered 600")
    assert row_counts({"max_s": {"answer_final": 0.1}}) == ""  # the hostile drill has no rows


def test_table_names_failed_checks_and_skips() -> None:
    ok = DrillResult("kill", "tansu", "small", checks={"a": True},
                     figures={"kills": 6, "kills_per_service": {"x": 3}, "reference_rows": 384, "archive_rows": 384})
    bad = DrillResult("resume", "tansu", "small", checks={"no_process_left_behind": False})
    skipped = DrillResult("broker", "tansu", "small", skipped="memory only")
    text = render_table({"results": [r.to_json() for r in (ok, bad, skipped)], "command": "sparq drill all", "cpus": 2})
    assert "| kill | tansu | small | pass | 6 kills (max 3 of one); reference rows 384, result rows 384, W equal ?" in text
    assert "| resume | tansu | small | **FAIL**: no_process_left_behind |" in text
    assert "| broker | tansu | small | skipped | memory only |" in text
    assert "`sparq drill all`" in text
