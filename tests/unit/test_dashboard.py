"""The Grafana dashboard in deploy/grafana queries only metric names and labels that the services export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sparq_stream.bus.metrics import PartitionLag, ServiceMetrics
from sparq_stream.bus.prometheus import service_registry

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "sparq-dashboard.json"
_METRIC = re.compile(r"\b((?:sparq|process)_[a-z0-9_]+)\b")
_BY = re.compile(r"\bby \(([^)]*)\)")
_MATCHER = re.compile(r"\{([^}]*)\}")
_LABEL = re.compile(r"([a-z_]+)\s*(?:=~|!=|!~|=)")


def _exported() -> tuple[set[str], set[str]]:
    """Sample names and label names one service's /metrics exports (every family filled in)."""
    metrics = ServiceMetrics("novelty", "novelty-0")
    metrics.inc("consumed")
    metrics.handle_seconds.observe(0.1)
    metrics.partition_lag = [PartitionLag("input", "p.candidates", 0, 0), PartitionLag("table", "p.models", 0, 0)]
    metrics.snapshot({"accepted": 1.0})
    text = generate_latest(service_registry(metrics, "p.novelty", lambda: True)).decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return {s.name for s in samples}, {label for s in samples for label in s.labels}


def _queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for panel in dash["panels"] for t in panel["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_the_dashboard_queries_only_exported_metric_names_and_labels() -> None:
    names, labels = _exported()
    queries = _queries()
    used = {m for q in queries for m in _METRIC.findall(q)}
    assert used - names == set()
    # throughput, lag, DLQ, in-flight and latency are all on it
    assert {"sparq_consumed_total", "sparq_consumer_lag", "sparq_dead_lettered_total", "sparq_in_flight", "sparq_handle_seconds_bucket"} <= used
    by = {label.strip() for q in queries for group in _BY.findall(q) for label in group.split(",") if label.strip()}
    matched = {label for q in queries for group in _MATCHER.findall(q) for label in _LABEL.findall(group)}
    assert (by | matched) - labels == set()


def test_every_panel_has_a_query_and_its_own_place() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert all(panel["targets"] for panel in dash["panels"])
    places = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in dash["panels"]]
    assert len(places) == len(set(places))
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
