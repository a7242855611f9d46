"""Topic configs by role: state read whole on start never expires, changelogs compact, existing topics are mended."""

from __future__ import annotations

import pytest
from kafka.admin import NewTopic

from sparq_stream.bus.topics import LOGICAL_TOPICS, admin_client, describe_topics, ensure_topics
from sparq_stream.settings import ServiceSettings

pytestmark = pytest.mark.broker


def test_topics_get_their_role_configs_and_wrong_ones_are_altered(broker: str, broker_name: str, prefix: str) -> None:
    settings = ServiceSettings(bootstrap=broker, prefix=prefix, changelog_segment_ms=600_000)
    admin = admin_client(settings)
    try:  # an older deployment: seeds as a delete topic with the broker's 7-day retention
        admin.create_topics([NewTopic(f"{prefix}.seeds", 2, 1, topic_configs={"cleanup.policy": "delete", "retention.ms": "604800000"})])
    finally:
        admin.close()
    report = ensure_topics(settings, partitions=2)
    assert f"{prefix}.seeds" not in report.created and f"{prefix}.elites" in report.created
    rows = {r["topic"]: r["configs"] for r in describe_topics(settings)}
    assert len(rows) == len(LOGICAL_TOPICS)
    if broker_name != "kafka":  # Tansu keeps no topic configs: nothing to compare, nothing fails
        assert f"{prefix}.seeds" in report.unchecked
        return
    assert report.altered[f"{prefix}.seeds"] == {"cleanup.policy": ("delete", "compact"), "retention.ms": ("604800000", "-1")}
    assert not report.differ
    for name in ("seeds", "novel", "archive"):
        assert rows[f"{prefix}.{name}"]["cleanup.policy"] == "compact"
        assert rows[f"{prefix}.{name}"]["retention.ms"] == "-1"
    for name in ("elites", "models"):
        assert rows[f"{prefix}.{name}"]["cleanup.policy"] == "compact"
        assert rows[f"{prefix}.{name}"]["segment.ms"] == "600000"
        assert float(rows[f"{prefix}.{name}"]["min.cleanable.dirty.ratio"]) < 0.5
    for name in ("candidates", "solved", "drops", "dlq", "metrics"):
        assert rows[f"{prefix}.{name}"]["cleanup.policy"] == "delete"
    assert int(rows[f"{prefix}.metrics"]["retention.ms"]) < int(rows[f"{prefix}.dlq"]["retention.ms"])
    again = ensure_topics(settings, partitions=2)
    assert not again.created and not again.altered and not again.differ
