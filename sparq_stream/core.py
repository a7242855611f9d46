"""The contract between a pure service core and the process wrapper that runs it.

A core never touches Kafka: it receives decoded :class:`Inbound` messages and
returns :class:`Outgoing` ones naming a *logical* topic ("candidates", "elites"...);
the wrapper maps logical names to prefixed Kafka topics, produces, waits for the
broker's acknowledgement and only then commits the input offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from sparq_stream.messages import Message

__all__ = ["Inbound", "Outgoing", "Core", "BaseCore"]


@dataclass(frozen=True)
class Inbound:
    """One decoded input message and where it came from (``message`` is None for a tombstone)."""

    topic: str
    key: str | None
    message: Message | None
    partition: int = 0
    offset: int = 0
    timestamp_ms: int = 0


@dataclass(frozen=True)
class Outgoing:
    """One output: a message (or a tombstone when ``message`` is None) for a logical topic."""

    topic: str
    message: Message | None
    key: str | None = None
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)

    def resolved_key(self) -> str | None:
        """Return the explicit key, or the message's own key (the problem id)."""
        if self.key is not None:
            return self.key
        return self.message.kafka_key() if self.message is not None else None


@runtime_checkable
class Core(Protocol):
    """What the process wrapper needs from a service core."""

    name: str
    inputs: tuple[str, ...]
    tables: tuple[str, ...]

    def handle(self, inbound: Inbound) -> list[Outgoing]:
        """Handle one message; raise a retriable SparqError to be retried, any other to dead-letter it."""
        ...

    def handle_batch(self, batch: Sequence[Inbound]) -> list[list[Outgoing]]:
        """Handle a batch; return one list of outputs per input, in order."""
        ...

    def on_table(self, inbound: Inbound) -> list[Outgoing]:
        """Apply one record of a table topic (read whole from the beginning by every replica)."""
        ...

    def tick(self, now: float) -> list[Outgoing]:
        """Called after every poll, also when idle: emit work that needs no input (sources, timers)."""
        ...

    def metrics(self) -> dict[str, float]:
        """Return the core's own counters and gauges for the metrics topic."""
        ...

    def close(self) -> None:
        """Flush and release resources on shutdown."""
        ...


class BaseCore:
    """Convenience base: per-message batches, no tables, no timers, no metrics."""

    name: str = "core"
    inputs: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()

    def handle(self, inbound: Inbound) -> list[Outgoing]:
        """Handle one message (override this)."""
        raise NotImplementedError

    def handle_batch(self, batch: Sequence[Inbound]) -> list[list[Outgoing]]:
        """Handle each message of the batch in turn."""
        return [self.handle(item) for item in batch]

    def on_table(self, inbound: Inbound) -> list[Outgoing]:
        """Ignore table records unless overridden."""
        return []

    def tick(self, now: float) -> list[Outgoing]:
        """Emit nothing on ticks unless overridden."""
        return []

    def metrics(self) -> dict[str, float]:
        """No core metrics unless overridden."""
        return {}

    def close(self) -> None:
        """Nothing to release unless overridden."""
