"""The lineage check of exported examples: a whole chain passes, each broken link is reported by name."""

from __future__ import annotations

from typing import Any

import pytest

from sparq_stream.core import Inbound
from sparq_stream.ids import problem_id
from sparq_stream.messages import Candidate, Elite, NovelCandidate, Seed, SolveResult
from sparq_stream.training.export import build_examples
from sparq_stream.training.lineage import LINKS, LineageIndex, verify_lineage

RUN = "runabc"
SOLVED_AT = (1, 3)  # partition, offset of the child's solved record


def _solved(text: str, parents: list[str], step: int, *, model_version: int = 2, solver_version: int = 1) -> SolveResult:
    """A kept result: 2 of 4 rollouts correct, quality 0.5, one skill."""
    return SolveResult(
        id=problem_id(text), problem=text, solution="so \\boxed{5}", answer="5", parent_ids=parents, model="gen",
        model_version=model_version, step=step, skills=["algebra"], niche="algebra", k=4, rollouts_used=4, n_correct=2,
        solve_rate=0.5, quality=0.5, correct_rollouts=["first \\boxed{5}", "second \\boxed{5}"], solver_model="sol",
        solver_version=solver_version, created_at=1.0,
    )  # fmt: skip


def _candidate(result: SolveResult) -> Candidate:
    fields = ("id", "problem", "solution", "answer", "parent_ids", "model", "model_version", "step", "created_at")
    return Candidate(**{name: getattr(result, name) for name in fields})


def _novel(result: SolveResult) -> NovelCandidate:
    fields = ("id", "problem", "solution", "answer", "parent_ids", "model", "model_version", "step", "created_at", "skills", "niche")
    return NovelCandidate(**{name: getattr(result, name) for name in fields})


def _rec(logical: str, message: Any, partition: int = 0, offset: int = 0, run: str = RUN) -> Inbound:
    return Inbound(f"{run}.{logical}", message.kafka_key() if message is not None else None, message, partition, offset)


SEED = Seed(id=problem_id("What is 2 + 3?"), problem="What is 2 + 3?", answer="5")
PARENT = _solved("What is 2 + 3 + 0?", [SEED.id], step=0)
CHILD = _solved("What is 10 - 5?", [PARENT.id], step=1)


def _rows(child: SolveResult = CHILD, run: str = RUN, solved_at: tuple[int, int] = SOLVED_AT) -> list[dict[str, Any]]:
    elite = Elite(**child.model_dump(), slot="algebra", solved_partition=solved_at[0], solved_offset=solved_at[1])
    return build_examples([elite], run=run)


def _records(**drop: bool) -> list[Inbound]:
    """Every record of a whole chain, in topic order; ``drop``: leave out the named ones."""
    records = [
        ("seed", _rec("seeds", SEED)),
        ("parent", _rec("solved", PARENT, 0, 0)),
        ("parent_archived", _rec("archive", PARENT)),
        ("candidate", _rec("candidates", _candidate(CHILD))),
        ("novel", _rec("novel", _novel(CHILD))),
        ("other_solved", _rec("solved", PARENT, 1, 2)),
        ("solved", _rec("solved", CHILD, *SOLVED_AT)),
    ]
    return [record for name, record in records if not drop.get(name)]


def _broken(report: Any) -> dict[str, set[str]]:
    return {row.id: {b.link for b in row.links} for row in report.broken}


def test_a_whole_chain_passes() -> None:
    rows = _rows()
    assert len(rows) == 2 and all(r["run"] == RUN and (r["solved_partition"], r["solved_offset"]) == SOLVED_AT for r in rows)
    assert rows[0]["solved_topic"] == f"{RUN}.solved"
    report = verify_lineage(rows, _records())
    assert report.ok and report.broken == []
    summary = report.summary()
    assert (summary["rows"], summary["ok"], summary["broken"], summary["by_link"]) == (2, 2, 0, {})
    assert summary["records"][f"{RUN}.solved"] == 3


def test_records_of_other_runs_do_not_count() -> None:
    report = verify_lineage(_rows(), [_rec(r.topic.rpartition(".")[2], r.message, r.partition, r.offset, run="other") for r in _records()])
    assert _broken(report) == {row["id"]: {"parent", "candidate", "novel", "solved"} for row in _rows()}


def test_a_parent_that_is_a_scored_child_needs_no_seed() -> None:
    assert verify_lineage(_rows(), _records(seed=True)).ok  # the row's parent is a child scored at an earlier step


@pytest.mark.parametrize(
    "drop, link",
    [
        ({"parent": True, "parent_archived": True, "other_solved": True}, "parent"),
        ({"candidate": True}, "candidate"),
        ({"novel": True}, "novel"),
        ({"solved": True}, "solved"),
    ],
)
def test_a_missing_record_breaks_its_link_and_only_that_one(drop: dict[str, bool], link: str) -> None:
    rows = _rows()
    report = verify_lineage(rows, _records(**drop))
    assert _broken(report) == {row["id"]: {link} for row in rows}
    assert report.by_link() == {link: 2} and report.summary()["broken"] == 2
    assert all(set(row.to_dict()["broken"]) == {link} for row in report.broken)


def test_a_doctored_offset_is_reported_as_a_broken_solved_link() -> None:
    rows = _rows()
    rows[0] = {**rows[0], "solved_offset": 2}  # offset 2 holds another problem's result
    rows[1] = {**rows[1], "solved_offset": 99}  # nothing at offset 99
    report = verify_lineage(rows, _records())
    reasons = {row.id: row.to_dict()["broken"] for row in report.broken}
    assert set(reasons) == {rows[0]["id"], rows[1]["id"]}
    assert all(set(r) == {"solved"} for r in reasons.values())
    assert "id" in reasons[rows[0]["id"]]["solved"] and f"{RUN}.solved[1]@2" in reasons[rows[0]["id"]]["solved"]
    assert "no record" in reasons[rows[1]["id"]]["solved"]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"answer": "6"}, "answer"),
        ({"response": "a made-up target"}, "correct rollout"),
        ({"solver_version": 7}, "solver_version"),
        ({"solved_partition": -1}, "names no solved record"),
    ],
)
def test_a_row_that_disagrees_with_its_solved_record_is_reported(change: dict[str, Any], words: str) -> None:
    rows = _rows()
    rows[0] = {**rows[0], **change}
    report = verify_lineage(rows, _records())
    assert [row.id for row in report.broken] == [rows[0]["id"]]
    (broken,) = report.broken[0].links
    assert broken.link == "solved" and words in broken.reason


def test_a_different_generator_version_breaks_the_candidate_and_novel_links() -> None:
    rows = [{**row, "model_version": 9} for row in _rows()]
    report = verify_lineage(rows, _records())
    assert report.by_link() == {"candidate": 2, "novel": 2, "solved": 2}
    assert "model_version" in report.broken[0].to_dict()["broken"]["candidate"]


def test_a_parent_must_be_scored_before_the_child() -> None:
    late_parent = PARENT.model_copy(update={"step": 1})  # scored at the child's own step
    records = [r if r.message is not PARENT else Inbound(r.topic, r.key, late_parent, r.partition, r.offset) for r in _records()]
    report = verify_lineage(_rows(), records)
    assert report.by_link() == {"parent": 2}
    assert "not before" in report.broken[0].links[0].reason
    orphan = [{**row, "parent_ids": []} for row in _rows()]
    assert "names no parent" in verify_lineage(orphan, _records()).broken[0].to_dict()["broken"]["parent"]


def test_a_row_without_a_run_needs_one_given() -> None:
    rows = _rows(run="")
    assert all(r["solved_topic"] == "" for r in rows)
    report = verify_lineage(rows, _records())
    assert report.by_link() == {"run": 2}
    assert verify_lineage(rows, _records(), run=RUN).ok  # the prefix given on the command line


def test_the_index_keeps_only_what_the_rows_need() -> None:
    index = LineageIndex(_rows())
    for record in _records() + [_rec("candidates", _candidate(PARENT)), _rec("solved", PARENT, 0, 50)]:
        index.add(record)
    assert set(index.candidates) == {(RUN, CHILD.id)}
    assert set(index.solved) == {(f"{RUN}.solved", *SOLVED_AT)}
    assert index.seeds == set()  # the seed is nobody's parent in the rows
    assert LINKS == ("run", "parent", "candidate", "novel", "solved")


@pytest.mark.parametrize(
    "args, message",
    [
        (["export"], "error: give --archive DIR to export (or --verify [PATH] to check an export)"),
        (["export", "--verify", "/nonexistent/export"], "error: export /nonexistent/export does not exist"),
    ],
)
def test_sparq_export_verify_errors_are_one_line(args: list[str], message: str) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "sparq_stream.cli", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().startswith(message) and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_the_trainers_export_names_the_run_and_each_rows_solved_record(tmp_path) -> None:
    """Elites name their own coordinates; archived children get theirs from the sparq.solved.at header."""
    from sparq_stream.cores.trainer import TrainerConfig, TrainerCore
    from sparq_stream.qd.archive_log import solved_at_header
    from sparq_stream.settings import ServiceSettings, load_settings
    from sparq_stream.training.export import read_examples

    class TrainerSettings(ServiceSettings, TrainerConfig):
        pass

    settings = load_settings(TrainerSettings, prefix=RUN, export_dir=str(tmp_path / "export"), include_archive=True, export_every=1)
    core = TrainerCore(settings)
    elite = Elite(**CHILD.model_dump(), slot="algebra", solved_partition=1, solved_offset=3)
    core.on_table(Inbound("elites", elite.slot, elite))
    core.on_table(Inbound("archive", PARENT.id, PARENT, 0, 0, headers=(solved_at_header((0, 0)),)))
    core.tick(0.0)
    rows = read_examples(tmp_path / "export")
    assert {(r["problem_id"], r["run"], r["solved_topic"], r["solved_partition"], r["solved_offset"]) for r in rows} == {
        (CHILD.id, RUN, f"{RUN}.solved", 1, 3), (PARENT.id, RUN, f"{RUN}.solved", 0, 0)
    }  # fmt: skip
    assert verify_lineage([r for r in rows if r["problem_id"] == CHILD.id], _records()).ok
