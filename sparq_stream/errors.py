"""Typed errors shared by every layer; each one says whether a retry can help."""

from __future__ import annotations

__all__ = [
    "SparqError",
    "RetriableError",
    "FatalError",
    "DecodeError",
    "InvalidValue",
    "ConfigError",
    "BrokerUnavailable",
]


class SparqError(Exception):
    """Base error; ``retriable`` tells the process wrapper whether to back off and retry."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable


class RetriableError(SparqError):
    """A passing failure (a backend is busy, a broker is away): retry after a back-off."""

    retriable = True


class FatalError(SparqError):
    """A failure that retrying cannot fix: the message goes to the dead-letter topic."""

    retriable = False


class DecodeError(FatalError):
    """Bytes that are not a valid message: bad msgpack, unknown schema, wrong version or fields."""


class InvalidValue(DecodeError):
    """A well-formed message whose value breaks a rule of its type (range, finiteness, enum, cross-field)."""


class ConfigError(FatalError):
    """A bad setting or flag; the message names the field and the allowed values."""


class BrokerUnavailable(RetriableError):
    """No Kafka broker answered at the bootstrap address."""
