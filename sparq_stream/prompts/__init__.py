"""Prompt templates (versioned ``*.txt`` files, hashed into provenance) and their loader."""

from __future__ import annotations

from sparq_stream.prompts.templates import (
    MUTATION,
    PROMPT_NAMES,
    SKILL_CLASSIFICATION,
    SKILL_EXTRACTION,
    SOLVE,
    VALIDITY,
    PromptTemplate,
    available_prompts,
    load_prompt,
    parse_template,
)

__all__ = [
    "MUTATION",
    "SOLVE",
    "SKILL_CLASSIFICATION",
    "SKILL_EXTRACTION",
    "VALIDITY",
    "PROMPT_NAMES",
    "PromptTemplate",
    "load_prompt",
    "parse_template",
    "available_prompts",
]
