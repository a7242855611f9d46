"""On a real broker: the wrapper spreads ``novel`` records round-robin, and two solver members split every run evenly."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from sparq_stream.bus import ServiceProcess, create_topics
from sparq_stream.bus.client import make_consumer
from sparq_stream.cores.relay import RelayCore
from sparq_stream.ids import problem_id
from sparq_stream.messages import NovelCandidate, decode, encode
from sparq_stream.settings import ServiceSettings

from ._util import produce

pytestmark = pytest.mark.broker

STEP = 64


def _novel(i: int) -> NovelCandidate:
    problem = f"Step problem {i}: what is {i} times 3?"
    return NovelCandidate(id=problem_id(problem), problem=problem, solution="\\boxed{0}", answer=str(3 * i), parent_ids=[problem_id("p")])


def test_a_step_of_novel_records_reaches_two_solver_members_half_each(broker: str, prefix: str, group: str) -> None:
    settings = ServiceSettings(bootstrap=broker, prefix=prefix, group_id=group, instance="novelty-0")
    create_topics(settings, partitions=4)
    solvers = ServiceSettings(bootstrap=broker, prefix=prefix, session_timeout_ms=6000)
    members = [make_consumer(solvers, f"{group}-solvers", f"{prefix}.novel", round_robin=True) for _ in range(2)]
    got: list[list[object]] = [[], []]
    try:
        deadline = time.monotonic() + 180  # a loaded 2-core machine can take a minute to settle the group
        settled_at: float | None = None
        fresh_at = time.monotonic()
        while time.monotonic() < deadline:  # settled: both members hold 2 partitions for 3 s running
            for m in members:  # both poll: the group settles only with both members joined
                m.poll(timeout_ms=100)
            if all(len(m.assignment()) == 2 for m in members):
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at >= 3.0:
                    break
            else:
                settled_at = None
            if time.monotonic() - fresh_at > 45:  # a member stuck outside the group (seen on Apache Kafka
                # under load, as the services' membership watchdog knows): replace it, as a restart would
                for i, m in enumerate(members):
                    if not m.assignment():
                        m.close(autocommit=False)
                        members[i] = make_consumer(solvers, f"{group}-solvers", f"{prefix}.novel", round_robin=True)
                fresh_at = time.monotonic()
        owned = [sorted(tp.partition for tp in m.assignment()) for m in members]
        assert sorted(owned) == [[0, 2], [1, 3]]  # the round-robin assignor: partition i to member i mod 2
        candidates = [_novel(i) for i in range(STEP)]
        produce(broker, f"{prefix}.candidates", [(c.id.encode(), encode(c)) for c in candidates])
        relay = ServiceProcess(RelayCore("candidates", "novel"), settings, install_signals=False)  # stands in for novelty
        thread = threading.Thread(target=relay.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 90
            while sum(map(len, got)) < STEP and time.monotonic() < deadline:
                for i, m in enumerate(members):
                    for recs in m.poll(timeout_ms=100).values():
                        got[i].extend(recs)
        finally:
            relay.stop()
            thread.join(30)
    finally:
        for m in members:
            m.close(autocommit=False)
    assert [len(g) for g in got] == [STEP // 2, STEP // 2]
    records = got[0] + got[1]
    assert Counter(r.partition for r in records) == {p: STEP // 4 for p in range(4)}
    assert sorted(r.key for r in records) == sorted(c.id.encode() for c in candidates)  # keys stay the problem ids
    assert all(decode(r.value).id == r.key.decode() for r in records)
