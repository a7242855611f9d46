"""The scalable novelty index: compact ids, flat -> IVF-PQ by size, incremental segment snapshots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparq_stream.errors import ConfigError, FatalError
from sparq_stream.index.idtable import IdTable
from sparq_stream.index.scalable import MANIFEST, ScalableIndex

DIM = 32


def _unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _near(x: np.ndarray, cos: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    noise -= (noise * x).sum(1, keepdims=True) * x
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return (cos * x + np.sqrt(1 - cos**2) * noise).astype(np.float32)


def _small(kind: str = "auto", folder=None, threshold: int = 1500) -> ScalableIndex:
    return ScalableIndex(DIM, kind, threshold=threshold, nlist=8, pq_m=8, nprobe=8, train_size=1500,
                         opq=False, folder=folder, segment_rows=700)


def test_id_table_adds_new_ids_in_order_and_grows() -> None:
    table = IdTable(capacity=4)
    assert table.add(["a", "b", "a"]).tolist() == [0, 1]
    assert table.add(["b", "é", "c"]).tolist() == [1, 2]
    ids = [f"{i:032x}" for i in range(5000)]
    table.add(ids)
    assert len(table) == 5004 and table.ids(0, 4) == ["a", "b", "é", "c"]
    assert table.rows(["c", "zz", ids[-1]]).tolist() == [3, -1, 5003]
    assert table.id_at(5003) == ids[-1] and "é" in table and "q" not in table


def test_auto_is_exact_while_small_then_compressed_and_still_finds_near_duplicates() -> None:
    data = _unit(2000)
    index = _small()
    index.add([f"p{i}" for i in range(1000)], data[:1000])
    assert index.phase == "flat"
    hits = index.search(data[:2], 3)
    truth = data[:2] @ data[:1000].T
    assert [h[0][0] for h in hits] == ["p0", "p1"]
    assert [s for _, s in hits[0]] == pytest.approx(sorted(truth[0], reverse=True)[:3], abs=1e-5)
    assert index.add([f"p{i}" for i in range(2000)], data) == 1000  # known ids skipped
    assert index.phase == "ivfpq" and len(index) == 2000
    queries = _near(data[::20], 0.93)
    found = index.search(queries, 5)
    assert [h[0][0] for h in found] == [f"p{i}" for i in range(0, 2000, 20)]
    exact = (queries * data[::20]).sum(1)
    assert [h[0][1] for h in found] == pytest.approx(exact.tolist(), abs=2e-3)  # refined: exact up to fp16
    assert index.memory_bytes() < 2000 * DIM * 4 + IdTable(2000).memory_bytes() + 8 * DIM * 4 + DIM * DIM * 4


def test_ivfpq_kind_compresses_as_soon_as_it_can_train() -> None:
    index = ScalableIndex(DIM, "ivfpq", nlist=8, pq_m=8, opq=False)
    index.add([f"p{i}" for i in range(400)], _unit(400))
    assert (index.threshold, index.phase) == (312, "ivfpq")


def test_snapshots_append_segments_and_restore_gives_the_same_answers(tmp_path) -> None:
    data = _unit(2400)
    index = _small(folder=tmp_path)
    index.add([f"p{i}" for i in range(1000)], data[:1000])
    index.snapshot(tmp_path, {"offsets": {"0": 1000}})
    first = {p.name: p.read_bytes() for p in tmp_path.glob("seg-*")}
    index.add([f"p{i}" for i in range(1000, 2400)], data[1000:])
    index.snapshot(tmp_path, {"offsets": {"0": 2400}})
    for name, old in first.items():  # appended, never rewritten
        assert (tmp_path / name).read_bytes()[:len(old)] == old
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["count"] == 2400 and manifest["phase"] == "ivfpq" and len(manifest["segments"]) >= 3
    assert sum(s["rows"] for s in manifest["segments"]) == 2400
    index.add(["late"], _unit(1, seed=5))  # after the snapshot: lost on restore, by design

    restored, extra = ScalableIndex.restore(tmp_path)
    assert extra == {"offsets": {"0": 2400}}
    assert len(restored) == 2400 and "late" not in restored and restored.ids() == [f"p{i}" for i in range(2400)]
    queries = _near(data[::30], 0.92, seed=3)
    assert restored.search(queries, 4) == index.search(queries, 4)
    restored.add(["late"], _unit(1, seed=5))  # appending after a restore continues the last segment
    again, _ = ScalableIndex.restore(restored.snapshot(tmp_path))
    assert len(again) == 2401 and again.id_at(2400) == "late"


def test_snapshot_moves_a_private_store_and_restores_the_flat_phase(tmp_path) -> None:
    data = _unit(300)
    index = _small()
    index.add([f"p{i}" for i in range(300)], data)
    index.snapshot(tmp_path / "snap")
    restored, _ = ScalableIndex.restore(tmp_path / "snap")
    assert restored.phase == "flat"
    assert restored.search(data[:5], 3) == index.search(data[:5], 3)
    assert ScalableIndex.restore(tmp_path / "none") is None


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ConfigError):
        ScalableIndex(DIM, "hnsw")
    with pytest.raises(ConfigError):
        ScalableIndex(30, pq_m=8)
    index = _small()
    with pytest.raises(FatalError):
        index.add(["a\nb"], _unit(1))
    with pytest.raises(FatalError):
        index.add(["a"], np.zeros((1, 5), dtype=np.float32))


def test_list_assignment_is_exact_up_to_8192_lists_and_hnsw_beyond_searches_wide(tmp_path) -> None:
    import faiss

    from sparq_stream.index.scalable import _tune

    index = ScalableIndex(DIM, "ivfpq", nlist=1024, pq_m=8, nprobe=8, opq=False)  # trains on 39 x 1024 items
    index.add([f"p{i}" for i in range(40_000)], _unit(40_000))
    ivf = faiss.extract_index_ivf(index._index)
    assert index.lists() == 1024 and isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat) and ivf.nprobe == 8
    # a snapshot written with an HNSW quantizer (more than 8192 lists, or an older version) is
    # restored searching wide: FAISS's default breadth of 16 loses near duplicates to other lists
    hnsw = faiss.index_factory(DIM, "IVF16_HNSW32,PQ8x4fsr", faiss.METRIC_L2)
    hnsw.train(_unit(1000))
    _tune(hnsw, 8)
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(hnsw).quantizer)
    assert quantizer.hnsw.efSearch == 128 and faiss.extract_index_ivf(hnsw).nprobe == 8
