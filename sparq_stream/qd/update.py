"""Update policies U and the changes they make to W, as compacted-topic records.

A policy decides which *group* a child competes in, how many members a group may hold
(its cap) and the *slot* (the key in the compacted elites topic) a member is written to:

- :class:`StaticUpdate`: children never enter W (the static variants).
- :class:`TopTUpdate`: one global group ``top`` holding the best ``cap`` children;
  slot ``top/<problem id>``.
- :class:`NicheCapUpdate`: one group per niche (skill-set) holding its best ``cap``
  children; slot ``<niche>`` when ``cap == 1`` (a replacement is one overwrite, no
  tombstone) and ``<niche>/<problem id>`` otherwise.

Slots name the member, never a position (no ``niche#i``): a member keeps its key for as
long as it stays in W and an evicted member gets a tombstone for exactly that key, so the
last value per key of the topic is always W itself.

Members are ranked by :func:`rank_key`: higher quality first, ties by the smaller problem
id. The order is strict and total, so the members of a group after any sequence of offers
are the best ``cap`` of everything offered to it, in whatever order it came.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from sparq_stream.errors import ConfigError
from sparq_stream.messages import Elite

__all__ = [
    "DEFAULT_TOP_CAP",
    "DEFAULT_NICHE_CAP",
    "TOP_GROUP",
    "Update",
    "rank_key",
    "UpdatePolicy",
    "StaticUpdate",
    "TopTUpdate",
    "NicheCapUpdate",
]

#: Default size of the dynamic-uniform working set (its global top-T of children).
DEFAULT_TOP_CAP = 1000
#: Default per-niche cap of the QD working set: the best problem of each skill-set.
DEFAULT_NICHE_CAP = 1
#: The single group of :class:`TopTUpdate`, and the prefix of its slots.
TOP_GROUP = "top"


def rank_key(quality: float, problem_id: str) -> tuple[float, str]:
    """Return the sort key of a member: smaller is better (higher quality, then smaller id)."""
    return (-quality, problem_id)


@dataclass(frozen=True)
class Update:
    """The records one change to W produces: slots written (slot -> Elite) and slots deleted."""

    written: dict[str, Elite] = field(default_factory=dict)
    deleted: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.written or self.deleted)

    def records(self) -> list[tuple[str, Elite | None]]:
        """Return the records to produce, tombstones (value None) first, then the writes."""
        return [(slot, None) for slot in self.deleted] + list(self.written.items())

    def then(self, later: Update) -> Update:
        """Return one update equivalent to applying this one and then ``later``."""
        written = dict(self.written)
        deleted = list(self.deleted)
        for slot in later.deleted:
            written.pop(slot, None)
            if slot not in deleted:
                deleted.append(slot)
        for slot, elite in later.written.items():
            if slot in deleted:
                deleted.remove(slot)
            written[slot] = elite
        return Update(written, tuple(deleted))


@runtime_checkable
class UpdatePolicy(Protocol):
    """An update policy U: whether children enter W, where they compete and where they are written."""

    name: str
    dynamic: bool
    cap: int

    def group(self, niche: str) -> str:
        """Return the group a member of ``niche`` competes in (the cap applies per group)."""
        ...

    def slot(self, niche: str, problem_id: str) -> str:
        """Return the compacted-topic key of a member."""
        ...


def _check_cap(cap: int) -> int:
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ConfigError(f"cap must be a positive integer, got {cap!r}")
    return cap


@dataclass(frozen=True)
class StaticUpdate:
    """Children never enter W: it holds the seeds only."""

    name: str = "static"
    dynamic: bool = False
    cap: int = 0

    def group(self, niche: str) -> str:
        """Every member (only ever restored, never offered) shares one group."""
        return TOP_GROUP

    def slot(self, niche: str, problem_id: str) -> str:
        """Static W writes nothing; a slot is still defined for restored members."""
        return f"{TOP_GROUP}/{problem_id}"


@dataclass(frozen=True)
class TopTUpdate:
    """Keep the best ``cap`` children overall, evicting the lowest ranked."""

    cap: int = DEFAULT_TOP_CAP
    name: str = "top"
    dynamic: bool = True

    def __post_init__(self) -> None:
        _check_cap(self.cap)

    def group(self, niche: str) -> str:
        """All children compete in one global group."""
        return TOP_GROUP

    def slot(self, niche: str, problem_id: str) -> str:
        """Return ``top/<problem id>``."""
        return f"{TOP_GROUP}/{problem_id}"


@dataclass(frozen=True)
class NicheCapUpdate:
    """Keep the best ``cap`` children of each niche, evicting the lowest ranked of that niche."""

    cap: int = DEFAULT_NICHE_CAP
    name: str = "niche"
    dynamic: bool = True

    def __post_init__(self) -> None:
        _check_cap(self.cap)

    def group(self, niche: str) -> str:
        """Children compete within their own niche."""
        return niche

    def slot(self, niche: str, problem_id: str) -> str:
        """Return ``<niche>`` when the cap is 1, else ``<niche>/<problem id>``."""
        return niche if self.cap == 1 else f"{niche}/{problem_id}"
