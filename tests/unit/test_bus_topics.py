"""Topic specs by role: the configs each logical topic is created with, and changelog declarations."""

from __future__ import annotations

import pytest

from sparq_stream.bus.topics import COMPACTED, LOGICAL_TOPICS, TopicNames, changelog, spec_of, topic_configs
from sparq_stream.errors import ConfigError


def test_state_read_whole_on_start_never_expires() -> None:
    for name in ("seeds", "novel", "archive"):
        assert topic_configs(spec_of(name)) == {"cleanup.policy": "compact", "retention.ms": "-1"}
    assert {"seeds", "novel", "archive", "elites", "models"} <= COMPACTED


def test_changelogs_compact_soon_and_keep_forever() -> None:
    spec = changelog("mutator-changelog")
    configs = topic_configs(spec, segment_ms=120_000)
    assert configs["cleanup.policy"] == "compact" and configs["retention.ms"] == "-1"
    assert configs["segment.ms"] == "120000" and float(configs["min.cleanable.dirty.ratio"]) < 0.5
    assert spec.deletes and not spec_of("seeds").deletes and spec_of("elites").deletes
    assert topic_configs(spec_of("elites"))["segment.ms"] == "3600000"


def test_replicated_topics_require_two_in_sync_replicas() -> None:
    assert "min.insync.replicas" not in topic_configs(spec_of("candidates"), replication_factor=1)
    assert topic_configs(spec_of("candidates"), replication_factor=3)["min.insync.replicas"] == "2"


def test_metrics_are_short_lived_and_dead_letters_long_lived() -> None:
    metrics = int(topic_configs(spec_of("metrics"))["retention.ms"])
    dlq = int(topic_configs(spec_of("dlq"))["retention.ms"])
    assert metrics <= 86_400_000 < 7 * 86_400_000 < dlq


def test_names_cover_every_spec_and_reject_unknown_ones() -> None:
    names = TopicNames("p")
    assert names.all() == [f"p.{n}" for n in LOGICAL_TOPICS]
    assert names.logical("p.novel") == "novel" and names.logical("q.novel") is None
    with pytest.raises(ConfigError, match="unknown topic 'nope'"):
        names.topic("nope")
