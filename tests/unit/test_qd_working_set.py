"""The working set W and the update policies U, for the four variants."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from hypothesis import given, settings
from hypothesis import strategies as st

from sparq_stream.errors import ConfigError
from sparq_stream.messages import Elite, Seed, SolveResult
from sparq_stream.descriptors import DescriptorError, niche_key
from sparq_stream.qd.update import NicheCapUpdate, StaticUpdate, TopTUpdate, Update, rank_key
from sparq_stream.qd.working_set import VARIANTS, WorkingSet, make_working_set, variant_spec


def _result(pid: str, q: float, skills: tuple[str, ...] = ("algebra",), step: int = 0, niche: str = "") -> SolveResult:
    sr = 1.0 - q if q > 0 else 1.0
    return SolveResult(
        id=pid,
        problem=f"problem {pid}",
        solution="s",
        answer="1",
        skills=list(skills),
        niche=niche,
        k=16,
        rollouts_used=16,
        n_correct=round(sr * 16),
        solve_rate=sr,
        quality=q,
        step=step,
    )


SEEDS = [
    Seed(id="s1", problem="seed one", answer="1", skills=["algebra"]),
    Seed(id="s2", problem="seed two", answer="2", skills=["geometry"]),
]
SEQUENCE = [
    _result("c1", 0.5),
    _result("c2", 0.0),
    _result("c3", 0.75),
    _result("c4", 0.25, ("geometry",)),
    _result("c5", 0.75),  # ties c3; the smaller id (c3) ranks higher
    _result("c6", 0.875, ("algebra", "geometry")),
    _result("c1", 0.5),  # redelivered
]


def _run(w: WorkingSet) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Offer SEQUENCE; return (written slots, deleted slots) per offer."""
    w.add_seeds(SEEDS)
    out = []
    for r in SEQUENCE:
        u = w.offer(r)
        out.append((tuple(u.written), u.deleted))
    return out


def _ids(w: WorkingSet) -> dict[str, str]:
    return {slot: e.id for slot, e in w.elites().items()}


@pytest.mark.parametrize("variant", ["static-uniform", "static-diverse"])
def test_static_variants_hold_the_seeds_only(variant: str) -> None:
    w = make_working_set(variant)
    assert _run(w) == [((), ())] * len(SEQUENCE)
    assert w.elites() == {} and [x.id for x in w.items()] == ["s1", "s2"]


def test_dynamic_uniform_keeps_the_global_top_t() -> None:
    w = make_working_set("dynamic-uniform", cap=3)
    assert _run(w) == [
        (("top/c1",), ()),
        ((), ()),
        (("top/c3",), ()),
        (("top/c4",), ()),
        (("top/c5",), ("top/c4",)),
        (("top/c6",), ("top/c1",)),
        ((), ()),
    ]
    assert _ids(w) == {"top/c3": "c3", "top/c5": "c5", "top/c6": "c6"}
    assert [x.id for x in w.items()] == ["s1", "s2", "c3", "c5", "c6"]


def test_qd_default_keeps_the_best_per_niche_keyed_by_niche() -> None:
    w = make_working_set("qd")
    assert _run(w) == [
        (("algebra",), ()),
        ((), ()),
        (("algebra",), ()),  # c3 overwrites c1's slot: one record, no tombstone
        (("geometry",), ()),
        ((), ()),  # c5 ties c3 and loses on id
        (("algebra|geometry",), ()),
        ((), ()),
    ]
    assert _ids(w) == {"algebra": "c3", "geometry": "c4", "algebra|geometry": "c6"}


def test_qd_with_a_cap_of_two_keys_members_by_problem_id() -> None:
    w = make_working_set("qd", cap=2)
    assert _run(w) == [
        (("algebra/c1",), ()),
        ((), ()),
        (("algebra/c3",), ()),
        (("geometry/c4",), ()),
        (("algebra/c5",), ("algebra/c1",)),
        (("algebra|geometry/c6",), ()),
        ((), ()),
    ]
    assert _ids(w) == {"algebra/c3": "c3", "algebra/c5": "c5", "geometry/c4": "c4", "algebra|geometry/c6": "c6"}
    assert w.group_sizes() == {"algebra": 2, "algebra|geometry": 1, "geometry": 1}
    assert w.niches() == {"algebra", "geometry", "algebra|geometry"}


def test_elite_carries_the_result_its_niche_slot_and_step() -> None:
    w = make_working_set("qd")
    u = w.offer(_result("c1", 0.5, ("Ratios", "algebra"), step=7))
    elite = u.written["algebra|ratios"]
    assert isinstance(elite, Elite) and elite.slot == "algebra|ratios" and elite.niche == "algebra|ratios"
    assert elite.inserted_step == 7 and elite.problem == "problem c1" and elite.quality == 0.5
    assert w.offer(_result("c2", 0.6, ("geometry",), step=7), step=9).written["geometry"].inserted_step == 9
    assert u.records() == [("algebra|ratios", elite)]


def test_a_present_id_is_ignored_even_with_another_quality() -> None:
    w = make_working_set("dynamic-uniform")
    w.add_seeds(SEEDS)
    assert w.offer(_result("c1", 0.5))
    assert not w.offer(_result("c1", 0.9))
    assert not w.offer(_result("s1", 0.9))  # a child identical to a seed
    assert w.elites()["top/c1"].quality == 0.5 and "c1" in w and "s1" in w and "zz" not in w


def test_a_non_canonical_niche_is_rejected() -> None:
    with pytest.raises(ValidationError, match="niche"):  # a result cannot even be built with it
        _result("c1", 0.5, niche="b|a")
    with pytest.raises(DescriptorError):  # nor offered, if one got past the message rules
        make_working_set("qd").offer(_result("c1", 0.5).model_copy(update={"niche": "b|a"}))


def test_variant_and_cap_validation() -> None:
    assert set(VARIANTS) == {"static-uniform", "static-diverse", "dynamic-uniform", "qd"}
    assert variant_spec("qd").selection == "diverse" and variant_spec("dynamic-uniform").selection == "uniform"
    with pytest.raises(ConfigError, match="variant"):
        make_working_set("map-elites")
    with pytest.raises(ConfigError, match="cap"):
        make_working_set("qd", cap=0)
    assert make_working_set("qd").update_policy == NicheCapUpdate(1)
    assert make_working_set("dynamic-uniform").update_policy == TopTUpdate(1000)
    assert make_working_set("static-diverse", cap=5).update_policy == StaticUpdate()


def test_rebuilt_w_samples_the_same_parents() -> None:
    w = make_working_set("qd", cap=2)
    _run(w)
    rebuilt = make_working_set("qd", cap=2)
    rebuilt.add_seeds(reversed(SEEDS))
    for slot, elite in sorted(w.elites().items(), reverse=True):
        rebuilt.restore(slot, elite)
    assert rebuilt == w
    assert w.sample(10, np.random.default_rng(4)) == rebuilt.sample(10, np.random.default_rng(4))
    assert {x.id for x in w.sample(50, np.random.default_rng(4))} <= {"s1", "s2", "c3", "c4", "c5", "c6"}


def test_restore_tombstones_and_overwrites() -> None:
    w = make_working_set("qd", cap=2)
    _run(w)
    w.restore("algebra/c3", None)
    w.restore("nowhere", None)
    assert "c3" not in w and w.group_sizes()["algebra"] == 1
    w.restore("geometry/c4", w.elites()["algebra/c5"].model_copy(update={"slot": "geometry/c4"}))
    assert "c4" not in w and "c5" in w


def _apply(topic: dict[str, Elite], update: Update) -> None:
    for slot, value in update.records():
        if value is None:
            topic.pop(slot, None)
        else:
            topic[slot] = value


def _replay(variant: str, cap: int | None, topic: dict[str, Elite]) -> WorkingSet:
    w = make_working_set(variant, cap)
    for slot, elite in topic.items():
        w.restore(slot, elite)
    return w


def test_reconcile_after_a_crash_between_a_write_and_its_tombstone() -> None:
    w = make_working_set("qd", cap=2)
    topic: dict[str, Elite] = {}
    for r in SEQUENCE[:4]:
        _apply(topic, w.offer(r))
    u = w.offer(SEQUENCE[4])
    assert u.deleted == ("algebra/c1",)
    topic.update(u.written)  # the write landed, the tombstone did not
    rebuilt = _replay("qd", 2, topic)
    assert rebuilt.group_sizes()["algebra"] == 3 and not rebuilt.offer(SEQUENCE[4])
    fix = rebuilt.reconcile()
    assert fix == Update({}, ("algebra/c1",))
    _apply(topic, fix)
    assert rebuilt.elites() == w.elites() == topic
    assert not rebuilt.reconcile()


def test_reconcile_moves_slots_when_the_cap_changes() -> None:
    old = make_working_set("qd")
    topic: dict[str, Elite] = {}
    for r in SEQUENCE:
        _apply(topic, old.offer(r))
    new = _replay("qd", 3, topic)
    fix = new.reconcile()
    assert sorted(fix.deleted) == ["algebra", "algebra|geometry", "geometry"]
    assert sorted(fix.written) == ["algebra/c3", "algebra|geometry/c6", "geometry/c4"]
    _apply(topic, fix)
    assert new.elites() == topic and all(e.slot == s for s, e in topic.items())


def test_reconcile_empties_a_static_w_and_drops_worthless_members() -> None:
    topic = {"top/c1": Elite(**_result("c1", 0.5).model_dump(), slot="top/c1")}
    static = _replay("static-uniform", None, topic)
    assert static.reconcile() == Update({}, ("top/c1",)) and static.elites() == {}
    topic["top/c2"] = Elite(**_result("c2", 0.0).model_dump(), slot="top/c2")
    dyn = _replay("dynamic-uniform", None, topic)
    assert dyn.reconcile().deleted == ("top/c2",) and set(dyn.elites()) == {"top/c1"}


def test_update_then_composes() -> None:
    e1 = Elite(**_result("c1", 0.5).model_dump(), slot="a")
    e2 = Elite(**_result("c2", 0.5).model_dump(), slot="b")
    merged = Update({"a": e1}, ("x",)).then(Update({"b": e2, "x": e1}, ("a",)))
    assert merged == Update({"b": e2, "x": e1}, ("a",))
    assert not Update() and Update({}, ("a",))


# --------------------------------------------------------------------- properties

_QUALITIES = [0.0, 0.25, 0.5, 0.75]
_SKILLS = [(), ("a",), ("b",), ("a", "b")]


@st.composite
def _scenario(draw: st.DrawFn) -> tuple[str, int, list[SolveResult]]:
    variant = draw(st.sampled_from(sorted(VARIANTS)))
    cap = draw(st.integers(1, 3))
    n = draw(st.integers(1, 12))
    pool = [
        _result(f"p{i:02d}", draw(st.sampled_from(_QUALITIES)), draw(st.sampled_from(_SKILLS)), step=i)
        for i in range(n)
    ]
    order = draw(st.lists(st.integers(0, n - 1), max_size=30))
    return variant, cap, [pool[i] for i in order]


def _oracle(variant: str, cap: int, offers: list[SolveResult]) -> set[str]:
    """The ids W must hold: per group, the best ``cap`` distinct offered ids with quality > 0."""
    spec = variant_spec(variant)
    if not spec.dynamic:
        return set()
    groups: dict[str, dict[str, SolveResult]] = {}
    for r in offers:
        if r.quality > 0:
            group = niche_key(r.skills) if spec.per_niche else "top"
            groups.setdefault(group, {})[r.id] = r
    kept = set()
    for members in groups.values():
        ranked = sorted(members.values(), key=lambda r: rank_key(r.quality, r.id))
        kept |= {r.id for r in ranked[:cap]}
    return kept


@settings(max_examples=300, deadline=None)
@given(_scenario(), st.randoms(use_true_random=False))
def test_w_properties(scenario: tuple[str, int, list[SolveResult]], shuffle: object) -> None:
    variant, cap, offers = scenario
    w = make_working_set(variant, cap)
    w.add_seeds(SEEDS)
    mirror = make_working_set(variant, cap)
    mirror.add_seeds(SEEDS)
    topic: dict[str, Elite] = {}
    for r in offers:
        update = w.offer(r)
        assert not set(update.written) & set(update.deleted)
        for slot, value in update.records():
            mirror.restore(slot, value)
        _apply(topic, update)
        # caps are never exceeded, only valuable children enter, slots are self-consistent
        assert all(size <= cap for size in w.group_sizes().values())
        assert all(e.quality > 0 and e.slot == s for s, e in w.elites().items())
    # rebuilt from the emitted updates (record by record, or from the compacted table): equal
    assert mirror == w and mirror.elites() == w.elites() == topic
    assert _replay(variant, cap, topic).elites() == w.elites()
    assert not _replay(variant, cap, topic).reconcile()
    # exactly the best `cap` per group, whatever the order of the offers
    assert {e.id for e in w.elites().values()} == _oracle(variant, cap, offers)
    permuted = list(offers)
    shuffle.shuffle(permuted)  # type: ignore[attr-defined]
    other = make_working_set(variant, cap)
    other.add_seeds(SEEDS)
    other.offer_many(permuted)
    assert {e.id for e in other.elites().values()} == {e.id for e in w.elites().values()}
    # idempotent: offering everything again changes nothing
    before = w.elites()
    assert all(not w.offer(r) for r in offers) and w.elites() == before
    # one merged update is equivalent to the sequence
    merged_w = make_working_set(variant, cap)
    merged_topic: dict[str, Elite] = {}
    _apply(merged_topic, merged_w.offer_many(offers))
    assert merged_topic == topic


@pytest.mark.parametrize("variant", ["qd", "dynamic-uniform"])
def test_sample_uses_the_policy_and_sees_every_change(variant: str) -> None:
    w = make_working_set(variant, cap=2)
    w.add_seeds(SEEDS)
    assert w.sample(8, np.random.default_rng(1)) == w.selection.sample(w.items(), 8, np.random.default_rng(1))
    assert {x.id for x in w.sample(40, np.random.default_rng(1))} == {"s1", "s2"}
    w.offer(_result("c9", 0.5, ("number theory",)))
    assert "c9" in {x.id for x in w.sample(40, np.random.default_rng(1))}
    (slot,) = w.elites()
    w.restore(slot, None)
    assert {x.id for x in w.sample(40, np.random.default_rng(1))} == {"s1", "s2"}
