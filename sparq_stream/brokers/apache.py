"""Real Apache Kafka 4.x (KRaft, one combined broker+controller) run from deploy/kafka/run-kafka.sh."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from sparq_stream.errors import BrokerUnavailable, ConfigError

__all__ = ["ApacheKafka", "KafkaCluster", "KafkaLaunchError", "kafka_home", "resolve_jars", "kafka_version"]

log = logging.getLogger(__name__)

_SCRIPT = "run-kafka.sh"
_READY_MARK = b"Kafka Server started"
_PORT_CLASH = "already in use"  # Java's BindException and the script's own port check
_MISSING_TOOL_RC = 3
_AUTH_MODES = ("none", "scram")


def _check_auth(auth: str, tls: bool = False) -> str:
    if auth not in _AUTH_MODES:
        raise ConfigError(f"auth must be one of {', '.join(_AUTH_MODES)}, got {auth!r}")
    if tls and auth != "scram":
        raise ConfigError("tls=True needs auth='scram'")
    return auth


def _auth_args(auth: str, tls: bool) -> list[str]:
    """run-kafka.sh's flags for an auth mode."""
    return (["--auth", auth] if auth != "none" else []) + (["--tls"] if tls else [])


def _client_file(clients: Path, principal: str) -> Path:
    """The client properties file of ``principal`` under ``clients`` (ConfigError when the broker is not secured)."""
    path = clients / f"{principal}.properties"
    if not path.is_file():
        raise ConfigError(f"no client config {path}: start the broker with auth='scram' (principals: "
                          "admin, mutator, novelty, solver, archivist, trainer, reader)")  # fmt: skip
    return path


class KafkaLaunchError(BrokerUnavailable):
    """The Apache Kafka node did not come up; the message ends with the tail of its log."""

    def __init__(self, message: str, log_tail: str = "", *, retriable: bool | None = None) -> None:
        full = f"{message}\n--- broker log tail ---\n{log_tail}" if log_tail else message
        super().__init__(full, retriable=retriable)
        self.log_tail = log_tail


def kafka_home() -> Path:
    """Return the deploy/kafka folder (``SPARQ_KAFKA_HOME`` overrides the one in the repository)."""
    override = os.environ.get("SPARQ_KAFKA_HOME")
    home = Path(override) if override else Path(__file__).resolve().parents[2] / "deploy" / "kafka"
    if not (home / _SCRIPT).is_file():
        where = f"SPARQ_KAFKA_HOME={override}" if override else str(home)
        raise ConfigError(f"{where} holds no {_SCRIPT}; set SPARQ_KAFKA_HOME to the deploy/kafka folder")
    return home


def _java_binary() -> str | None:
    """Return the java the script will use, or None."""
    if os.environ.get("JAVA"):
        return os.environ["JAVA"]
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(Path(java_home) / "bin" / "java", os.X_OK):
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java")


def _run_script(home: Path, args: list[str], timeout: float) -> str:
    """Run run-kafka.sh with ``args``; map its exit codes to errors; return its stdout."""
    bash = shutil.which("bash")
    if bash is None:
        raise ConfigError("missing: bash (needed to run deploy/kafka/run-kafka.sh)")
    try:
        done = subprocess.run(
            [bash, str(home / _SCRIPT), *args],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise KafkaLaunchError(f"run-kafka.sh {args[0]} took longer than {timeout}s", retriable=True) from exc
    if done.returncode == _MISSING_TOOL_RC:
        raise ConfigError(done.stderr.strip() or f"run-kafka.sh {args[0]}: a required tool is missing")
    if done.returncode != 0:
        raise KafkaLaunchError(f"run-kafka.sh {args[0]} failed (exit {done.returncode})", done.stderr[-4000:],
                               retriable=False)
    return done.stdout.strip()


def resolve_jars(home: Path | None = None, timeout: float = 900.0) -> Path:
    """Fetch the Kafka jars with Maven unless already there; return the folder holding them."""
    home = home or kafka_home()
    if _java_binary() is None:
        raise ConfigError("missing: java (Apache Kafka needs a Java 17+ runtime; install one or set JAVA_HOME)")
    return Path(_run_script(home, ["resolve"], timeout))


def kafka_version(home: Path | None = None) -> str:
    """Return the Kafka version of the resolved jars, e.g. ``"4.4.0"``."""
    return _run_script(home or kafka_home(), ["version"], 30.0)


def _free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux; survives exec)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_DEATHSIG


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM ``proc``, wait ``grace`` seconds, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        log.warning("Kafka pid %s ignored SIGTERM for %.0fs; sending SIGKILL", proc.pid, grace)
        proc.kill()
        proc.wait(10)


def _finalize(state: dict[str, object], owned_dir: Path | None) -> None:
    """Last-chance clean-up when an ApacheKafka is collected or the interpreter exits."""
    proc = state.get("proc")
    if isinstance(proc, subprocess.Popen):
        _terminate(proc, 10.0)
    if owned_dir is not None:
        shutil.rmtree(owned_dir, ignore_errors=True)


class ApacheKafka:
    """One Apache Kafka node on 127.0.0.1: storage in ``workdir``, stopped by stop() or on exit.

    The broker runs as a child process that also gets SIGTERM if the thread that started it
    dies (Linux), so a crashed test run leaves no broker behind. A ``workdir`` you pass is
    kept (a later start on it keeps its topics); one made here is removed when the object goes.
    ``auth="scram"``: SASL/SCRAM-SHA-512 logins and ACLs (``run-kafka.sh --auth scram``); each
    principal's login is in :meth:`client_config`; ``tls=True`` adds TLS (SASL_SSL).
    """

    def __init__(
        self,
        port: int | None = None,
        workdir: str | Path | None = None,
        startup_timeout: float = 120.0,
        *,
        controller_port: int | None = None,
        overrides: Mapping[str, str | int | float | bool] | None = None,
        heap: str = "512m",
        home: str | Path | None = None,
        resolve_timeout: float = 900.0,
        die_with_parent: bool = True,
        auth: str = "none",
        tls: bool = False,
    ) -> None:
        self.auth = _check_auth(auth, tls)
        self.tls = tls
        self._auto_ports = port is None
        self.port = port or 0
        self.controller_port = controller_port or 0
        self.startup_timeout = startup_timeout
        self.resolve_timeout = resolve_timeout
        self.heap = heap
        self.die_with_parent = die_with_parent and sys.platform.startswith("linux")
        self.overrides = {k: _prop_value(v) for k, v in (overrides or {}).items()}
        self._home = Path(home) if home else None
        owned = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="sparq-kafka-")) if owned else Path(workdir).resolve()
        self._state: dict[str, object] = {"proc": None}
        self._log_file: IO[bytes] | None = None
        self._finalizer = weakref.finalize(self, _finalize, self._state, self.workdir if owned else None)

    @property
    def bootstrap(self) -> str:
        """The bootstrap address, "127.0.0.1:PORT" (valid once started)."""
        if not self.port:
            raise ConfigError("ApacheKafka.bootstrap: the broker has not been started, so it has no port yet")
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The broker's log file (stdout and stderr of the JVM)."""
        return self.workdir / "kafka.log"

    @property
    def clients_dir(self) -> Path:
        """The folder of client properties files, one per principal (``auth="scram"``; ``sparq up --kafka-auth-dir``)."""
        return self.workdir / "clients"

    def client_config(self, principal: str = "admin") -> Path:
        """The Java client properties file with ``principal``'s login (``auth="scram"``, once started)."""
        return _client_file(self.clients_dir, principal)

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self.pid is not None

    @property
    def _proc(self) -> subprocess.Popen[bytes] | None:
        proc = self._state["proc"]
        return proc if isinstance(proc, subprocess.Popen) else None

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the broker log ('' if there is none)."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return b"\n".join(data.splitlines()[-lines:]).decode("utf-8", "replace")

    def start(self) -> str:
        """Resolve the jars if needed, start the node, wait until it serves metadata; return bootstrap."""
        if self.running:
            return self.bootstrap
        if _java_binary() is None:
            raise ConfigError("missing: java (Apache Kafka needs a Java 17+ runtime; install one or set JAVA_HOME)")
        home = self._home or kafka_home()
        resolve_jars(home, self.resolve_timeout)
        attempts = 3 if self._auto_ports else 1
        attempt = 0
        while True:
            attempt += 1
            if self._auto_ports and (attempt > 1 or not self.port):
                self.port, self.controller_port = _free_port(), _free_port()
            if not self.controller_port:
                self.controller_port = _free_port()
            t0 = time.monotonic()
            try:
                self._launch(home)
                self._wait_ready()
            except KafkaLaunchError as exc:
                self._kill()
                if _PORT_CLASH in exc.log_tail and attempt < attempts:
                    log.warning("Kafka port clash on %s, retrying with new ports", self.bootstrap)
                    continue
                raise
            log.info("Apache Kafka ready at %s in %.1fs (pid %s, dir %s)",
                     self.bootstrap, time.monotonic() - t0, self.pid, self.workdir)
            return self.bootstrap

    def _launch(self, home: Path) -> None:
        """Start ``run-kafka.sh foreground`` as a child; its JVM replaces the script (same pid)."""
        args = [shutil.which("bash") or "bash", str(home / _SCRIPT), "foreground",
                "--port", str(self.port), "--controller-port", str(self.controller_port),
                "--dir", str(self.workdir)]
        args += _auth_args(self.auth, self.tls)
        for key, value in self.overrides.items():
            args += ["--set", f"{key}={value}"]
        env = dict(os.environ)
        env.setdefault("KAFKA_HEAP_OPTS", f"-Xms128m -Xmx{self.heap}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self.log_path.write_bytes(b"")
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - kept open while the broker runs
        self._state["proc"] = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, preexec_fn=_die_with_parent if self.die_with_parent else None,
        )

    def _wait_ready(self) -> None:
        """Wait for the start-up log line, an open port and a metadata answer naming this node."""
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                if code == _MISSING_TOOL_RC:
                    raise ConfigError(self.log_tail(5) or "run-kafka.sh: a required tool is missing")
                tail = self.log_tail()
                raise KafkaLaunchError(f"Kafka exited with code {code} during start-up (log {self.log_path})",
                                       tail, retriable=_PORT_CLASH in tail)
            if self._started_mark_seen() and _port_open(self.port) and self._metadata_ok():
                return
            time.sleep(0.2)
        raise KafkaLaunchError(f"Kafka was not ready at {self.bootstrap} within {self.startup_timeout}s "
                               f"(log {self.log_path})", self.log_tail(), retriable=True)

    def _started_mark_seen(self) -> bool:
        """True once the broker logged that it started."""
        try:
            return _READY_MARK in self.log_path.read_bytes()
        except OSError:
            return False

    def _metadata_ok(self) -> bool:
        """True when a kafka-python admin client sees this node as an unfenced broker."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        login: dict[str, object] = {}
        if self.auth != "none":
            from sparq_stream.security import client_security_options

            try:
                login = {**client_security_options(self.client_config("admin")), "bootstrap_timeout_ms": 5000}
            except ConfigError:
                return False  # not written yet
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000,
                                     client_id="sparq-kafka-ready", **login)
        except (KafkaError, OSError):
            return False
        try:
            brokers = admin.describe_cluster().get("brokers", [])
            return any(b.get("port") == self.port and not b.get("is_fenced") for b in brokers)
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Keeps the workdir."""
        proc = self._proc
        if proc is not None:
            _terminate(proc, timeout)
            log.info("Apache Kafka at %s stopped (exit %s)", self.bootstrap, proc.returncode)
        self._state["proc"] = None
        (self.workdir / "kafka.pid").unlink(missing_ok=True)
        self._close_log()

    def close(self) -> None:
        """Stop the node and remove the workdir if this object created it."""
        self.stop()
        self._finalizer()

    def _kill(self) -> None:
        """Stop quickly after a failed start."""
        proc = self._proc
        if proc is not None:
            _terminate(proc, 5.0)
        self._state["proc"] = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> ApacheKafka:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prop_value(value: str | int | float | bool) -> str:
    """Render a Python value as a Java properties value (True -> "true")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if "\n" in text:
        raise ConfigError(f"broker override values must be one line, got {text!r}")
    return text


class KafkaCluster:
    """A KRaft cluster of ``nodes`` combined broker+controller nodes on 127.0.0.1 (run-kafka.sh cluster).

    Node N (1-based) serves clients on ``port + N - 1`` and its controller on
    ``port + nodes + N - 1``; every node votes in the controller quorum. Topics default to
    replication min(3, nodes) with min.insync.replicas min(2, nodes). Each JVM gets a small
    heap (``-Xmx384m``) so three fit beside the tests. The nodes run as daemons; ``close()``
    (or the object going away) stops them. ``auth="scram"``: SASL/SCRAM-SHA-512 logins and
    ACLs; each principal's login is in :meth:`client_config`; ``tls=True`` adds TLS (SASL_SSL).
    """

    def __init__(self, nodes: int = 3, workdir: str | Path | None = None, *, port: int | None = None,
                 heap: str = "384m", home: str | Path | None = None, timeout: float = 240.0, auth: str = "none",
                 tls: bool = False) -> None:
        if nodes < 1:
            raise ConfigError(f"nodes must be >= 1, got {nodes}")
        self.auth = _check_auth(auth, tls)
        self.tls = tls
        self.nodes, self.heap, self.timeout = nodes, heap, timeout
        self._home = Path(home) if home else None
        self._port = port
        owned = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="sparq-kcluster-")) if owned else Path(workdir).resolve()
        self._finalizer = weakref.finalize(self, _stop_cluster, self._home, self.workdir, owned)

    @property
    def port(self) -> int:
        """The client port of node 1 (valid once started)."""
        if not self._port:
            raise ConfigError("KafkaCluster: not started yet, so it has no ports")
        return self._port

    def node_port(self, node: int) -> int:
        """The client port of ``node`` (1-based)."""
        if not 1 <= node <= self.nodes:
            raise ConfigError(f"node must be in 1..{self.nodes}, got {node}")
        return self.port + node - 1

    @property
    def bootstrap(self) -> str:
        """Every node's address, comma separated."""
        return ",".join(f"127.0.0.1:{self.node_port(n)}" for n in range(1, self.nodes + 1))

    @property
    def clients_dir(self) -> Path:
        """The folder of client properties files, one per principal (``auth="scram"``; ``sparq up --kafka-auth-dir``)."""
        return self.workdir / "clients"

    def client_config(self, principal: str = "admin") -> Path:
        """The Java client properties file with ``principal``'s login (``auth="scram"``, once started)."""
        return _client_file(self.clients_dir, principal)

    def _script(self, *args: str) -> str:
        env_heap = os.environ.get("KAFKA_HEAP_OPTS")
        os.environ["KAFKA_HEAP_OPTS"] = f"-Xms64m -Xmx{self.heap}"
        try:
            return _run_script(self._home or kafka_home(), [*args, "--dir", str(self.workdir)], self.timeout)
        finally:
            if env_heap is None:
                os.environ.pop("KAFKA_HEAP_OPTS", None)
            else:
                os.environ["KAFKA_HEAP_OPTS"] = env_heap

    def start(self) -> str:
        """Start every node (resolving jars first), wait until all serve; return the bootstrap list."""
        if _java_binary() is None:
            raise ConfigError("missing: java (Apache Kafka needs a Java 17+ runtime; install one or set JAVA_HOME)")
        resolve_jars(self._home or kafka_home())
        if not self._port:
            self._port = _free_port_block(2 * self.nodes)
        auth = _auth_args(self.auth, self.tls)
        out = self._script("cluster", "start", "--nodes", str(self.nodes), "--port", str(self._port), *auth)
        log.info("Apache Kafka cluster of %d nodes ready at %s (dir %s)", self.nodes, out, self.workdir)
        return self.bootstrap

    def stop_node(self, node: int) -> None:
        """Stop ``node`` (SIGTERM, then SIGKILL); its storage stays."""
        self.node_port(node)
        self._script("cluster", "stop-node", str(node))

    def start_node(self, node: int) -> None:
        """Start ``node`` again on its storage and wait until it serves."""
        self.node_port(node)
        self._script("cluster", "start-node", str(node))

    def running_nodes(self) -> list[int]:
        """The nodes whose process runs."""
        return [n for n in range(1, self.nodes + 1) if _port_open(self.node_port(n))]

    def stop(self) -> None:
        """Stop every node; keep the storage."""
        if self._port:
            self._script("cluster", "stop")

    def close(self) -> None:
        """Stop every node and remove the workdir if this object created it."""
        self._finalizer()

    def __enter__(self) -> KafkaCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _free_port_block(count: int, tries: int = 50) -> int:
    """Return a base port such that ``count`` consecutive ports are free on 127.0.0.1."""
    import random

    for _ in range(tries):
        base = random.randint(20000, 60000 - count)
        ok = True
        for port in range(base, base + count):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise KafkaLaunchError(f"no block of {count} free ports found", retriable=True)


def _stop_cluster(home: Path | None, workdir: Path, owned: bool) -> None:
    """Stop a cluster's nodes (finalizer; errors are logged, not raised)."""
    if (workdir / "cluster.env").is_file():
        try:
            _run_script(home or kafka_home(), ["cluster", "stop", "--dir", str(workdir)], 90.0)
        except (BrokerUnavailable, ConfigError) as exc:
            log.warning("stopping the Kafka cluster in %s: %s", workdir, exc)
    if owned:
        shutil.rmtree(workdir, ignore_errors=True)
