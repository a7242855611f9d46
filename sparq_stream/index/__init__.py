"""The novelty index: unit vectors keyed by problem id in FAISS, with atomic snapshots."""

from sparq_stream.index.faiss_index import INDEX_KINDS, SNAPSHOT_FORMAT, VectorIndex, bytes_per_item

__all__ = ["INDEX_KINDS", "SNAPSHOT_FORMAT", "VectorIndex", "bytes_per_item"]
