"""Runs each service as its own ``sparq run <service>`` process, with logs, restarts and a clean stop.

Restarts are limited per time window: a service that exits on its own more than ``max_restarts``
times within ``window_s`` seconds is given up on; each restart waits a back-off that doubles
with the crashes in the window. Essential services (the loop's data path: mutator, novelty,
solvers, archivist) end the run when given up on; optional ones (the trainer) are left
stopped and the loop goes on without them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from sparq_stream.children import die_with_parent

__all__ = ["RestartPolicy", "ServiceProc", "Supervisor", "OPTIONAL_SERVICES"]

log = logging.getLogger(__name__)

OPTIONAL_SERVICES = frozenset({"trainer"})
"""Services whose loss does not stop the loop's data path (seeds to archive)."""


class RestartPolicy(BaseModel):
    """How often a crashed service is restarted, and how long each restart waits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_restarts: int = Field(default=5, ge=0, description="restarts allowed per service within the window")
    window_s: float = Field(default=300.0, gt=0, description="the sliding window of max_restarts, seconds")
    backoff_s: float = Field(default=1.0, ge=0, description="wait before the first restart; doubles per crash in the window")
    max_backoff_s: float = Field(default=30.0, ge=0, description="the longest wait before a restart")


@dataclass
class ServiceProc:
    """One supervised service process."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    optional: bool = False
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    crashes: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    gave_up: bool = False
    started_wall: float = 0.0  # time.time() of the latest start: its metrics must be newer to count

    @property
    def service(self) -> str:
        """The service this process runs (``solver`` for ``solver-0``)."""
        return self.args[1] if len(self.args) > 1 else self.name

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Starts, watches and stops service processes; a crashed service is restarted within its policy."""

    def __init__(
        self,
        log_dir: Path,
        policy: RestartPolicy | None = None,
        *,
        launcher: list[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log_dir = log_dir
        self.policy = policy or RestartPolicy()
        self.launcher = launcher or [sys.executable, "-m", "sparq_stream.cli"]
        self.clock = clock
        self.services: list[ServiceProc] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def add(
        self, name: str, service: str, args: list[str], env: dict[str, str] | None = None, *, optional: bool | None = None
    ) -> ServiceProc:
        """Register and start ``sparq run <service> <args>`` under ``name`` (optional: see OPTIONAL_SERVICES)."""
        is_optional = service in OPTIONAL_SERVICES if optional is None else optional
        svc = ServiceProc(name, ["run", service, *args], self.log_dir / f"{name}.log", env or {}, is_optional)
        self.services.append(svc)
        self._start(svc)
        return svc

    def _start(self, svc: ServiceProc) -> None:
        out = open(svc.log_path, "ab")
        # Several model processes share few cores: OpenMP threads must sleep, not spin, while they wait.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE", **svc.env}
        svc.proc = subprocess.Popen(
            [*self.launcher, *svc.args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us, and we stop the services in order
            preexec_fn=die_with_parent(),  # and if we die, however we die, they die too
        )
        out.close()
        svc.restart_at = None
        svc.started_wall = time.time()
        log.info("started %s (pid %d)", svc.name, svc.proc.pid)

    def pids(self) -> list[int]:
        """Process ids of the services running now."""
        return [s.proc.pid for s in self.services if s.alive and s.proc is not None]

    def check(self) -> list[str]:
        """Restart crashed services within the policy; return the essential services given up on."""
        now = self.clock()
        failed = []
        for svc in self.services:
            if svc.gave_up:
                if not svc.optional:
                    failed.append(svc.name)
                continue
            if svc.proc is None or svc.proc.poll() is None:
                continue
            if svc.restart_at is None:  # a new exit: any exit we did not ask for is a failure to recover
                self._on_exit(svc, now)
                if svc.gave_up:
                    if not svc.optional:
                        failed.append(svc.name)
                    continue
            if svc.restart_at is not None and now >= svc.restart_at:
                svc.restarts += 1
                self._start(svc)
        return failed

    def _on_exit(self, svc: ServiceProc, now: float) -> None:
        policy = self.policy
        code = svc.proc.returncode if svc.proc is not None else None
        while svc.crashes and now - svc.crashes[0] > policy.window_s:
            svc.crashes.popleft()
        svc.crashes.append(now)
        if len(svc.crashes) > policy.max_restarts:
            svc.gave_up = True
            kind = "optional, the loop goes on without it" if svc.optional else "essential, the run stops"
            log.error(
                "%s exited with %s: %d exits within %.0fs (limit %d restarts): giving up (%s)",
                svc.name, code, len(svc.crashes), policy.window_s, policy.max_restarts, kind,
            )
            return
        delay = min(policy.max_backoff_s, policy.backoff_s * 2 ** (len(svc.crashes) - 1))
        svc.restart_at = now + delay
        log.warning(
            "%s exited with %s; restart in %.1fs (%d/%d within %.0fs)",
            svc.name, code, delay, len(svc.crashes), policy.max_restarts, policy.window_s,
        )

    def given_up(self) -> list[str]:
        """Every service given up on, optional ones included."""
        return [s.name for s in self.services if s.gave_up]

    def tail(self, name: str, lines: int = 20) -> str:
        """Return the last lines of a service's log."""
        svc = next(s for s in self.services if s.name == name)
        try:
            return "\n".join(svc.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, names: list[str] | None = None, timeout_s: float = 30.0) -> dict[str, int | None]:
        """SIGTERM the services (each finishes its batch and commits), wait, then SIGKILL stragglers."""
        chosen = [s for s in self.services if names is None or s.name in names]
        for svc in chosen:
            svc.restart_at = None
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

    def kill_all(self) -> None:
        """SIGKILL every service now (a second Ctrl-C, or a stop that must not wait)."""
        for svc in self.services:
            svc.restart_at = None
            if svc.alive and svc.proc is not None:
                svc.proc.kill()
        for svc in self.services:
            if svc.proc is not None:
                try:
                    svc.proc.wait(10)
                except subprocess.TimeoutExpired:
                    log.error("%s (pid %d) survived SIGKILL", svc.name, svc.proc.pid)
