"""The wrapper's decode boundary: a well-formed record that breaks a value rule never reaches a core.

Hypothesis draws, for every message type, bodies that break one value rule (tests/codec/strategies.py);
the wrapper must refuse each one as ``InvalidValue`` before the core sees it, on a group input and on
a table topic alike, so nothing built on it can reach an output topic, an elite slot or the export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparq_stream.bus.process import ServiceProcess
from sparq_stream.bus.records import decode_record
from sparq_stream.core import BaseCore, Inbound, Outgoing
from sparq_stream.errors import InvalidValue
from sparq_stream.messages import MESSAGE_TYPES
from sparq_stream.settings import ServiceSettings
from tests.codec.strategies import invalid_bodies_of

TYPES = sorted(MESSAGE_TYPES.values(), key=lambda c: c.SCHEMA)


@dataclass
class _Record:
    topic: str
    value: bytes
    key: bytes | None = None
    partition: int = 0
    offset: int = 5
    timestamp: int = 0
    headers: list[Any] = field(default_factory=list)


class _Recording(BaseCore):
    """Copies everything it is given to an output: anything that reached it would be visible."""

    def __init__(self) -> None:
        self.seen: list[Inbound] = []

    def handle(self, inbound: Inbound) -> list[Outgoing]:
        self.seen.append(inbound)
        return [Outgoing("archive", inbound.message)]

    def on_table(self, inbound: Inbound) -> list[Outgoing]:
        self.seen.append(inbound)
        return [Outgoing("elites", inbound.message)]


@pytest.fixture(scope="module")
def wrapper() -> ServiceProcess:
    return ServiceProcess(_Recording(), ServiceSettings(bootstrap="localhost:1", prefix="t"), install_signals=False)


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.SCHEMA)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_invalid_value_is_dead_lettered_by_the_wrapper_and_never_handled(wrapper: ServiceProcess, cls, data) -> None:
    field_name, value = data.draw(invalid_bodies_of(cls))
    record = _Record("t.elites", value, key=b"k")
    with pytest.raises(InvalidValue, match=f"field {field_name}"):
        decode_record(wrapper.ctx.names, record)  # the group-input path decodes with this too
    pairs: list[Any] = []
    dead = wrapper.tables.apply(record, pairs)
    assert dead is not None and dead.error_type == "InvalidValue" and f"field {field_name}" in dead.error
    assert pairs == [] and wrapper.core.seen == []
