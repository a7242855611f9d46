"""The wire contract on real brokers: ids that are not their text's hash are dead-lettered; lag under exactly-once."""

from __future__ import annotations

import hashlib
import time

import pytest
from kafka import KafkaConsumer, TopicPartition

from sparq_stream.bus import ServiceProcess, create_topics, dead_letter_from_record
from sparq_stream.cores.relay import RelayCore
from sparq_stream.ids import problem_id
from sparq_stream.messages import Seed, decode, encode
from sparq_stream.settings import ServiceSettings

from ._util import produce, read_all, run_in_thread, scrape

pytestmark = pytest.mark.broker


def _seed(text: str, id_: str | None = None) -> Seed:
    return Seed(id=id_ or problem_id(text), problem=text, answer="1")


def test_a_message_whose_id_is_not_its_content_hash_is_dead_lettered(broker: str, prefix: str, group: str) -> None:
    settings = ServiceSettings(bootstrap=broker, prefix=prefix, group_id=group)
    create_topics(settings, partitions=1)
    text = "Ｔom has 3  apples.\nHow many?"  # full-width T, double space, newline: the id normalises all three
    naive = hashlib.sha256(text.lower().encode()).hexdigest()[:32]  # an id made another way
    good = [_seed(f"Problem {i}: add {i} and 1.") for i in range(4)]
    wrong = _seed(text, id_=naive)
    items = [(s.id.encode(), encode(s)) for s in good[:2]] + [(naive.encode(), encode(wrong))]
    items += [(s.id.encode(), encode(s)) for s in good[2:]] + [(problem_id(text).encode(), encode(_seed(text)))]
    produce(broker, f"{prefix}.seeds", items)

    proc = ServiceProcess(RelayCore("seeds", "candidates"), settings, install_signals=False)
    thread = run_in_thread(proc)
    try:
        out = read_all(broker, f"{prefix}.candidates", until=lambda r: len(r) >= 5, timeout_s=60)
        dlq = read_all(broker, f"{prefix}.dlq", until=lambda r: len(r) >= 1, timeout_s=60)
    finally:
        proc.stop()
        thread.join(30)
    assert sorted(decode(r.value).id for r in out) == sorted([s.id for s in good] + [problem_id(text)])
    assert len(dlq) == 1
    letter = dead_letter_from_record(dlq[0].key, dlq[0].value, dlq[0].headers)
    assert letter.error_type == "IdMismatch"
    assert f"id {naive!r} is not the problem id of its text (expected {problem_id(text)!r})" in letter.error
    assert letter.original == encode(wrong) and letter.original_key == naive.encode()
    assert (letter.source_topic, letter.partition, letter.offset) == (f"{prefix}.seeds", 0, 2)


@pytest.mark.slow
def test_lag_under_exactly_once_is_zero_inside_and_one_per_partition_outside(kafka_bootstrap: str, prefix: str, group: str) -> None:
    """Two transactional hops: the second reads a topic written in transactions (commit markers on every partition)."""
    base = ServiceSettings(
        bootstrap=kafka_bootstrap, prefix=prefix, processing_guarantee="exactly_once", metrics_interval_s=0.2, http_port=0, http_host="127.0.0.1"
    )
    create_topics(base, partitions=2)
    seeds = [_seed(f"Lag problem {i}.") for i in range(40)]
    produce(kafka_bootstrap, f"{prefix}.seeds", [(s.id.encode(), encode(s)) for s in seeds])
    first = ServiceProcess(RelayCore("seeds", "candidates"), base.model_copy(update={"group_id": group + "a"}), install_signals=False)
    second = ServiceProcess(RelayCore("candidates", "novel"), base.model_copy(update={"group_id": group + "b"}), install_signals=False)
    threads = [run_in_thread(first), run_in_thread(second)]
    try:
        out = read_all(kafka_bootstrap, f"{prefix}.novel", until=lambda r: len(r) >= 40, timeout_s=90, isolation_level="read_committed")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait for a metrics snapshot taken after the last input
            gauges = dict(second.metrics.gauges)
            if gauges.get("lag") == 0 and gauges.get("lag_unknown") == 0:
                break
            time.sleep(0.2)
        assert second.ops is not None
        scraped = scrape(second.ops.address)  # Prometheus: per group and partition, 0 when drained
    finally:
        for proc in (first, second):
            proc.stop()
        for thread in threads:
            thread.join(30)
    assert len(out) == 40
    assert gauges == {**gauges, "lag": 0, "lag_unknown": 0}
    lag = {(s.labels["group"], s.labels["topic"], s.labels["partition"]): s.value for s in scraped["sparq_consumer_lag"]}
    assert lag == {(group + "b", f"{prefix}.candidates", str(p)): 0 for p in range(2)}
    monitor = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group + "b", enable_auto_commit=False)
    try:
        parts = [TopicPartition(f"{prefix}.candidates", p) for p in range(2)]
        ends = monitor.end_offsets(parts)
        committed = {tp: monitor.committed(tp) for tp in parts}
    finally:
        monitor.close()
    # docs/wire.md, "Lag under exactly-once": committed offsets point at the commit marker
    assert {tp: ends[tp] - committed[tp] for tp in parts} == {tp: 1 for tp in parts}
