"""Versioned prompt templates: load a template file, render it to chat messages, hash it.

A template file is UTF-8 text: a header of ``#`` lines (``# version: N`` is required),
then one section per chat turn, each opened by a ``=== role ===`` line. Section bodies use
:class:`string.Template` placeholders (``$problem``), so the LaTeX braces of ``\\boxed{}``
need no escaping; a literal dollar sign is written ``$$``. The sha256 of the file's bytes
is the template's ``prompt_hash`` in provenance, so any edit to a prompt is visible there.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from sparq_stream.errors import ConfigError

__all__ = [
    "ChatMessage",
    "Prompt",
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

#: One chat turn: {"role": "system"|"user"|"assistant", "content": "..."}.
ChatMessage = dict[str, str]
#: A chat prompt: a list of turns (what a template renders, and what every generation backend takes).
Prompt = list[ChatMessage]

#: Name of the generic mutation prompt (parent problem -> new problem + solution).
MUTATION = "mutation"
#: Name of the solver prompt (problem -> step-by-step solution ending in ``\\boxed{}``).
SOLVE = "solve"
#: Name of the skill-classification prompt (problem + numbered skill list -> <= 3 skills).
SKILL_CLASSIFICATION = "skill_classification"
#: Name of the skill-extraction prompt (problem -> 1-3 free skill phrases, builds the vocabulary).
SKILL_EXTRACTION = "skill_extraction"
#: Name of the validity audit's verifier prompt (problem + answer -> valid / invalid and why).
VALIDITY = "validity"
#: The prompts that ship with the package.
PROMPT_NAMES = (MUTATION, SOLVE, SKILL_CLASSIFICATION, SKILL_EXTRACTION, VALIDITY)

_SUFFIX = ".txt"
_NAME = re.compile(r"^[a-z0-9_]+$")
_SECTION = re.compile(r"^===\s*(system|user|assistant)\s*===\s*$")
_VERSION = re.compile(r"^#\s*version\s*:\s*(\d+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt template: ``messages`` are (role, template text) pairs rendered in order."""

    name: str
    version: int
    sha256: str
    messages: tuple[tuple[str, str], ...]
    description: str = ""

    @property
    def fields(self) -> tuple[str, ...]:
        """Return the placeholder names the template needs, in order of first use."""
        return self._fields

    @functools.cached_property
    def _fields(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for _, text in self.messages:
            for name in _placeholders(text):
                seen.setdefault(name, None)
        return tuple(seen)

    @property
    def ref(self) -> str:
        """Return a short human-readable reference, e.g. ``mutation@v1``."""
        return f"{self.name}@v{self.version}"

    def render(self, **fields: Any) -> Prompt:
        """Return the chat prompt with every placeholder filled; a missing or unknown field raises ConfigError."""
        missing = [f for f in self.fields if f not in fields]
        if missing:
            raise ConfigError(f"prompt {self.ref}: missing field(s) {', '.join(missing)} (needs: {', '.join(self.fields)})")
        unknown = sorted(set(fields) - set(self.fields))
        if unknown:
            raise ConfigError(f"prompt {self.ref}: unknown field(s) {', '.join(unknown)} (needs: {', '.join(self.fields)})")
        values = {k: _as_text(self.ref, k, v) for k, v in fields.items()}
        return [{"role": role, "content": string.Template(text).substitute(values)} for role, text in self.messages]

    def match(self, prompt: Sequence[Mapping[str, Any]]) -> dict[str, str] | None:
        """Return the field values a prompt was rendered from, or None if it is not this template's."""
        if len(prompt) != len(self.messages):
            return None
        values: dict[str, str] = {}
        for turn, (role, pattern) in zip(prompt, self._patterns):
            if not isinstance(turn, Mapping) or turn.get("role") != role:
                return None
            content = turn.get("content")
            if not isinstance(content, str):
                return None
            found = pattern.fullmatch(content)
            if found is None:
                return None
            for key, value in found.groupdict().items():
                if values.setdefault(key, value) != value:
                    return None
        return values

    @functools.cached_property
    def _patterns(self) -> tuple[tuple[str, re.Pattern[str]], ...]:
        return tuple((role, _reverse_pattern(text)) for role, text in self.messages)


def parse_template(name: str, data: bytes) -> PromptTemplate:
    """Parse a template file's bytes; a malformed file raises ConfigError."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"prompt {name!r}: not UTF-8 ({exc})") from None
    version: int | None = None
    notes: list[str] = []
    messages: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        section = _SECTION.match(line)
        if section:
            messages.append((section.group(1), []))
        elif messages:
            messages[-1][1].append(line)
        elif line.startswith("#"):
            found = _VERSION.match(line)
            if found:
                version = int(found.group(1))
            elif not line.lstrip("# ").lower().startswith("sparq-prompt"):
                notes.append(line.lstrip("#").strip())
        elif line.strip():
            raise ConfigError(f"prompt {name!r}: text before the first '=== role ===' line: {line[:60]!r}")
    if version is None:
        raise ConfigError(f"prompt {name!r}: the header needs a '# version: N' line")
    if not messages:
        raise ConfigError(f"prompt {name!r}: no '=== system ===' or '=== user ===' section")
    rendered = tuple((role, "\n".join(lines).strip()) for role, lines in messages)
    for role, body in rendered:
        _check_placeholders(name, role, body)
    return PromptTemplate(
        name=name,
        version=version,
        sha256=hashlib.sha256(data).hexdigest(),
        messages=rendered,
        description=" ".join(n for n in notes if n),
    )


def available_prompts(directory: str | Path | None = None) -> list[str]:
    """Return the names of the templates in ``directory`` (default: the packaged ones)."""
    if directory is None:
        root = importlib.resources.files(__package__)
        return sorted(p.name[: -len(_SUFFIX)] for p in root.iterdir() if p.name.endswith(_SUFFIX))
    return sorted(p.stem for p in Path(directory).glob(f"*{_SUFFIX}"))


def load_prompt(name: str, directory: str | Path | None = None) -> PromptTemplate:
    """Load template ``name`` from ``directory`` (default: the packaged templates); cached per file."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"prompt name {name!r} must be lower-case letters, digits and '_'")
    if directory is None:
        resource = importlib.resources.files(__package__).joinpath(name + _SUFFIX)
        if not resource.is_file():
            raise ConfigError(f"unknown prompt {name!r}; allowed: {', '.join(available_prompts())}")
        return _load_packaged(name)
    path = Path(directory) / (name + _SUFFIX)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read prompt {name!r} from {path}: {exc}; found: {available_prompts(directory)}") from None
    return parse_template(name, data)


@functools.lru_cache(maxsize=None)
def _load_packaged(name: str) -> PromptTemplate:
    data = importlib.resources.files(__package__).joinpath(name + _SUFFIX).read_bytes()
    return parse_template(name, data)


def _placeholders(text: str) -> list[str]:
    names = []
    for found in string.Template.pattern.finditer(text):
        name = found.group("named") or found.group("braced")
        if name:
            names.append(name)
    return names


def _check_placeholders(name: str, role: str, text: str) -> None:
    for found in string.Template.pattern.finditer(text):
        if found.group("invalid") is not None:
            where = text[found.start() : found.start() + 20]
            raise ConfigError(f"prompt {name!r} ({role}): bad placeholder at {where!r}; write $$ for a dollar sign")


def _reverse_pattern(text: str) -> re.Pattern[str]:
    parts: list[str] = []
    used: set[str] = set()
    last = 0
    for found in string.Template.pattern.finditer(text):
        parts.append(re.escape(text[last : found.start()]))
        last = found.end()
        name = found.group("named") or found.group("braced")
        if found.group("escaped") is not None:
            parts.append(re.escape("$"))
        elif name in used:
            parts.append(f"(?P={name})")
        else:
            used.add(name)
            parts.append(f"(?P<{name}>.*?)")
    parts.append(re.escape(text[last:]))
    return re.compile("".join(parts), re.DOTALL)


def _as_text(ref: str, key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"prompt {ref}: field {key} must be text, got {type(value).__name__}")
