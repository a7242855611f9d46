"""The process's producer: made, flushed in bounded slices, aborted, replaced and closed."""

from __future__ import annotations

import time
from typing import Any, Callable

from kafka.errors import InvalidProducerEpochError, KafkaError, KafkaTimeoutError, ProducerFencedError

from sparq_stream.bus.client import make_producer
from sparq_stream.bus.context import ProcessContext
from sparq_stream.errors import SparqError

__all__ = ["FENCED_ERRORS", "ProducerSlot", "force_close"]

#: Another producer took over this transactional id: this process must end.
FENCED_ERRORS = (ProducerFencedError, InvalidProducerEpochError)


class ProducerSlot:
    """Holds the one producer of a process and replaces it when it can no longer deliver.

    Under exactly-once it is transactional with the id ``transactional_id()`` answers (it can
    change: the active replica of an exclusive core takes the role's id), and a new one's
    ``init_transactions`` fences the previous holder of that id and aborts its transaction.
    """

    def __init__(self, ctx: ProcessContext, transactional_id: Callable[[], str]) -> None:
        self.ctx = ctx
        self.transactional_id = transactional_id
        self.txn = ctx.settings.processing_guarantee == "exactly_once"
        self.producer: Any = None

    def new(self) -> Any:
        """A new producer (exactly-once: transactional, its transactions initialised)."""
        producer = make_producer(self.ctx.settings, transactional_id=self.transactional_id() if self.txn else None)
        if self.txn:
            producer.init_transactions()
        return producer

    def open(self) -> None:
        """Make the first producer."""
        self.producer = self.new()

    def reset(self) -> None:
        """Replace the producer now (a refused record leaves kafka-python's idempotent producer failed for good)."""
        force_close(self.producer)
        self.producer = None
        self.producer = self.new()  # exactly-once: init_transactions aborts the old one's transaction

    def replace_wedged(self, failed: int) -> bool:
        """Replace a producer whose deliveries keep timing out; keep it while no broker answers a new one."""
        try:
            fresh = self.new()
        except (SparqError, KafkaError) as exc:
            self.ctx.log.warning("%d deliveries failed in a row; no new producer yet: %s", failed, exc)
            return False
        self.ctx.log.warning("%d deliveries failed in a row: replaced the producer", failed)
        self.ctx.metrics.inc("producer_replacements")
        force_close(self.producer)
        self.producer = fresh
        return True

    def flush(self, bound_s: float) -> None:
        """Flush in short slices: give up after ``bound_s``, or soon after a stop request (the broker may be gone)."""
        deadline = time.monotonic() + bound_s
        while True:
            try:
                self.producer.flush(timeout=0.5)
                return
            except KafkaTimeoutError:
                if time.monotonic() >= deadline or self.ctx.lifecycle.stopped_for(1.0):
                    raise

    def abort(self) -> None:
        """Abort the open transaction, if any (exactly-once only)."""
        if self.txn:
            try:
                self.producer.abort_transaction()
            except KafkaError as exc:
                self.ctx.log.warning("abort_transaction: %s", exc)

    def close(self, bound_s: float) -> None:
        """Close within ``bound_s``; records still unsent then (the broker is gone) are dropped: they are uncommitted."""
        if self.producer is None:
            return
        try:
            self.producer.close(timeout=bound_s)
        except Exception as exc:  # noqa: BLE001 - closing must not mask the real exit reason
            self.ctx.log.warning("closing producer: %s: dropping unsent records", exc)
            force_close(self.producer)
        self.producer = None


def force_close(producer: Any) -> None:
    """Close a producer whose records cannot be delivered: stop its sender (aborting them), then close."""
    sender = getattr(producer, "_sender", None)
    try:
        if sender is not None:
            sender.force_close()
            sender.join(2)
        producer.close(timeout=1)
    except Exception:  # noqa: BLE001 - best effort at exit
        pass
