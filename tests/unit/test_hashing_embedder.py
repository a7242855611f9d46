"""The hashing embedder: unit rows, stable across processes, similar texts closer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sparq_stream.errors import ConfigError
from sparq_stream.models.base import EmbeddingBackend
from sparq_stream.models.hashing_embedder import HashingEmbedder

TEXTS = [
    "Janet has 3 ducks and 4 hens. How many birds?",
    "Janet has 3 ducks and 5 hens. How many birds?",
    "A train leaves at noon at 60 km/h; when does it arrive 150 km away?",
    "",
]


def test_shape_dtype_unit_norm() -> None:
    embedder = HashingEmbedder(dim=64)
    assert isinstance(embedder, EmbeddingBackend)
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (4, 64) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 64)


def test_near_duplicates_are_closer_than_unrelated_texts() -> None:
    vectors = HashingEmbedder().embed(TEXTS)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.8 > sims[0, 2]
    same = HashingEmbedder().embed(["JANET has 3   ducks and 4 hens. How many birds?"])[0]
    assert np.allclose(same, vectors[0])  # normalised text: case and spaces do not matter


def test_deterministic_across_processes_and_seeded() -> None:
    code = "from sparq_stream.models.hashing_embedder import HashingEmbedder as H; print(H(dim=16).embed(['abc def']).tolist())"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert len(runs) == 1
    assert np.allclose(_json_array(runs.pop()), HashingEmbedder(dim=16).embed(["abc def"]))
    assert not np.allclose(HashingEmbedder(dim=16, seed=1).embed(["abc def"]), HashingEmbedder(dim=16).embed(["abc def"]))


def _json_array(text: str) -> np.ndarray:
    import json

    return np.array(json.loads(text), dtype=np.float32)


def test_bad_settings() -> None:
    with pytest.raises(ConfigError):
        HashingEmbedder(dim=1)
    with pytest.raises(ConfigError):
        HashingEmbedder(ngram=0)
