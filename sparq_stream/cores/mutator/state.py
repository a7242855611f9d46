"""The mutator's state as one changelog record, and its optional local cache file.

The state (step, emitted count, the open step's parents not yet mutated, the credits in
flight, and the solved positions each step's barrier waits for) is one
:class:`~sparq_stream.messages.MutatorState` on the compacted ``mutator-state`` topic,
keyed by the mutator's ``state_key``. The core emits it with ``after=True``, so the wrapper
sends it only once the candidates it accounts for are acknowledged (or in the same
transaction), and input offsets are committed only after it is acknowledged: the state
never runs ahead of the sends. A restarted mutator reads the topic as a table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sparq_stream.errors import ConfigError
from sparq_stream.messages import Elite, MutatorState, Seed, decode, encode

__all__ = ["Credit", "StepState", "Unit", "MutatorSnapshot", "read_cache", "write_cache"]

_CACHE_FILE = "mutator-state.msgpack"


@dataclass
class Unit:
    """One parent's share of a step: ``n`` children, the first at generation offset ``offset``."""

    parent: Seed | Elite
    n: int
    offset: int


@dataclass
class StepState:
    """The step being emitted: its number and the units not yet generated."""

    number: int
    queue: list[Unit]


@dataclass(frozen=True)
class Credit:
    """A candidate in flight: its step and emission time."""

    step: int
    at: float


@dataclass
class MutatorSnapshot:
    """Everything the mutator must restore to continue where it stopped."""

    step: int = 0
    emitted: int = 0
    open: StepState | None = None
    in_flight: dict[str, Credit] = field(default_factory=dict)
    waits: dict[int, dict[int, int]] = field(default_factory=dict)  # step -> solved partition -> next offset

    def to_message(self, key: str, fingerprint: dict[str, int | str]) -> MutatorState:
        """Return the changelog record of this state."""
        queue = self.open.queue if self.open is not None else []
        waits = [(s, p, o) for s, parts in sorted(self.waits.items()) for p, o in sorted(parts.items())]
        return MutatorState(
            key=key,
            variant=str(fingerprint["variant"]),
            seed=int(fingerprint["seed"]),
            batch_size=int(fingerprint["batch_size"]),
            step=self.step,
            emitted=self.emitted,
            open_step=None if self.open is None else self.open.number,
            queue_parents=[encode(u.parent) for u in queue],
            queue_n=[u.n for u in queue],
            queue_offset=[u.offset for u in queue],
            credit_ids=list(self.in_flight),
            credit_steps=[c.step for c in self.in_flight.values()],
            credit_at=[c.at for c in self.in_flight.values()],
            wait_steps=[w[0] for w in waits],
            wait_partitions=[w[1] for w in waits],
            wait_offsets=[w[2] for w in waits],
        )

    @classmethod
    def from_message(cls, state: MutatorState, fingerprint: dict[str, int | str]) -> MutatorSnapshot:
        """Rebuild the state from its record; a record of another run or a broken one raises ConfigError."""
        theirs = {"variant": state.variant, "seed": state.seed, "batch_size": state.batch_size}
        if theirs != fingerprint:
            raise ConfigError(
                f"the mutator state {state.key!r} belongs to another run ({theirs}, this one is {fingerprint}): "
                "use another topic prefix or state key"
            )
        if not (len(state.queue_parents) == len(state.queue_n) == len(state.queue_offset)) or not (
            len(state.credit_ids) == len(state.credit_steps) == len(state.credit_at)
        ) or not (len(state.wait_steps) == len(state.wait_partitions) == len(state.wait_offsets)):
            raise ConfigError(f"the mutator state {state.key!r} is inconsistent (parallel lists differ in length)")
        opened = None
        if state.open_step is not None:
            queue = [Unit(decode(p, (Seed, Elite)), n, o) for p, n, o in zip(state.queue_parents, state.queue_n, state.queue_offset)]
            opened = StepState(state.open_step, queue)
        waits: dict[int, dict[int, int]] = {}
        for s, p, o in zip(state.wait_steps, state.wait_partitions, state.wait_offsets):
            waits.setdefault(s, {})[p] = o
        return cls(
            step=state.step,
            emitted=state.emitted,
            open=opened,
            in_flight={cid: Credit(s, at) for cid, s, at in zip(state.credit_ids, state.credit_steps, state.credit_at)},
            waits=waits,
        )


def read_cache(folder: str | Path) -> MutatorState | None:
    """Return the state cached in ``folder``, or None when there is none (a broken file raises ConfigError)."""
    path = Path(folder) / _CACHE_FILE
    if not path.is_file():
        return None
    try:
        return decode(path.read_bytes(), MutatorState)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the mutator state cache {path}: {exc}") from None


def write_cache(folder: str | Path, state: MutatorState) -> None:
    """Write the state cache atomically (a cache only: the changelog topic is the state)."""
    path = Path(folder) / _CACHE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encode(state))
    os.replace(tmp, path)
