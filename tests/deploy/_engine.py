"""Podman for the container tests: set-up (deploy/containers/setup-podman.sh), image builds, containers."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "deploy" / "containers" / "setup-podman.sh"
#: Exit code of the set-up script when no container engine can run on this machine.
NO_ENGINE = 3
#: The host's CA bundle, passed to the build as a secret (a TLS-intercepting proxy's CA is in it).
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
SPARQ_IMAGE = "localhost/sparq-stream:0.1.0"
KAFKA_IMAGE = "localhost/sparq-kafka:4.4.0"

log = logging.getLogger(__name__)


class NoEngine(RuntimeError):
    """No container engine can run here (the message says why)."""


def setup_podman(timeout_s: float = 900.0) -> str:
    """Run the set-up script (installs Podman, configures it, builds the base); return the base image name."""
    if shutil.which("bash") is None:
        raise NoEngine("no bash to run deploy/containers/setup-podman.sh")
    done = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode == NO_ENGINE:
        raise NoEngine(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "setup-podman.sh: no engine")
    if done.returncode != 0:
        raise RuntimeError(f"setup-podman.sh failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


def podman(*args: str, timeout_s: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS``; raise with its output when it fails and ``check``."""
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout_s)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} ... failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


def build(containerfile: Path, context: Path, tag: str, log_path: Path, timeout_s: float = 1800.0) -> float:
    """Build an image (layer cache and pip cache mount reused); return the wall time in seconds."""
    secret = next((["--secret", f"id=ca,src={p}"] for p in CA_BUNDLES if os.path.isfile(p)), [])
    cmd = ["podman", "build", *secret, "-f", str(containerfile), "-t", tag, str(context)]
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{log_path.read_text()[-6000:]}")
    log.info("built %s in %.1f s", tag, took)
    return took


@dataclass
class Container:
    """One detached container of a test run, in the shape the run's finish check reads (a supervised process)."""

    name: str  # the service's instance name (its --instance: the finish check looks its metrics up by it)
    service: str
    container: str = ""  # the container's name (default: the instance name)
    started_wall: float = field(default_factory=time.time)
    gave_up: bool = False

    def __post_init__(self) -> None:
        self.container = self.container or self.name

    @property
    def alive(self) -> bool:
        """True while the container runs."""
        done = podman("inspect", "--format", "{{.State.Running}}", self.container, check=False)
        return done.returncode == 0 and done.stdout.strip() == "true"

    def exit_code(self) -> int | None:
        """The container's exit code once it has stopped."""
        done = podman("inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", self.container, check=False)
        running, _, code = done.stdout.strip().partition(" ")
        return None if done.returncode != 0 or running == "true" else int(code)

    def logs(self, tail: int = 60) -> str:
        """The last lines of the container's output."""
        done = podman("logs", "--tail", str(tail), self.container, check=False)
        return done.stdout + done.stderr

    def terminate(self, timeout_s: float = 30.0) -> tuple[float, int]:
        """SIGTERM the container's main process; wait for it to exit; return (seconds it took, exit code)."""
        started = time.monotonic()
        podman("kill", "--signal", "TERM", self.container, check=False)
        done = podman("wait", self.container, timeout_s=timeout_s, check=False)
        took = time.monotonic() - started
        code = self.exit_code()
        if code is None:
            code = int(done.stdout.strip() or -1)
        return took, code


@dataclass
class Supervised:
    """The containers of a run, as the finish check (``orchestrator.up._finished``) reads a supervisor."""

    services: list[Container] = field(default_factory=list)
