"""One active replica per consumer group: a partition assignor that gives every partition to one member.

A service whose state is one global structure (the archivist's W, the trainer's model versions)
runs as an active replica and hot standbys. They share one consumer group; the
:class:`OneActiveAssignor` hands *all* partitions of the subscribed topics to one member, so
only that member gets input, and the group coordinator decides who it is:

- the member that held the partitions keeps them (sticky: a standby joining or leaving does
  not move work);
- else the member that started first (a hot standby wins over a replica just restarted
  after a crash, which would first have to read its tables again);
- else the smallest instance name.

A member that is killed stops heartbeating; after ``session_timeout_ms`` the coordinator drops
it and the assignor gives everything to a standby. The group generation fences the old
member's offset commits, and under exactly-once the new active takes over the transactional id
of the role (:func:`active_transactional_id`), which aborts the old one's open transaction.

A service with no input topic holds its lease on a topic it subscribes to only for that
(:class:`LeaseWatch` pauses the partitions: nothing is fetched).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from kafka import TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment, ConsumerProtocolSubscription

__all__ = ["OneActiveAssignor", "LeaseWatch", "choose_active", "active_transactional_id"]

ASSIGNOR_NAME = "sparq-one-active"


def active_transactional_id(group_id: str) -> str:
    """The transactional id of whichever replica is active: a new active fences the old one's producer."""
    return f"{group_id}.active"


def choose_active(candidates: list[tuple[str, dict[str, Any]]]) -> str | None:
    """The member to get every partition: ``(member_id, {held, started, instance})`` pairs in, a member id out."""
    if not candidates:
        return None

    def rank(item: tuple[str, dict[str, Any]]) -> tuple[int, float, str, str]:
        member_id, info = item
        return (0 if info.get("held") else 1, float(info.get("started", 0.0)), str(info.get("instance", "")), member_id)

    return min(candidates, key=rank)[0]


def _decode(user_data: Any) -> dict[str, Any]:
    try:
        data = json.loads(bytes(user_data or b"{}"))
    except (ValueError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


class OneActiveAssignor(AbstractPartitionAssignor):
    """Every partition of every subscribed topic to one member (see the module docstring for which)."""

    name = ASSIGNOR_NAME
    version = 0

    def __init__(self, instance: str, started: float | None = None) -> None:
        self.instance = instance
        self.started = time.time() if started is None else started
        self.held = False

    def assign(self, cluster: Any, members: Any) -> dict[str, Any]:
        """Give every partition to the chosen member, nothing to the others."""
        topics: set[str] = set()
        candidates = []
        for member in members:
            topics.update(member.metadata.topics)
            candidates.append((member.member_id, _decode(member.metadata.user_data)))
        winner = choose_active(candidates)
        everything = []
        for topic in sorted(topics):
            parts = cluster.partitions_for_topic(topic)
            if parts:
                everything.append((topic, sorted(parts)))
        return {
            member.member_id: ConsumerProtocolAssignment(self.version, everything if member.member_id == winner else [], b"")
            for member in members
        }

    def metadata(self, topics: Any) -> Any:
        """Subscribe with this member's claim: whether it holds the partitions, when it started, its name."""
        claim = json.dumps({"held": self.held, "started": self.started, "instance": self.instance}).encode()
        return ConsumerProtocolSubscription(self.version, list(topics), claim)

    def on_assignment(self, assignment: Any, generation: int) -> None:
        """Remember whether this member is the active one (it claims the partitions on the next join)."""
        self.held = bool(assignment.partitions())


class LeaseWatch(ConsumerRebalanceListener):
    """Tells the process wrapper whether this replica holds the lease (the group gave it partitions)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: frozenset[TopicPartition] = frozenset()
        self._joined = False
        self._generations = 0

    def on_partitions_revoked(self, revoked: Any) -> None:
        """A rebalance starts; the outcome comes with the assignment."""

    def on_partitions_assigned(self, assigned: Any) -> None:
        """A rebalance ended: this member holds ``assigned`` (empty: it is a standby)."""
        with self._lock:
            self._held = frozenset(assigned)
            self._joined = True
            self._generations += 1

    @property
    def joined(self) -> bool:
        """True once the group answered a first time (either role)."""
        with self._lock:
            return self._joined

    @property
    def active(self) -> bool:
        """True while the group gives this member the partitions."""
        with self._lock:
            return bool(self._held)

    @property
    def held(self) -> frozenset[TopicPartition]:
        """The partitions held now."""
        with self._lock:
            return self._held
