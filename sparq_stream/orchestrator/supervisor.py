"""Runs each service as its own ``sparq run <service>`` process, with logs, restarts and a clean stop."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServiceProc", "Supervisor"]

log = logging.getLogger(__name__)


@dataclass
class ServiceProc:
    """One supervised service process."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Starts, watches and stops service processes; a crashed service is restarted a few times."""

    def __init__(self, log_dir: Path, max_restarts: int = 3) -> None:
        self.log_dir = log_dir
        self.max_restarts = max_restarts
        self.services: list[ServiceProc] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, service: str, args: list[str], env: dict[str, str] | None = None) -> ServiceProc:
        """Register and start ``sparq run <service> <args>`` under ``name``."""
        svc = ServiceProc(name, ["run", service, *args], self.log_dir / f"{name}.log", env or {})
        self.services.append(svc)
        self._start(svc)
        return svc

    def _start(self, svc: ServiceProc) -> None:
        out = open(svc.log_path, "ab")
        # Several model processes share few cores: OpenMP threads must sleep, not spin, while they wait.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE", **svc.env}
        svc.proc = subprocess.Popen(
            [sys.executable, "-m", "sparq_stream.cli", *svc.args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us, and we stop the services in order
        )
        out.close()
        log.info("started %s (pid %d)", svc.name, svc.proc.pid)

    def check(self) -> list[str]:
        """Restart crashed services (up to ``max_restarts`` each); return the names given up on."""
        failed = []
        for svc in self.services:
            if svc.proc is None or svc.proc.poll() is None:
                continue
            code = svc.proc.returncode  # any exit we did not ask for, clean or not, is a failure to recover
            if svc.restarts >= self.max_restarts:
                failed.append(svc.name)
                continue
            svc.restarts += 1
            log.warning("%s exited with %s; restart %d/%d", svc.name, code, svc.restarts, self.max_restarts)
            self._start(svc)
        return failed

    def tail(self, name: str, lines: int = 20) -> str:
        """Return the last lines of a service's log."""
        svc = next(s for s in self.services if s.name == name)
        try:
            return "\n".join(svc.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, names: list[str] | None = None, timeout_s: float = 60.0) -> dict[str, int | None]:
        """SIGTERM the services (each finishes its batch and commits), wait, then SIGKILL stragglers."""
        chosen = [s for s in self.services if names is None or s.name in names]
        for svc in chosen:
            if svc.alive and svc.proc is not None:
                svc.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for svc in chosen:
            if svc.proc is None:
                continue
            try:
                codes[svc.name] = svc.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs: killing it", svc.name, timeout_s)
                svc.proc.kill()
                codes[svc.name] = svc.proc.wait(10)
        return codes
