"""Routing candidates by a coarse embedding bucket, so near duplicates meet on one novelty replica.

Replicas of the novelty service share the partitions of ``candidates``; the mutator keys a
candidate by its problem id, so two near duplicates usually land on different partitions, and
two replicas deciding them at the same moment would both accept. With routing, the replica
that reads a candidate embeds it and finds its bucket: which side of each of ``planes``
hyperplanes it lies on. Bucket ``b`` of ``B`` belongs to partition ``b * partitions // B``
(the buckets spread over the partitions, so over the replicas of a range assignment). A
candidate already on its bucket's partition is decided there; any other is written once more
to ``candidates``, on its bucket's partition, with the header ``sparq.routed`` (a routed
record is never routed again), and decided by that partition's owner.

The hyperplanes (basis ``random``, the default) are seeded random hyperplanes through the
origin: a pair at cosine 0.95, 18 degrees apart, straddles one with probability 18/180.
Basis ``seeds``: the principal directions of the seeds' embeddings, each cut at the seeds'
median (every replica reads the same seeds table, so every replica fits the same planes); on
the labelled duplicate stream it passed slightly more duplicates than random planes
(docs/benchmarks.md). A pair split across replicas is still caught when one of them was
indexed (``follow_novel``) before the other is decided.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ROUTED_HEADER", "EmbeddingRouter", "default_planes"]

#: Header on a candidate that a novelty replica moved to its bucket's partition.
ROUTED_HEADER = "sparq.routed"


def default_planes(partitions: int) -> int:
    """The fewest hyperplanes whose buckets reach every partition."""
    return max(1, math.ceil(math.log2(max(2, partitions))))


class EmbeddingRouter:
    """Maps embeddings to the partition of their bucket (the same planes in every replica)."""

    def __init__(self, normals: np.ndarray, cuts: np.ndarray, partitions: int) -> None:
        self.normals = np.asarray(normals, dtype=np.float32)
        self.cuts = np.asarray(cuts, dtype=np.float32)
        self.partitions = partitions
        self._weights = (1 << np.arange(len(self.normals))).astype(np.int64)

    @classmethod
    def random(cls, dim: int, partitions: int, planes: int | None = None, seed: int = 0) -> "EmbeddingRouter":
        """Seeded random hyperplanes through the origin."""
        count = planes if planes is not None else default_planes(partitions)
        normals = np.random.default_rng([seed, 8191]).standard_normal((count, dim)).astype(np.float32)
        return cls(normals / np.linalg.norm(normals, axis=1, keepdims=True), np.zeros(count, np.float32), partitions)

    @classmethod
    def fitted(cls, vectors: np.ndarray, partitions: int, planes: int | None = None) -> "EmbeddingRouter":
        """The principal directions of ``vectors`` (rows in a fixed order), each cut at the median projection."""
        count = planes if planes is not None else default_planes(partitions)
        x = np.asarray(vectors, dtype=np.float64)
        centred = x - x.mean(axis=0)
        _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
        normals = vt[:count]
        signs = np.sign(normals[np.arange(len(normals)), np.abs(normals).argmax(axis=1)])
        normals = normals * signs[:, None]  # the SVD's sign is arbitrary: fix it so every replica agrees
        cuts = np.median(x @ normals.T, axis=0)
        return cls(normals, cuts, partitions)

    def buckets(self, vectors: np.ndarray) -> np.ndarray:
        """The bucket of each row: the bits of the sides of the planes it lies on."""
        sides = (np.asarray(vectors, dtype=np.float32) @ self.normals.T) >= self.cuts
        return sides.astype(np.int64) @ self._weights

    def partitions_of(self, vectors: np.ndarray) -> np.ndarray:
        """The partition each row belongs on."""
        return self.buckets(vectors) * self.partitions // (1 << len(self.normals))
