"""Wrapper settings: stable instance ids, bounds, and the producer's size limit."""

from __future__ import annotations

import socket

from sparq_stream.bus.client import max_request_size, producer_options
from sparq_stream.bus.dlq import dlq_headers, fit_record, record_size
from sparq_stream.settings import ServiceSettings


def test_default_instance_is_the_stable_host_name() -> None:
    assert ServiceSettings().instance == socket.gethostname()
    assert ServiceSettings(instance="solver-2").instance == "solver-2"


def test_producer_limit_comes_from_the_setting_or_the_kafka_options() -> None:
    assert max_request_size(ServiceSettings()) == 1_048_576
    assert producer_options(ServiceSettings(max_request_size=2_000_000))["max_request_size"] == 2_000_000
    assert max_request_size(ServiceSettings(kafka_options={"max_request_size": 5000})) == 5000


def test_a_dead_letter_is_truncated_to_fit_and_says_so() -> None:
    headers = dlq_headers(source_topic="t", partition=0, offset=7, error_type="E", error="why", service="s", instance="i")
    value = b"v" * 10_000
    small, same = fit_record(b"k", value, headers, 20_000)
    assert small == value and same == headers
    cut, marked = fit_record(b"k", value, headers, 4_000)
    assert record_size(b"k", cut, marked) <= 4_000 and value.startswith(cut) and cut
    meta = dict(marked)
    assert meta["sparq.dlq.truncated"] == b"true" and meta["sparq.dlq.original_size"] == b"10000"
    big_headers = headers + [("trace", b"x" * 8_000)]
    cut, marked = fit_record(b"k", value, big_headers, 4_000)
    assert record_size(b"k", cut, marked) <= 4_000 and dict(marked)["sparq.dlq.headers_dropped"] == b"true"
