"""``sparq up --replicas SERVICE=N``: how many processes of each service, their names and per-replica flags.

Each replica gets a stable instance name (``<service>-<i>``; a service run once keeps its plain
name, the solver is always ``solver-<i>``), which is also its metrics key and, under
exactly-once, its transactional id ``<group>.<instance>``: a restarted replica fences its own
predecessor. How the replicas of each service share the work:

- solver: the partitions of ``novel`` (a consumer group);
- novelty: the partitions of ``candidates``, each candidate first moved to the partition of its
  embedding bucket (``--route-partitions``), so near duplicates meet on one replica; each replica
  snapshots its own index (replica 0 in ``out/state/<prefix>/novelty``);
- archivist, trainer: one active replica, the others hot standbys (``sparq_stream.bus.lease``);
  each archivist replica writes its own copy of the archive on disk (replica 0 in ``out/archive``);
- mutator: replica 0 samples each step's parents from W and publishes the plan on
  ``mutator-state``; replica i generates every N-th parent unit from i, reads every outcome (a
  consumer group of its own) and keeps its own state record; replica 0 opens the next step once
  every replica's share is accounted for and W shows all their results (synchronous rounds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparq_stream.cores.routing import default_planes
from sparq_stream.errors import ConfigError

__all__ = ["REPLICATED", "SERVICES", "check_replicas", "replica_names", "replica_values"]

SERVICES = ("archivist", "trainer", "novelty", "solver", "mutator")
"""Every service of the loop, in the order ``sparq up`` starts them."""

REPLICATED = {
    "solver": "replicas share the partitions of novel",
    "novelty": "replicas share the partitions of candidates, routed by embedding bucket",
    "archivist": "one active replica, the others hot standbys",
    "trainer": "one active replica, the others hot standbys",
    "mutator": "replicas share each step's parents; replica 0 samples and plans each step",
}
"""Services that run as more than one process, and how the replicas share the work."""


def check_replicas(service: str, count: int) -> None:
    """Raise ConfigError unless ``service`` may run as ``count`` processes."""
    allowed = ", ".join(sorted(REPLICATED))
    if service not in SERVICES:
        raise ConfigError(f"--replicas: unknown service {service!r}; allowed: {allowed}")
    if count < 1:
        raise ConfigError(f"--replicas {service}={count}: N must be >= 1")
    if count > 1 and service not in REPLICATED:
        raise ConfigError(f"--replicas {service}={count}: {service} runs as one process; services with replicas: {allowed}")


def replica_names(service: str, count: int) -> list[str]:
    """The stable instance names of a service's replicas."""
    if service == "solver" or count > 1:
        return [f"{service}-{i}" for i in range(count)]
    return [service]


def replica_values(service: str, index: int, name: str, out: Path, state: Path, count: int = 1, partitions: int = 1) -> dict[str, Any]:
    """Settings one replica needs besides its service's (they win): its own folders, the routing.

    ``state`` is the run's folder of local caches (``out/state/<prefix>``): a replica's cache is bound to its run.
    """
    values: dict[str, Any] = {}
    if service == "archivist" and index > 0:
        values["archive_dir"] = str(out.resolve() / "replicas" / name / "archive")
    if service == "mutator" and count > 1:
        values.update(replica_count=count, replica_index=index)
        if index > 0:
            values["state_dir"] = str(state / name)
    if service == "novelty" and count > 1:
        values.update(route_partitions=partitions, route_planes=default_planes(count))
        if index > 0:
            values["state_dir"] = str(state / name)
    return values
