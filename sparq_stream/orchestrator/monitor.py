"""Follows the metrics topic and keeps the counters of every service instance, across its restarts.

Each snapshot carries the ``started_at`` gauge of the process that sent it (its incarnation).
Counters of a restarted process start again from zero, so a service's total is the sum over its
incarnations: the wrapper's counters always reset; a core's cumulative gauges either reset
(novelty's accepted) or continue from restored state (the archivist's scored), told apart
as a Prometheus counter reset is: a first value below the previous incarnation's last one is
a reset. Instantaneous gauges (lag, in flight, step, done, ...) come from the newest incarnation.
A service run as one active replica and standbys (its snapshots carry an ``active`` gauge) takes
its gauges from the newest active incarnation only (a standby that took over holds the whole
state: summing would count it twice), except the lag, summed over every replica.
Snapshots of processes started before ``since`` (an earlier run on the same prefix) are ignored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sparq_stream.bus.client import make_consumer
from sparq_stream.bus.compacted import partitions_of
from sparq_stream.bus.topics import TopicNames
from sparq_stream.errors import SparqError
from sparq_stream.messages import Metric, decode
from sparq_stream.settings import ServiceSettings

__all__ = ["MetricsMonitor", "MetricsBook", "HIGH_WATER_GAUGES", "INSTANT_GAUGES"]

log = logging.getLogger(__name__)

INSTANT_GAUGES = frozenset(
    {
        "lag", "lag_unknown", "in_flight", "max_in_flight", "step", "w_size", "w_elites", "model_version",
        "exhausted", "done", "index_size", "index_bytes", "heldout_size", "contamination_check", "pending", "coverage", "qd_score",
        "yield_rate", "archive_size", "pending_rows", "elites", "problems", "examples", "latest_version",
        "training", "pending_changes", "batch_seconds", "model_seen", "end_passed",
    }
)
"""Gauges that are a state now, not a running total: taken from the newest incarnation only."""

HIGH_WATER_GAUGES = frozenset({"end_passed"})
"""Gauges that record a fact once reached (the end epoch a stage passed): the highest over incarnations.
A restarted stage that had forwarded the end before its kill does not read those markers again."""

_STARTED = "started_at"


@dataclass
class _Incarnation:
    started_at: float
    first: Metric
    last: Metric


class MetricsBook:
    """Every incarnation of every service instance, and their per-service totals (no Kafka: tests feed it)."""

    def __init__(self, since: float = 0.0) -> None:
        self.since = since
        self._runs: dict[tuple[str, str], dict[float, _Incarnation]] = defaultdict(dict)
        self._lock = threading.Lock()

    def add(self, metric: Metric) -> bool:
        """Record one snapshot; False when it belongs to a process started before ``since``."""
        started = metric.gauges.get(_STARTED, metric.ts)
        if started < self.since or metric.ts < self.since:
            return False
        with self._lock:
            runs = self._runs[(metric.service, metric.instance)]
            inc = runs.get(started)
            if inc is None:
                runs[started] = _Incarnation(started, metric, metric)
            elif metric.ts >= inc.last.ts:
                inc.last = metric
        return True

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per service: counters and cumulative gauges summed over incarnations and instances, newest gauges."""
        with self._lock:
            runs = {key: sorted(incs.values(), key=lambda i: i.started_at) for key, incs in self._runs.items()}
        out: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"counters": defaultdict(float), "gauges": defaultdict(float), "instances": 0, "incarnations": 0, "ts": 0.0}
        )
        leaders = _leaders(runs)
        for (service, instance), incs in runs.items():
            row = out[service]
            row["instances"] += 1
            row["incarnations"] += len(incs)
            row["ts"] = max(row["ts"], max(i.last.ts for i in incs))
            for inc in incs:
                for k, v in inc.last.counters.items():
                    row["counters"][k] += v
            newest = incs[-1].last.gauges
            names = {k for inc in incs for k in inc.last.gauges} - {_STARTED}
            if service in leaders:  # one active replica: its state gauges only; every replica's lag
                names = names & _EVERY_REPLICA if leaders[service] != instance else names - {"active"}
                if leaders[service] == instance:
                    incs = [inc for inc in incs if inc.last.gauges.get("active", 0.0) >= 1.0][-1:] or incs[-1:]
            for k in names:
                if k in HIGH_WATER_GAUGES:
                    row["gauges"][k] = max(row["gauges"].get(k, 0.0), max(inc.last.gauges.get(k, 0.0) for inc in incs))
                elif k in INSTANT_GAUGES:
                    row["gauges"][k] += newest.get(k, 0.0)
                else:
                    row["gauges"][k] += _total(incs, k)
            if service in leaders and leaders[service] == instance:
                row["active_instance"] = instance
        return {k: {**v, "counters": dict(v["counters"]), "gauges": dict(v["gauges"])} for k, v in out.items()}


    def newest_start(self, service: str, instance: str) -> float | None:
        """``started_at`` of the newest incarnation of one instance that has reported, or None."""
        with self._lock:
            incs = self._runs.get((service, instance))
            return max(incs) if incs else None

    def last_report(self, service: str, instance: str) -> float | None:
        """When the newest report of one instance was taken (its ``ts``, Unix seconds), or None."""
        with self._lock:
            incs = self._runs.get((service, instance))
            return max(inc.last.ts for inc in incs.values()) if incs else None

    def per_instance(self, service: str, name: str) -> dict[str, float]:
        """A metric of each instance of a service: counters summed over its incarnations, instant gauges the newest."""
        with self._lock:
            runs = {key: sorted(incs.values(), key=lambda i: i.started_at) for key, incs in self._runs.items()}
        out: dict[str, float] = {}
        for (svc, instance), incs in sorted(runs.items()):
            if svc != service:
                continue
            if any(name in inc.last.counters for inc in incs):
                out[instance] = sum(inc.last.counters.get(name, 0.0) for inc in incs)
            elif name in HIGH_WATER_GAUGES:
                out[instance] = max(inc.last.gauges.get(name, 0.0) for inc in incs)
            elif name in INSTANT_GAUGES:
                out[instance] = incs[-1].last.gauges.get(name, 0.0)
            else:
                out[instance] = _total(incs, name)
        return out


_EVERY_REPLICA = frozenset({"lag", "lag_unknown"})
"""Gauges of an exclusive service summed over all its replicas: the run waits for standbys to follow too."""


def _leaders(runs: dict[tuple[str, str], list[_Incarnation]]) -> dict[str, str]:
    """Per exclusive service (its snapshots carry ``active``), the instance whose newest active snapshot is newest."""
    best: dict[str, tuple[float, str]] = {}
    for (service, instance), incs in runs.items():
        for inc in incs:
            gauges = inc.last.gauges
            if "active" not in gauges:
                continue
            stamp = inc.last.ts if gauges["active"] >= 1.0 else -1.0
            if service not in best or (stamp, instance) > best[service]:
                best[service] = (stamp, instance)
    return {service: instance for service, (_stamp, instance) in best.items()}


def _total(incs: list[_Incarnation], name: str) -> float:
    """A running total over incarnations: a value that starts below the previous last value was reset."""
    total = 0.0
    previous: float | None = None
    for inc in incs:
        first, last = inc.first.gauges.get(name, 0.0), inc.last.gauges.get(name, 0.0)
        if previous is not None and first >= previous:
            total += last - previous  # restored from state: it went on from where it was
        else:
            total += last
        previous = last
    return total


class MetricsMonitor:
    """A background reader of ``<prefix>.metrics`` feeding a MetricsBook."""

    def __init__(self, settings: ServiceSettings, since: float | None = None) -> None:
        self.settings = settings
        self.topic = TopicNames(settings.prefix).topic("metrics")
        self.started = time.time()
        self.book = MetricsBook(self.started if since is None else since)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-monitor", daemon=True)

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
                        self.book.add(metric)
        except Exception as exc:  # the monitor must never take the run down
            log.warning("metrics monitor stopped: %s", exc)
        finally:
            try:
                consumer.close(autocommit=False)
            except Exception:  # noqa: BLE001 - closing against a lost broker
                pass

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per service: summed counters and gauges over its instances and incarnations."""
        return self.book.snapshot()

    def newest_start(self, service: str, instance: str) -> float | None:
        """``started_at`` of the newest incarnation of one instance that has reported, or None."""
        return self.book.newest_start(service, instance)

    def last_report(self, service: str, instance: str) -> float | None:
        """When the newest report of one instance was taken (Unix seconds), or None."""
        return self.book.last_report(service, instance)

    def per_instance(self, service: str, name: str) -> dict[str, float]:
        """A counter of each instance of a service, summed over its incarnations."""
        return self.book.per_instance(service, name)

    def value(self, service: str, name: str, default: float = 0.0) -> float:
        """A summed counter or gauge of a service (counters first)."""
        row = self.snapshot().get(service)
        if row is None:
            return default
        return row["counters"].get(name, row["gauges"].get(name, default))
