"""Placement of ``novel`` records (round-robin, not by key hash) and the wrapper's poll wait, with fake clients."""

from __future__ import annotations

from collections import Counter
from typing import Any

from kafka import TopicPartition
from kafka.partitioner.default import murmur2

from sparq_stream.bus.process import ServiceProcess
from sparq_stream.bus.topics import TOPIC_SPECS, spec_of
from sparq_stream.core import BaseCore, Outgoing
from sparq_stream.ids import problem_id
from sparq_stream.messages import NovelCandidate, SolveResult, decode
from sparq_stream.settings import ServiceSettings


class _Future:
    exception = None
    is_done = True

    def get(self, timeout: float = 0) -> None:
        return None


class _Producer:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []

    def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None, headers: Any = None, partition: int | None = None) -> _Future:
        self.sent.append((topic, key, value, partition))
        return _Future()

    def flush(self, timeout: float | None = None) -> None:
        pass


class _Consumer:
    def __init__(self) -> None:
        self.timeouts: list[int] = []

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        self.timeouts.append(timeout_ms)
        return {}

    def commit(self, offsets: Any, timeout_ms: int | None = None) -> None:
        pass

    def assignment(self) -> set[Any]:
        return {TopicPartition("t.novel", 0)}


def _process(partitions: int, instance: str = "novelty", core: Any = None, **settings: Any) -> ServiceProcess:
    options = {"poll_timeout_ms": 200, **settings}
    process = ServiceProcess(core or BaseCore(), ServiceSettings(bootstrap="localhost:1", prefix="t", instance=instance, **options), install_signals=False)
    process.producers.producer = _Producer(partitions)
    process.intake.consumer = _Consumer()
    return process


def _novel(i: int) -> NovelCandidate:
    problem = f"Problem number {i}: what is {i} + 1?"
    return NovelCandidate(id=problem_id(problem), problem=problem, solution="\\boxed{1}", answer=str(i + 1), parent_ids=[problem_id("p")], step=i // 64)


def _send_novel(process: ServiceProcess, candidates: list[NovelCandidate], per_batch: int) -> list[tuple[str, bytes | None, bytes | None, int | None]]:
    for start in range(0, len(candidates), per_batch):
        outs = [(Outgoing("novel", c), None) for c in candidates[start : start + per_batch]]
        assert process.delivery.deliver(outs, [], {})
    return [s for s in process.producers.producer.sent if s[0] == "t.novel"]


def _replica_loads(partitions_of_records: list[int], replicas: int, *, ranges: int = 0) -> list[int]:
    """Records per replica: partition i goes to replica i mod N (the round-robin assignor), or to contiguous ranges."""
    loads = Counter(p // ranges if ranges else p % replicas for p in partitions_of_records)
    return [loads[r] for r in range(replicas)]


def test_only_the_novel_topic_is_spread() -> None:
    assert [s.name for s in TOPIC_SPECS if s.spread] == ["novel"]
    assert spec_of("novel").compacted  # a compacted table keyed by problem id, whatever its partition


def test_a_step_of_novel_records_gives_every_partition_and_replica_an_equal_share() -> None:
    candidates = [_novel(i) for i in range(64)]
    for partitions, replicas in ((4, 2), (16, 4), (12, 4), (12, 3)):
        sent = _send_novel(_process(partitions), candidates, per_batch=5)  # uneven batches: the turn carries over
        per_partition = Counter(s[3] for s in sent)
        assert set(per_partition) == set(range(partitions))
        assert max(per_partition.values()) - min(per_partition.values()) <= 1
        loads = _replica_loads([s[3] for s in sent], replicas)
        assert sum(loads) == 64 and max(loads) - min(loads) <= 1
        # key hashing (the producer's default) and range assignment: the busiest replica holds more
        hashed = [(murmur2(c.id.encode()) & 0x7FFFFFFF) % partitions for c in candidates]
        assert max(_replica_loads(hashed, replicas, ranges=partitions // replicas)) > max(loads)


def test_spread_records_keep_their_problem_id_key_and_value() -> None:
    candidates = [_novel(i) for i in range(8)]
    sent = _send_novel(_process(4), candidates, per_batch=8)
    assert [s[1] for s in sent] == [c.id.encode() for c in candidates]
    assert [decode(s[2]) for s in sent] == candidates
    turns = [s[3] for s in sent]
    assert turns == [(turns[0] + i) % 4 for i in range(8)]


def test_replicas_start_their_turns_apart_and_other_topics_keep_key_placement() -> None:
    firsts = {_send_novel(_process(12, instance=f"novelty-{i}"), [_novel(0)], per_batch=1)[0][3] for i in range(6)}
    assert len(firsts) > 1  # two novelty replicas do not both start on partition 0
    process = _process(4)
    result = SolveResult(**_novel(1).model_dump(), k=4, rollouts_used=4, n_correct=2, solve_rate=0.5, quality=0.5)
    assert process.delivery.deliver([(Outgoing("solved", result), None), (Outgoing("novel", _novel(2), partition=3), None)], [], {})
    assert [(s[0], s[3]) for s in process.producers.producer.sent] == [("t.solved", None), ("t.novel", 3)]


class _Emitter(BaseCore):
    """A core whose tick emits on its first call only."""

    name = "emitter"
    inputs = ("candidates",)

    def __init__(self) -> None:
        self.ticks = 0

    def tick(self, now: float) -> list[Outgoing]:
        self.ticks += 1
        return [Outgoing("novel", _novel(self.ticks))] if self.ticks == 1 else []


def test_the_poll_after_a_tick_that_emitted_does_not_wait() -> None:
    process = _process(4, core=_Emitter())
    for _ in range(3):
        process._step()
    assert process.core.ticks == 3
    first, second, third = process.intake.consumer.timeouts  # no tables: one poll per step
    assert second == 0 and first > 0 and third > 0


class _Burst(_Consumer):
    """Hands out a burst of records in pieces, one piece per poll."""

    def __init__(self, pieces: list[int]) -> None:
        super().__init__()
        self.pieces = list(pieces)
        self.offset = 0

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        self.timeouts.append(timeout_ms)
        if not self.pieces:
            return {}
        n = min(self.pieces.pop(0), max_records or 10**9)
        recs = [type("R", (), {"offset": self.offset + i})() for i in range(n)]
        self.offset += n
        return {TopicPartition("t.novel", 0): recs}


def test_a_short_batch_lingers_for_the_rest_of_a_burst_only_when_asked() -> None:
    process = _process(4)
    process.intake.consumer = _Burst([3, 2, 4])
    assert len(process.intake.poll(process.tables)) == 3  # default: no linger, the short batch goes at once
    for want, got in ((8, 9), (4, 5)):  # a poll never takes more than max_poll_records in all
        process = _process(4, batch_linger_records=want, batch_linger_ms=60_000, max_poll_records=9)
        process.intake.consumer = _Burst([3, 2, 4, 7])
        records = process.intake.poll(process.tables)
        assert len(records) == got and [r.offset for r in records] == list(range(got))


def test_a_table_record_ends_the_wait_of_an_input_poll() -> None:
    process = _process(4, poll_timeout_ms=60_000)
    process.tables.wakeup = True  # a core that acts on table records: the wait is cut in slices, the tables read between
    read = [0, 0, 2]  # table records read after each slice: the third brings a watermark
    process.tables.poll = lambda timeout_ms=0: read.pop(0)  # type: ignore[method-assign]
    assert process.intake.poll(process.tables) == [] and read == []
    assert len(process.intake.consumer.timeouts) == 3 and max(process.intake.consumer.timeouts) <= 20


def test_only_a_synchronous_dynamic_mutator_wakes_on_table_records() -> None:
    from sparq_stream.cores.mutator import MutatorConfig, MutatorCore
    from sparq_stream.models.scripted import ScriptedBackend

    def wakes(**config: Any) -> bool:
        return MutatorCore(MutatorConfig(changelog=False, **config), backend=ScriptedBackend()).wakes_on_tables

    assert wakes(variant="qd") and wakes(variant="dynamic-uniform")
    assert not wakes(variant="static-uniform") and not wakes(variant="qd", synchronous=False)
    process = _process(4)  # a core with tables that does not act on them: one poll, the whole wait
    process.tables.poll = lambda timeout_ms=0: 1  # type: ignore[method-assign]
    assert process.intake.poll(process.tables) == []
    (wait,) = process.intake.consumer.timeouts
    assert wait > 20
