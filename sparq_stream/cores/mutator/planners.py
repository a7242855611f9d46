"""How a mutator opens and settles its steps, one planner per replica role.

- :class:`LonePlanner`: a lone mutator draws each step's parents from W and settles the step
  on its own results.
- :class:`LeaderPlanner`: replica 0 of several draws each step, publishes it as the plan
  before any child exists, re-sends a plan lost in a crash, ends the run with an end plan,
  and settles a step once every replica's share is accounted for and W shows all results.
- :class:`FollowerPlanner`: another replica opens the step the plan names with its share,
  and leaves settling to the leader.

The core calls the planner where its behaviour differs by role; a planner reads and sets the
core's step bookkeeping (it is the core's own policy, split out by role).
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from sparq_stream.core import Outgoing
from sparq_stream.cores.mutator.replicas import ReplicaSet
from sparq_stream.cores.mutator.state import MutatorSnapshot, StepState, Unit
from sparq_stream.errors import ConfigError
from sparq_stream.messages import Elite, MutatorState, Seed

__all__ = ["FollowerPlanner", "LeaderPlanner", "LonePlanner", "MutatorCore", "StepPlanner", "make_planner", "units_of"]


class MutatorCore(Protocol):
    """The step bookkeeping a planner reads and sets (the mutator core provides it)."""

    counters: Counter[str]
    _step: int
    _open: StepState | None
    _waits: dict[int, dict[int, int]]
    _live: bool

    def exhausted(self) -> bool:
        """True once the core will emit nothing more."""

    def _budget_spent(self) -> bool: ...

    def _draw(self, step: int) -> list[Seed | Elite]: ...

    def _open_drawn_step(self) -> bool: ...

    def _adopt_plan(self) -> bool: ...

    def _plan_output(self) -> Outgoing: ...

    def _state_output(self) -> Outgoing: ...

    def _read_shared(self, message: MutatorState) -> MutatorSnapshot | None: ...

    def _results_shown(self, number: int, need: dict[int, int] | None) -> bool: ...


class StepPlanner:
    """The lone mutator's behaviour; the replica roles override what differs."""

    #: A replica reads every outcome (a consumer group of its own) and waits on table records.
    replicated = False
    #: The counter of an outcome that is not of this mutator's candidates.
    foreign_outcome = "unknown_outcomes"

    def __init__(self, replicas: ReplicaSet) -> None:
        self.replicas = replicas

    @property
    def group_member(self) -> str | None:
        """The suffix of this replica's own consumer group (None: the service's group)."""
        return str(self.replicas.index) if self.replicated else None

    def exhausted(self, core: MutatorCore) -> bool:
        """True once nothing more will be emitted: by the core's own budget."""
        return core._budget_spent()

    def on_plan(self, core: MutatorCore, message: MutatorState) -> None:
        """A plan record on the changelog (none concern a lone mutator)."""

    def before_emit(self, core: MutatorCore) -> list[Outgoing] | None:
        """Outputs that must go alone before this tick generates anything (None: generate)."""
        return None

    def after_emit(self, core: MutatorCore) -> None:
        """Bookkeeping after this tick's chunks (the leader's end of the run)."""

    def open_step(self, core: MutatorCore) -> bool:
        """Open the next step (its parents drawn from W); return True if one is open."""
        return core._open_drawn_step()

    def planned(self, number: int) -> bool:
        """True when step ``number`` was planned already (its parents are not drawn again)."""
        return False

    def opened(self, number: int, units: list[Unit]) -> None:
        """Step ``number`` was drawn with these parent units (all replicas' shares)."""

    def settled(self, core: MutatorCore, number: int) -> bool:
        """Step ``number`` (its credits all back) is settled once W shows its results."""
        return core._results_shown(number, core._waits.get(number))


class LonePlanner(StepPlanner):
    """A mutator without replicas."""


class LeaderPlanner(StepPlanner):
    """Replica 0: draws each step for all replicas and publishes the plan."""

    replicated = True
    foreign_outcome = "peer_outcomes"

    def __init__(self, replicas: ReplicaSet) -> None:
        super().__init__(replicas)
        self._replan_checked = False

    def on_plan(self, core: MutatorCore, message: MutatorState) -> None:
        """The leader's own plan coming back once live; before that, the plan it restores."""
        if core._live:
            core.counters["state_echoes"] += 1
        else:
            self.replicas.plan = core._read_shared(message)

    def before_emit(self, core: MutatorCore) -> list[Outgoing] | None:
        """On the first tick after a restart, a plan lost in a crash goes out first, with the state."""
        if self._replan_checked:
            return None
        self._replan_checked = True
        if self._replan(core):  # the plan first: no child of the step before it is delivered
            return [core._plan_output(), core._state_output()]
        return None

    def _replan(self, core: MutatorCore) -> bool:
        """After a restart: the leader's open step whose plan never reached the topic is planned again.

        The plan and the leader's state go out in one tick; a crash between the two sends can
        leave the state alone. No child of that step exists then (the leader generates only
        after that tick is delivered, the others need the plan), so W is unchanged and the same
        draw gives the same parents: checked against the leader's own share before sending.
        """
        opened, plan = core._open, self.replicas.plan
        if opened is None or not opened.queue or (plan is not None and plan.open is not None and plan.open.number >= opened.number):
            return False
        units = units_of(core._draw(opened.number))
        if [(u.parent.id, u.n, u.offset) for u in self.replicas.share(units)] != [(u.parent.id, u.n, u.offset) for u in opened.queue]:
            raise ConfigError(f"step {opened.number}: its plan is missing and W no longer gives the same parents; start a new run (new prefix)")
        core.counters["plans_resent"] += 1
        self.replicas.publish(opened.number + 1, StepState(opened.number, units))
        return True

    def after_emit(self, core: MutatorCore) -> None:
        """The leader's budget is spent: tell the other replicas that no step follows (once).

        Only once every replica has opened the last step: the plan is one record on a compacted
        topic, and a replica that read the end before the last step's plan would skip that step.
        """
        plan = self.replicas.plan
        if not core.exhausted or (plan is not None and plan.open is None and plan.step == core._step):
            return
        if self.replicas.all_opened(core._step):
            self.replicas.publish(core._step)

    def planned(self, number: int) -> bool:
        """Planned before a restart: the other replicas may hold its parents already."""
        return self.replicas.planned(number)

    def opened(self, number: int, units: list[Unit]) -> None:
        """The plan goes out with this tick's state, before any child of the step."""
        self.replicas.publish(number + 1, StepState(number, units))

    def settled(self, core: MutatorCore, number: int) -> bool:
        """Once every other replica has generated its share and holds no credit of the step, W shows all results."""
        if not self.replicas.peers_done(number):
            return False
        return core._results_shown(number, self.replicas.waits_of(number, core._waits.get(number)))


class FollowerPlanner(StepPlanner):
    """Replica i > 0: opens the steps the leader plans, with every N-th parent unit from i."""

    replicated = True
    foreign_outcome = "peer_outcomes"

    def exhausted(self, core: MutatorCore) -> bool:
        """The leader's plan says when the run ends."""
        return self.replicas.ended(core._step) and not (core._open is not None and core._open.queue)

    def on_plan(self, core: MutatorCore, message: MutatorState) -> None:
        """The newest plan: the next step to open, or the end of the run."""
        self.replicas.plan = core._read_shared(message)

    def open_step(self, core: MutatorCore) -> bool:
        """Open the step the leader planned next."""
        return core._adopt_plan()

    def settled(self, core: MutatorCore, number: int) -> bool:
        """At once: the leader settles the step; the waits stay in the state for it to read."""
        return True


def make_planner(replicas: ReplicaSet) -> StepPlanner:
    """The planner of this replica's role: lone, leader or follower."""
    if not replicas.replicated:
        return LonePlanner(replicas)
    return LeaderPlanner(replicas) if replicas.leader else FollowerPlanner(replicas)


def units_of(parents: list[Seed | Elite]) -> list[Unit]:
    """Group a step's parents by id (first appearance order): a parent drawn k times gets n = k."""
    counts: dict[str, int] = {}
    first: dict[str, Seed | Elite] = {}
    for parent in parents:
        counts[parent.id] = counts.get(parent.id, 0) + 1
        first.setdefault(parent.id, parent)
    return [Unit(first[pid], counts[pid], 0) for pid in counts]
