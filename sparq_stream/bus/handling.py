"""Handing a batch to the core: retries of retriable errors, and dead letters for the culprits only."""

from __future__ import annotations

from typing import Any, Callable

from sparq_stream.bus.context import ProcessContext
from sparq_stream.bus.records import DeadLetter, coords
from sparq_stream.core import Core, Inbound, Outgoing
from sparq_stream.errors import FatalError, SparqError

__all__ = ["Handler"]


class Handler:
    """Runs ``handle_batch`` (then ``handle`` one by one when a batch fails) with retries and backoff."""

    def __init__(self, ctx: ProcessContext, core: Core) -> None:
        self.ctx = ctx
        self.core = core

    def handle(self, batch: list[Inbound], records: list[Any]) -> tuple[list[tuple[Outgoing, Any]], list[DeadLetter]]:
        """Handle a batch; on failure fall back to one message at a time so only the culprit is dead-lettered.

        Returns each output with the input record that produced it.
        """
        by_coords = {coords(r): r for r in records}

        def source(item: Inbound) -> Any:
            return by_coords[(self.ctx.names.resolve(item.topic), item.partition, item.offset)]

        try:
            per_item = self.with_retries(lambda: self.core.handle_batch(batch), what=f"batch of {len(batch)}")
            if len(per_item) != len(batch):
                raise FatalError(f"handle_batch returned {len(per_item)} output lists for {len(batch)} inputs")
            return [(out, source(item)) for item, outs in zip(batch, per_item) for out in outs], []
        except Exception as exc:  # noqa: BLE001 - isolate the culprit below
            if len(batch) == 1:
                return [], [self._dead_for(batch[0], source(batch[0]), exc)]
            self.ctx.log.warning("batch failed (%s: %s): retrying one message at a time", type(exc).__name__, exc)
        pairs: list[tuple[Outgoing, Any]] = []
        dead: list[DeadLetter] = []
        for item in batch:
            try:
                outs = self.with_retries(lambda item=item: self.core.handle(item), what=f"offset {item.offset}")
                pairs.extend((out, source(item)) for out in outs)
            except Exception as exc:  # noqa: BLE001 - any handler error dead-letters that message
                dead.append(self._dead_for(item, source(item), exc))
        return pairs, dead

    def _dead_for(self, item: Inbound, rec: Any, exc: BaseException) -> DeadLetter:
        self.ctx.metrics.inc("handler_errors")
        self.ctx.log.error("message %s[%d]@%d dead-lettered: %s: %s", item.topic, item.partition, item.offset, type(exc).__name__, exc)
        return DeadLetter(rec, type(exc).__name__, str(exc) or repr(exc))

    def with_retries(self, fn: Callable[[], Any], what: str) -> Any:
        """Call ``fn``, retrying a retriable SparqError with exponential backoff (a stop request ends the wait)."""
        settings = self.ctx.settings
        delay = settings.retry_backoff_ms / 1000
        for attempt in range(1, settings.retry_max_attempts + 1):
            try:
                return fn()
            except SparqError as exc:
                if not exc.retriable or attempt == settings.retry_max_attempts:
                    raise
                self.ctx.metrics.inc("retries")
                self.ctx.log.warning("%s: retriable %s (attempt %d): %s; retrying in %.2fs", what, type(exc).__name__, attempt, exc, delay)
                if self.ctx.lifecycle.wait(delay):
                    raise
                delay = min(delay * 2 or 0.05, settings.retry_backoff_max_ms / 1000)
        raise AssertionError("unreachable")
