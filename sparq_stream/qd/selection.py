"""Selection policies C: how the mutator samples b parents from the working set W.

- :class:`UniformSelection`: every item equally likely.
- :class:`DiverseSelection`: every niche (skill-set) equally likely, then every item of
  the chosen niche equally likely, so a crowded niche gets no more parents than a lone one.

Draws are without replacement whenever the pool allows it (``b <= len(items)`` for
uniform; ``b <= number of niches`` for the niches of diverse, and per niche when it is
drawn no more often than it has items), and with replacement otherwise: a batch larger
than the pool repeats parents rather than coming up short. An empty pool gives ``[]``.

Both accept a seeded ``numpy.random.Generator`` or ``random.Random`` and are deterministic
for a fixed seed and a fixed item order (:class:`~sparq_stream.qd.working_set.WorkingSet`
hands its items over in a canonical order, so a rebuilt W samples the same parents).
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np

from sparq_stream.errors import ConfigError
from sparq_stream.descriptors import niche_of

__all__ = [
    "Rng",
    "make_rng",
    "SelectionPolicy",
    "UniformSelection",
    "DiverseSelection",
    "SELECTIONS",
    "make_selection",
]

T = TypeVar("T")
#: A random source the policies accept.
Rng = np.random.Generator | random.Random


def make_rng(seed: int | None) -> np.random.Generator:
    """Return a numpy Generator seeded with ``seed`` (the project's default random source)."""
    return np.random.default_rng(seed)


def _indices(rng: Rng, n: int, m: int) -> list[int]:
    """Draw m indices from range(n): without replacement if m <= n, else with replacement."""
    replace = m > n
    if isinstance(rng, np.random.Generator):
        return [int(i) for i in rng.choice(n, size=m, replace=replace)]
    if isinstance(rng, random.Random):
        return [rng.randrange(n) for _ in range(m)] if replace else rng.sample(range(n), m)
    raise TypeError(f"rng must be a numpy Generator or random.Random, got {type(rng).__name__}")


def _check_b(b: int) -> None:
    if isinstance(b, bool) or not isinstance(b, int) or b < 0:
        raise ConfigError(f"b (parents per batch) must be a non-negative integer, got {b!r}")


@runtime_checkable
class SelectionPolicy(Protocol):
    """A selection policy C: ``sample(items, b, rng)`` returns b parents."""

    name: str

    def sample(self, items: Sequence[T], b: int, rng: Rng) -> list[T]:
        """Return ``b`` items drawn from ``items`` (``[]`` when ``items`` is empty)."""
        ...


class UniformSelection:
    """Uniform over all items."""

    name = "uniform"

    def sample(self, items: Sequence[T], b: int, rng: Rng) -> list[T]:
        """Return ``b`` items drawn uniformly (distinct when ``b <= len(items)``)."""
        _check_b(b)
        if not items or b == 0:
            return []
        return [items[i] for i in _indices(rng, len(items), b)]

    def __repr__(self) -> str:
        return "UniformSelection()"


class DiverseSelection:
    """Uniform over niches, then uniform within the niche."""

    name = "diverse"

    def __init__(self, key: Callable[[Any], str] = niche_of) -> None:
        self.key = key

    def sample(self, items: Sequence[T], b: int, rng: Rng) -> list[T]:
        """Return ``b`` items: a niche drawn uniformly (sorted by key), then an item within it."""
        return self.sample_grouped(self.group(items), b, rng)

    def group(self, items: Iterable[T]) -> dict[str, list[T]]:
        """Return the items by niche, niches sorted, items in their given order."""
        groups: dict[str, list[T]] = {}
        for item in items:
            groups.setdefault(self.key(item), []).append(item)
        return {niche: groups[niche] for niche in sorted(groups)}

    def sample_grouped(self, groups: Mapping[str, Sequence[T]], b: int, rng: Rng) -> list[T]:
        """Like :meth:`sample`, from items already grouped by :meth:`group` (lets W cache the grouping)."""
        _check_b(b)
        niches = [niche for niche, members in groups.items() if members]
        if not niches or b == 0:
            return []
        draws = [niches[i] for i in _indices(rng, len(niches), b)]
        counts: dict[str, int] = {}
        for niche in draws:
            counts[niche] = counts.get(niche, 0) + 1
        picks: dict[str, list[T]] = {}
        for niche in niches:
            if niche in counts:
                members = groups[niche]
                picks[niche] = [members[i] for i in _indices(rng, len(members), counts[niche])]
        return [picks[niche].pop() for niche in draws]

    def __repr__(self) -> str:
        return "DiverseSelection()"


#: The selection policies by name.
SELECTIONS: dict[str, type[UniformSelection] | type[DiverseSelection]] = {
    "uniform": UniformSelection,
    "diverse": DiverseSelection,
}


def make_selection(name: str) -> SelectionPolicy:
    """Return the selection policy called ``name`` (``uniform`` or ``diverse``)."""
    try:
        return SELECTIONS[name]()
    except KeyError:
        raise ConfigError(f"selection must be one of {', '.join(SELECTIONS)}; got {name!r}") from None
