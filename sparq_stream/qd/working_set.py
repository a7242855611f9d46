"""The working set W: seeds plus the children the update policy keeps, mirrored as slots.

W holds the seeds (for selection only: they come from the seeds topic and are never
written as elites) and the elites, keyed by slot. :meth:`WorkingSet.offer` applies the
update policy U to one scored child and returns the :class:`~sparq_stream.qd.update.Update`
to produce on the compacted elites topic; :meth:`WorkingSet.restore` applies one record of
that topic (``None`` is a tombstone), so replaying the topic rebuilds W exactly.

Rules, for every variant:

- only children with quality > 0 may enter W (and only in the dynamic variants);
- a problem id already in W (or a seed's id) is ignored, so a redelivered result
  changes nothing; because members are ranked by a strict total order and groups never
  shrink under :meth:`offer`, offering any result a second time is a no-op;
- the same offers in the same order give the same W; W after a set of offers does not
  even depend on their order (each group keeps the best ``cap`` it was offered), as long
  as each problem id is offered with one quality.

After replaying a topic written by a crashed run (a write may have landed without its
tombstone) or by a run with other settings, call :meth:`WorkingSet.reconcile`: it re-applies
the policy to what was restored and returns the records that bring the topic in line.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Iterable

from sparq_stream.errors import ConfigError
from sparq_stream.messages import Elite, Seed, SolveResult
from sparq_stream.descriptors import niche_of, parse_niche
from sparq_stream.qd.selection import DiverseSelection, Rng, SelectionPolicy, UniformSelection
from sparq_stream.qd.update import (
    DEFAULT_NICHE_CAP,
    DEFAULT_TOP_CAP,
    NicheCapUpdate,
    StaticUpdate,
    TopTUpdate,
    Update,
    UpdatePolicy,
    rank_key,
)

__all__ = ["VARIANTS", "VariantSpec", "variant_spec", "WorkingSet", "make_working_set"]

log = logging.getLogger(__name__)

_RESULT_FIELDS = tuple(SolveResult.model_fields)


@dataclass(frozen=True)
class VariantSpec:
    """One of the four SPARQ variants: whether W grows, how it is capped and how parents are drawn."""

    name: str
    dynamic: bool
    per_niche: bool
    selection: str
    default_cap: int


#: The four variants, by name.
VARIANTS: dict[str, VariantSpec] = {
    "static-uniform": VariantSpec("static-uniform", False, False, "uniform", 0),
    "static-diverse": VariantSpec("static-diverse", False, True, "diverse", 0),
    "dynamic-uniform": VariantSpec("dynamic-uniform", True, False, "uniform", DEFAULT_TOP_CAP),
    "qd": VariantSpec("qd", True, True, "diverse", DEFAULT_NICHE_CAP),
}


def variant_spec(name: str) -> VariantSpec:
    """Return the spec of variant ``name``; an unknown name raises ConfigError naming the field."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}; got {name!r}") from None


class WorkingSet:
    """The working set W of one variant: seeds, elites by slot, selection and update policies."""

    def __init__(self, update: UpdatePolicy, selection: SelectionPolicy, *, variant: str = "") -> None:
        self.update_policy = update
        self.selection = selection
        self.variant = variant or f"{update.name}-{selection.name}"
        self._seeds: dict[str, Seed] = {}
        self._seed_niches: dict[str, str] = {}
        self._elites: dict[str, Elite] = {}
        self._id_count: dict[str, int] = {}
        self._groups: dict[str, list[tuple[tuple[float, str], str]]] = {}
        self._items: list[Seed | Elite] | None = None
        self._grouped: dict[str, list[Seed | Elite]] | None = None

    # ----------------------------------------------------------------- seeds
    def add_seed(self, seed: Seed) -> bool:
        """Add a seed (selection only; never written as an elite); False if its id is present."""
        if seed.id in self._seeds:
            return False
        self._seed_niches[seed.id] = niche_of(seed)
        self._seeds[seed.id] = seed
        self._changed()
        return True

    def add_seeds(self, seeds: Iterable[Seed]) -> int:
        """Add seeds; return how many were new."""
        return sum(self.add_seed(seed) for seed in seeds)

    # ----------------------------------------------------------------- offers
    def offer(self, result: SolveResult, step: int | None = None, *, solved_at: tuple[int, int] | None = None) -> Update:
        """Apply the update policy to one scored child; return the slots written and deleted.

        ``step`` becomes the elite's ``inserted_step`` (default: the result's ``step``, or the
        ``inserted_step`` it already has when an Elite is offered). ``solved_at``: the
        (partition, offset) of the ``solved`` record it came from, kept on the elite for lineage
        (default: what an offered Elite already names, else unknown).
        """
        policy = self.update_policy
        if not policy.dynamic or not result.quality > 0.0:
            return Update()
        if result.id in self._id_count or result.id in self._seeds:
            return Update()
        niche = niche_of(result)
        parse_niche(niche)  # only canonical niche keys may become slots
        members = self._groups.get(policy.group(niche), [])
        key = rank_key(result.quality, result.id)
        evicted: list[str] = []
        if len(members) >= policy.cap:
            if not key < members[-1][0]:
                return Update()
            evicted = [slot for _, slot in members[policy.cap - 1 :]]
        slot = policy.slot(niche, result.id)
        if step is None:
            step = result.inserted_step if isinstance(result, Elite) else result.step
        data = {name: getattr(result, name) for name in _RESULT_FIELDS}
        data["niche"] = niche
        if solved_at is not None:
            data["solved_partition"], data["solved_offset"] = solved_at
        elif isinstance(result, Elite):
            data["solved_partition"], data["solved_offset"] = result.solved_partition, result.solved_offset
        elite = Elite(**data, slot=slot, inserted_step=step)
        for old in evicted:
            self._remove(old)
        if slot in self._elites:
            self._remove(slot)
        self._insert(slot, elite)
        return Update({slot: elite}, tuple(s for s in evicted if s != slot))

    def offer_many(self, results: Iterable[SolveResult], step: int | None = None) -> Update:
        """Offer results in order; return one update equivalent to all of theirs."""
        total = Update()
        for result in results:
            total = total.then(self.offer(result, step))
        return total

    # ----------------------------------------------------------------- replay
    def restore(self, slot: str, elite: Elite | None) -> None:
        """Apply one record of the elites topic: set ``slot`` to ``elite``, or delete it on None."""
        if slot in self._elites:
            self._remove(slot)
        if elite is None:
            return
        if elite.slot != slot:
            log.warning("elite %s restored at slot %r but names slot %r", elite.id, slot, elite.slot)
        self._insert(slot, elite)

    def reconcile(self) -> Update:
        """Re-apply the policy to the current elites (after a replay); return the records to fix the topic."""
        fresh = WorkingSet(self.update_policy, self.selection, variant=self.variant)
        fresh._seeds = dict(self._seeds)
        fresh._seed_niches = dict(self._seed_niches)
        ordered = sorted(self._elites.items(), key=lambda kv: (rank_key(kv[1].quality, kv[1].id), kv[0]))
        for _, elite in ordered:
            fresh.offer(elite)
        wanted = fresh._elites
        deleted = tuple(sorted(slot for slot in self._elites if slot not in wanted))
        written = {slot: e for slot, e in sorted(wanted.items()) if self._elites.get(slot) != e}
        for slot in deleted:
            self.restore(slot, None)
        for slot, elite in written.items():
            self.restore(slot, elite)
        if deleted or written:
            log.info("reconcile: %d slot(s) rewritten, %d deleted", len(written), len(deleted))
        return Update(written, deleted)

    # ----------------------------------------------------------------- selection and views
    def sample(self, b: int, rng: Rng) -> list[Seed | Elite]:
        """Draw ``b`` parents from W with the selection policy."""
        if isinstance(self.selection, DiverseSelection):
            if self._grouped is None:
                self._grouped = self.selection.group(self._canonical())
            return self.selection.sample_grouped(self._grouped, b, rng)
        return self.selection.sample(self._canonical(), b, rng)

    def items(self) -> list[Seed | Elite]:
        """Return every member in canonical order: seeds by id, then elites by slot."""
        return list(self._canonical())

    def elites(self) -> dict[str, Elite]:
        """Return a copy of the elites by slot (what the compacted topic holds)."""
        return dict(self._elites)

    def seeds(self) -> list[Seed]:
        """Return the seeds in id order."""
        return [self._seeds[i] for i in sorted(self._seeds)]

    def group_sizes(self) -> dict[str, int]:
        """Return the number of elites per group (the unit the cap applies to)."""
        return {g: len(m) for g, m in sorted(self._groups.items())}

    def niches(self) -> set[str]:
        """Return the niches W covers, seeds included."""
        return set(self._seed_niches.values()) | {niche_of(e) for e in self._elites.values()}

    def __contains__(self, problem_id: object) -> bool:
        return problem_id in self._id_count or problem_id in self._seeds

    def __len__(self) -> int:
        return len(self._seeds) + len(self._elites)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WorkingSet):
            return NotImplemented
        return (
            self.update_policy == other.update_policy
            and self._seeds == other._seeds
            and self._elites == other._elites
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"WorkingSet({self.variant!r}, seeds={len(self._seeds)}, elites={len(self._elites)})"

    # ----------------------------------------------------------------- internals
    def _canonical(self) -> list[Seed | Elite]:
        if self._items is None:
            self._items = [self._seeds[i] for i in sorted(self._seeds)]
            self._items += [self._elites[s] for s in sorted(self._elites)]
        return self._items

    def _changed(self) -> None:
        self._items = None
        self._grouped = None

    def _insert(self, slot: str, elite: Elite) -> None:
        self._elites[slot] = elite
        self._id_count[elite.id] = self._id_count.get(elite.id, 0) + 1
        members = self._groups.setdefault(self.update_policy.group(niche_of(elite)), [])
        insort(members, (rank_key(elite.quality, elite.id), slot))
        self._changed()

    def _remove(self, slot: str) -> None:
        elite = self._elites.pop(slot)
        count = self._id_count[elite.id] - 1
        if count:
            self._id_count[elite.id] = count
        else:
            del self._id_count[elite.id]
        group = self.update_policy.group(niche_of(elite))
        members = self._groups[group]
        entry = (rank_key(elite.quality, elite.id), slot)
        del members[bisect_left(members, entry)]
        if not members:
            del self._groups[group]
        self._changed()


def make_working_set(variant: str = "qd", cap: int | None = None) -> WorkingSet:
    """Build W for a variant; ``cap`` overrides its default (ignored by the static variants)."""
    spec = variant_spec(variant)
    policy: UpdatePolicy
    if not spec.dynamic:
        policy = StaticUpdate()
    elif spec.per_niche:
        policy = NicheCapUpdate(spec.default_cap if cap is None else cap)
    else:
        policy = TopTUpdate(spec.default_cap if cap is None else cap)
    selection = DiverseSelection() if spec.selection == "diverse" else UniformSelection()
    return WorkingSet(policy, selection, variant=spec.name)
