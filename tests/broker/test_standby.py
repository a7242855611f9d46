"""One active replica and a hot standby in one consumer group: only the active one handles input; the
standby follows the tables, and takes over, tables read to their end, when the active one stops."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from sparq_stream.bus import ServiceProcess, create_topics
from sparq_stream.core import Inbound, Outgoing
from sparq_stream.cores.relay import RelayCore
from sparq_stream.ids import problem_id
from sparq_stream.messages import Seed, encode
from sparq_stream.settings import ServiceSettings

from ._util import produce, read_all

pytestmark = [pytest.mark.broker, pytest.mark.slow]

N = 400


class _ExclusiveRelay(RelayCore):
    """A relay with one active replica that also follows the seeds as a table (and is slow enough to stop mid-run)."""

    exclusive = True

    def __init__(self) -> None:
        super().__init__("candidates", "novel")
        self.tables = ("seeds",)
        self.table_keys: set[str] = set()
        self.handled: list[str] = []
        self.ticks = 0
        self.roles: list[bool] = []

    def on_table(self, inbound: Inbound) -> list[Outgoing]:
        self.table_keys.add(str(inbound.key))
        return []

    def handle_batch(self, batch: Any) -> list[list[Outgoing]]:
        time.sleep(0.02)
        self.handled.extend(str(item.key) for item in batch)
        return super().handle_batch(batch)

    def tick(self, now: float) -> list[Outgoing]:
        self.ticks += 1
        return []

    def set_active(self, active: bool) -> None:
        self.roles.append(active)


def _items(tag: str, n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        text = f"{tag} problem {i}"
        seed = Seed(id=problem_id(text), problem=text, answer=str(i))
        out.append((seed.id.encode(), encode(seed)))
    return out


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_the_standby_handles_nothing_until_the_active_stops_then_takes_over_with_the_tables(
    broker: str, broker_name: str, prefix: str, group: str, guarantee: str
) -> None:
    if guarantee == "exactly_once" and broker_name != "kafka":
        pytest.skip("Tansu accepts transactions but does not honour them")
    settings = {"bootstrap": broker, "prefix": prefix, "group_id": group, "max_poll_records": 10, "metrics_interval_s": 0.5,
                "processing_guarantee": guarantee}
    create_topics(ServiceSettings(bootstrap=broker, prefix=prefix), partitions=3, logical=("seeds", "candidates", "novel", "metrics", "dlq"))
    produce(broker, f"{prefix}.seeds", _items("table", 20))
    cores = {name: _ExclusiveRelay() for name in ("r-0", "r-1")}
    procs = {name: ServiceProcess(core, ServiceSettings(instance=name, **settings), install_signals=False) for name, core in cores.items()}
    threads = {name: threading.Thread(target=p.run, daemon=True) for name, p in procs.items()}
    for thread in threads.values():
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(p.role.joined for p in procs.values()):
            time.sleep(0.1)
        items = _items("input", N)
        produce(broker, f"{prefix}.candidates", items)
        read_all(broker, f"{prefix}.novel", until=lambda recs: len(recs) >= N // 4, timeout_s=60)
        active = [n for n, p in procs.items() if p.role.active]
        assert len(active) == 1, "exactly one replica is active"
        first, standby = active[0], next(n for n in procs if n not in active)
        assert cores[standby].handled == [] and cores[standby].ticks == 0  # a standby handles and ticks nothing
        produce(broker, f"{prefix}.seeds", _items("late table", 5))  # written while it stands by
        procs[first].stop()  # the active one leaves the group
        threads[first].join(30)
        handled_by_first = len(cores[first].handled)
        assert handled_by_first < N, "the active replica finished before it stopped: nothing proved"
        wanted = {k for k, _ in items}
        isolation = "read_committed" if guarantee == "exactly_once" else "read_uncommitted"
        out = read_all(broker, f"{prefix}.novel", until=lambda recs: wanted <= {r.key for r in recs}, timeout_s=120,
                       isolation_level=isolation)
    finally:
        for p in procs.values():
            p.stop()
        for thread in threads.values():
            thread.join(30)
    assert wanted <= {r.key for r in out}
    assert cores[standby].handled and set(cores[first].handled) | set(cores[standby].handled) == {k.decode() for k in wanted}
    assert cores[standby].roles == [False, True] and cores[standby].ticks > 0
    assert len(cores[standby].table_keys) == 25  # it followed the table while standing by, the late records too
    assert procs[standby].metrics.counters["takeovers"] == 1
    assert procs[standby].role.transactional_id() == f"{group}.active" and procs[first].role.transactional_id() == f"{group}.active"
