"""What every part of a service process shares: its name, settings, topics, log, metrics and stop."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sparq_stream.bus.lifecycle import Lifecycle
from sparq_stream.bus.metrics import ServiceMetrics
from sparq_stream.bus.ops_http import Probes
from sparq_stream.bus.topics import TopicNames
from sparq_stream.settings import ServiceSettings

__all__ = ["ProcessContext"]


@dataclass
class ProcessContext:
    """The shared, read-mostly state of one service process (``group_id`` is settled once the core is known)."""

    name: str
    settings: ServiceSettings
    names: TopicNames
    group_id: str
    log: logging.Logger
    metrics: ServiceMetrics
    probes: Probes
    lifecycle: Lifecycle
    ends: Any = None  # the end-marker plan (sparq_stream.bus.markers.EndPlan), set once the core is known

    @classmethod
    def create(cls, name: str, settings: ServiceSettings) -> ProcessContext:
        """The context of service ``name``: its group, logger, metrics, probes and stop."""
        log = logging.getLogger(f"sparq.{name}")
        probes = Probes(
            stale_after_s=settings.max_poll_interval_ms / 1000,
            broker_stale_s=max(3 * settings.metrics_interval_s, settings.session_timeout_ms / 1000),
        )
        return cls(
            name=name,
            settings=settings,
            names=TopicNames(settings.prefix),
            group_id=settings.group_id or f"{settings.prefix}.{name}",
            log=log,
            metrics=ServiceMetrics(name, settings.instance, settings.metrics_interval_s),
            probes=probes,
            lifecycle=Lifecycle(probes, settings.shutdown_timeout_s, log),
        )
