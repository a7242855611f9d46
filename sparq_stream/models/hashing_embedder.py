"""A tiny deterministic embedder: signed feature hashing of character n-grams, L2-normalised.

No model, no download, the same vector on every machine and Python process (blake2b,
not Python's salted ``hash``). Texts that share many character n-grams get a high
cosine similarity, which is enough to test novelty, dedup and FAISS plumbing without
the real sentence-transformers model.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Sequence

import numpy as np

from sparq_stream.errors import ConfigError
from sparq_stream.ids import normalise_text

__all__ = ["HashingEmbedder"]


class HashingEmbedder:
    """Embeds texts by hashing their character n-grams (and words) into ``dim`` signed buckets."""

    name = "hash"

    def __init__(self, dim: int = 256, ngram: int = 3, words: bool = True, seed: int = 0) -> None:
        """Set the vector size, the character n-gram length, whether whole words count too, and the hash seed."""
        if dim < 2:
            raise ConfigError(f"dim must be >= 2, got {dim}")
        if ngram < 1:
            raise ConfigError(f"ngram must be >= 1, got {ngram}")
        self.dim = dim
        self.ngram = ngram
        self.words = words
        self.seed = seed
        self.model_name = f"hash-{ngram}gram-{dim}d"
        self._key = seed.to_bytes(8, "little", signed=True)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return a (len(texts), dim) float32 array of unit rows; an empty text maps to a fixed unit vector."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            vector = out[row]
            for feature in self._features(text):
                bucket, sign = _bucket(feature, self._key, self.dim)
                vector[bucket] += sign
            norm = float(np.linalg.norm(vector))
            if norm == 0.0:
                vector[0] = 1.0
            else:
                vector /= norm
        return out

    def close(self) -> None:
        """Nothing to release."""

    def _features(self, text: str) -> list[str]:
        norm = normalise_text(text)
        padded = f" {norm} "
        grams = [padded[i : i + self.ngram] for i in range(max(0, len(padded) - self.ngram + 1))] if norm else []
        if self.words:
            grams += [f"w:{word}" for word in norm.split()]
        return grams


@functools.lru_cache(maxsize=1 << 16)
def _bucket(feature: str, key: bytes, dim: int) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8, key=key).digest()
    value = int.from_bytes(digest, "little")
    return value % dim, 1.0 if (value >> 63) & 1 else -1.0
