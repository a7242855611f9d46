"""The one model interface: batched chat generation with n samples, and text embedding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from sparq_stream.prompts.templates import ChatMessage, Prompt  # the chat types: a template renders, a backend takes

__all__ = [
    "ChatMessage",
    "Prompt",
    "SamplingParams",
    "Completion",
    "GenerationResult",
    "GenerationBackend",
    "EmbeddingBackend",
]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings shared by every backend."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Completion:
    """One sampled completion and its length in tokens."""

    text: str
    tokens: int = 0
    finish_reason: str = "stop"


@dataclass(frozen=True)
class GenerationResult:
    """The n completions for one prompt, or the error that prompt met (never raised)."""

    completions: list[Completion] = field(default_factory=list)
    prompt_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the prompt produced completions without error."""
        return self.error is None


@runtime_checkable
class GenerationBackend(Protocol):
    """Generates n completions for each chat prompt of a batch."""

    name: str
    model_name: str
    model_version: int

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[GenerationResult]:
        """Return one result per prompt, in order; a failed prompt carries ``error``."""
        ...

    def close(self) -> None:
        """Release the model and any worker or connection."""
        ...


@runtime_checkable
class EmbeddingBackend(Protocol):
    """Embeds texts into L2-normalised float32 vectors."""

    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return an array of shape (len(texts), dim), float32, each row of unit norm."""
        ...
