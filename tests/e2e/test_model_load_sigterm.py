"""``sparq run novelty`` with the packaged embedder and classifier: it says it is loading, and SIGTERM ends the load."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.broker._util import get

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.e2e]


def _wait_for_line(log: Path, pattern: str, proc: subprocess.Popen[bytes], limit_s: float = 180.0) -> re.Match[str]:
    deadline = time.monotonic() + limit_s  # a correctness bound: the line comes rather than not
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        assert proc.poll() is None, f"exited with {proc.returncode} before {pattern!r}:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"never logged {pattern!r}:\n{log.read_text()[-3000:]}")


def test_sigterm_while_novelty_loads_its_models_exits_at_once_without_consuming(tansu_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    log = tmp_path / "novelty.log"
    args = [
        sys.executable, "-m", "sparq_stream.cli", "run", "novelty", "--bootstrap", tansu_bootstrap, "--prefix", prefix,
        "--embedder", "sentence-transformers", "--backend", "transformers", "--state-dir", str(tmp_path / "state"),
        "--http-port", "0", "--http-host", "127.0.0.1",
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        address = _wait_for_line(log, r"serving /metrics, /healthz and /readyz on (http://\S+)", proc).group(1)
        _wait_for_line(log, r"loading the embedder", proc)  # inside the model load now
        health, ready = get(address + "/healthz"), get(address + "/readyz")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)  # a correctness bound (exits rather than hangs); bench/sigterm_stop.py measures it
    finally:
        proc.kill()
        proc.wait()
    text = log.read_text()
    assert health[0] == 200
    assert ready[0] == 503 and "model" in json.loads(ready[1])["waiting_for"]
    assert code == 128 + signal.SIGTERM, text[-3000:]
    assert "received SIGTERM while loading the novelty core" in text
    assert "novelty running" not in text  # nothing was consumed, so nothing to commit
