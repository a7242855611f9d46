"""A novelty index for tens of millions of problems: flat while small, OPQ+IVF+PQ beyond a threshold.

Kinds: ``auto`` (exact ``IndexFlatIP`` until ``threshold`` items, then it trains and moves to
compressed codes) and ``ivfpq`` (the same, with the threshold set to the fewest items FAISS
needs to train, ``39 * nlist``). Compressed phase: ``OPQ{m},IVF{nlist},PQ{m}x4fsr`` (4-bit
fast-scan PQ codes, m/2 bytes per item + 8 for the list id), trained on the first
``train_size`` items (the seeds come first). A search asks the codes for ``refine_k``
candidates and re-scores exactly those whose approximate cosine is at least
``refine_above`` (default: all of them) with the stored vectors, so near-duplicate decisions
use exact cosines (4-bit codes alone misjudge cosines by up to ~0.1).

Every added vector is appended to :class:`SegmentStore` files (float32 while flat, float16
once compressed): they are the refinement store and the incremental snapshot at once. A
snapshot fsyncs them and atomically replaces ``manifest.json`` (segments with their row
counts, the trained template, the caller's ``extra`` such as the topic offsets covered);
restore re-encodes the stored vectors: nothing is re-embedded. Memory per item once
compressed: ~40 bytes of codes + ~60 bytes of ids (:class:`IdTable`), ~2 GB at 20M.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sparq_stream.errors import ConfigError
from sparq_stream.index.faiss_index import check_ids, check_vectors
from sparq_stream.index.idtable import IdTable
from sparq_stream.index.segments import SegmentStore

__all__ = ["SCALABLE_KINDS", "MANIFEST", "ScalableIndex"]

log = logging.getLogger(__name__)

#: Index kinds served by :class:`ScalableIndex`.
SCALABLE_KINDS: tuple[str, ...] = ("auto", "ivfpq")
#: The snapshot's manifest file name.
MANIFEST = "manifest.json"
_FORMAT = "sparq.segmented-index"
_VERSION = 1
_TRAINED = "trained.faiss"
_CHUNK = 100_000
#: Search and build breadth of the HNSW coarse quantizer (FAISS's default 16 assigns ~10% of the
#: near duplicates of 384-d MiniLM-like vectors to another list than their partner's).
_COARSE_EF = 128
#: Up to this many IVF lists the coarse quantizer is exact (flat).
_FLAT_COARSE_MAX = 8192


class ScalableIndex:
    """Unit vectors keyed by string ids: add, k-nearest by cosine, incremental snapshot and restore."""

    def __init__(
        self,
        dim: int,
        kind: str = "auto",
        *,
        threshold: int = 200_000,
        nlist: int = 4096,
        pq_m: int = 64,
        nprobe: int = 16,
        train_size: int = 200_000,
        refine_k: int = 16,
        refine_above: float = -1.0,
        opq: bool = True,
        folder: str | Path | None = None,
        segment_rows: int = 1_000_000,
    ) -> None:
        """Build an empty index; segments go to ``folder`` (a private temp folder when None)."""
        if kind not in SCALABLE_KINDS:
            raise ConfigError(f"index kind must be one of {', '.join(SCALABLE_KINDS)}; got {kind!r}")
        if dim < 1 or dim % pq_m:
            raise ConfigError(f"dim ({dim}) must be >= 1 and a multiple of pq_m ({pq_m})")
        if min(nlist, nprobe, train_size, refine_k, threshold) < 1:
            raise ConfigError("nlist, nprobe, train_size, refine_k and threshold must be >= 1")
        self.dim, self.kind = dim, kind
        self.nlist, self.pq_m, self.nprobe = nlist, pq_m, nprobe
        self.train_size, self.refine_k, self.refine_above = train_size, refine_k, refine_above
        self.opq = opq
        self.threshold = threshold if kind == "auto" else 39 * nlist
        self.segment_rows = segment_rows
        self._owned: Path | None = None
        if folder is None:
            self._owned = Path(tempfile.mkdtemp(prefix="sparq-index-"))
            weakref.finalize(self, shutil.rmtree, self._owned, True)
        self._store = SegmentStore(Path(folder) if folder else self._owned, dim, segment_rows)
        self._ids = IdTable()
        self._index = self._flat()
        self.phase = "flat"
        self._trained_written = False

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, problem_id: object) -> bool:
        return problem_id in self._ids

    def id_at(self, row: int) -> str:
        """Return the id stored at ``row``."""
        return self._ids.id_at(row)

    def ids(self) -> list[str]:
        """Return every id in insertion order."""
        return self._ids.ids()

    def vectors(self, rows: Sequence[int] | None = None) -> np.ndarray:
        """Return the stored vectors of ``rows`` (all rows by default) as float32."""
        wanted = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        return self._store.read_rows(wanted)

    def memory_bytes(self) -> int:
        """Return the memory held by the index (codes or vectors, coarse centroids, ids)."""
        n = len(self)
        if self.phase == "flat":
            held = n * self.dim * 4
        else:
            held = n * (self.pq_m // 2 + 8) + self.nlist * self.dim * 4 + self.dim * self.dim * 4
        return held + self._ids.memory_bytes()

    def lists(self) -> int:
        """The IVF lists in use (0 while flat; fewer than ``nlist`` when trained on few items)."""
        if self.phase == "flat":
            return 0
        import faiss

        return int(faiss.extract_index_ivf(self._index).nlist)

    # ------------------------------------------------------------------ add and search
    def add(self, ids: Sequence[str], vectors: np.ndarray) -> int:
        """Add vectors under ids; known or repeated ids are skipped. Return how many were added."""
        matrix = check_vectors(vectors, self.dim)
        ids = list(ids)
        check_ids(ids, matrix.shape[0])
        fresh = self._ids.add(ids)
        if not len(fresh):
            return 0
        block = matrix if len(fresh) == len(ids) else matrix[fresh]
        self._store.append([ids[i] for i in fresh.tolist()], block, self._dtype())
        self._index.add(np.ascontiguousarray(block))
        if self.phase == "flat" and len(self) >= self.threshold:
            self._migrate()
        return len(fresh)

    def search(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Return, per query row, up to ``k`` (id, cosine similarity) pairs, most similar first."""
        matrix = check_vectors(vectors, self.dim)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if matrix.shape[0] == 0:
            return []
        if not len(self):
            return [[] for _ in range(matrix.shape[0])]
        if self.phase == "flat":
            sims, rows = self._index.search(matrix, min(k, len(self)))
        else:
            sims, rows = self._refined(matrix, k)
        id_at = self._ids.id_at
        return [[(id_at(int(r)), float(s)) for r, s in zip(rr, ss) if r >= 0] for rr, ss in zip(rows, sims)]

    def _refined(self, matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``refine_k`` from the codes, exact cosines where they can matter."""
        dist, rows = self._index.search(matrix, max(k, self.refine_k))
        sims = 1.0 - dist / 2.0  # unit vectors: |a-b|^2 = 2 - 2 cos
        sims[rows < 0] = -np.inf
        close = (rows >= 0) & (sims >= self.refine_above)
        if close.any():
            qi, ci = np.nonzero(close)
            exact = self._store.read_rows(rows[qi, ci])
            sims[qi, ci] = np.einsum("ij,ij->i", exact, matrix[qi])
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, order, 1), np.take_along_axis(rows, order, 1)

    # ------------------------------------------------------------------ phases
    def _dtype(self) -> str:
        return "float32" if self.phase == "flat" else "float16"

    def _flat(self) -> Any:
        import faiss

        return faiss.IndexFlatIP(self.dim)

    def _compressed_template(self, train: np.ndarray) -> Any:
        """Train OPQ + IVF + 4-bit PQ on ``train``; return the empty trained index."""
        import faiss

        nlist = max(1, min(self.nlist, len(train) // 39))
        # Exact list assignment (one BLAS product) up to 8192 lists: 3.5x faster than an HNSW quantizer at
        # the breadth that keeps near duplicates in one list; HNSW only beyond.
        coarse = f"IVF{nlist}_HNSW32" if nlist > _FLAT_COARSE_MAX else f"IVF{nlist}"
        rotation = f"OPQ{self.pq_m}," if self.opq else ""
        index = faiss.index_factory(self.dim, f"{rotation}{coarse},PQ{self.pq_m}x4fsr", faiss.METRIC_L2)
        if self.opq:
            opq = faiss.downcast_VectorTransform(index.chain.at(0))
            opq.niter, opq.niter_pq, opq.niter_pq_0 = 6, 1, 2  # a few rotations; the IVF-PQ trains after it
            opq.max_train_points = min(opq.max_train_points, 30_000)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 12
        if nlist > _FLAT_COARSE_MAX:
            faiss.downcast_index(ivf.quantizer).hnsw.efConstruction = _COARSE_EF
        index.train(np.ascontiguousarray(train))
        _tune(index, self.nprobe)
        return index

    def _migrate(self) -> None:
        """Leave the flat phase: train on the first items, re-add everything as codes."""
        import faiss

        n = len(self)
        take = min(n, self.train_size)
        train = self._index.reconstruct_n(0, take)
        log.info("novelty index: %d items, training OPQ%d,IVF%d,PQ%dx4 on %d", n, self.pq_m, self.nlist, self.pq_m, take)
        compressed = self._compressed_template(train)
        faiss.write_index(compressed, str(self._store.folder / _TRAINED))
        self._trained_written = True
        for start in range(0, n, _CHUNK):
            compressed.add(self._index.reconstruct_n(start, min(_CHUNK, n - start)))
        self._index, self.phase = compressed, "ivfpq"

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Make everything added so far durable under ``directory`` (appends only); return it."""
        import faiss

        root = Path(directory).resolve()
        if root != self._store.folder.resolve():
            self._store.move_to(root)
            if self.phase == "ivfpq":
                faiss.write_index(self._template(), str(root / _TRAINED))
            if self._owned is not None:
                shutil.rmtree(self._owned, ignore_errors=True)
                self._owned = None
        entries = self._store.sync()
        manifest = {
            "format": _FORMAT, "version": _VERSION, "dim": self.dim, "kind": self.kind, "phase": self.phase,
            "count": len(self), "threshold": self.threshold, "nlist": self.nlist, "pq_m": self.pq_m,
            "nprobe": self.nprobe, "train_size": self.train_size, "refine_k": self.refine_k,
            "refine_above": self.refine_above, "opq": self.opq, "segment_rows": self.segment_rows,
            "trained": _TRAINED if self.phase == "ivfpq" else None, "segments": entries, "extra": extra or {},
        }
        tmp = root / f".{MANIFEST}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, root / MANIFEST)
        return root

    def _template(self) -> Any:
        """An empty copy of the trained compressed index."""
        import faiss

        template = faiss.clone_index(self._index)
        template.reset()
        return template

    @classmethod
    def restore(cls, directory: str | Path) -> tuple[ScalableIndex, dict[str, Any]] | None:
        """Load the snapshot under ``directory`` (re-encoding stored vectors); None if there is none."""
        import faiss

        root = Path(directory)
        path = root / MANIFEST
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise ConfigError(f"{path}: not a version {_VERSION} {_FORMAT} manifest")
        index = cls.__new__(cls)
        index.dim, index.kind = int(meta["dim"]), str(meta["kind"])
        for key in ("threshold", "nlist", "pq_m", "nprobe", "train_size", "refine_k", "segment_rows"):
            setattr(index, key, int(meta[key]))
        index.refine_above, index.opq = float(meta["refine_above"]), bool(meta.get("opq", True))
        index._owned = None
        index._ids = IdTable(int(meta["count"]))
        try:
            index._store = SegmentStore(root, index.dim, index.segment_rows, meta["segments"])
            if meta["phase"] == "ivfpq":
                index._index, index.phase = faiss.read_index(str(root / meta["trained"])), "ivfpq"
                _tune(index._index, index.nprobe)
            else:
                index._index, index.phase = index._flat(), "flat"
            for ids, vectors in index._store.iter_chunks(_CHUNK):
                index._ids.extend_unchecked(ids)
                index._index.add(vectors)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ConfigError(f"cannot restore the index snapshot in {root}: {exc}") from None
        if len(index) != int(meta["count"]) or index._index.ntotal != len(index):
            raise ConfigError(f"index snapshot {root} is inconsistent: {len(index)} ids, manifest {meta['count']}")
        index._trained_written = index.phase == "ivfpq"
        return index, dict(meta.get("extra") or {})

    def close(self) -> None:
        """Close the segment files."""
        self._store.close()

    # ------------------------------------------------------------------ internals
    def __repr__(self) -> str:
        return f"ScalableIndex(kind={self.kind!r}, phase={self.phase!r}, dim={self.dim}, items={len(self)})"


def _tune(index: Any, nprobe: int) -> None:
    """Set the lists probed per query and, for an HNSW coarse quantizer, its search breadth."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = nprobe
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = max(_COARSE_EF, 2 * nprobe)
