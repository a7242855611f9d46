"""Process-level deployment: every service as `sparq run <name>` with its own services/<name>/settings.toml
(as the one container image bakes it in), against the 3-node Apache Kafka cluster; a scripted loop completes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sparq_stream.bus.client import publish_all
from sparq_stream.bus.topics import TopicNames, create_topics
from sparq_stream.orchestrator.monitor import MetricsMonitor
from sparq_stream.orchestrator.supervisor import RestartPolicy, Supervisor
from sparq_stream.orchestrator.up import UpConfig, _finished, load_seed_set, service_values
from sparq_stream.settings import ServiceSettings

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("archivist", "trainer", "novelty", "solver", "mutator")
#: Settings the files cannot hold here (local folders, and the scripted backend and hash embedder
#: instead of the real models; the deployment's own files name the real ones) go in the environment,
#: which outranks the file, as a Deployment's env does; these come from the solver's file.
LOCAL_ONLY = {"max_poll_records", "max_poll_interval_ms"}


def _as_env(values: dict) -> dict[str, str]:
    """``SPARQ_<FIELD>`` variables of settings values (JSON for mappings and lists)."""
    return {
        f"SPARQ_{name.upper()}": str(value) if isinstance(value, (str, Path, int, float)) and not isinstance(value, bool) else json.dumps(value, default=str)
        for name, value in values.items() if value is not None
    }  # fmt: skip


def test_every_service_from_its_own_settings_file_completes_a_loop(kafka_cluster, prefix: str, shared_data: Path,
                                                                    tmp_path: Path) -> None:
    config = UpConfig(seeds=shared_data / "gsm8k_train.jsonl", out=tmp_path, steps=2, variant="qd", backend="scripted",
                      embedder="hash", batch_size=8, k=4, seed=7, contamination_check=False, label_seeds=False, seed_limit=40,
                      partitions=6)
    bootstrap = kafka_cluster.bootstrap
    settings = ServiceSettings(bootstrap=bootstrap, prefix=prefix)
    create_topics(settings, partitions=config.partitions, replication_factor=3)
    seeds, _ = load_seed_set(config)
    publish_all(settings, TopicNames(prefix).topic("seeds"), seeds)
    monitor = MetricsMonitor(settings).start()
    supervisor = Supervisor(tmp_path / "logs", RestartPolicy(max_restarts=0))
    values = service_values(config, prefix, bootstrap)
    finished = False
    try:
        for name in SERVICES:
            own = {k: v for k, v in values[name].items() if not (name == "solver" and k in LOCAL_ONLY)}
            env = {"SPARQ_CONFIG": str(REPO / "services" / name / "settings.toml"), **_as_env({**own, "instance": name})}
            supervisor.add(name, name, [], env=env)
        idle: dict[str, float] = {}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(0.5)
            failed = supervisor.check()
            assert not failed, "\n".join(f"--- {n}:\n{supervisor.tail(n, 40)}" for n in failed)
            if _finished(monitor, idle, supervisor):
                finished = True
                break
    finally:
        supervisor.stop(["mutator"])
        codes = supervisor.stop()
        snapshot = monitor.snapshot()
        monitor.stop()
    assert finished, {n: supervisor.tail(n, 20) for n in SERVICES}
    assert all(code == 0 for code in codes.values()), codes
    rows = [json.loads(line) for line in (tmp_path / "archive" / "archive.jsonl").read_text().splitlines() if line.strip()]
    def value(service: str, name: str) -> float:
        row = snapshot[service]
        return row["counters"].get(name, row["gauges"].get(name, 0.0))

    scored = {r["id"] for r in rows}
    assert scored and len(scored) == value("archivist", "scored")
    assert len(scored) <= value("mutator", "emitted") <= config.steps * config.batch_size
    solver_log = (tmp_path / "logs" / "solver.log").read_text()
    assert "Traceback" not in solver_log
