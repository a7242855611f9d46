"""An in-memory bus: every core of the loop in one process, no Kafka.

It delivers each output to every core that consumes its topic (``inputs`` through
``handle_batch``, ``tables`` through ``on_table``), one core at a time in a fixed order,
until the mutator is done and nothing is left to deliver. It is the sequential reference
that the streaming run must reproduce exactly (the end-to-end tests compare the two), a
fast way to try settings without a broker, and what the loop benchmark uses to compare
variants at an equal budget.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from sparq_stream.bus.outputs import fanout_copies, send_phases
from sparq_stream.core import Core, Inbound, Outgoing
from sparq_stream.messages import Elite, Message

__all__ = ["LocalBus", "LocalResult", "build_local_cores", "run_local"]


@dataclass
class _Record:
    key: str | None
    message: Message | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class LocalBus:
    """Runs cores against in-memory topic logs (one partition per topic, offsets from 0).

    A :class:`~sparq_stream.bus.runner.Runner`, as the Kafka process wrapper is, placing outputs
    by the same rules (:mod:`sparq_stream.bus.outputs`).
    """

    cores: list[Core]
    max_batch: int = 500
    logs: dict[str, list[_Record]] = field(default_factory=lambda: defaultdict(list))
    _cursors: dict[tuple[int, str], int] = field(default_factory=lambda: defaultdict(int))
    _stop: threading.Event = field(default_factory=threading.Event)

    def publish(self, outputs: list[Outgoing]) -> None:
        """Append outputs to their topics' logs (``after`` ones last, as the wrapper acknowledges them)."""
        first, last = send_phases(outputs, lambda o: o.after)
        for out in first + last:
            for _partition, extra in fanout_copies(out.partition, (0,)):
                self.logs[out.topic].append(_Record(out.resolved_key(), out.message, out.headers + extra))

    def _pending(self, index: int, topic: str) -> list[Inbound]:
        log = self.logs.get(topic, [])
        start = self._cursors[(index, topic)]
        batch = [Inbound(topic, rec.key, rec.message, 0, off, 0, rec.headers) for off, rec in enumerate(log[start:], start)]
        return batch

    def step(self) -> bool:
        """Deliver everything pending to every core once and tick each; return True if anything moved."""
        moved = False
        for index, core in enumerate(self.cores):
            moved = self.step_core(index, core) or moved
        return moved

    def step_core(self, index: int, core: Core) -> bool:
        """Deliver what is pending to one core (tables, then inputs), tick it, publish; True if anything moved."""
        moved = self.deliver(index, core)
        before = sum(len(v) for v in self.logs.values())
        self.publish(core.tick(time.time()))
        return moved or sum(len(v) for v in self.logs.values()) > before

    def deliver(self, index: int, core: Core) -> bool:
        """Deliver the pending table records and input batches to one core; True if there were any."""
        moved = False
        for topic in core.tables:
            for item in self._pending(index, topic):
                self._cursors[(index, topic)] = item.offset + 1
                self.publish(core.on_table(item))
                moved = True
        for topic in core.inputs:
            pending = self._pending(index, topic)
            for start in range(0, len(pending), self.max_batch):
                batch = pending[start : start + self.max_batch]
                self._cursors[(index, topic)] = batch[-1].offset + 1
                for outs in core.handle_batch(batch):
                    self.publish(outs)
                moved = True
        return moved

    def restart(self, index: int, core: Core, committed: dict[str, int]) -> None:
        """Replace core ``index`` by a new process: tables read from the start, inputs from ``committed``."""
        old = self.cores[index]
        for topic in old.tables:
            self._cursors.pop((index, topic), None)
        for topic in old.inputs:
            self._cursors[(index, topic)] = committed.get(topic, 0)
        self.cores[index] = core

    def cursors(self, index: int, topics: tuple[str, ...]) -> dict[str, int]:
        """The next offset core ``index`` reads of each topic (what it would commit)."""
        return {topic: self._cursors[(index, topic)] for topic in topics}

    def run(self, until: Callable[[], bool] | None = None, idle_sleep_s: float = 0.01, timeout_s: float = 600.0) -> int:
        """Step until stopped, or until ``until()`` holds (None: at once) and nothing moves; return 0.

        Raises TimeoutError (not retriable: the loop is stuck or too slow) after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set():
            moved = self.step()
            if not moved and (until is None or until()):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the in-memory loop did not finish in time")
            if not moved:
                self._stop.wait(idle_sleep_s)
        return 0

    def stop(self) -> None:
        """End :meth:`run` after the step in flight (thread-safe)."""
        self._stop.set()

    def latest(self, topic: str) -> dict[str, Message]:
        """Last value per key of a topic (tombstones delete): a compacted view."""
        table: dict[str, Message] = {}
        for rec in self.logs.get(topic, []):
            if rec.message is None:
                table.pop(rec.key or "", None)
            else:
                table[rec.key or ""] = rec.message
        return table

    def close(self) -> None:
        """Close every core."""
        for core in self.cores:
            core.close()


def build_local_cores(settings: dict[str, Any], order: tuple[str, ...] = ("mutator", "novelty", "solver", "archivist", "trainer")) -> dict[str, Core]:
    """Build the loop's cores from the same settings objects that ``sparq up`` gives its services."""
    from sparq_stream.services import service_spec

    return {name: service_spec(name).factory(settings[name]) for name in order}


@dataclass
class LocalResult:
    """The outcome of an in-memory run: W as the elites table (watermarks left out), every scored child, drops, metrics."""

    elites: dict[str, Message]
    results: list[Message]
    drops: list[Message]
    metrics: dict[str, dict[str, float]]


def run_local(config: Any, timeout_s: float = 600.0) -> LocalResult:
    """Run the loop of an ``UpConfig`` in memory (same cores, same settings as ``sparq up``)."""
    from sparq_stream.orchestrator.up import load_seed_set, run_settings

    config.out.mkdir(parents=True, exist_ok=True)
    seeds, _bad = load_seed_set(config)
    cores = build_local_cores(run_settings(config, "local", "in-memory:0"))
    bus = LocalBus(list(cores.values()))
    bus.publish([Outgoing("seeds", s) for s in seeds])
    try:
        bus.run(lambda: cores["mutator"].done, timeout_s=timeout_s)
        return LocalResult(
            elites={slot: e for slot, e in bus.latest("elites").items() if isinstance(e, Elite)},
            results=[r.message for r in bus.logs.get("solved", []) if r.message is not None],
            drops=[r.message for r in bus.logs.get("drops", []) if r.message is not None],
            metrics={name: core.metrics() for name, core in cores.items()},
        )
    finally:
        bus.close()
