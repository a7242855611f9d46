"""The wrapper's send phases with a fake producer: state records go only after the outputs they account for."""

from __future__ import annotations

from typing import Any

from kafka.errors import KafkaTimeoutError

from sparq_stream.bus.intake import HeldBatch
from sparq_stream.bus.process import ServiceProcess
from sparq_stream.core import EVERY_PARTITION, FANOUT_HEADER, BaseCore, Inbound, Outgoing, fanout_of
from sparq_stream.messages import MutatorState, Seed, Watermark
from sparq_stream.settings import ServiceSettings


class _Future:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.exception = error
        self.is_done = True

    def get(self, timeout: float = 0) -> None:
        if self.error is not None:
            raise self.error


class _Producer:
    def __init__(self, fail_topic: str | None = None) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.fail_topic = fail_topic

    def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None, headers: Any = None, partition: int | None = None) -> _Future:
        self.events.append(("send", topic, key, partition, tuple(headers or ())))
        return _Future(KafkaTimeoutError("no ack") if topic == self.fail_topic else None)

    def flush(self, timeout: float | None = None) -> None:
        self.events.append(("flush",))


class _Consumer:
    def __init__(self, events: list[tuple[Any, ...]]) -> None:
        self.events = events

    def commit(self, offsets: Any, timeout_ms: int | None = None) -> None:
        self.events.append(("commit",))

    def seek(self, tp: Any, offset: int) -> None:
        self.events.append(("seek", offset))


class _Record:
    topic, partition, offset, key, value, headers = "t.solved", 0, 7, b"k", b"v", []


def _process(fail_topic: str | None = None) -> ServiceProcess:
    core = BaseCore()
    process = ServiceProcess(core, ServiceSettings(bootstrap="localhost:1", prefix="t", retry_backoff_ms=1), install_signals=False)
    process.producers.producer = _Producer(fail_topic)
    process.intake.consumer = _Consumer(process.producers.producer.events)
    return process


OUTPUTS = [
    Outgoing("mutator-state", MutatorState(step=1), key="mutator", after=True),
    Outgoing("seeds", Seed(id="a", problem="p", answer="1")),
    Outgoing("elites", Watermark(offsets={"0": 8}), partition=EVERY_PARTITION, after=True),
    Outgoing("seeds", Seed(id="b", problem="q", answer="2"), partition=1),
]


def test_after_outputs_are_sent_once_the_others_are_acknowledged_then_offsets_commit() -> None:
    process = _process()
    assert process.delivery.deliver([(o, _Record()) for o in OUTPUTS], [], {"tp": "offset"})
    events = [e[:2] if e[0] == "send" else e for e in process.producers.producer.events]
    assert events == [
        ("send", "t.seeds"), ("send", "t.seeds"), ("flush",),
        ("send", "t.mutator-state"), ("send", "t.elites"), ("send", "t.elites"), ("send", "t.elites"), ("flush",),
        ("commit",),
    ]
    sends = [e for e in process.producers.producer.events if e[0] == "send"]
    assert sends[1][3] == 1  # an explicit partition
    marks = [e for e in sends if e[1] == "t.elites"]
    assert [m[3] for m in marks] == [0, 1, 2]
    assert [dict(m[4])[FANOUT_HEADER] for m in marks] == [b"0/3", b"1/3", b"2/3"]
    assert fanout_of(Inbound("elites", None, None, headers=marks[2][4])) == (2, 3)
    assert fanout_of(Inbound("elites", None, None, headers=((FANOUT_HEADER, b"3/3"),))) is None


def test_a_failed_first_phase_sends_no_state_and_commits_nothing() -> None:
    process = _process(fail_topic="t.seeds")
    assert not process.delivery.deliver([(o, _Record()) for o in OUTPUTS], [], {"tp": "offset"})
    sent = {e[1] for e in process.producers.producer.events if e[0] == "send"}
    assert sent == {"t.seeds"} and ("commit",) not in process.producers.producer.events
    assert not any(e[0] == "seek" for e in process.producers.producer.events)  # no rewind: the caller holds the batch


class _PausingConsumer(_Consumer):
    def __init__(self, events: list[tuple[Any, ...]]) -> None:
        super().__init__(events)
        self.assigned = {"tp0", "tp1"}
        self.paused_parts: set[str] = set()

    def assignment(self) -> set[str]:
        return set(self.assigned)

    def paused(self) -> set[str]:
        return set(self.paused_parts)

    def pause(self, *parts: str) -> None:
        self.paused_parts |= set(parts)

    def resume(self, *parts: str) -> None:
        self.paused_parts -= set(parts)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        assert self.paused_parts >= self.assigned, "polled for records while a batch was held"
        self.events.append(("poll",))
        return {}


def test_a_failed_batch_is_delivered_again_as_it_was_with_input_paused() -> None:
    """The core already applied the batch: the same outputs are resent, the records are not handled again."""
    process = _process(fail_topic="t.seeds")
    process.intake.consumer = _PausingConsumer(process.producers.producer.events)
    pairs = [(o, _Record()) for o in OUTPUTS]
    assert not process.delivery.deliver(pairs, [], {"tp": "offset"})
    process.intake.hold(HeldBatch(pairs, [], {"tp": "offset"}))
    assert process.intake.consumer.paused_parts == {"tp0", "tp1"}
    process.intake.redeliver(process.delivery)  # still failing: held, still paused
    assert process.intake.held is not None and process.intake.consumer.paused_parts == {"tp0", "tp1"}
    process.producers.producer.fail_topic = None
    process.producers.producer.events.clear()
    process.intake.redeliver(process.delivery)
    assert process.intake.held is None and process.intake.consumer.paused_parts == set()
    events = [e[:2] if e[0] == "send" else e for e in process.producers.producer.events]
    assert events == [
        ("poll",), ("send", "t.seeds"), ("send", "t.seeds"), ("flush",),
        ("send", "t.mutator-state"), ("send", "t.elites"), ("send", "t.elites"), ("send", "t.elites"), ("flush",),
        ("commit",),
    ]


def test_a_producer_whose_deliveries_keep_timing_out_is_replaced() -> None:
    process = _process(fail_topic="t.seeds")
    wedged = process.producers.producer
    fresh = _Producer()
    process.producers.new = lambda: fresh  # type: ignore[method-assign]
    pairs = [(o, _Record()) for o in OUTPUTS]
    assert not process.delivery.deliver(pairs, [], {"tp": "offset"})
    assert process.producers.producer is wedged  # one failure: could be the broker, keep it
    assert not process.delivery.deliver(pairs, [], {"tp": "offset"})
    assert process.producers.producer is fresh and process.metrics.snapshot({}).counters["producer_replacements"] == 1
    assert process.delivery.deliver(pairs, [], {"tp": "offset"})  # the fresh producer delivers
    assert ("commit",) in process.intake.consumer.events or ("commit",) in fresh.events


def test_no_replacement_while_no_broker_answers_a_new_producer() -> None:
    process = _process(fail_topic="t.seeds")
    wedged = process.producers.producer

    def _unreachable() -> None:
        from sparq_stream.errors import BrokerUnavailable

        raise BrokerUnavailable("no Kafka broker answered at localhost:1")

    process.producers.new = _unreachable  # type: ignore[method-assign]
    for _ in range(3):
        assert not process.delivery.deliver([(o, _Record()) for o in OUTPUTS], [], {"tp": "offset"})
    assert process.producers.producer is wedged


class _Rebalancing(_Consumer):
    def commit(self, offsets: Any, timeout_ms: int | None = None) -> None:
        from kafka.errors import RebalanceInProgressError

        self.events.append(("commit",))
        raise RebalanceInProgressError("the group is rebalancing")


def test_a_commit_refused_during_a_rebalance_does_not_resend_the_acknowledged_outputs() -> None:
    process = _process()
    process.intake.consumer = _Rebalancing(process.producers.producer.events)
    assert process.delivery.deliver([(o, _Record()) for o in OUTPUTS[1:2]], [], {"tp": "offset"})  # delivered: not held
    assert [e[0] for e in process.producers.producer.events] == ["send", "flush", "commit"]
    assert process.metrics.counters["commit_failures"] == 1 and process.delivery._failed_deliveries == 0
    assert process.metrics.counters["produced"] == 1  # acknowledged: counted as any delivered output
