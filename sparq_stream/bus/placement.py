"""Encoding and placing a batch's outputs: refused ones dead-letter their input, fan-out and spread copies."""

from __future__ import annotations

import zlib
from typing import Any, Callable, Sequence

from sparq_stream.bus.context import ProcessContext
from sparq_stream.bus.dlq import record_size
from sparq_stream.bus.outputs import fanout_copies
from sparq_stream.bus.records import Coords, DeadLetter, Encoded, OutputCopy, coords, spreads
from sparq_stream.core import EVERY_PARTITION, Outgoing
from sparq_stream.messages import encode

__all__ = ["Placement"]


class Placement:
    """Turns ``(output, input record)`` pairs into records to send, and remembers what the broker refused.

    ``poisoned``: inputs whose outputs the broker refused for good (dead-lettered on the next
    try); ``poisoned_ticks``: the same for tick outputs (by ``id()`` of the carried output).
    """

    def __init__(self, ctx: ProcessContext, max_record: int, partitions_for: Callable[[str], Any]) -> None:
        self.ctx = ctx
        self.max_record = max_record
        self.partitions_for = partitions_for
        self.poisoned: dict[Coords, tuple[str, str]] = {}  # input -> (error type, reason): dead-letter on redo
        self.poisoned_ticks: dict[int, tuple[str, str]] = {}  # id() of a carried tick output -> reason
        self._turns: dict[str, int] = {}  # spread topics: the next partition's turn (starts at a hash of the instance)

    def screen(self, pairs: Sequence[tuple[Outgoing, Any]], dead: list[DeadLetter]) -> list[Encoded]:
        """Encode outputs; an input with an output that can never be sent is dead-lettered instead, with the reason."""
        outs: list[Encoded] = []
        refused: dict[Coords, tuple[str, str]] = {}
        for out, source in pairs:
            key = out.resolved_key()
            item = Encoded(
                out,
                source,
                self.ctx.names.resolve(out.topic),
                key.encode("utf-8") if key is not None else None,
                None if out.message is None else encode(out.message),
                list(out.headers),
                out.partition,
            )
            size = record_size(item.key, item.value, item.headers)
            reason = self.poisoned.get(coords(source)) if source is not None else self.poisoned_ticks.pop(id(out), None)
            if reason is None and size > self.max_record:
                reason = (
                    "MessageSizeTooLargeError",
                    f"output to {item.topic} is {size} bytes, over max_request_size {self.max_record}",
                )
            if reason is None:
                outs.extend(self._placed(item))
            elif source is None:  # a tick output: its own (truncated) copy is the dead letter
                self.ctx.log.error("output to %s dead-lettered: %s", item.topic, reason[1])
                dead.append(DeadLetter(OutputCopy(item.topic, item.key, item.value, item.headers), *reason))
            else:
                refused.setdefault(coords(source), reason)
        if refused:
            outs = [o for o in outs if o.source is None or coords(o.source) not in refused]
            sources = {coords(s): s for _, s in pairs if s is not None}
            for where, (error_type, error) in refused.items():
                self.ctx.log.error("%s[%d]@%d dead-lettered: %s", *where, error)
                self.ctx.metrics.inc("output_refused")
                dead.append(DeadLetter(sources[where], error_type, error))
        return outs

    def _placed(self, item: Encoded) -> list[Encoded]:
        """One output, or one copy per partition (with the fan-out header) for an ``EVERY_PARTITION`` output.

        On a ``spread`` topic (``novel``) an output without a partition goes to the next partition
        round-robin, and its consumers' group assigns partition i to member i mod N: any run of n
        records gives each of N members n/N (+-1) when N divides the partition count, where key
        hashing gave a synchronous step's 64 ids to the replicas unevenly and the replica holding
        the most set the step's pace. The key stays the problem id (compaction, key checks, DLQ).
        """
        if item.partition is None and spreads(self.ctx.names, item.topic):
            parts = sorted(self.partitions_for(item.topic) or ())
            if parts:
                turn = self._turns.get(item.topic, zlib.crc32(self.ctx.settings.instance.encode()))
                self._turns[item.topic] = turn + 1
                item.partition = parts[turn % len(parts)]
            return [item]
        if item.partition != EVERY_PARTITION:
            return [item]
        parts = sorted(self.partitions_for(item.topic) or ())
        return [
            Encoded(item.outgoing, item.source, item.topic, item.key, item.value, [*item.headers, *extra], p)
            for p, extra in fanout_copies(item.partition, parts)
        ]
