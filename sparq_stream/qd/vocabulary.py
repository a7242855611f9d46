"""The skill vocabulary: the M most frequent skills of the seed set, and parsing skill answers.

An LLM lists the skills each seed needs; :func:`build_vocabulary` normalises the phrases
(:func:`normalise_skill`: lower-case, punctuation stripped, whitespace collapsed, simple
singularisation), counts each skill once per seed, and keeps the ``m`` most frequent
(ties by name). :func:`parse_skill_answer` reads a skill-classification answer against
the vocabulary: it accepts skill names and the 1-based numbers of the vocabulary list,
drops everything else, keeps at most 3, and never raises.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from sparq_stream.errors import ConfigError
from sparq_stream.descriptors import MAX_SKILLS

__all__ = [
    "DEFAULT_M",
    "VOCABULARY_SCHEMA",
    "normalise_skill",
    "Vocabulary",
    "build_vocabulary",
    "parse_skill_answer",
]

#: The paper's vocabulary size: the 100 most frequent skills of the seed set.
DEFAULT_M = 100
#: The ``schema`` field of a saved vocabulary file.
VOCABULARY_SCHEMA = "sparq.vocabulary"
_VOCABULARY_VERSION = 1

#: Longest skill name kept (longer phrases are sentences, not skills).
_MAX_SKILL_CHARS = 64
#: Longest answer looked at (a runaway generation is cut here).
_MAX_ANSWER_CHARS = 4000
_MAX_PIECES = 64

_ENUMERATOR = re.compile(r"^\s*(?:[-*\u2022\u00b7]+|\(?#?\d{1,4}[.):\]]|#\d{1,4}\b)\s*")
_POSSESSIVE = re.compile(r"['\u2019]s\b")
_PUNCT = re.compile(r"[^\w\s]|_")
_NUMBER = re.compile(r"\W*#?(\d{1,6})\W*")
_SPLIT = re.compile(r"[,;\n]")
_AND = re.compile(r"\s+(?:and|&)\s+")
_TAG = re.compile(r"<skills>(.*?)</skills>", re.IGNORECASE | re.DOTALL)

_IRREGULAR = {
    "matrices": "matrix",
    "vertices": "vertex",
    "indices": "index",
    "axes": "axis",
    "radii": "radius",
    "foci": "focus",
    "loci": "locus",
    "parentheses": "parenthesis",
    "hypotheses": "hypothesis",
    "analyses": "analysis",
    "halves": "half",
    "children": "child",
    "people": "person",
    "feet": "foot",
}
_INVARIANT = {"series", "species", "means", "news", "gas", "lens", "plus", "minus", "bonus", "thus", "always", "pythagoras"}


def _singular(word: str) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or word in _INVARIANT or word.endswith(("ss", "us", "is", "ics")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "zzes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def normalise_skill(phrase: str) -> str:
    """Return the canonical skill name: lower-case, no punctuation, single spaces, singular words."""
    text = unicodedata.normalize("NFKC", phrase).lower()
    text = _ENUMERATOR.sub("", text, count=1)
    text = _POSSESSIVE.sub("", text).replace("'", "").replace("\u2019", "")
    text = _PUNCT.sub(" ", text)
    return " ".join(_singular(word) for word in text.split())


def _valid_name(name: str) -> bool:
    return bool(name) and len(name) <= _MAX_SKILL_CHARS and not name.isdigit()


@dataclass(frozen=True)
class Vocabulary:
    """The ranked skill vocabulary: ``skills[i]`` is list number ``i + 1``; ``counts`` per skill."""

    skills: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.skills)) != len(self.skills):
            raise ConfigError("vocabulary skills must be unique")
        for name in self.skills:
            if not isinstance(name, str) or not _valid_name(name) or normalise_skill(name) != name:
                raise ConfigError(f"vocabulary skill {name!r} is not a normalised skill name")
        object.__setattr__(self, "_index", {name: i for i, name in enumerate(self.skills)})

    def __len__(self) -> int:
        return len(self.skills)

    def __iter__(self) -> Iterator[str]:
        return iter(self.skills)

    def __contains__(self, name: object) -> bool:
        return name in self._index  # type: ignore[attr-defined]

    def number_of(self, name: str) -> int:
        """Return the 1-based list number of a skill (KeyError if absent)."""
        return self._index[name] + 1  # type: ignore[attr-defined]

    def skill(self, number: int) -> str | None:
        """Return the skill with 1-based list number ``number``, or None if out of range."""
        return self.skills[number - 1] if 1 <= number <= len(self.skills) else None

    def numbered(self) -> str:
        """Return the list as shown to the classifier: one ``N. name`` line per skill."""
        return "\n".join(f"{i}. {name}" for i, name in enumerate(self.skills, 1))

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form: schema, version and the ranked skills with counts."""
        return {
            "schema": VOCABULARY_SCHEMA,
            "version": _VOCABULARY_VERSION,
            "skills": [{"name": n, "count": int(self.counts.get(n, 0))} for n in self.skills],
        }

    @classmethod
    def from_json(cls, data: Any) -> Vocabulary:
        """Read the JSON form; a malformed document raises ConfigError naming the field."""
        if not isinstance(data, dict) or data.get("schema") != VOCABULARY_SCHEMA:
            raise ConfigError(f"not a vocabulary document (schema must be {VOCABULARY_SCHEMA!r})")
        if data.get("version") != _VOCABULARY_VERSION:
            raise ConfigError(f"vocabulary version {data.get('version')!r} is not {_VOCABULARY_VERSION}")
        entries = data.get("skills")
        if not isinstance(entries, list):
            raise ConfigError("vocabulary field 'skills' must be a list")
        names, counts = [], {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ConfigError(f"vocabulary field skills[{i}].name must be a string")
            count = entry.get("count", 0)
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ConfigError(f"vocabulary field skills[{i}].count must be a non-negative integer")
            names.append(entry["name"])
            counts[entry["name"]] = count
        return cls(tuple(names), counts)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON (atomically: a temporary file renamed into place)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary saved with :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read vocabulary {path}: {exc}") from None
        return cls.from_json(data)


def build_vocabulary(skill_lists: Iterable[Iterable[str]], m: int = DEFAULT_M) -> Vocabulary:
    """Return the ``m`` most frequent normalised skills (each counted once per seed; ties by name)."""
    if m < 1:
        raise ConfigError(f"m (vocabulary size) must be >= 1, got {m}")
    counts: Counter[str] = Counter()
    for phrases in skill_lists:
        names = {normalise_skill(p) for p in phrases if isinstance(p, str)}
        counts.update(n for n in names if _valid_name(n))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:m]
    return Vocabulary(tuple(n for n, _ in ranked), dict(ranked))


def _resolve(piece: str, vocab: Vocabulary) -> str | None:
    candidates = [piece, _ENUMERATOR.sub("", piece, count=1)]
    if ":" in piece:
        candidates.append(piece.rsplit(":", 1)[1])
    for text in candidates:
        name = normalise_skill(text)
        if name in vocab:
            return name
    for text in candidates:
        number = _NUMBER.fullmatch(text)
        if number:
            return vocab.skill(int(number.group(1)))
    return None


def parse_skill_answer(answer: Any, vocab: Vocabulary, max_skills: int = MAX_SKILLS) -> tuple[list[str], str]:
    """Return (sorted known skills, at most ``max_skills``; a reason) for a classifier answer; never raises."""
    try:
        return _parse_skill_answer(answer, vocab, max_skills)
    except Exception as exc:  # the contract: a malformed answer is a reason, never an exception
        return [], f"unparseable answer: {type(exc).__name__}: {exc}"


def _parse_skill_answer(answer: Any, vocab: Vocabulary, max_skills: int) -> tuple[list[str], str]:
    if not 1 <= max_skills <= MAX_SKILLS:
        return [], f"max_skills must lie in [1, {MAX_SKILLS}], got {max_skills}"
    if not isinstance(answer, str):
        return [], f"answer is not text ({type(answer).__name__})"
    text = answer[:_MAX_ANSWER_CHARS]
    tagged = _TAG.search(text)
    if tagged:
        text = tagged.group(1)
    pieces = [p for p in _SPLIT.split(text) if p.strip()][:_MAX_PIECES]
    if not pieces:
        return [], "empty answer"
    found: list[str] = []
    unknown: list[str] = []
    for piece in pieces:
        name = _resolve(piece, vocab)
        parts = [name] if name else [_resolve(p, vocab) for p in _AND.split(piece)]
        if not any(parts):
            unknown.append(piece.strip()[:40])
        for part in parts:
            if part and part not in found:
                found.append(part)
    if not found:
        return [], f"no known skill in the answer ({len(unknown)} unknown item(s), e.g. {unknown[0]!r})"
    notes = []
    if unknown:
        notes.append(f"dropped {len(unknown)} unknown item(s)")
    if len(found) > max_skills:
        notes.append(f"kept the first {max_skills} of {len(found)} skills")
        found = found[:max_skills]
    return sorted(found), "; ".join(["ok", *notes])
