"""Choose a generation or embedding backend by name; heavy backends are imported only when chosen."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from sparq_stream.errors import ConfigError
from sparq_stream.models.base import EmbeddingBackend, GenerationBackend

__all__ = [
    "GENERATION_BACKENDS",
    "EMBEDDING_BACKENDS",
    "make_generation_backend",
    "make_embedding_backend",
]

#: Generation backend name -> (module, class).
GENERATION_BACKENDS: dict[str, tuple[str, str]] = {
    "transformers": ("sparq_stream.models.transformers_backend", "TransformersBackend"),
    "openai": ("sparq_stream.models.openai_backend", "OpenAIBackend"),
    "vllm": ("sparq_stream.models.vllm_backend", "VLLMBackend"),
    "scripted": ("sparq_stream.models.scripted", "ScriptedBackend"),
}

#: Embedding backend name -> (module, class).
EMBEDDING_BACKENDS: dict[str, tuple[str, str]] = {
    "sentence-transformers": ("sparq_stream.models.embeddings", "SentenceTransformerEmbedder"),
    "hash": ("sparq_stream.models.hashing_embedder", "HashingEmbedder"),
}


def make_generation_backend(name: str, **options: Any) -> GenerationBackend:
    """Build the generation backend ``name`` with ``options`` (its constructor's keyword arguments)."""
    return _make("generation", GENERATION_BACKENDS, name, options)


def make_embedding_backend(name: str, **options: Any) -> EmbeddingBackend:
    """Build the embedding backend ``name`` with ``options`` (its constructor's keyword arguments)."""
    return _make("embedding", EMBEDDING_BACKENDS, name, options)


def _make(kind: str, table: dict[str, tuple[str, str]], name: str, options: dict[str, Any]) -> Any:
    if name not in table:
        raise ConfigError(f"unknown {kind} backend {name!r}; allowed: {', '.join(sorted(table))}")
    module_name, class_name = table[name]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise ConfigError(f"the {kind} backend {name!r} cannot be imported ({exc}); is its extra installed?") from None
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        params = inspect.signature(cls).parameters.values()
        accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise ConfigError(f"bad option for the {kind} backend {name!r}: {exc}; accepted: {', '.join(accepted)}") from None
    return cls(**options)
