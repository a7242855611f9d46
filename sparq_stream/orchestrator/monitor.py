"""Follows the metrics topic and keeps the latest counters of every service instance."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any

from sparq_stream.bus.client import make_consumer
from sparq_stream.bus.compacted import partitions_of
from sparq_stream.bus.topics import TopicNames
from sparq_stream.errors import SparqError
from sparq_stream.messages import Metric, decode
from sparq_stream.settings import ServiceSettings

__all__ = ["MetricsMonitor"]

log = logging.getLogger(__name__)


class MetricsMonitor:
    """A background reader of ``<prefix>.metrics``: latest snapshot per instance, sums per service."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.topic = TopicNames(settings.prefix).topic("metrics")
        self._latest: dict[tuple[str, str], Metric] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-monitor", daemon=True)
        self.started = time.time()

    def start(self) -> "MetricsMonitor":
        """Start following the topic from its beginning."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the reader thread."""
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        consumer = make_consumer(self.settings, None)
        try:
            parts = partitions_of(consumer, self.topic)
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=300, max_records=1000).values():
                    for rec in records:
                        try:
                            metric = decode(rec.value, expect=Metric)
                        except SparqError:
                            continue
                        with self._lock:
                            self._latest[(metric.service, metric.instance)] = metric
        except Exception as exc:  # the monitor must never take the run down
            log.warning("metrics monitor stopped: %s", exc)
        finally:
            consumer.close(autocommit=False)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per service: summed counters and gauges over its instances, and the instance count."""
        with self._lock:
            latest = list(self._latest.values())
        out: dict[str, dict[str, Any]] = defaultdict(lambda: {"counters": defaultdict(float), "gauges": defaultdict(float), "instances": 0, "ts": 0.0})
        for metric in latest:
            row = out[metric.service]
            row["instances"] += 1
            row["ts"] = max(row["ts"], metric.ts)
            for k, v in metric.counters.items():
                row["counters"][k] += v
            for k, v in metric.gauges.items():
                row["gauges"][k] += v
        return {k: {**v, "counters": dict(v["counters"]), "gauges": dict(v["gauges"])} for k, v in out.items()}

    def value(self, service: str, name: str, default: float = 0.0) -> float:
        """A summed counter or gauge of a service (counters first)."""
        row = self.snapshot().get(service)
        if row is None:
            return default
        return row["counters"].get(name, row["gauges"].get(name, default))
