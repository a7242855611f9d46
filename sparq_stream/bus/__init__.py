"""Kafka plumbing: topic names, clients, the process wrapper (and the runner interface), dead letters, tables and metrics."""

from sparq_stream.bus.compacted import read_latest
from sparq_stream.bus.dlq import dead_letter_from_record, dlq_headers
from sparq_stream.bus.metrics import ServiceMetrics
from sparq_stream.bus.process import ServiceProcess, run_service
from sparq_stream.bus.runner import Runner
from sparq_stream.bus.topics import COMPACTED, LOGICAL_TOPICS, TopicNames, create_topics, describe_topics

__all__ = [
    "COMPACTED",
    "LOGICAL_TOPICS",
    "Runner",
    "ServiceMetrics",
    "ServiceProcess",
    "TopicNames",
    "create_topics",
    "dead_letter_from_record",
    "describe_topics",
    "dlq_headers",
    "read_latest",
    "run_service",
]
