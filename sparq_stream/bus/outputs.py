"""The output rules every runner follows: send order (``after`` last) and fan-out copies.

The Kafka process wrapper and the in-memory bus both place a core's outputs with these two
functions, so the sequential reference and the streaming run order and label them alike.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from sparq_stream.core import EVERY_PARTITION, FANOUT_HEADER

__all__ = ["fanout_copies", "send_phases"]

_T = TypeVar("_T")
_Headers = tuple[tuple[str, bytes], ...]


def send_phases(items: Sequence[_T], is_after: Callable[[_T], bool]) -> tuple[list[_T], list[_T]]:
    """Split outputs into the two send phases: the ordinary ones, then those flagged ``after`` (in order)."""
    return [i for i in items if not is_after(i)], [i for i in items if is_after(i)]


def fanout_copies(partition: int | None, partitions: Sequence[int]) -> list[tuple[int | None, _Headers]]:
    """Where one output goes: ``(partition, extra headers)`` once, or once per partition for ``EVERY_PARTITION``.

    Each copy of an ``EVERY_PARTITION`` output carries :data:`FANOUT_HEADER` ``b"<partition>/<count>"``.
    """
    if partition != EVERY_PARTITION:
        return [(partition, ())]
    return [(p, ((FANOUT_HEADER, f"{p}/{len(partitions)}".encode()),)) for p in partitions]
