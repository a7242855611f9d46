"""Problem ids: a content hash of the normalised problem text, and the check that a message's id is that hash.

The rule (docs/wire.md, "Problem ids"): NFKC-normalise the text, replace every run of
whitespace (Python ``\\s``, Unicode-aware) by one space, strip leading and trailing
whitespace, case-fold (``str.casefold``, full Unicode case folding, e.g. "ß" -> "ss"),
encode as UTF-8, take sha256, and keep the first 32 lower-case hex digits.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

from sparq_stream.errors import DecodeError

__all__ = ["normalise_text", "problem_id", "IdMismatch", "KeyMismatch", "check_id", "check_key"]

_SPACE = re.compile(r"\s+")


class IdMismatch(DecodeError):
    """A message whose ``id`` is not the problem id of its ``problem`` text (never retriable)."""


class KeyMismatch(DecodeError):
    """A record whose Kafka key is not its message's own key (never retriable)."""


def normalise_text(text: str) -> str:
    """Normalise problem text for hashing: NFKC, whitespace collapsed and stripped, case-folded."""
    text = unicodedata.normalize("NFKC", text)
    return _SPACE.sub(" ", text).strip().casefold()


def problem_id(text: str) -> str:
    """Return the stable id of a problem: the first 32 hex digits of sha256(normalised text)."""
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()[:32]


def check_id(message: Any) -> None:
    """Raise :class:`IdMismatch` when a message carrying problem text has an id that is not its problem id.

    Messages without both an ``id`` and a non-empty ``problem`` (metrics, models, dead
    letters, a dropped record that left its text out) pass unchecked.
    """
    text = getattr(message, "problem", None)
    given = getattr(message, "id", None)
    if not isinstance(text, str) or not text or not isinstance(given, str):
        return
    expected = problem_id(text)
    if given != expected:
        schema = getattr(message, "SCHEMA", type(message).__name__)
        raise IdMismatch(f"{schema}: id {given[:64]!r} is not the problem id of its text (expected {expected!r})")


def check_key(key: bytes | None, message: Any) -> None:
    """Raise :class:`KeyMismatch` when a keyed record's key is not its message's own key (``kafka_key()``).

    Consumers are idempotent by key, so a valid message under a foreign key would be a second
    copy of that problem (or overwrite another slot of a compacted topic). Records without a
    key, and messages without a key of their own, pass unchecked.
    """
    own = message.kafka_key() if message is not None and hasattr(message, "kafka_key") else None
    if key is None or own is None:
        return
    got = key.decode("utf-8", "replace")
    if got != own:
        schema = getattr(message, "SCHEMA", type(message).__name__)
        raise KeyMismatch(f"{schema}: record key {got[:64]!r} is not the message's key {own[:64]!r}")
