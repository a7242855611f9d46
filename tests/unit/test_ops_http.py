"""The operator endpoint (/metrics, /healthz, /readyz) and the threaded model load, without a broker."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sparq_stream.bus.loading import load_in_thread
from sparq_stream.bus.metrics import WRAPPER_COUNTERS, PartitionLag, ServiceMetrics
from sparq_stream.bus.ops_http import OpsServer, Probes
from sparq_stream.bus.prometheus import service_registry
from sparq_stream.errors import ConfigError
from tests.broker._util import get


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


@pytest.fixture
def served() -> tuple[ServiceMetrics, Probes, OpsServer]:
    metrics = ServiceMetrics("solver", "solver-0")
    probes = Probes(stale_after_s=60, broker_stale_s=60)
    server = OpsServer("127.0.0.1", 0, probes, service_registry(metrics, "p.solver", probes.ready)).start()
    yield metrics, probes, server
    server.close()


def test_metrics_are_prometheus_text_with_counters_lag_core_values_and_latency(served) -> None:
    metrics, _, server = served
    metrics.inc("consumed", 7)
    metrics.inc("dead_lettered")
    metrics.set("in_flight", 3)
    for seconds in (0.02, 0.3, 4.0):
        metrics.handle_seconds.observe(seconds)
    metrics.partition_lag = [PartitionLag("input", "p.candidates", 0, 5), PartitionLag("input", "p.candidates", 1, None),
                             PartitionLag("table", "p.models", 0, 0)]  # fmt: skip
    metrics.snapshot({"rollouts_asked": 64.0})
    status, text = get(server.address + "/metrics")
    assert status == 200
    got = _samples(text)
    me = (("replica", "solver-0"), ("service", "solver"))
    assert got[("sparq_consumed_total", me)] == 7
    assert got[("sparq_dead_lettered_total", me)] == 1
    assert got[("sparq_retries_total", me)] == 0  # declared counters are exported before their first increment
    assert got[("sparq_in_flight", me)] == 3
    lag = {k[1]: v for k, v in got.items() if k[0] == "sparq_consumer_lag"}
    assert lag == {tuple(sorted({**dict(me), "group": "p.solver", "topic": "p.candidates", "partition": "0"}.items())): 5}
    assert got[("sparq_table_lag", tuple(sorted({**dict(me), "topic": "p.models", "partition": "0"}.items())))] == 0
    assert got[("sparq_core", tuple(sorted({**dict(me), "name": "rollouts_asked"}.items())))] == 64
    assert got[("sparq_handle_seconds_count", me)] == 3
    assert got[("sparq_handle_seconds_bucket", tuple(sorted({**dict(me), "le": "0.5"}.items())))] == 2
    assert got[("sparq_handle_seconds_sum", me)] == pytest.approx(4.32)
    assert got[("sparq_ready", me)] == 0  # nothing is met yet
    assert any(name == "process_resident_memory_bytes" for name, _ in got)
    assert all(f"sparq_{c}_total" in {n for n, _ in got} for c in WRAPPER_COUNTERS)


def test_readyz_waits_for_model_tables_partitions_and_the_broker(served) -> None:
    _, probes, server = served
    status, body = get(server.address + "/readyz")
    assert status == 503 and set(json.loads(body)["waiting_for"]) == {"model", "tables", "partitions"}
    for condition in ("model", "tables", "partitions"):
        probes.met(condition)
    assert get(server.address + "/readyz") == (200, json.dumps({"ready": True, "waiting_for": {}}))
    probes.waiting("partitions")  # a rebalance took them away
    assert get(server.address + "/readyz")[0] == 503
    probes.met("partitions")
    probes.broker_stale_s = 0.05
    probes.sent()
    time.sleep(0.1)  # an unacknowledged write older than the bound: the broker is lost
    status, body = get(server.address + "/readyz")
    assert status == 503 and "no acknowledgement from the broker" in json.loads(body)["waiting_for"]["broker"]
    probes.acknowledged()
    assert get(server.address + "/readyz")[0] == 200
    probes.stopping()
    status, body = get(server.address + "/readyz")
    assert status == 503 and list(json.loads(body)["waiting_for"]) == ["stopping"]


def test_healthz_fails_when_the_loop_stops_coming_round(served) -> None:
    _, probes, server = served
    assert get(server.address + "/healthz")[0] == 200
    probes.stale_after_s = 0.05
    time.sleep(0.1)
    status, body = get(server.address + "/healthz")
    assert status == 503 and "has not come round" in json.loads(body)["reason"]
    probes.beat()
    assert get(server.address + "/healthz")[0] == 200
    assert get(server.address + "/nope")[0] == 404


def test_a_port_in_use_is_a_config_error(served) -> None:
    _, probes, server = served
    with pytest.raises(ConfigError, match="--http-port"):
        OpsServer("127.0.0.1", server.port, probes, service_registry(ServiceMetrics("x", "y"), None, probes.ready))


def test_load_in_thread_reports_progress_with_the_stage_and_raises_the_load_error(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("sparq.test")
    beats: list[float] = []

    def build() -> str:
        logging.getLogger("sparq_stream.models.fake").info("reading the weights")
        time.sleep(0.5)
        return "core"

    with caplog.at_level(logging.INFO):
        assert load_in_thread(build, what="the fake core", log=log, report_every_s=0.1, on_wait=lambda: beats.append(1)) == "core"
    still = [r.getMessage() for r in caplog.records if r.getMessage().startswith("still loading the fake core")]
    assert still and all(m.endswith("last step: reading the weights") for m in still)
    assert beats  # the liveness probe is kept fresh while loading

    def broken() -> str:
        raise ConfigError("no such model")

    with pytest.raises(ConfigError, match="no such model"):
        load_in_thread(broken, what="a broken core", log=log, report_every_s=0.1)
    assert threading.current_thread() is threading.main_thread()


def test_sigterm_during_a_load_exits_at_once_with_143() -> None:
    """A load stuck for minutes (here: a sleep in the loader thread) does not delay the exit."""
    script = textwrap.dedent(
        """
        import logging, sys, time
        from sparq_stream.bus.loading import load_in_thread
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        def build():
            print("LOADING", flush=True)
            time.sleep(600)
        load_in_thread(build, what="a slow core", log=logging.getLogger("t"))
        print("NOT REACHED", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "LOADING" in line:
                break
        proc.terminate()
        out, _ = proc.communicate(timeout=30)  # a correctness bound: it exits rather than hangs
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert "received SIGTERM while loading a slow core" in out and "NOT REACHED" not in out
