"""A real ``sparq up`` given an API key: the key is in no file of the run and on no command line of its processes.

The scripted backend never uses the key; what is checked is where the key travels. Given in the
environment, it reaches the services through their environment; given as a file, through the
file's path. Either way no process's argv (``/proc/<pid>/cmdline``), no log, no ``run.json`` and no
other file under the run's folder holds it, and a setting passed with ``--with`` is the child's
effective setting (its start-up log line, where the key shows as ``**********``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _family(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _watch(proc: subprocess.Popen[bytes], key: str) -> tuple[dict[int, list[str]], dict[int, bool], set[str]]:
    """Each descendant's last argv, whether its environment holds the key, and every argv seen, until ``sparq up`` ends."""
    argv: dict[int, list[str]] = {}
    seen: set[str] = set()
    has_key: dict[int, bool] = {}
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        for child in _family(proc.pid):
            try:  # read again each time: a process seen between fork and exec has its parent's argv
                cmdline = child.cmdline()  # /proc/<pid>/cmdline
                seen.add("\0".join(cmdline))
                if cmdline:
                    argv[child.pid] = cmdline
                    has_key[child.pid] = child.environ().get("SPARQ_OPENAI_API_KEY") == key
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
        time.sleep(0.05)
    return argv, has_key, seen


@pytest.mark.parametrize("given", ["env", "file"])
def test_a_run_given_a_key_leaks_it_nowhere(given: str, shared_data: Path, tmp_path: Path) -> None:
    key = f"sk-sparq-test-{uuid.uuid4().hex}"
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARQ_") or k == "SPARQ_CACHE_DIR"}
    args = [
        "up", "--seeds", str(shared_data / "gsm8k_train.jsonl"), "--seed-limit", "16", "--steps", "1", "--batch-size", "4",
        "--k", "2", "--backend", "scripted", "--embedder", "hash", "--out", str(out), "--timeout", "300",
        "--with", "solver --early-stop exact",
    ]  # fmt: skip
    if given == "env":
        env["SPARQ_OPENAI_API_KEY"] = key
    else:
        key_file = tmp_path / "secrets" / "openai"
        key_file.parent.mkdir()
        key_file.write_text(key + "\n")
        args += ["--openai-api-key-file", str(key_file)]
    proc = subprocess.Popen([sys.executable, "-m", "sparq_stream.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        argv, has_key, seen = _watch(proc, key)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    services = {pid: a for pid, a in argv.items() if "run" in a and "sparq_stream.cli" in a}
    assert len(services) >= 5, argv  # the five services were seen running
    assert not [a for a in seen if key in a], "the key is on a command line"
    if given == "env":  # handed over through the environment
        assert all(has_key[pid] for pid in services)
    else:  # handed over as the file's path, in each child's settings file
        model_users = [a for a in services.values() if a[a.index("run") + 1] in ("mutator", "novelty", "solver")]
        assert model_users
        for a in model_users:
            child = json.loads(Path(a[a.index("--config") + 1]).read_text(encoding="utf-8"))
            assert child["openai_api_key_file"] == str(key_file.resolve()), child
    assert key.encode() not in stdout + stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert (out / "run.json") in files and len(files) > 5
    assert not [p for p in files if key.encode() in p.read_bytes()], "the key is in a file of the run"
    solver_log = (out / "logs" / "solver-0.log").read_text()
    assert "early_stop=exact" in solver_log  # the --with setting is the child's effective setting
    if given == "env":
        assert "openai_api_key=**********" in solver_log
