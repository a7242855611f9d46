"""The Prometheus view of one service's :class:`~sparq_stream.bus.metrics.ServiceMetrics`, built at scrape time.

Every family carries the labels ``service`` and ``replica`` (the ``--instance`` setting; not
``instance``, which Prometheus gives each scrape target itself). Names:

- ``sparq_<counter>_total`` for each wrapper counter (``WRAPPER_COUNTERS``), ``sparq_<gauge>`` for each
  wrapper gauge (``WRAPPER_GAUGES``: ``in_flight``, ``batch_seconds``, ``lag``, ``lag_unknown``);
- ``sparq_handle_seconds`` (histogram): wall seconds of each ``handle_batch`` call;
- ``sparq_consumer_lag{group,topic,partition}`` and ``sparq_table_lag{topic,partition}``: records
  behind per assigned partition (see ``docs/wire.md``, "Delivery, offsets and lag");
- ``sparq_core{name}``: every value the core reports (its per-stage counters and gauges);
- ``sparq_ready``: 1 when ``/readyz`` answers 200; ``process_*``: CPU, memory, start time.
"""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from sparq_stream.bus.metrics import WRAPPER_COUNTERS, WRAPPER_GAUGES, ServiceMetrics

__all__ = ["ServiceCollector", "service_registry"]

_LABELS = ["service", "replica"]


class ServiceCollector:
    """A prometheus_client collector reading a ServiceMetrics (and readiness) at each scrape."""

    def __init__(self, metrics: ServiceMetrics, group: str | None, ready: Callable[[], bool]) -> None:
        self.metrics = metrics
        self.group = group or ""
        self.ready = ready

    def describe(self) -> list[Metric]:
        """No description up front: families are built at collection time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield every sparq metric family with the current values."""
        m = self.metrics
        base = [m.service, m.instance]
        counters = dict(m.counters)
        for name in [*WRAPPER_COUNTERS, *sorted(set(counters) - set(WRAPPER_COUNTERS))]:
            family = CounterMetricFamily(f"sparq_{name}", WRAPPER_COUNTERS.get(name, name.replace("_", " ")), labels=_LABELS)
            family.add_metric(base, counters.get(name, 0.0))
            yield family
        gauges = dict(m.gauges)
        for name, text in WRAPPER_GAUGES.items():
            family = GaugeMetricFamily(f"sparq_{name}", text, labels=_LABELS)
            family.add_metric(base, gauges.get(name, 0.0))
            yield family
        hist = m.handle_seconds
        family = HistogramMetricFamily("sparq_handle_seconds", "wall seconds of each handle_batch call", labels=_LABELS)
        family.add_metric(base, hist.cumulative(), sum_value=hist.total)
        yield family
        yield from self._lag_families(base)
        core = GaugeMetricFamily("sparq_core", "a value the service's core reports (name label)", labels=[*_LABELS, "name"])
        for name, value in sorted(dict(m.core_values).items()):
            core.add_metric([*base, name], value)
        yield core
        ready = GaugeMetricFamily("sparq_ready", "1 when /readyz answers 200", labels=_LABELS)
        ready.add_metric(base, 1.0 if self.ready() else 0.0)
        yield ready

    def _lag_families(self, base: list[str]) -> Iterator[Metric]:
        consumer = GaugeMetricFamily(
            "sparq_consumer_lag", "records behind on an assigned input partition", labels=[*_LABELS, "group", "topic", "partition"]
        )
        table = GaugeMetricFamily("sparq_table_lag", "records behind on a table partition", labels=[*_LABELS, "topic", "partition"])
        for entry in list(self.metrics.partition_lag):
            if entry.lag is None:
                continue  # not known yet: counted by sparq_lag_unknown
            if entry.reader == "input":
                consumer.add_metric([*base, self.group, entry.topic, str(entry.partition)], entry.lag)
            else:
                table.add_metric([*base, entry.topic, str(entry.partition)], entry.lag)
        yield consumer
        yield table


def service_registry(metrics: ServiceMetrics, group: str | None, ready: Callable[[], bool]) -> CollectorRegistry:
    """A registry with this service's collector and the process collector (CPU, memory, start time)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(metrics, group, ready))
    ProcessCollector(registry=registry)
    return registry
