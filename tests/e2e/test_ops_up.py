"""A short scripted ``sparq up`` on Tansu: every service's /metrics, /healthz and /readyz from run.json."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from sparq_stream.orchestrator.up import UpConfig, run_up
from tests.broker._util import get, scrape

pytestmark = [pytest.mark.broker, pytest.mark.e2e]

SERVICES = {"archivist", "trainer", "novelty", "solver-0", "mutator"}


def test_every_service_of_sparq_up_serves_metrics_and_healthy_probes(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = UpConfig(
        seeds=shared_data / "gsm8k_train.jsonl", out=out, steps=1, batch_size=4, k=2, backend="scripted", embedder="hash",
        seed_limit=12, seed=3, timeout_s=240,
    )  # fmt: skip
    seen: dict[str, Any] = {}

    def on_tick(_supervisor: Any, _monitor: Any) -> None:
        if seen:
            return
        http = json.loads((out / "run.json").read_text())["http"]
        deadline = time.monotonic() + 180  # a correctness bound: the services become ready rather than not
        while not all(get(address + "/readyz")[0] == 200 for address in http.values()):
            assert time.monotonic() < deadline, {name: get(address + "/readyz") for name, address in http.items()}
            time.sleep(0.5)
        for name, address in http.items():
            seen[name] = (scrape(address), get(address + "/healthz"), get(address + "/readyz"))

    result = run_up(config, on_tick=on_tick)
    assert result.exit_code == 0, result.reason
    assert set(seen) == SERVICES
    for name, (samples, health, ready) in seen.items():
        assert health[0] == 200 and json.loads(health[1])["alive"] is True, name
        assert ready == (200, json.dumps({"ready": True, "waiting_for": {}})), name
        service = "solver" if name.startswith("solver") else name
        assert {s.labels["service"] for s in samples["sparq_consumed_total"]} == {service}
        assert {s.labels["replica"] for s in samples["sparq_consumed_total"]} == {name}
        assert samples["sparq_ready"][0].value == 1
        assert "sparq_handle_seconds_bucket" in samples and "process_cpu_seconds_total" in samples
    run = json.loads((out / "run.json").read_text())
    assert set(run["http"]) == SERVICES and all(a.startswith("http://127.0.0.1:") for a in run["http"].values())
