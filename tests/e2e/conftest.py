"""A real OpenAI-compatible server for the e2e tests: llama-cpp-python serving the SmolLM2 GGUF.

Outside CI a missing ``llama-cpp-python[server]`` skips these tests with the install command;
in CI (the ``CI`` environment variable is set) it fails them, so the server path is always run there.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

IN_CI = bool(os.environ.get("CI"))
INSTALL_HINT = "CMAKE_ARGS='-DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF' pip install 'llama-cpp-python[server]'"
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
_START_TIMEOUT_S = 120.0


def _missing(reason: str) -> None:
    """Fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must run the llama.cpp server tests)", pytrace=False)
    pytest.skip(reason)


def _gguf_path() -> Path:
    from sparq_stream.errors import ConfigError
    from sparq_stream.models.packaged import smollm2_gguf_path

    try:
        return smollm2_gguf_path()
    except ConfigError as exc:
        _missing(str(exc))
        raise  # unreachable: _missing always raises


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """One ``python -m llama_cpp.server`` subprocess on a free local port, logging to a file."""

    def __init__(self, model: Path, log_path: Path, n_ctx: int = 2048, api_key: str | None = None) -> None:
        self.model = model
        self.api_key = api_key  # the server then answers only requests bearing it
        self.log_path = log_path
        self.n_ctx = n_ctx
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LlamaServer:
        """Start the server and wait until ``/v1/models`` answers (fails with the log tail otherwise)."""
        command = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            *(["--api_key", self.api_key] if self.api_key else []),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                auth = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
                if httpx.get(f"{self.base_url}/models", headers=auth, timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer within {_START_TIMEOUT_S:.0f}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_text(self) -> str:
        """The server's output so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's output."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def served_chat_requests(self) -> int:
        """How many chat completions the server has answered with 200 (from its access log)."""
        return self.log_text().count('"POST /v1/chat/completions HTTP/1.1" 200')


@pytest.fixture(scope="session")
def llama_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LlamaServer]]:
    """Start extra llama.cpp servers (each stopped at the end of the session or when the test stops it)."""
    missing = [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        _missing(f"llama-cpp-python[server] is not installed (missing {', '.join(missing)}); install: {INSTALL_HINT}")
    model = _gguf_path()
    started: list[LlamaServer] = []
    logs = tmp_path_factory.mktemp("llama-server")

    def start(api_key: str | None = None) -> LlamaServer:
        server = LlamaServer(model, logs / f"server-{len(started)}.log", api_key=api_key)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def llama_server(llama_server_factory: Callable[[], LlamaServer]) -> LlamaServer:
    """One llama.cpp server shared by the session."""
    return llama_server_factory()
