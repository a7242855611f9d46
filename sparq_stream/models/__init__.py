"""Model backends: the interface, the backend registry, and (imported lazily) every backend."""

from __future__ import annotations

import importlib
from typing import Any

from sparq_stream.models.base import (
    ChatMessage,
    Completion,
    EmbeddingBackend,
    GenerationBackend,
    GenerationResult,
    Prompt,
    SamplingParams,
)
from sparq_stream.models.registry import (
    EMBEDDING_BACKENDS,
    GENERATION_BACKENDS,
    make_embedding_backend,
    make_generation_backend,
)

__all__ = [
    "ChatMessage",
    "Prompt",
    "SamplingParams",
    "Completion",
    "GenerationResult",
    "GenerationBackend",
    "EmbeddingBackend",
    "GENERATION_BACKENDS",
    "EMBEDDING_BACKENDS",
    "make_generation_backend",
    "make_embedding_backend",
    "OpenAIBackend",
    "ScriptedBackend",
    "Script",
    "HashingEmbedder",
    "TransformersBackend",
    "VLLMBackend",
    "SentenceTransformerEmbedder",
]

# Backends are imported on first access, so `import sparq_stream.models` stays light.
_LAZY = {
    "OpenAIBackend": "sparq_stream.models.openai_backend",
    "ScriptedBackend": "sparq_stream.models.scripted",
    "Script": "sparq_stream.models.scripted",
    "HashingEmbedder": "sparq_stream.models.hashing_embedder",
    "TransformersBackend": "sparq_stream.models.transformers_backend",
    "VLLMBackend": "sparq_stream.models.vllm_backend",
    "SentenceTransformerEmbedder": "sparq_stream.models.embeddings",
}


def __getattr__(name: str) -> Any:
    """Import a backend class on first access."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
