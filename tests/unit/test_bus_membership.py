"""The wrapper's membership watchdog: an input consumer stuck outside its group is restarted, a standby is not."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from kafka.structs import MemberState

from sparq_stream.bus.process import ServiceProcess
from sparq_stream.core import BaseCore
from sparq_stream.errors import RetriableError
from sparq_stream.settings import ServiceSettings


def _process(state: object, join_timeout_s: float) -> ServiceProcess:
    settings = ServiceSettings(bootstrap="localhost:1", prefix="t", join_timeout_s=join_timeout_s)
    process = ServiceProcess(BaseCore(), settings, install_signals=False)
    process.intake.consumer = SimpleNamespace(_coordinator=SimpleNamespace(state=state))
    return process


def test_a_consumer_that_never_joins_raises_a_retriable_error_after_the_timeout() -> None:
    process = _process(MemberState.REBALANCING, join_timeout_s=0.05)
    process.intake.watch_membership()  # starts the clock
    time.sleep(0.1)
    with pytest.raises(RetriableError, match="has not joined group") as info:
        process.intake.watch_membership()
    assert info.value.retriable


def test_a_stable_member_without_partitions_is_left_alone() -> None:
    process = _process(MemberState.STABLE, join_timeout_s=0.05)
    process.intake.watch_membership()
    time.sleep(0.1)
    process.intake.watch_membership()  # a standby replica: joined, nothing assigned: no error
    assert process.intake.outside_since is None  # and no clock running


def test_joining_again_resets_the_clock_and_zero_disables_the_watch() -> None:
    process = _process(MemberState.UNJOINED, join_timeout_s=0.2)
    process.intake.watch_membership()
    process.intake.consumer._coordinator.state = MemberState.STABLE
    process.intake.watch_membership()
    assert process.intake.outside_since is None  # joined: the clock is reset
    process.intake.consumer._coordinator.state = MemberState.REBALANCING
    before = time.monotonic()
    process.intake.watch_membership()  # a new rebalance: a fresh 0.2 s
    assert process.intake.outside_since is not None and process.intake.outside_since >= before
    off = _process(MemberState.UNJOINED, join_timeout_s=0)
    off.intake.watch_membership()
    time.sleep(0.05)
    off.intake.watch_membership()
    assert off.intake.outside_since is None  # 0 disables the watch: no clock, no error
