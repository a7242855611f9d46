"""Problem ids: a content hash of the normalised problem text."""

from __future__ import annotations

import hashlib
import re
import unicodedata

__all__ = ["normalise_text", "problem_id"]

_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Normalise problem text for hashing: NFKC, case-folded, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text)
    return _SPACE.sub(" ", text).strip().casefold()


def problem_id(text: str) -> str:
    """Return the stable id of a problem: the first 32 hex digits of sha256(normalised text)."""
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()[:32]
