"""One runner interface and one set of output rules for the Kafka wrapper and the in-memory bus."""

from __future__ import annotations

from sparq_stream.bus.outputs import fanout_copies, send_phases
from sparq_stream.bus.process import ServiceProcess
from sparq_stream.bus.runner import Runner
from sparq_stream.core import EVERY_PARTITION, FANOUT_HEADER, BaseCore, Core, Outgoing, fanout_of
from sparq_stream.messages import Seed
from sparq_stream.orchestrator.local import LocalBus
from sparq_stream.settings import ServiceSettings
from tests.unit.test_bus_process_phases import OUTPUTS  # the wrapper's send phases are tested with these


def test_both_runners_implement_the_runner_interface() -> None:
    wrapper = ServiceProcess(BaseCore(), ServiceSettings(bootstrap="localhost:1", prefix="t"), install_signals=False)
    assert isinstance(wrapper, Runner) and isinstance(LocalBus([]), Runner)


def test_after_outputs_go_last_in_their_order() -> None:
    first, last = send_phases(OUTPUTS, lambda o: o.after)
    assert [o.topic for o in first] == ["seeds", "seeds"] and [o.topic for o in last] == ["mutator-state", "elites"]


def test_an_every_partition_output_is_copied_to_each_partition_with_its_label() -> None:
    assert fanout_copies(None, (0, 1, 2)) == [(None, ())] and fanout_copies(2, (0, 1, 2)) == [(2, ())]
    copies = fanout_copies(EVERY_PARTITION, (0, 1, 2))
    assert [p for p, _ in copies] == [0, 1, 2] and [h for _, h in copies][1] == ((FANOUT_HEADER, b"1/3"),)


def test_the_in_memory_bus_places_outputs_by_the_same_rules() -> None:
    bus = LocalBus([])
    bus.publish(OUTPUTS)
    assert [r.message.id for r in bus.logs["seeds"]] == ["a", "b"]
    (marker,) = bus.logs["elites"]
    assert marker.headers == ((FANOUT_HEADER, b"0/1"),)
    assert fanout_of(bus._pending(0, "elites")[0]) == (0, 1)


class _Counter(BaseCore):
    """A bounded source: emits three seeds, one per tick, then is done."""

    name = "counter"

    def __init__(self) -> None:
        self.n = 0

    @property
    def done(self) -> bool:
        return self.n >= 3

    def tick(self, now: float) -> list[Outgoing]:
        if self.done:
            return []
        self.n += 1
        return [Outgoing("seeds", Seed(id=str(self.n), problem=f"p{self.n}", answer="1"))]


def test_the_in_memory_bus_runs_until_done_or_stopped() -> None:
    core = _Counter()
    assert isinstance(core, Core) and not BaseCore().done
    bus = LocalBus([core])
    assert bus.run(lambda: core.done, idle_sleep_s=0) == 0 and len(bus.logs["seeds"]) == 3
    stopped = LocalBus([_Counter()])
    stopped.stop()
    assert stopped.run(lambda: False) == 0 and not stopped.logs["seeds"]  # stopped before its first step
