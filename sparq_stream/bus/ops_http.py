"""A service's operator endpoint: ``/metrics`` (Prometheus text), ``/healthz`` and ``/readyz``.

The service's main thread records what it is doing in a :class:`Probes` object; a small threaded HTTP
server reads it. ``/healthz`` answers 200 while the process is alive and its loop (or its model load)
has come round within ``stale_after_s`` (the consumer's ``max_poll_interval_ms``: past it Kafka
itself gives the partitions away). ``/readyz`` answers 200 once the model is loaded, the tables are
restored and partitions are assigned, and while the broker acknowledges the service's writes;
503 otherwise, with what it waits for. Both answer JSON.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sparq_stream.errors import ConfigError

__all__ = ["OpsServer", "Probes"]

log = logging.getLogger(__name__)

#: Conditions /readyz waits for, and what each means while unmet.
CONDITIONS = {
    "model": "building the core (loading its models)",
    "tables": "restoring the table topics",
    "partitions": "no input partition assigned yet",
}


class Probes:
    """Liveness and readiness of one service, written by its main thread, read by the HTTP thread."""

    def __init__(self, stale_after_s: float, broker_stale_s: float) -> None:
        self.stale_after_s = stale_after_s
        self.broker_stale_s = broker_stale_s
        self._lock = threading.Lock()
        self._beat = time.monotonic()
        self._waiting: dict[str, str] = dict(CONDITIONS)
        self._stopping = False
        self._unacked_since: float | None = None  # first broker write not acknowledged yet
        self._broker_error: str | None = None

    def beat(self) -> None:
        """The loop came round (or the load is still progressing)."""
        self._beat = time.monotonic()

    def waiting(self, condition: str, why: str | None = None) -> None:
        """``condition`` is not met (again)."""
        with self._lock:
            self._waiting[condition] = why or CONDITIONS.get(condition, condition)

    def met(self, condition: str) -> None:
        """``condition`` is met."""
        with self._lock:
            self._waiting.pop(condition, None)

    def stopping(self) -> None:
        """A stop was requested: not ready from now on."""
        self._stopping = True

    # ---- broker acknowledgements (callbacks run on the producer's thread)
    def sent(self) -> None:
        """A tracked write left for the broker."""
        with self._lock:
            if self._unacked_since is None:
                self._unacked_since = time.monotonic()

    def acknowledged(self, _result: Any = None) -> None:
        """The broker acknowledged a tracked write."""
        with self._lock:
            self._unacked_since = None
            self._broker_error = None

    def failed(self, exc: BaseException) -> None:
        """A tracked write failed for good."""
        with self._lock:
            self._broker_error = f"{type(exc).__name__}: {exc}"

    # ---- answers
    def health(self) -> tuple[bool, dict[str, Any]]:
        """(alive, details): the loop came round within ``stale_after_s``."""
        idle = time.monotonic() - self._beat
        alive = idle <= self.stale_after_s
        body: dict[str, Any] = {"alive": alive, "loop_idle_s": round(idle, 3)}
        if not alive:
            body["reason"] = f"the loop has not come round for {idle:.0f}s (limit {self.stale_after_s:.0f}s)"
        return alive, body

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details): every condition met, the broker answering, no stop requested."""
        with self._lock:
            waiting = dict(self._waiting)
            unacked = self._unacked_since
            error = self._broker_error
        if unacked is not None and time.monotonic() - unacked > self.broker_stale_s:
            waiting["broker"] = f"no acknowledgement from the broker for {time.monotonic() - unacked:.0f}s" + (
                f" ({error})" if error else ""
            )
        elif error is not None:
            waiting["broker"] = error
        if self._stopping:
            waiting["stopping"] = "a stop was requested"
        return not waiting, {"ready": not waiting, "waiting_for": waiting}

    def ready(self) -> bool:
        """True when /readyz answers 200."""
        return self.readiness()[0]


class OpsServer:
    """The threaded HTTP server of one service (a daemon thread; :meth:`close` stops it)."""

    def __init__(self, host: str, port: int, probes: Probes, registry: CollectorRegistry) -> None:
        self.probes = probes
        self.registry = registry
        handler = type("_Handler", (_Handler,), {"ops": self})
        try:
            self._httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve HTTP on {host}:{port} ({exc}); choose another --http-port (0: a free one)") from None
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="sparq-http", daemon=True)

    @property
    def port(self) -> int:
        """The port listened on (the chosen one when 0 was asked for)."""
        return int(self._httpd.server_address[1])

    @property
    def address(self) -> str:
        """``http://host:port`` of the endpoint."""
        host = self._httpd.server_address[0]
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}"

    def start(self) -> OpsServer:
        """Serve in the background; return self."""
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on %s", self.address)
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics, /healthz, /readyz; anything else is 404."""

    ops: OpsServer

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        """Answer one probe or scrape."""
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.ops.registry), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            ok, body = self.ops.probes.health() if path == "/healthz" else self.ops.probes.readiness()
            self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
        else:
            self._send(404, b'{"error": "not found: try /metrics, /healthz or /readyz"}', "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server API
        """Probes every few seconds would flood the service log: debug level only."""
        log.debug("%s " + format, self.address_string(), *args)
