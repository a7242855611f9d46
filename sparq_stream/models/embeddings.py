"""Sentence embeddings with sentence-transformers and the packaged all-MiniLM-L6-v2 (384-d)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sparq_stream.errors import ConfigError, FatalError

__all__ = ["SentenceTransformerEmbedder"]

log = logging.getLogger(__name__)


class SentenceTransformerEmbedder:
    """Embeds texts into L2-normalised float32 rows, offline, in batches."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = 64,
        device: str = "cpu",
        num_threads: int | None = None,
    ) -> None:
        """Load ``model_dir`` (default: the packaged all-MiniLM-L6-v2) without network access."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        log.info("loading the embedder %s: importing sentence-transformers", model_dir or "all-MiniLM-L6-v2 (packaged)")
        import torch
        from sentence_transformers import SentenceTransformer

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        packaged = model_dir is None
        if model_dir is None:
            from sparq_stream.models.packaged import minilm_model_dir

            model_dir = minilm_model_dir()
        path = Path(model_dir).expanduser()
        if not path.is_dir():
            raise ConfigError(f"embedding model folder {path} does not exist")
        start = time.perf_counter()
        log.info("loading the embedder: reading %s", path)
        try:
            self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot load a sentence-transformers model from {path}: {exc}") from exc
        self.model.train(False)  # inference mode
        dim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") else None
        if dim is None:
            dim = int(self.model.encode(["x"], convert_to_numpy=True).shape[1])
        self.dim = int(dim)
        self.batch_size = batch_size
        self.model_name = "all-MiniLM-L6-v2" if packaged else path.name
        self.load_seconds = time.perf_counter() - start
        self._lock = threading.Lock()
        log.info("loaded embedder %s (%d-d) in %.1fs", path, self.dim, self.load_seconds)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return an array of shape (len(texts), dim), float32, each row of unit norm."""
        if isinstance(texts, str):
            raise FatalError("embed() takes a list of texts, not a single string")
        items = list(texts)
        bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
        if bad:
            raise FatalError(f"embed() needs strings; items {bad[:5]} are not")
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            if self.model is None:
                raise FatalError("the embedder is closed")
            vectors = self.model.encode(
                items,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def close(self) -> None:
        """Release the model."""
        with self._lock:
            self.model = None
