"""Per-process counters, gauges, the handle-latency histogram and per-partition lag.

Published periodically to the metrics topic and served to Prometheus by :mod:`sparq_stream.bus.prometheus`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import NamedTuple

from sparq_stream.messages import Metric

__all__ = ["HANDLE_BUCKETS", "WRAPPER_COUNTERS", "WRAPPER_GAUGES", "Histogram", "PartitionLag", "ServiceMetrics"]

#: The wrapper's counters, exported (at 0) before their first increment.
WRAPPER_COUNTERS: dict[str, str] = {
    "consumed": "input records polled (end markers apart: end_markers_seen)",
    "produced": "output records acknowledged by the broker",
    "dead_lettered": "records sent to the dead-letter topic",
    "retries": "retries of a retriable handler error",
    "batches": "input batches handled",
    "decode_errors": "input records that did not decode (dead-lettered)",
    "handler_errors": "messages whose handling failed for good (dead-lettered)",
    "output_refused": "inputs dead-lettered because the broker refused their output",
    "produce_failures": "sends or commits that failed and were retried",
    "commit_failures": "commits lost to a rebalance (the records are redelivered)",
    "table_records": "table records read",
    "table_dead_lettered": "table records dead-lettered",
    "table_errors": "table records the core failed to apply",
    "table_decode_errors": "table records that did not decode",
    "table_tombstones_rejected": "tombstones on table topics that carry no deletes",
}
#: The wrapper's gauges.
WRAPPER_GAUGES: dict[str, str] = {
    "in_flight": "input records polled and not yet committed",
    "batch_seconds": "seconds the last batch took, handling to commit",
    "lag": "records behind, summed over assigned input and table partitions",
    "lag_unknown": "assigned partitions whose lag is not known yet",
}
#: Upper bounds (seconds) of the handle-latency histogram's buckets.
HANDLE_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class PartitionLag(NamedTuple):
    """Records behind on one assigned partition (None: not known yet) of the input consumer or the table reader."""

    reader: str  # "input" or "table"
    topic: str
    partition: int
    lag: int | None


class Histogram:
    """A fixed-bucket histogram (cumulative counts are computed on export)."""

    def __init__(self, buckets: tuple[float, ...] = HANDLE_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation."""
        i = next((i for i, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
        self.counts[i] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(upper bound, observations <= it)`` per bucket, ``+Inf`` last, as Prometheus wants them."""
        out, running = [], 0
        for bound, n in zip([*map(str, self.buckets), "+Inf"], self.counts):
            running += n
            out.append((bound, running))
        return out


class ServiceMetrics:
    """Counters (monotonic) and gauges (last value) of one service instance."""

    def __init__(self, service: str, instance: str, interval_s: float = 5.0) -> None:
        self.service = service
        self.instance = instance
        self.interval_s = interval_s
        self.counters: dict[str, float] = defaultdict(float)
        self.gauges: dict[str, float] = {}
        self.handle_seconds = Histogram()
        self.partition_lag: list[PartitionLag] = []  # replaced whole by the loop, read by the HTTP thread
        self.core_values: dict[str, float] = {}  # the core's own metrics at the last snapshot
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
            self.core_values = {k: float(v) for k, v in extra.items()}
            gauges.update(self.core_values)
        return Metric(service=self.service, instance=self.instance, counters=dict(self.counters), gauges=gauges)
