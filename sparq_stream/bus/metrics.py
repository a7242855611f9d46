"""Per-process counters and gauges, published periodically to the metrics topic."""

from __future__ import annotations

import time
from collections import defaultdict

from sparq_stream.messages import Metric

__all__ = ["ServiceMetrics"]


class ServiceMetrics:
    """Counters (monotonic) and gauges (last value) of one service instance."""

    def __init__(self, service: str, instance: str, interval_s: float = 5.0) -> None:
        self.service = service
        self.instance = instance
        self.interval_s = interval_s
        self.counters: dict[str, float] = defaultdict(float)
        self.gauges: dict[str, float] = {}
        self._last_emit = time.monotonic()
        self.started_at = time.time()  # tells this incarnation's snapshots from a restarted one's

    def inc(self, name: str, value: float = 1.0) -> None:
        """Add to a counter."""
        self.counters[name] += value

    def set(self, name: str, value: float) -> None:
        """Set a gauge."""
        self.gauges[name] = value

    def due(self, now: float | None = None) -> bool:
        """True when a snapshot should be published."""
        return (now if now is not None else time.monotonic()) - self._last_emit >= self.interval_s

    def snapshot(self, extra: dict[str, float] | None = None) -> Metric:
        """Return a Metric message of the current values (core metrics become gauges)."""
        self._last_emit = time.monotonic()
        gauges = dict(self.gauges)
        gauges["started_at"] = self.started_at
        if extra:
            gauges.update({k: float(v) for k, v in extra.items()})
        return Metric(service=self.service, instance=self.instance, counters=dict(self.counters), gauges=gauges)
