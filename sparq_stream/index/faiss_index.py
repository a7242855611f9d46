"""A FAISS index of unit vectors keyed by problem id, with atomic on-disk snapshots.

Vectors are L2-normalised, so the inner product is the cosine similarity. Four kinds:

============  =====================================  ==============================  =========
kind          FAISS index                            bytes per item (384-d, + ids)   search
============  =====================================  ==============================  =========
flat          IndexFlatIP (float32)                  1,536 + ~190                    exact
flat-fp16     IndexScalarQuantizer(QT_fp16, IP)      768 + ~190                      exact*
hnsw          IndexHNSWFlat(M, IP)                   1,536 + 8*M + ~190 (M=32: ~2 KB) approximate
hnsw-fp16     IndexHNSWSQ(QT_fp16, M, IP)            768 + 8*M + ~190 (M=32: ~1.2 KB) approximate
============  =====================================  ==============================  =========

(* exact over vectors rounded to float16: similarities move by ~1e-3.) The ~190 bytes
are the Python id bookkeeping (the id string, the list slot and the id -> row dict entry).
At the paper's scale (20M problems) a flat float32 index needs ~34 GB and a brute-force
search of 20M rows per query; use ``hnsw-fp16`` (~24 GB) or shard the index. None of the
kinds needs training, so every one can grow from empty, one batch at a time.

A snapshot is a generation folder ``gen-<n>/`` (``index.faiss``, ``ids.txt``,
``meta.json``) under the snapshot directory, made current by atomically replacing the
small ``CURRENT`` pointer file; a crash mid-write leaves the previous generation current.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sparq_stream.errors import ConfigError, FatalError

__all__ = ["INDEX_KINDS", "SNAPSHOT_FORMAT", "VectorIndex", "bytes_per_item", "check_ids", "check_vectors"]

log = logging.getLogger(__name__)

#: The index kinds :class:`VectorIndex` can build.
INDEX_KINDS: tuple[str, ...] = ("flat", "flat-fp16", "hnsw", "hnsw-fp16")
#: The ``format`` field of a snapshot's ``meta.json``.
SNAPSHOT_FORMAT = "sparq.vector-index"
_SNAPSHOT_VERSION = 1
_CURRENT = "CURRENT"
_KEEP_GENERATIONS = 2
#: Estimated Python bytes per id (32-char str, list slot, dict entry with its int).
_ID_OVERHEAD = 190


def bytes_per_item(kind: str, dim: int, hnsw_m: int = 32) -> int:
    """Return the estimated memory per indexed item for an index kind (vectors, graph and ids)."""
    if kind not in INDEX_KINDS:
        raise ConfigError(f"index kind must be one of {', '.join(INDEX_KINDS)}; got {kind!r}")
    vector = dim * (2 if kind.endswith("fp16") else 4)
    graph = 8 * hnsw_m if kind.startswith("hnsw") else 0
    return vector + graph + _ID_OVERHEAD


def _build(kind: str, dim: int, hnsw_m: int, ef_construction: int) -> Any:
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "flat-fp16":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    elif kind == "hnsw-fp16":
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ConfigError(f"index kind must be one of {', '.join(INDEX_KINDS)}; got {kind!r}")
    index.hnsw.efConstruction = ef_construction
    return index


class VectorIndex:
    """Unit vectors keyed by string ids: add, k-nearest search by cosine, snapshot and restore."""

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        *,
        hnsw_m: int = 32,
        ef_search: int = 128,
        ef_construction: int = 80,
    ) -> None:
        """Build an empty index of ``dim``-dimensional vectors of the given kind."""
        if dim < 1:
            raise ConfigError(f"dim must be >= 1, got {dim}")
        if kind not in INDEX_KINDS:
            raise ConfigError(f"index kind must be one of {', '.join(INDEX_KINDS)}; got {kind!r}")
        if hnsw_m < 4 or ef_search < 1 or ef_construction < 1:
            raise ConfigError("hnsw_m must be >= 4 and ef_search, ef_construction >= 1")
        self.dim = dim
        self.kind = kind
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.ef_construction = ef_construction
        self._index = _build(kind, dim, hnsw_m, ef_construction)
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}
        self._apply_search_params()

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, problem_id: object) -> bool:
        return problem_id in self._rows

    def id_at(self, row: int) -> str:
        """Return the id stored at ``row``."""
        return self._ids[row]

    def ids(self) -> list[str]:
        """Return every id in insertion order."""
        return list(self._ids)

    def vectors(self, rows: Sequence[int] | None = None) -> np.ndarray:
        """Return the stored vectors of ``rows`` (all rows by default) as float32."""
        wanted = range(len(self._ids)) if rows is None else rows
        out = np.zeros((len(wanted), self.dim), dtype=np.float32)
        for i, row in enumerate(wanted):
            out[i] = self._index.reconstruct(int(row))
        return out

    def memory_bytes(self) -> int:
        """Return the estimated memory held by the index (vectors, graph and id bookkeeping)."""
        return len(self._ids) * bytes_per_item(self.kind, self.dim, self.hnsw_m)

    # ------------------------------------------------------------------ add and search
    def add(self, ids: Sequence[str], vectors: np.ndarray) -> int:
        """Add vectors under ids; ids already present (or repeated in the call) are skipped. Return how many were added."""
        matrix = self._check(vectors)
        if len(ids) != matrix.shape[0]:
            raise FatalError(f"add: {len(ids)} ids for {matrix.shape[0]} vectors")
        keep: list[int] = []
        fresh: set[str] = set()
        for i, problem_id in enumerate(ids):
            if not isinstance(problem_id, str) or not problem_id or "\n" in problem_id:
                raise FatalError(f"add: id {problem_id!r} must be a non-empty string without newlines")
            if problem_id in self._rows or problem_id in fresh:
                continue
            fresh.add(problem_id)
            keep.append(i)
        if not keep:
            return 0
        block = matrix if len(keep) == matrix.shape[0] else matrix[keep]
        self._index.add(np.ascontiguousarray(block))
        for i in keep:
            self._rows[ids[i]] = len(self._ids)
            self._ids.append(ids[i])
        return len(keep)

    def search(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Return, per query row, up to ``k`` (id, cosine similarity) pairs, most similar first."""
        matrix = self._check(vectors)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if matrix.shape[0] == 0:
            return []
        if not self._ids:
            return [[] for _ in range(matrix.shape[0])]
        sims, rows = self._index.search(matrix, min(k, len(self._ids)))
        return [
            [(self._ids[int(r)], float(s)) for r, s in zip(row_ids, row_sims) if r >= 0]
            for row_ids, row_sims in zip(rows, sims)
        ]

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write a new snapshot generation under ``directory`` and make it current; return its folder."""
        import faiss

        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        number = _current_generation(root) + 1
        final = root / f"gen-{number:06d}"
        tmp = root / f".gen-{number:06d}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        faiss.write_index(self._index, str(tmp / "index.faiss"))
        with open(tmp / "ids.txt", "w", encoding="utf-8") as fh:
            for problem_id in self._ids:
                fh.write(problem_id)
                fh.write("\n")
            _sync(fh)
        meta = {
            "format": SNAPSHOT_FORMAT,
            "version": _SNAPSHOT_VERSION,
            "dim": self.dim,
            "kind": self.kind,
            "count": len(self._ids),
            "hnsw_m": self.hnsw_m,
            "ef_search": self.ef_search,
            "ef_construction": self.ef_construction,
            "extra": extra or {},
        }
        with open(tmp / "meta.json", "w", encoding="utf-8") as fh:
            json.dump(meta, fh)
            _sync(fh)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / f".{_CURRENT}.tmp"
        with open(pointer, "w", encoding="utf-8") as fh:
            fh.write(final.name + "\n")
            _sync(fh)
        os.replace(pointer, root / _CURRENT)
        _sync_dir(root)
        _prune(root, keep=_KEEP_GENERATIONS)
        return final

    @classmethod
    def restore(cls, directory: str | Path) -> tuple[VectorIndex, dict[str, Any]] | None:
        """Load the current snapshot under ``directory``; return (index, extra), or None if there is none."""
        import faiss

        root = Path(directory)
        pointer = root / _CURRENT
        if not pointer.is_file():
            return None
        name = pointer.read_text(encoding="utf-8").strip()
        folder = root / name
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            if meta.get("format") != SNAPSHOT_FORMAT or meta.get("version") != _SNAPSHOT_VERSION:
                raise ConfigError(f"{folder}: not a version {_SNAPSHOT_VERSION} {SNAPSHOT_FORMAT} snapshot")
            ids = (folder / "ids.txt").read_text(encoding="utf-8").split("\n")[:-1]
            raw = faiss.read_index(str(folder / "index.faiss"))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"cannot read the index snapshot {folder}: {exc}") from None
        if len(ids) != meta["count"] or raw.ntotal != meta["count"] or raw.d != meta["dim"]:
            raise ConfigError(f"index snapshot {folder} is inconsistent: {len(ids)} ids, {raw.ntotal} vectors, meta {meta['count']}")
        index = cls(
            int(meta["dim"]),
            str(meta["kind"]),
            hnsw_m=int(meta["hnsw_m"]),
            ef_search=int(meta["ef_search"]),
            ef_construction=int(meta["ef_construction"]),
        )
        index._index = raw
        index._ids = ids
        index._rows = {problem_id: row for row, problem_id in enumerate(ids)}
        if len(index._rows) != len(ids):
            raise ConfigError(f"index snapshot {folder} holds repeated ids")
        index._apply_search_params()
        return index, dict(meta.get("extra") or {})

    # ------------------------------------------------------------------ internals
    def _apply_search_params(self) -> None:
        hnsw = getattr(self._index, "hnsw", None)
        if hnsw is not None:
            hnsw.efSearch = self.ef_search

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        return check_vectors(vectors, self.dim)

    def __repr__(self) -> str:
        return f"VectorIndex(kind={self.kind!r}, dim={self.dim}, items={len(self._ids)})"


def _current_generation(root: Path) -> int:
    numbers = [int(p.name[4:]) for p in root.glob("gen-*") if p.is_dir() and p.name[4:].isdigit()]
    return max(numbers, default=0)


def _prune(root: Path, keep: int) -> None:
    current = (root / _CURRENT).read_text(encoding="utf-8").strip()
    folders = sorted((p for p in root.glob("gen-*") if p.is_dir()), key=lambda p: p.name)
    for old in folders[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def _sync(fh: Any) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _sync_dir(root: Path) -> None:
    try:
        fd = os.open(root, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Return ``vectors`` as a contiguous float32 (n, dim) matrix; another shape raises FatalError."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise FatalError(f"expected vectors of shape (n, {dim}), got {matrix.shape}")
    return np.ascontiguousarray(matrix)


def check_ids(ids: Sequence[str], rows: int) -> None:
    """Raise FatalError unless there is one non-empty, newline-free string id per vector row."""
    if len(ids) != rows:
        raise FatalError(f"add: {len(ids)} ids for {rows} vectors")
    for problem_id in ids:
        if not isinstance(problem_id, str) or not problem_id or "\n" in problem_id:
            raise FatalError(f"add: id {problem_id!r} must be a non-empty string without newlines")
