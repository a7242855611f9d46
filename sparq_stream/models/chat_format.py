"""Backend-neutral checks on chat prompts and the stop-string cut applied to completions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ROLES", "prompt_error", "cut_at_stop", "chat_token_ids"]

#: The chat roles a prompt may use.
ROLES = frozenset({"system", "user", "assistant"})


def prompt_error(prompt: Any) -> str | None:
    """Return why ``prompt`` is not a usable chat prompt, or None when it is."""
    if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Sequence):
        return f"prompt must be a list of {{'role', 'content'}} dicts, got {type(prompt).__name__}"
    if not prompt:
        return "prompt is empty"
    for i, turn in enumerate(prompt):
        if not isinstance(turn, Mapping):
            return f"turn {i} must be a dict with 'role' and 'content', got {type(turn).__name__}"
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            return f"turn {i} has role {role!r}; allowed: {sorted(ROLES)}"
        if not isinstance(content, str):
            return f"turn {i} content must be a string, got {type(content).__name__}"
    return None


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; say whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    if cut < 0:
        return text, False
    return text[:cut], True


def chat_token_ids(tokenizer: Any, prompt: Sequence[Mapping[str, str]]) -> list[int]:
    """Render ``prompt`` with the tokenizer's chat template (plus the assistant cue) into token ids."""
    text = tokenizer.apply_chat_template([dict(turn) for turn in prompt], tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
