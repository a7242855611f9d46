"""Mutator replicas share each step's parents: replica 0 plans, every replica generates its share,
replica 0 opens the next step once every share is accounted for and W shows the results; the run
equals one mutator's, whatever the order in which the replicas tick and the records arrive."""

from __future__ import annotations

import random

import pytest

from sparq_stream.core import Inbound, Outgoing
from sparq_stream.cores.mutator import MutatorConfig, MutatorCore
from sparq_stream.errors import ConfigError
from sparq_stream.messages import MutatorState, SolveResult
from sparq_stream.skills import annotate_seeds, load_vocabulary

from tests.unit.test_core_mutator import SEEDS, FakeClock, Loop, key, make


class ReplicaLoop(Loop):
    """The in-memory loop of ``test_core_mutator`` with ``replicas`` mutators sharing the steps.

    Each round the replicas tick in a shuffled order; their changelog records (states, plans)
    reach every replica in bursts, every ``lag + 1`` rounds, interleaved at random (each key in its
    own order); every replica reads every
    outcome and every elites record (each has a consumer group of its own).
    """

    def __init__(self, variant: str, replicas: int, *, lag: int = 0, shuffle: int = 0, **config) -> None:
        super().__init__(variant, **config)
        base = self.mutator.config
        self.mutators = [
            MutatorCore(base.model_copy(update={"replica_count": replicas, "replica_index": i}), backend=self.backend, clock=FakeClock())
            for i in range(replicas)
        ]
        seeds = annotate_seeds(SEEDS, self.backend, load_vocabulary())  # as the one mutator's W holds them
        for core in self.mutators:
            for seed in seeds:
                core.on_table(Inbound("seeds", seed.id, seed))
        self.replica_lag = lag
        self.order = random.Random(shuffle)
        self.changelog: list[Outgoing] = []

    def run(self, rounds: int = 400) -> None:
        pending: list[list[Outgoing]] = []
        for _ in range(rounds):
            outs: list[Outgoing] = []
            for core in self.order.sample(self.mutators, len(self.mutators)):
                outs += core.tick(0.0)
            states = [o for o in outs if o.topic == "mutator-state"]
            assert all(isinstance(o.message, MutatorState) and o.after for o in states)
            self.changelog += states
            pending.append(states)
            back, records = self.downstream([o for o in outs if o.topic == "candidates"])
            for core in self.mutators:
                core.handle_batch(list(back))
                for record in records:
                    core.on_table(record)
            if len(pending) > self.replica_lag:  # every lag + 1 rounds, all at once: a table poll may bring several
                arrived = self._interleave([record for batch in pending for record in batch])
                pending.clear()
                for record in arrived:
                    for core in self.mutators:
                        core.on_table(Inbound("mutator-state", record.key, record.message))
            if all(core.done for core in self.mutators) and not any(pending):
                break
        assert all(core.done for core in self.mutators), [core.metrics() for core in self.mutators]


    def _interleave(self, records: list[Outgoing]) -> list[Outgoing]:
        """A random merge of the records that keeps each key's own order (one key, one partition)."""
        queues: dict[str, list[Outgoing]] = {}
        for record in records:
            queues.setdefault(str(record.key), []).append(record)
        out: list[Outgoing] = []
        while queues:
            key = self.order.choice(sorted(queues))
            out.append(queues[key].pop(0))
            if not queues[key]:
                del queues[key]
        return out


def _w(loop: Loop) -> dict:
    return {slot: (e.id, e.quality, e.niche) for slot, e in loop.archivist.elites().items()}


def _by_step(candidates) -> list:
    return sorted(key(c) for c in candidates)


@pytest.mark.parametrize("variant", ["static-uniform", "dynamic-uniform", "qd"])
@pytest.mark.parametrize("replicas,lag,shuffle", [(2, 0, 0), (2, 2, 1), (3, 1, 2)])
def test_replicas_give_the_result_of_one_mutator(variant: str, replicas: int, lag: int, shuffle: int) -> None:
    one = Loop(variant, steps=4)
    one.run()
    many = ReplicaLoop(variant, replicas, lag=lag, shuffle=shuffle, steps=4)
    many.run()
    assert _by_step(many.candidates) == _by_step(one.candidates)
    assert sorted(r.id for r in many.archive) == sorted(r.id for r in one.archive)
    assert _w(many) == _w(one)  # novelty scores depend on arrival order within a step, as with any two processes
    shares = [core.emitted for core in many.mutators]
    assert sum(shares) == len(one.candidates) == 32 and all(n > 0 for n in shares), shares
    assert [core.step for core in many.mutators] == [4] * replicas
    plans = [o.message for o in many.changelog if o.key == "mutator.plan"]
    assert [p.open_step for p in plans] == [0, 1, 2, 3, None]  # one plan per step, then the end
    if variant != "static-uniform":
        elite_ids = {r.id for r in one.archive}
        assert any(p in elite_ids for c in many.candidates for p in c.parent_ids)


def test_the_leader_waits_for_every_share_and_the_others_for_its_plan() -> None:
    leader, other = (make(batch_size=4, replica_count=2, replica_index=i, steps=2) for i in (0, 1))
    assert other.tick(0.0) == []  # no plan yet
    opened = leader.tick(0.0)
    assert [o.key for o in opened] == ["mutator.plan", "mutator.0"]
    plan = opened[0].message
    assert plan.open_step == 0 and sum(plan.queue_n) == 4
    for record in opened:
        other.on_table(Inbound("mutator-state", record.key, record.message))
    started = other.tick(0.0)
    assert [o.key for o in started] == ["mutator.1"] and started[0].message.open_step == 0
    mine = [o.message for o in leader.tick(0.0) if o.topic == "candidates"]
    theirs = [o.message for o in other.tick(0.0) if o.topic == "candidates"]
    assert len(mine) + len(theirs) == 4 and not {c.id for c in mine} & {c.id for c in theirs}
    leader.handle_batch([Inbound("solved", c.id, _solved(c)) for c in mine + theirs])
    assert all(o.topic == "mutator-state" and o.key == "mutator.0" for o in leader.tick(0.0))  # the other's share: no word yet
    other.handle_batch([Inbound("solved", c.id, _solved(c)) for c in mine + theirs])
    assert other.metrics()["peer_outcomes"] == len(mine)
    for record in other.tick(0.0):
        leader.on_table(Inbound("mutator-state", record.key, record.message))
    assert [o.key for o in leader.tick(0.0)] == ["mutator.plan", "mutator.0"]  # step 1 planned
    assert leader.group_member == "0" and other.group_member == "1"


def _solved(c) -> SolveResult:
    data = {k: getattr(c, k) for k in type(c).model_fields}
    return SolveResult(**data, k=4, rollouts_used=4, n_correct=4, solve_rate=1.0, quality=0.0)


def test_a_lost_plan_is_sent_again_after_a_restart_and_a_sent_one_is_followed() -> None:
    leader = make(batch_size=4, replica_count=2, replica_index=0, steps=2)
    plan, state = leader.tick(0.0)
    restarted = make(batch_size=4, replica_count=2, replica_index=0, steps=2, replay=[state])  # the plan never landed
    again = restarted.tick(0.0)
    assert again[0].key == "mutator.plan" and again[0].message.queue_parents == plan.message.queue_parents
    assert restarted.metrics()["plans_resent"] == 1
    # the plan landed, the state did not: the leader takes its share of that plan rather than drawing again
    follower = make(batch_size=4, replica_count=2, replica_index=0, steps=2, replay=[plan])
    outs = follower.tick(0.0)
    assert [o.key for o in outs] == ["mutator.0"] and outs[0].message.queue_parents == state.message.queue_parents


def test_replica_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="replica_index must be in 0..1"):
        MutatorConfig(replica_count=2, replica_index=2)
    with pytest.raises(ValueError, match="needs synchronous"):
        MutatorConfig(replica_count=2, synchronous=False)
    with pytest.raises(ValueError, match="max_candidates"):
        MutatorConfig(replica_count=2, max_candidates=10)
    with pytest.raises(ConfigError, match="another run"):
        core = make(replica_count=2, replica_index=1)
        alien = MutatorState(key="mutator.plan", variant="qd", seed=5, batch_size=64)
        core.on_table(Inbound("mutator-state", alien.key, alien))
        core.tick(0.0)


def test_each_replica_role_has_its_own_step_planner() -> None:
    from sparq_stream.cores.mutator.planners import FollowerPlanner, LeaderPlanner, LonePlanner, make_planner
    from sparq_stream.cores.mutator.replicas import ReplicaSet

    lone, leader, follower = (make_planner(ReplicaSet("m", n, i)) for n, i in ((1, 0), (3, 0), (3, 2)))
    assert isinstance(lone, LonePlanner) and isinstance(leader, LeaderPlanner) and isinstance(follower, FollowerPlanner)
    assert (lone.group_member, leader.group_member, follower.group_member) == (None, "0", "2")
    assert (lone.foreign_outcome, follower.foreign_outcome) == ("unknown_outcomes", "peer_outcomes")
    core = make(changelog=False, replica_count=3, replica_index=2, synchronous=True)
    core._waits = {0: {0: 5}}
    assert follower.settled(core, 0) and core._waits == {0: {0: 5}}  # the leader settles: the waits stay for it to read
