"""Selection policies C: uniform and diverse parent sampling."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparq_stream.errors import ConfigError
from sparq_stream.qd.selection import DiverseSelection, UniformSelection, make_rng, make_selection


@dataclass(frozen=True)
class Item:
    id: str
    niche: str


def _items(sizes: dict[str, int]) -> list[Item]:
    return [Item(f"{n}-{i}", n) for n, size in sizes.items() for i in range(size)]


POLICIES = [UniformSelection(), DiverseSelection()]
RNGS = [lambda s: np.random.default_rng(s), lambda s: random.Random(s)]


@pytest.mark.parametrize("policy", POLICIES)
def test_empty_pool_and_zero_batch(policy) -> None:
    assert policy.sample([], 5, make_rng(0)) == []
    assert policy.sample(_items({"a": 3}), 0, make_rng(0)) == []
    with pytest.raises(ConfigError, match="b "):
        policy.sample(_items({"a": 3}), -1, make_rng(0))
    with pytest.raises(TypeError):
        policy.sample(_items({"a": 3}), 1, 42)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("rng", RNGS)
def test_deterministic_for_a_fixed_seed(policy, rng) -> None:
    items = _items({"a": 5, "b": 2, "c": 9})
    assert policy.sample(items, 7, rng(3)) == policy.sample(items, 7, rng(3))
    draws = {tuple(x.id for x in policy.sample(items, 7, rng(s))) for s in range(10)}
    assert len(draws) > 1


@pytest.mark.parametrize("rng", RNGS)
def test_uniform_is_without_replacement_up_to_the_pool_size(rng) -> None:
    items = _items({"a": 4, "b": 4})
    picked = UniformSelection().sample(items, 8, rng(1))
    assert sorted(x.id for x in picked) == sorted(x.id for x in items)
    more = UniformSelection().sample(items, 20, rng(1))
    assert len(more) == 20 and set(more) <= set(items)


@pytest.mark.parametrize("rng", RNGS)
def test_diverse_draws_distinct_niches_up_to_their_number(rng) -> None:
    items = _items({"a": 50, "b": 1, "c": 3})
    picked = DiverseSelection().sample(items, 3, rng(2))
    assert sorted(x.niche for x in picked) == ["a", "b", "c"]
    picked = DiverseSelection().sample(items, 9, rng(2))
    assert len(picked) == 9 and set(picked) <= set(items)


def test_diverse_is_uniform_over_niches_and_uniform_is_not() -> None:
    items = _items({"crowded": 99, "lone": 1})
    rng = make_rng(11)
    diverse = Counter(x.niche for _ in range(2000) for x in DiverseSelection().sample(items, 1, rng))
    uniform = Counter(x.niche for _ in range(2000) for x in UniformSelection().sample(items, 1, rng))
    assert 0.45 < diverse["lone"] / 2000 < 0.55
    assert uniform["lone"] / 2000 < 0.03


def test_diverse_within_a_niche_is_uniform() -> None:
    items = _items({"a": 4, "b": 1})
    rng = make_rng(5)
    counts = Counter(x.id for _ in range(4000) for x in DiverseSelection().sample(items, 1, rng) if x.niche == "a")
    assert set(counts) == {"a-0", "a-1", "a-2", "a-3"}
    assert max(counts.values()) / min(counts.values()) < 1.25


def test_diverse_accepts_a_key_function() -> None:
    items = _items({"a": 3, "b": 3})
    picked = DiverseSelection(key=lambda x: x.id[-1]).sample(items, 3, make_rng(0))
    assert sorted(x.id[-1] for x in picked) == ["0", "1", "2"]


def test_make_selection() -> None:
    assert isinstance(make_selection("uniform"), UniformSelection)
    assert isinstance(make_selection("diverse"), DiverseSelection)
    with pytest.raises(ConfigError, match="selection"):
        make_selection("elitist")


@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 5), min_size=1), st.integers(0, 30), st.integers(0, 2**32))
def test_every_draw_comes_from_the_pool(sizes: dict[str, int], b: int, seed: int) -> None:
    items = _items(sizes)
    for policy in POLICIES:
        picked = policy.sample(items, b, make_rng(seed))
        assert len(picked) == b and set(picked) <= set(items)
        if b <= len(items) and isinstance(policy, UniformSelection):
            assert len(set(picked)) == b
        if b <= len(sizes) and isinstance(policy, DiverseSelection):
            assert len({x.niche for x in picked}) == b
