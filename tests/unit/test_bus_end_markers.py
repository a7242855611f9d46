"""End markers (a bounded run's final watermark): covers, their union, when a partition is ended, forwarding."""

from __future__ import annotations

from sparq_stream.bus.markers import EndBook, EndPlan, end_outputs, end_writers
from sparq_stream.messages import EndMarker, decode, encode


def _m(stage: str, covers: list[int], of: int, epoch: int = 1, instance: str = "", source: str = "") -> EndMarker:
    return EndMarker(run="r", stage=stage, instance=instance, covers=covers, of=of, epoch=epoch, source=source)


def test_the_topology_of_ends() -> None:
    assert end_writers("solved") == ("solver",)
    assert end_writers("candidates") == ("mutator", "novelty")  # novelty replicas move candidates to their bucket
    assert end_writers("seeds") == () and end_writers("metrics") == ()
    assert end_outputs("mutator") == ("candidates",)
    assert end_outputs("novelty") == ("candidates", "novel", "drops")
    assert end_outputs("solver") == ("solved",)
    assert end_outputs("archivist") == ("elites", "archive")


def test_a_partition_is_ended_only_by_the_union_of_every_instances_covers() -> None:
    book = EndBook()
    book.add("solved", 0, _m("solver", [0, 2], 4, instance="solver-0"))
    assert book.ended("solved", 0, ["solver"]) == 0  # novel partitions 1 and 3 are not covered yet
    book.add("solved", 0, _m("solver", [1], 4, instance="solver-1"))
    assert book.ended("solved", 0, ["solver"]) == 0
    book.add("solved", 0, _m("solver", [3], 4, instance="solver-1"))
    assert book.ended("solved", 0, ["solver"]) == 1
    assert book.ended("solved", 1, ["solver"]) == 0  # markers are per partition
    assert book.ended("solved", 0, []) == 0  # no stage to end it: never ended


def test_a_duplicate_marker_changes_nothing_and_the_lowest_epoch_of_a_cover_counts() -> None:
    book = EndBook()
    for _ in range(2):
        book.add("solved", 0, _m("solver", [0, 1], 2, epoch=3))
    assert book.ended("solved", 0, ["solver"]) == 3
    book.add("solved", 0, _m("solver", [1], 2, epoch=5))
    assert book.ended("solved", 0, ["solver"]) == 3  # cover 0 is ended at 3 only
    book.add("solved", 0, _m("solver", [0], 2, epoch=4))
    assert book.ended("solved", 0, ["solver"]) == 4


def test_every_stage_that_writes_the_topic_must_end_it() -> None:
    book = EndBook()
    book.add("candidates", 1, _m("mutator", [0, 1], 2))
    assert book.ended("candidates", 1, ["mutator"]) == 1
    assert book.ended("candidates", 1, ["mutator", "novelty"]) == 0
    book.add("candidates", 1, _m("novelty", [0, 1, 2], 3, source="candidates"))
    assert book.ended("candidates", 1, ["mutator", "novelty"]) == 1


def test_a_stage_forwards_the_partitions_it_holds_once_ended_and_holds_commits_until_then() -> None:
    plan = EndPlan("r", "solver", "solver-1", ["novel"])
    assigned = {"novel": ([1, 3], 4)}
    assert plan.due(assigned) == []
    plan.book.add("novel", 1, _m("novelty", [0, 1, 2, 3], 4, source="candidates"), offset=40)
    plan.book.add("novel", 3, _m("novelty", [0, 1], 4, source="candidates"), offset=7)
    assert plan.book.hold_at("novel", 1) == 40 and plan.book.hold_at("novel", 3) == 7
    (first,) = plan.due(assigned)
    assert first.topics == ("solved",)
    assert (first.marker.stage, first.marker.instance, first.marker.covers, first.marker.of, first.marker.source) == (
        "solver", "solver-1", [1], 4, "novel",
    )
    assert plan.book.hold_at("novel", 1) is None  # forwarded: the commit may pass it
    assert plan.book.hold_at("novel", 3) == 7  # not ended yet: re-read after a restart or a rebalance
    assert plan.due(assigned) == []  # nothing new
    plan.book.add("novel", 3, _m("novelty", [2, 3], 4, source="candidates"), offset=9)
    (second,) = plan.due(assigned)
    assert second.marker.covers == [3] and plan.passed == 1
    assert plan.book.hold_at("novel", 3) is None


def test_a_stage_that_writes_its_own_input_ends_it_first_then_forwards() -> None:
    plan = EndPlan("r", "novelty", "novelty-0", ["candidates"])
    assigned = {"candidates": ([0], 2)}
    plan.book.add("candidates", 0, _m("mutator", [0], 1), offset=5)
    (own,) = plan.due(assigned)
    assert own.topics == ("candidates",) and own.marker.covers == [0] and own.marker.source == "candidates"
    plan.book.add("candidates", 0, own.marker, offset=8)  # read back
    assert plan.due(assigned) == []  # the other replica has not ended its partition 1 yet
    assert plan.book.hold_at("candidates", 0) == 5
    plan.book.add("candidates", 0, _m("novelty", [1], 2, instance="novelty-1", source="candidates"), offset=9)
    (fwd,) = plan.due(assigned)
    assert fwd.topics == ("novel", "drops") and fwd.marker.covers == [0]


def test_a_source_writes_its_share_once_per_epoch_and_never_forwards() -> None:
    plan = EndPlan("r", "mutator", "mutator-1", ["solved", "drops"], source=True)
    plan.book.add("solved", 0, _m("solver", [0], 1), offset=3)  # the end coming round the loop
    assert plan.due({"solved": ([0], 1)}) == []
    (mine,) = plan.source_due(epoch=5, share=1, shares=2)
    assert mine.topics == ("candidates",) and (mine.marker.covers, mine.marker.of, mine.marker.epoch) == ([1], 2, 5)
    assert plan.source_due(epoch=5, share=1, shares=2) == []
    assert plan.source_due(epoch=6, share=1, shares=2)[0].marker.epoch == 6  # more work after an end: a new end
    assert plan.passed == 6


def test_a_stage_without_inputs_passes_once_its_tables_are_ended() -> None:
    plan = EndPlan("r", "trainer", "trainer", [])
    counts = {"elites": 2, "models": 1}
    plan.book.add("elites", 0, _m("archivist", [0, 1], 2, epoch=2))
    assert plan.table_passed(["elites", "models"], counts) == 0
    plan.book.add("elites", 1, _m("archivist", [0, 1], 2, epoch=2))
    assert plan.table_passed(["elites", "models"], counts) == 2  # models is its own output: not waited on


def test_markers_round_trip_and_refuse_covers_outside_the_input() -> None:
    import pytest

    from sparq_stream.errors import SparqError

    marker = _m("solver", [0, 3], 4, epoch=2, instance="solver-0")
    assert decode(encode(marker)) == marker and marker.kafka_key() == "~end.solver.solver-0"
    with pytest.raises(ValueError):
        _m("solver", [4], 4)
    import msgpack

    body = {**msgpack.unpackb(encode(marker)), "covers": [0, 0]}  # not distinct
    with pytest.raises(SparqError):
        decode(msgpack.packb(body))


def test_sparq_tail_skips_end_markers_and_prints_messages() -> None:
    from types import SimpleNamespace

    from sparq_stream.bus.dlq import dead_letter_from_record
    from sparq_stream.cli import _tail_row
    from sparq_stream.messages import Dropped, to_jsonable

    def rec(value: bytes) -> SimpleNamespace:
        return SimpleNamespace(topic="p.drops", partition=0, offset=3, key=b"k", value=value, headers=[])

    assert _tail_row(rec(encode(_m("novelty", [0], 1))), False, decode, to_jsonable, dead_letter_from_record) is None
    dropped = Dropped(id="0" * 32, reason="exact_duplicate")
    row = _tail_row(rec(encode(dropped)), False, decode, to_jsonable, dead_letter_from_record)
    assert row is not None and row["schema"] == "sparq.dropped"
