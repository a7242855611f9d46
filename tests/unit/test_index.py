"""The FAISS novelty index: add, search, kinds, and atomic snapshots that survive a crash mid-write."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparq_stream.errors import ConfigError, FatalError
from sparq_stream.index import INDEX_KINDS, VectorIndex, bytes_per_item


def _unit(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_returns_ids_and_cosines_most_similar_first() -> None:
    vectors = _unit(50)
    index = VectorIndex(32)
    assert index.add([f"p{i}" for i in range(50)], vectors) == 50
    hits = index.search(vectors[:3], k=4)
    truth = vectors[:3] @ vectors.T
    for row, found in enumerate(hits):
        assert found[0] == (f"p{row}", pytest.approx(1.0, abs=1e-5))
        expected = np.argsort(-truth[row])[:4]
        assert [pid for pid, _ in found] == [f"p{i}" for i in expected]
        assert [s for _, s in found] == pytest.approx(list(truth[row][expected]), abs=1e-5)


def test_add_skips_known_and_repeated_ids() -> None:
    vectors = _unit(4)
    index = VectorIndex(32)
    assert index.add(["a", "b", "a"], vectors[:3]) == 2
    assert index.add(["b", "c"], vectors[2:4]) == 1
    assert len(index) == 3 and index.ids() == ["a", "b", "c"]
    assert "c" in index and "z" not in index
    # "b" keeps its first vector
    assert index.search(vectors[1:2], 1)[0][0] == ("b", pytest.approx(1.0, abs=1e-5))


def test_empty_and_small_index_searches() -> None:
    index = VectorIndex(32)
    assert index.search(_unit(2), 5) == [[], []]
    index.add(["only"], _unit(1))
    assert [len(hits) for hits in index.search(_unit(3, seed=1), 5)] == [1, 1, 1]


@pytest.mark.parametrize("bad", [["a\nb"], [""], [3]])
def test_bad_ids_are_rejected(bad) -> None:
    with pytest.raises(FatalError):
        VectorIndex(32).add(bad, _unit(1))


def test_wrong_shapes_and_settings_are_rejected() -> None:
    index = VectorIndex(32)
    with pytest.raises(FatalError):
        index.add(["a"], _unit(1, dim=16))
    with pytest.raises(FatalError):
        index.add(["a", "b"], _unit(1))
    with pytest.raises(ConfigError):
        VectorIndex(32, kind="ivf")
    with pytest.raises(ConfigError):
        index.search(_unit(1), 0)


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_every_kind_finds_each_item_itself(kind: str) -> None:
    vectors = _unit(400, dim=64, seed=3)
    index = VectorIndex(64, kind)
    index.add([f"p{i}" for i in range(400)], vectors)
    hits = index.search(vectors, 3)
    found_self = sum(h[0][0] == f"p{i}" and h[0][1] > 0.995 for i, h in enumerate(hits))
    assert found_self >= 396  # HNSW is approximate; flat kinds are exact
    if kind.startswith("flat"):
        assert found_self == 400


def test_memory_estimates() -> None:
    assert bytes_per_item("flat", 384) == 384 * 4 + 190
    assert bytes_per_item("flat-fp16", 384) < bytes_per_item("hnsw-fp16", 384) < bytes_per_item("hnsw", 384)
    index = VectorIndex(8)
    index.add(["a", "b"], _unit(2, dim=8))
    assert index.memory_bytes() == 2 * bytes_per_item("flat", 8)
    with pytest.raises(ConfigError):
        bytes_per_item("lsh", 8)


@pytest.mark.parametrize("kind", ["flat", "hnsw-fp16"])
def test_snapshot_round_trip(tmp_path, kind: str) -> None:
    vectors = _unit(30)
    index = VectorIndex(32, kind, hnsw_m=8, ef_search=40)
    index.add([f"p{i}" for i in range(30)], vectors)
    index.snapshot(tmp_path, {"offsets": {"0": 7}})
    restored = VectorIndex.restore(tmp_path)
    assert restored is not None
    copy, extra = restored
    assert extra == {"offsets": {"0": 7}}
    assert (copy.kind, copy.dim, copy.ids(), copy.hnsw_m, copy.ef_search) == (kind, 32, index.ids(), 8, 40)
    assert copy.search(vectors[:5], 3) == index.search(vectors[:5], 3)
    # the restored index keeps growing and still knows its old ids
    assert copy.add(["p0", "new"], _unit(2, seed=9)) == 1


def test_snapshot_generations_pointer_and_pruning(tmp_path) -> None:
    index = VectorIndex(32)
    for i in range(4):
        index.add([f"p{i}"], _unit(1, seed=i))
        index.snapshot(tmp_path)
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == ["gen-000003", "gen-000004"]
    assert (tmp_path / "CURRENT").read_text().strip() == "gen-000004"
    copy, _ = VectorIndex.restore(tmp_path)
    assert len(copy) == 4


def test_a_crash_mid_snapshot_leaves_the_previous_generation(tmp_path) -> None:
    index = VectorIndex(32)
    index.add(["a"], _unit(1))
    index.snapshot(tmp_path)
    # a half-written next generation (temp folder and a stray, unreferenced folder)
    (tmp_path / ".gen-000002.tmp").mkdir()
    (tmp_path / ".gen-000002.tmp" / "index.faiss").write_bytes(b"garbage")
    copy, _ = VectorIndex.restore(tmp_path)
    assert copy.ids() == ["a"]
    index.add(["b"], _unit(1, seed=1))
    index.snapshot(tmp_path)  # the next snapshot overwrites the leftovers
    assert VectorIndex.restore(tmp_path)[0].ids() == ["a", "b"]


def test_restore_without_or_with_a_broken_snapshot(tmp_path) -> None:
    assert VectorIndex.restore(tmp_path) is None
    index = VectorIndex(32)
    index.add(["a"], _unit(1))
    folder = index.snapshot(tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "count": 5}))
    with pytest.raises(ConfigError, match="inconsistent"):
        VectorIndex.restore(tmp_path)
    (folder / "meta.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(ConfigError, match="not a version"):
        VectorIndex.restore(tmp_path)
