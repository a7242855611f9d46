"""The active-replica role of an ``exclusive`` core: one active replica, the others hot standbys.

Only the replica the group gives the partitions (of its inputs, or of a lease topic for a
core without inputs) handles input and ticks (:mod:`sparq_stream.bus.lease`). On taking over
it first takes the role's transactional id ``<group>.active`` under exactly-once (fencing the
previous active: its open transaction, which would hold the read-committed tables back until
it timed out, is aborted), then reads its tables to their end (what the previous active
wrote), then goes on from the committed offsets. An active replica that loses the partitions
(it stalled past the session timeout) exits, so it is restarted as a standby.
"""

from __future__ import annotations

import time
from typing import Any

from sparq_stream.bus.client import make_consumer
from sparq_stream.bus.context import ProcessContext
from sparq_stream.bus.lease import LeaseWatch, OneActiveAssignor, active_transactional_id
from sparq_stream.bus.producer import ProducerSlot
from sparq_stream.bus.tables import TableFollower
from sparq_stream.core import Core
from sparq_stream.errors import RetriableError

__all__ = ["Role"]


class Role:
    """This replica's role; a core that is not ``exclusive`` is always active.

    A ``group_member`` core reads every partition of its inputs: it gets a consumer group of its
    own, ``<group>.<group_member>`` (unless ``group_id`` is set).
    """

    def __init__(self, ctx: ProcessContext, core: Core) -> None:
        self.ctx = ctx
        self.core = core
        self.exclusive = bool(core.exclusive)
        self.lease: LeaseWatch | None = LeaseWatch() if self.exclusive else None
        self.active = not self.exclusive
        self.consumer: Any = None  # an exclusive core without inputs holds its lease here
        member = core.group_member
        if member is not None and not ctx.settings.group_id:  # a replica that reads every partition of its inputs
            ctx.group_id = f"{ctx.settings.prefix}.{ctx.name}.{member}"

    @property
    def joined(self) -> bool:
        """True once an exclusive replica is a stable member of its group (active or standby)."""
        return self.lease is not None and self.lease.joined

    def assignor(self) -> OneActiveAssignor | None:
        """The assignor that gives every partition to one member (exclusive cores only)."""
        return OneActiveAssignor(self.ctx.settings.instance) if self.exclusive else None

    def open(self, has_inputs: bool) -> None:
        """Without inputs, join the lease topic's group; tell an exclusive core it starts as a standby."""
        if not self.exclusive:
            return
        if not has_inputs:
            lease_topic = self.ctx.names.resolve(self.core.lease_topic or self.core.tables[0])
            self.consumer = make_consumer(self.ctx.settings, self.ctx.group_id, lease_topic, assignor=self.assignor(), listener=self.lease)
        self.core.set_active(False)

    def poll_lease(self) -> None:
        """Keep the lease consumer in its group; its partitions stay paused (nothing is fetched)."""
        self.consumer.poll(timeout_ms=self.ctx.settings.poll_timeout_ms, max_records=1)  # records, if any, are not ours to read
        held = self.consumer.assignment()
        if held and set(held) - set(self.consumer.paused()):
            self.consumer.pause(*held)

    def check(self, producers: ProducerSlot, tables: TableFollower) -> bool:
        """Follow the group's choice of the active replica; return True while this one is it."""
        assert self.lease is not None
        active = self.lease.active
        if active and not self.active:
            self._take_over(producers, tables)
        elif self.active and not active and self.lease.joined:
            self.ctx.metrics.inc("leases_lost")
            raise RetriableError(
                f"{self.core.name}: instance {self.ctx.settings.instance} lost the active role (the group gave it to another "
                "replica, e.g. after a stall past the session timeout): exiting so it is restarted as a standby"
            )
        return self.active

    def _take_over(self, producers: ProducerSlot, tables: TableFollower) -> None:
        """Become the active replica: the role's transactional id (exactly-once), then the tables read to their end."""
        started = time.monotonic()
        self.active = True
        if producers.txn:  # init_transactions under <group>.active fences the previous active and aborts its transaction
            producers.reset()
        tables.catch_up()
        self.core.set_active(True)
        self.ctx.metrics.inc("takeovers")
        self.ctx.log.info(
            "%s: instance %s is now the active replica (tables caught up in %.2fs)",
            self.core.name, self.ctx.settings.instance, time.monotonic() - started,
        )

    def transactional_id(self) -> str:
        """``<group>.<instance>``: stable per replica; the active replica of an exclusive core uses the role's id."""
        if self.exclusive and self.active:
            return active_transactional_id(self.ctx.group_id)
        return f"{self.ctx.group_id}.{self.ctx.settings.instance}"
