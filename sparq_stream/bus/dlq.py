"""Dead letters: the original bytes of a message that could not be handled, with why and whence."""

from __future__ import annotations

import hashlib
import time
from typing import Iterable

from kafka.record.default_records import DefaultRecordBatchBuilder

from sparq_stream.messages import DeadLetter

__all__ = ["dlq_headers", "dead_letter_from_record", "fit_record", "record_size", "HEADER_PREFIX"]

HEADER_PREFIX = "sparq.dlq."
_MAX_ERROR = 4000


def dlq_headers(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    error_type: str,
    error: str,
    service: str,
    original_headers: Iterable[tuple[str, bytes]] = (),
    instance: str = "",
) -> list[tuple[str, bytes]]:
    """Headers of a dead-letter record; the record's key and value are the original ones."""
    fields = {
        "source_topic": source_topic,
        "partition": str(partition),
        "offset": str(offset),
        "error_type": error_type,
        "error": error[:_MAX_ERROR],
        "service": service,
        "ts": f"{time.time():.3f}",
    }
    if instance:
        fields["instance"] = instance
    headers = [(HEADER_PREFIX + k, v.encode("utf-8", "replace")) for k, v in fields.items()]
    headers.extend((k, v) for k, v in original_headers if not k.startswith(HEADER_PREFIX))
    return headers


def record_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    """The size the producer checks against ``max_request_size`` (one record in its own batch)."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers))


def fit_record(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], limit: int
) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """Truncate a dead letter's value (and, if need be, drop the original headers) so the record fits ``limit``.

    A truncated copy carries ``sparq.dlq.truncated=true``, ``sparq.dlq.original_size`` and
    ``sparq.dlq.original_sha256`` (of the whole original value), so nothing is silently cut.
    """
    if record_size(key, value, headers) <= limit:
        return value, headers
    original = value or b""
    marks = [
        (HEADER_PREFIX + "truncated", b"true"),
        (HEADER_PREFIX + "original_size", str(len(original)).encode()),
        (HEADER_PREFIX + "original_sha256", hashlib.sha256(original).hexdigest().encode()),
    ]
    ours = [(k, v) for k, v in headers if k.startswith(HEADER_PREFIX)]
    for kept in (headers + marks, ours + marks + [(HEADER_PREFIX + "headers_dropped", b"true")]):
        room = limit - record_size(key, b"", kept) - 16  # 16: slack for the value's length varints
        if room >= 0:
            return original[:room], kept
    return b"", ours + marks  # a key near the limit: nothing of the value fits


def dead_letter_from_record(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]]) -> DeadLetter:
    """Rebuild the typed DeadLetter view of a record read from the dead-letter topic."""
    meta = {
        k[len(HEADER_PREFIX) :]: (v or b"").decode("utf-8", "replace")
        for k, v in headers
        if k.startswith(HEADER_PREFIX)
    }

    def _int(name: str) -> int:
        try:
            return max(-1, int(meta.get(name, "-1")))
        except ValueError:
            return -1

    try:
        ts = float(meta.get("ts", "0"))
    except ValueError:
        ts = 0.0
    if not 0.0 <= ts < float("inf"):  # a foreign writer's header: the typed view keeps only a valid time
        ts = 0.0
    return DeadLetter(
        source_topic=meta.get("source_topic", ""),
        partition=_int("partition"),
        offset=_int("offset"),
        original_key=key,
        error_type=meta.get("error_type", ""),
        error=meta.get("error", ""),
        service=meta.get("service", ""),
        instance=meta.get("instance", ""),
        original=value or b"",
        ts=ts,
    )
