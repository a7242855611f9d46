"""The diversity descriptor: a problem's skill-set and its stable string key (the niche).

A skill-set is a sorted, de-duplicated tuple of at most :data:`MAX_SKILLS` lower-cased
skill names. Its key joins the names with ``|`` (``"algebra|fractions|ratio"``); the
empty set has the key :data:`EMPTY_NICHE`. :func:`parse_niche` reads a key back and
accepts only canonical keys, so ``niche_key(parse_niche(k)) == k`` for every accepted ``k``.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from sparq_stream.errors import FatalError

__all__ = [
    "MAX_SKILLS",
    "SEPARATOR",
    "EMPTY_NICHE",
    "DescriptorError",
    "canonical_skills",
    "niche_key",
    "parse_niche",
    "niche_of",
]

#: The most skills a skill-set may hold (the paper's descriptor: at most 3 skills).
MAX_SKILLS = 3
#: Joins the skills of a skill-set in its key; a skill may not contain it.
SEPARATOR = "|"
#: The key of the empty skill-set (a problem no skill was assigned to).
EMPTY_NICHE = "(none)"

_SPACE = re.compile(r"\s+")


class DescriptorError(FatalError):
    """A skill-set that cannot be a descriptor: too many skills or a forbidden character."""


def _canonical_skill(skill: str) -> str:
    if not isinstance(skill, str):
        raise DescriptorError(f"a skill must be a string, got {type(skill).__name__}")
    name = _SPACE.sub(" ", skill).strip().lower()
    if SEPARATOR in name:
        raise DescriptorError(f"skill {skill!r} contains the separator {SEPARATOR!r}")
    if name == EMPTY_NICHE:
        raise DescriptorError(f"skill {skill!r} is the reserved empty-set key")
    return name


def canonical_skills(skills: Iterable[str]) -> tuple[str, ...]:
    """Return the canonical skill-set: whitespace collapsed, lower-cased, de-duplicated, sorted."""
    names = {_canonical_skill(s) for s in skills}
    names.discard("")
    if len(names) > MAX_SKILLS:
        raise DescriptorError(f"a skill-set holds at most {MAX_SKILLS} skills, got {len(names)}: {sorted(names)}")
    return tuple(sorted(names))


def niche_key(skills: Iterable[str]) -> str:
    """Return the stable string key of a skill-set (``EMPTY_NICHE`` for the empty set)."""
    names = canonical_skills(skills)
    return SEPARATOR.join(names) if names else EMPTY_NICHE


def parse_niche(key: str) -> tuple[str, ...]:
    """Return the skill-set of a canonical niche key; a non-canonical key raises DescriptorError."""
    if not isinstance(key, str):
        raise DescriptorError(f"a niche key must be a string, got {type(key).__name__}")
    if key == EMPTY_NICHE:
        return ()
    skills = canonical_skills(key.split(SEPARATOR))
    if not skills or SEPARATOR.join(skills) != key:
        raise DescriptorError(f"{key!r} is not a canonical niche key (expected {niche_key(skills)!r})")
    return skills


def niche_of(item: Any) -> str:
    """Return an item's niche: its ``niche`` field when set, else the key of its ``skills``."""
    niche = getattr(item, "niche", "")
    if isinstance(niche, str) and niche:
        return niche
    return niche_key(getattr(item, "skills", None) or ())
