"""The synchronous barrier: a step settles once the archivist's watermarks cover its results.

The archivist writes a :class:`~sparq_stream.messages.Watermark` to every partition of
``elites`` after each batch, once that batch's elite records are acknowledged. The mutator
remembers where each of a step's results sits in ``solved`` (partition, offset); the step
settles when a watermark covering all of them was read in every elites partition, which
means the elites table was read past every record those results produced. No timeout: a
broker or archivist outage only delays the step, W is never stale.
"""

from __future__ import annotations

from sparq_stream.core import Inbound, fanout_of
from sparq_stream.messages import Watermark

__all__ = ["WatermarkBarrier"]


class WatermarkBarrier:
    """The watermarks read so far, per elites partition (each only ever grows)."""

    def __init__(self) -> None:
        """Start with no watermark read."""
        self._marks: dict[int, dict[int, int]] = {}
        self._count = 0

    def observe(self, inbound: Inbound) -> bool:
        """Apply one watermark record of the elites table; False when it is not a usable copy."""
        message = inbound.message
        fan = fanout_of(inbound)
        if not isinstance(message, Watermark) or message.source != "solved" or fan is None:
            return False
        partition, count = fan
        self._count = max(self._count, count)
        mark = self._marks.setdefault(partition, {})
        for part, offset in message.offsets.items():
            if part.isdigit():
                mark[int(part)] = max(mark.get(int(part), 0), offset)
        return True

    def covers(self, need: dict[int, int]) -> bool:
        """True once every elites partition holds a watermark at or past each (solved partition, next offset)."""
        if not self._count or len(self._marks) < self._count:
            return False
        return all(mark.get(p, 0) >= offset for mark in self._marks.values() for p, offset in need.items())
