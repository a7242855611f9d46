"""Routing candidates by a coarse embedding bucket, so near duplicates meet on one novelty replica.

Replicas of the novelty service share the partitions of ``candidates``; the mutator keys a
candidate by its problem id, so two near duplicates usually land on different partitions, and
two replicas deciding them at the same moment would both accept. With routing, the replica
that reads a candidate embeds it and finds its bucket: the signs of its projections on
``planes`` fixed random hyperplanes (seeded: every replica draws the same ones). Bucket ``b``
belongs to partition ``b % partitions``. A candidate already on its bucket's partition is
decided there; any other is written once more to ``candidates``, on its bucket's partition,
with the header ``sparq.routed`` (a routed record is never routed again), and decided by
that partition's owner. Near duplicates (cosine >= 0.95: 18 degrees apart) fall in one bucket
unless a hyperplane passes between them (about 10% per plane at 18 degrees, 4% at 8);
a pair split that way is still caught when one of them was indexed (``follow_novel``)
before the other is decided.
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
    """Maps unit embeddings to the partition of their bucket (same planes in every replica)."""

    def __init__(self, dim: int, partitions: int, planes: int | None = None, seed: int = 0) -> None:
        self.partitions = partitions
        count = planes if planes is not None else default_planes(partitions)
        normals = np.random.default_rng([seed, 8191]).standard_normal((count, dim)).astype(np.float32)
        self.normals = normals / np.linalg.norm(normals, axis=1, keepdims=True)
        self._weights = (1 << np.arange(count)).astype(np.int64)

    def buckets(self, vectors: np.ndarray) -> np.ndarray:
        """The bucket of each row: the bits of the signs of its projections."""
        signs = (np.asarray(vectors, dtype=np.float32) @ self.normals.T) >= 0.0
        return signs.astype(np.int64) @ self._weights

    def partitions_of(self, vectors: np.ndarray) -> np.ndarray:
        """The partition each row belongs on."""
        return self.buckets(vectors) % self.partitions
