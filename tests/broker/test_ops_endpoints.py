"""/metrics, /healthz and /readyz of the process wrapper on real brokers: ready, drained lag, broker loss."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any, Callable

import pytest

from sparq_stream.brokers.tansu import EmbeddedBroker
from sparq_stream.bus import ServiceProcess, create_topics
from sparq_stream.cores.relay import RelayCore
from sparq_stream.ids import problem_id
from sparq_stream.messages import Seed, encode
from sparq_stream.settings import ServiceSettings

from ._util import get, produce, read_all, run_in_thread, scrape

pytestmark = pytest.mark.broker


def wait_until(check: Callable[[], Any], what: str, limit_s: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy (a correctness bound, not a speed target)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"never saw {what}")


def _serving(settings: ServiceSettings) -> tuple[ServiceProcess, Any, str]:
    """A relay (seeds -> candidates) running in a thread, once its /readyz answers 200; its address."""
    proc = ServiceProcess(RelayCore("seeds", "candidates"), settings, install_signals=False)
    thread = run_in_thread(proc)
    try:
        wait_until(lambda: proc.ops is not None and get(proc.ops.address + "/readyz")[0] == 200, "ready")
    except AssertionError:
        proc.stop()
        thread.join(30)
        raise
    assert proc.ops is not None
    return proc, thread, proc.ops.address


def _seeds(n: int, tag: str) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        text = f"{tag} problem {i}: add {i} and 2."
        out.append((problem_id(text).encode(), encode(Seed(id=problem_id(text), problem=text, answer=str(i + 2)))))
    return out


def _drained(address: str, consumed: int, partitions: int) -> dict[str, list[Any]] | None:
    samples = scrape(address)
    lag = samples.get("sparq_consumer_lag", [])
    done = (
        samples["sparq_consumed_total"][0].value == consumed
        and samples["sparq_lag_unknown"][0].value == 0
        and len(lag) == partitions
        and all(s.value == 0 for s in lag)
    )
    return samples if done else None


def test_a_service_is_ready_once_assigned_and_its_drained_partitions_read_lag_0(broker: str, prefix: str, group: str) -> None:
    settings = ServiceSettings(bootstrap=broker, prefix=prefix, group_id=group, http_port=0, http_host="127.0.0.1", metrics_interval_s=0.2)
    create_topics(settings, partitions=3)
    proc, thread, address = _serving(settings)
    try:
        items = _seeds(30, prefix)
        produce(broker, f"{prefix}.seeds", items)
        read_all(broker, f"{prefix}.candidates", until=lambda r: len(r) >= 30, timeout_s=60)
        samples = wait_until(lambda: _drained(address, 30, 3), "every partition drained (lag 0) in /metrics")
        assert {s.labels["group"] for s in samples["sparq_consumer_lag"]} == {group}
        assert {s.labels["partition"] for s in samples["sparq_consumer_lag"]} == {"0", "1", "2"}
        assert samples["sparq_produced_total"][0].value >= 30
        assert samples["sparq_handle_seconds_count"][0].value >= 1
        assert samples["sparq_ready"][0].value == 1
        assert get(address + "/healthz")[0] == 200
    finally:
        proc.stop()
        thread.join(30)
    assert not thread.is_alive()
    with pytest.raises(urllib.error.URLError):  # the endpoint closes with the service
        urllib.request.urlopen(address + "/healthz", timeout=5)


def test_readyz_turns_503_when_the_broker_is_lost(prefix: str, group: str, tmp_path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log")  # its own broker: this test stops it
    bootstrap = broker.start()
    settings = ServiceSettings(
        bootstrap=bootstrap, prefix=prefix, group_id=group, http_port=0, http_host="127.0.0.1", metrics_interval_s=0.2,
        client_timeout_s=2.0, shutdown_timeout_s=4.0, session_timeout_ms=2000,  # the broker bound: max(3 x 0.2 s, 2 s)
    )  # fmt: skip
    create_topics(settings, partitions=1)
    proc, thread, address = _serving(settings)
    try:
        broker.stop()
        status, body = wait_until(lambda: (r := get(address + "/readyz"))[0] == 503 and r, "not ready after the broker loss")
        assert "broker" in json.loads(body)["waiting_for"]
        assert get(address + "/healthz")[0] == 200  # alive: the loop still comes round
    finally:
        proc.stop()
        thread.join(60)
        broker.stop()


@pytest.mark.slow
def test_exactly_once_lag_counts_to_the_last_stable_offset_not_an_open_transaction(kafka_bootstrap: str, prefix: str, group: str) -> None:
    """An upstream transaction left open raises the high watermark but not the lag; its commit does."""
    from kafka import KafkaProducer

    settings = ServiceSettings(
        bootstrap=kafka_bootstrap, prefix=prefix, group_id=group, processing_guarantee="exactly_once", instance="lso",
        http_port=0, http_host="127.0.0.1", metrics_interval_s=0.2,
    )  # fmt: skip
    create_topics(settings, partitions=1)
    upstream = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{prefix}-upstream", enable_idempotence=True)
    upstream.init_transactions()
    proc, thread, address = _serving(settings)
    try:
        upstream.begin_transaction()
        for key, value in _seeds(5, prefix):
            upstream.send(f"{prefix}.seeds", key=key, value=value)
        upstream.flush()  # written, not committed: above the last stable offset
        hw = wait_until(lambda: proc.intake.consumer and proc.intake.consumer.highwater(next(iter(proc.intake.consumer.assignment()))), "the new high watermark")
        assert hw >= 5
        time.sleep(1.0)  # several metrics intervals with the transaction open
        assert _drained(address, 0, 1) is not None  # nothing readable yet: lag 0, not 5
        upstream.commit_transaction()
        wait_until(lambda: _drained(address, 5, 1), "the committed records consumed and the partition drained")
    finally:
        proc.stop()
        thread.join(30)
        upstream.close()
