"""Mutator replicas: what one replica knows of the others, and the leader's plan of each step.

Replica 0 (the leader) samples each step's parents from W and publishes them as a *plan*: a
:class:`~sparq_stream.messages.MutatorState` under key ``<state_key>.plan`` on the compacted
``mutator-state`` topic, sent before any child of the step exists. Replica i takes every N-th
parent unit from i. Every replica keeps its own record under ``<state_key>.<i>`` (its share,
credits and the solved positions of its results), and reads the others' records and the plan
as a table. The leader opens the next step once every other replica's record shows the step's
share generated and accounted for, and the archivist's watermarks cover the union of all their
results (``merged_waits``). A plan is one record per key, so the leader replaces it only once
every replica has opened the planned step (the end-of-run plan, ``open`` None, included).
"""

from __future__ import annotations

from typing import Sequence

from sparq_stream.cores.mutator.state import MutatorSnapshot, StepState, Unit

__all__ = ["ReplicaSet", "merged_waits"]


class ReplicaSet:
    """One replica's view of the mutator replicas: its keys, the others' newest states, the plan."""

    def __init__(self, state_key: str, count: int, index: int) -> None:
        """Replica ``index`` of ``count`` sharing the changelog key ``state_key`` (count 1: a lone mutator)."""
        self.count, self.index = count, index
        self.replicated = count > 1
        self.leader = index == 0
        self.own_key = f"{state_key}.{index}" if self.replicated else state_key
        self.plan_key = f"{state_key}.plan"
        self.peer_keys = {f"{state_key}.{i}" for i in range(count)} - {self.own_key} if self.replicated else set()
        self.peers: dict[str, MutatorSnapshot] = {}
        self.plan: MutatorSnapshot | None = None  # the newest plan: a step's parents, or the end of the run
        self.pending: MutatorSnapshot | None = None  # a plan this (leading) replica is still to send

    def share(self, units: Sequence[Unit]) -> list[Unit]:
        """This replica's units of a step: every ``count``-th, from ``index`` (all of them when alone)."""
        return list(units[self.index :: self.count])

    def planned(self, number: int) -> bool:
        """True when the newest plan is the one of step ``number``."""
        return self.plan is not None and self.plan.open is not None and self.plan.open.number == number

    def ended(self, step: int) -> bool:
        """True when the newest plan says that no step follows the first ``step``."""
        return self.plan is not None and self.plan.open is None and self.plan.step <= step

    def publish(self, step: int, opened: StepState | None = None) -> None:
        """Plan step ``opened`` (all its units), or the end of the run after ``step`` steps when None."""
        self.plan = self.pending = MutatorSnapshot(step=step, open=opened)

    def peers_done(self, number: int) -> bool:
        """True once every other replica has opened step ``number``, generated its share and holds no credit of it."""
        for key in self.peer_keys:
            peer = self.peers.get(key)
            if peer is None or peer.step <= number:
                return False
            if peer.open is not None and peer.open.number == number and peer.open.queue:
                return False
            if any(credit.step == number for credit in peer.in_flight.values()):
                return False
        return True

    def all_opened(self, step: int) -> bool:
        """True once every other replica has opened the first ``step`` steps (the plan may be replaced)."""
        return all(key in self.peers and self.peers[key].step >= step for key in self.peer_keys)

    def waits_of(self, number: int, own: dict[int, int] | None) -> dict[int, int]:
        """The solved positions W must show before step ``number`` settles: ours and every other replica's."""
        return merged_waits([own or {}, *(peer.waits.get(number, {}) for peer in self.peers.values())])


def merged_waits(waits: Sequence[dict[int, int]]) -> dict[int, int]:
    """The furthest position per solved partition over several replicas' waits of one step."""
    out: dict[int, int] = {}
    for wait in waits:
        for partition, offset in wait.items():
            out[partition] = max(out.get(partition, 0), offset)
    return out
