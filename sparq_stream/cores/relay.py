"""A pass-through core: re-emits every message of one topic to another, unchanged and keyed the same."""

from __future__ import annotations

from sparq_stream.core import BaseCore, Inbound, Outgoing

__all__ = ["RelayCore"]


class RelayCore(BaseCore):
    """Copies messages from ``source`` to ``target`` (topic mirroring, and the bus benchmark's no-op hop)."""

    name = "relay"

    def __init__(self, source: str, target: str) -> None:
        self.inputs = (source,)
        self.target = target

    def handle(self, inbound: Inbound) -> list[Outgoing]:
        """Re-emit the message (or tombstone) under the same key."""
        return [Outgoing(self.target, inbound.message, key=inbound.key)]
