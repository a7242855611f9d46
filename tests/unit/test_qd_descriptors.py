"""Skill-set descriptors: canonical niche keys and parsing them back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparq_stream.errors import FatalError
from sparq_stream.messages import Seed
from sparq_stream.descriptors import (
    EMPTY_NICHE,
    DescriptorError,
    canonical_skills,
    niche_key,
    niche_of,
    parse_niche,
)


def test_key_is_sorted_deduplicated_and_lower_cased() -> None:
    assert niche_key(["Ratios", "algebra", " fractions ", "ALGEBRA"]) == "algebra|fractions|ratios"
    assert niche_key(["linear   Equations"]) == "linear equations"


def test_empty_skill_set_has_a_stable_key() -> None:
    assert niche_key([]) == EMPTY_NICHE == "(none)"
    assert niche_key(["", "  "]) == EMPTY_NICHE
    assert parse_niche(EMPTY_NICHE) == ()


def test_more_than_three_skills_is_a_fatal_descriptor_error() -> None:
    with pytest.raises(DescriptorError) as err:
        niche_key(["a", "b", "c", "d"])
    assert isinstance(err.value, FatalError) and not err.value.retriable


@pytest.mark.parametrize("bad", [["a|b"], ["(none)"], [3]])
def test_skills_that_would_break_the_key_are_rejected(bad: list) -> None:
    with pytest.raises(DescriptorError):
        niche_key(bad)


@pytest.mark.parametrize("key", ["b|a", "Algebra", "", "a||b", "a|b|c|d", "a|a", " a"])
def test_parse_rejects_non_canonical_keys(key: str) -> None:
    with pytest.raises(DescriptorError):
        parse_niche(key)


def test_niche_of_prefers_the_niche_field_then_the_skills() -> None:
    seed = Seed(id="s1", problem="p", answer="1", skills=["Ratios", "algebra"])
    assert niche_of(seed) == "algebra|ratios"

    class Item:
        niche = "geometry"
        skills = ["algebra"]

    assert niche_of(Item()) == "geometry"
    assert niche_of(object()) == EMPTY_NICHE


_skill = st.text(alphabet="abcdefgh ", min_size=1, max_size=6)


@given(st.lists(_skill, max_size=3))
def test_round_trip(skills: list[str]) -> None:
    key = niche_key(skills)
    assert parse_niche(key) == canonical_skills(skills)
    assert niche_key(parse_niche(key)) == key
    assert niche_key(reversed(skills)) == key
