"""The OpenAI-compatible client against a tiny in-process fake server: retries, fan-out, errors."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

from sparq_stream.errors import ConfigError
from sparq_stream.models.base import GenerationBackend, SamplingParams
from sparq_stream.models.openai_backend import OpenAIBackend, map_finish_reason

Reply = tuple[int, dict[str, str], Any]
Behaviour = Callable[[dict[str, Any], int], Reply]


class FakeServer:
    """An OpenAI-like HTTP server whose answer to each request is set by ``behaviour``."""

    def __init__(self) -> None:
        self.behaviour: Behaviour = lambda body, i: (200, {}, chat(body))
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                server.paths.append(self.path)
                self._send(200, {}, {"object": "list", "data": [{"id": "fake-model"}, {"id": "other"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    index = len(server.requests)
                    server.requests.append(body)
                    server.paths.append(self.path)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, headers, payload = server.behaviour(body, index)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                self._send(status, headers, payload)

            def _send(self, status: int, headers: dict[str, str], payload: Any) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def user_text(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


def chat(body: dict[str, Any], choices: int | None = None, usage: bool = True, finish: Any = "stop") -> dict[str, Any]:
    """A chat response with ``choices`` choices (default: as many as asked) echoing prompt and seed."""
    count = body.get("n", 1) if choices is None else choices
    texts = [f"{user_text(body)}|seed={body.get('seed')}|choice={i}" for i in range(count)]
    data: dict[str, Any] = {
        "object": "chat.completion",
        "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish} for i, t in enumerate(texts)],
    }
    if usage:
        data["usage"] = {"prompt_tokens": 11, "completion_tokens": 5 * count, "total_tokens": 11 + 5 * count}
    return data


def prompt(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "sys"}, {"role": "user", "content": text}]


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.close()


@pytest.fixture
def make_backend(server: FakeServer) -> Iterator[Callable[..., OpenAIBackend]]:
    made: list[OpenAIBackend] = []

    def make(**options: Any) -> OpenAIBackend:
        settings = {"model": "fake-model", "max_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0}
        settings.update(options)
        backend = OpenAIBackend(server.url, **settings)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def test_it_is_a_generation_backend(make_backend: Callable[..., OpenAIBackend]) -> None:
    backend = make_backend()
    assert isinstance(backend, GenerationBackend) and backend.name == "openai"


def test_batch_results_in_order_with_tokens(server: FakeServer, make_backend: Callable[..., OpenAIBackend]) -> None:
    backend = make_backend(api_key="secret")
    results = backend.generate([prompt(f"q{i}") for i in range(5)], 2, SamplingParams(seed=3, max_tokens=9, stop=("END",)))
    for i, result in enumerate(results):
        assert result.ok and result.prompt_tokens == 11
        assert [c.text for c in result.completions] == [f"q{i}|seed=3|choice=0", f"q{i}|seed=3|choice=1"]
        assert sum(c.tokens for c in result.completions) == 10
    assert len(server.requests) == 5 and backend.choices_cap is None
    body = server.requests[0]
    assert (body["n"], body["max_tokens"], body["stop"], body["model"]) == (2, 9, ["END"], "fake-model")
    assert set(server.paths) == {"/v1/chat/completions"}


def test_429_then_200_honours_retry_after(server: FakeServer, make_backend: Callable[..., OpenAIBackend]) -> None:
    server.behaviour = lambda body, i: (429, {"Retry-After": "1"}, {"error": "slow down"}) if i == 0 else (200, {}, chat(body))
    backend = make_backend(max_retries=3)
    start = time.perf_counter()
    result = backend.generate([prompt("q")], 1, SamplingParams())[0]
    elapsed = time.perf_counter() - start
    assert result.ok and result.completions[0].text == "q|seed=None|choice=0"
    assert len(server.requests) == 2
    assert 0.9 <= elapsed < 3.0  # waited the server's Retry-After, not the 0.01 s back-off


def test_fan_out_when_the_server_returns_one_choice(server: FakeServer, make_backend: Callable[..., OpenAIBackend]) -> None:
    server.behaviour = lambda body, i: (200, {}, chat(body, choices=1))
    backend = make_backend()
    first = backend.generate([prompt("a"), prompt("b")], 3, SamplingParams(seed=10))
    for name, result in zip("ab", first):
        assert result.ok
        assert [c.text for c in result.completions] == [f"{name}|seed={s}|choice=0" for s in (10, 11, 12)]
        assert [c.tokens for c in result.completions] == [5, 5, 5]
    assert len(server.requests) == 6 and backend.choices_cap == 1
    assert sorted(b["n"] for b in server.requests) == [1, 1, 1, 1, 3, 3]
    server.requests.clear()
    again = backend.generate([prompt("a"), prompt("b")], 3, SamplingParams(seed=10))
    assert again == first  # the learnt cap changes the requests, not the seeds or the order
    assert [b["n"] for b in server.requests] == [1] * 6


def test_fan_out_with_a_partial_cap_and_no_seed(server: FakeServer, make_backend: Callable[..., OpenAIBackend]) -> None:
    server.behaviour = lambda body, i: (200, {}, chat(body, choices=min(2, body["n"]), usage=False))
    backend = make_backend()
    result = backend.generate([prompt("abcdefgh")], 5, SamplingParams())[0]
    assert result.ok and len(result.completions) == 5
    assert all("seed" not in body for body in server.requests)
    assert sorted(b["n"] for b in server.requests) == [1, 2, 5]  # 2 of 5, then 2 + 1 more
    assert all(c.tokens == -(-len(c.text) // 4) for c in result.completions)  # estimated without usage


def test_500_forever_becomes_that_prompts_error(server: FakeServer, make_backend: Callable[..., OpenAIBackend]) -> None:
    server.behaviour = lambda body, i: (500, {}, {"error": "boom"}) if "bad" in user_text(body) else (200, {}, chat(body))
    backend = make_backend(max_retries=2)
    results = backend.generate([prompt("good 1"), prompt("bad"), prompt("good 2")], 1, SamplingParams())
    assert results[0].ok and results[2].ok
    assert results[0].completions[0].text.startswith("good 1")
    assert not results[1].ok and results[1].completions == []
    assert "HTTP 500" in results[1].error and "3 attempts" in results[1].error
    assert sum("bad" in user_text(b) for b in server.requests) == 3


def test_client_errors_are_not_retried(server: FakeServer, make_backend: Callable[..., OpenAIBackend]) -> None:
    server.behaviour = lambda body, i: (400, {}, {"error": "context too long"})
    result = make_backend(max_retries=5).generate([prompt("q")], 2, SamplingParams())[0]
    assert "HTTP 400" in result.error and "context too long" in result.error
    assert len(server.requests) == 1


def test_malformed_responses_are_errors(server: FakeServer, make_backend: Callable[..., OpenAIBackend]) -> None:
    server.behaviour = lambda body, i: (200, {}, b"not json" if "x" in user_text(body) else {"choices": []})
    results = make_backend().generate([prompt("x"), prompt("y")], 1, SamplingParams())
    assert "malformed chat response" in results[0].error
    assert "no choices" in results[1].error


def test_timeouts_are_retried(server: FakeServer, make_backend: Callable[..., OpenAIBackend]) -> None:
    def slow_first(body: dict[str, Any], i: int) -> Reply:
        if i == 0:
            time.sleep(1.0)
        return 200, {}, chat(body)

    server.behaviour = slow_first
    result = make_backend(timeout_s=0.3).generate([prompt("q")], 1, SamplingParams())[0]
    assert result.ok and len(server.requests) == 2


def test_timeouts_that_persist_become_errors(server: FakeServer, make_backend: Callable[..., OpenAIBackend]) -> None:
    def slow(body: dict[str, Any], i: int) -> Reply:
        time.sleep(0.5)
        return 200, {}, chat(body)

    server.behaviour = slow
    start = time.perf_counter()
    result = make_backend(timeout_s=0.2, max_retries=1).generate([prompt("q")], 1, SamplingParams())[0]
    assert "timeout" in result.error and "2 attempts" in result.error
    assert time.perf_counter() - start < 2.0


def test_connection_refused_is_an_error_not_an_exception() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", model="m", max_retries=2, backoff_base_s=0.01)
    try:
        start = time.perf_counter()
        results = backend.generate([prompt("q"), prompt("r")], 2, SamplingParams())
        assert all("ConnectError" in r.error and "3 attempts" in r.error for r in results)
        assert time.perf_counter() - start < 5.0
    finally:
        backend.close()


def test_concurrency_is_bounded(server: FakeServer, make_backend: Callable[..., OpenAIBackend]) -> None:
    def slow(body: dict[str, Any], i: int) -> Reply:
        time.sleep(0.1)
        return 200, {}, chat(body)

    server.behaviour = slow
    start = time.perf_counter()
    results = make_backend(max_concurrency=2).generate([prompt(f"q{i}") for i in range(6)], 1, SamplingParams())
    assert all(r.ok for r in results)
    assert server.max_in_flight == 2  # parallel, but never more than the limit
    assert time.perf_counter() - start >= 0.3


def test_model_is_discovered_when_not_given(server: FakeServer, make_backend: Callable[..., OpenAIBackend]) -> None:
    backend = make_backend(model=None)
    assert backend.list_models() == ["fake-model", "other"]
    assert backend.generate([prompt("q")], 1, SamplingParams())[0].ok
    assert backend.model_name == "fake-model" and server.requests[0]["model"] == "fake-model"


def test_usage_is_split_by_text_length_and_finish_reasons_map(server: FakeServer, make_backend: Callable[..., OpenAIBackend]) -> None:
    def uneven(body: dict[str, Any], i: int) -> Reply:
        data = chat(body, finish="length")
        data["choices"][0]["message"]["content"] = "x" * 30
        data["choices"][1]["message"]["content"] = "y" * 10
        data["choices"][1]["finish_reason"] = "eos"
        data["usage"]["completion_tokens"] = 8
        return 200, {}, data

    server.behaviour = uneven
    result = make_backend().generate([prompt("q")], 2, SamplingParams())[0]
    assert [(c.tokens, c.finish_reason) for c in result.completions] == [(6, "length"), (2, "stop")]
    assert [map_finish_reason(r) for r in (None, "stop", "length", "max_tokens", "content_filter", 3)] == [
        "stop", "stop", "length", "length", "content_filter", "stop"
    ]


def test_generate_works_from_threads_and_inside_a_running_loop(make_backend: Callable[..., OpenAIBackend]) -> None:
    backend = make_backend()

    async def inside_loop() -> str:
        return backend.generate([prompt("in loop")], 1, SamplingParams())[0].completions[0].text

    assert asyncio.run(inside_loop()).startswith("in loop")
    outputs: dict[int, str] = {}

    def worker(i: int) -> None:
        outputs[i] = backend.generate([prompt(f"t{i}")], 1, SamplingParams())[0].completions[0].text

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert {i: text.split("|")[0] for i, text in outputs.items()} == {i: f"t{i}" for i in range(4)}
    backend.close()
    assert backend.generate([prompt("after close")], 1, SamplingParams())[0].ok  # restarts lazily


def test_invalid_prompts_and_arguments(make_backend: Callable[..., OpenAIBackend], server: FakeServer) -> None:
    backend = make_backend()
    results = backend.generate([[], [{"role": "robot", "content": "x"}], prompt("ok")], 1, SamplingParams())
    assert "invalid prompt" in results[0].error and "invalid prompt" in results[1].error and results[2].ok
    assert len(server.requests) == 1
    assert backend.generate([], 1, SamplingParams()) == []
    with pytest.raises(ConfigError):
        backend.generate([prompt("q")], 0, SamplingParams())
    for bad in ({"base_url": "localhost:8000"}, {"max_concurrency": 0}, {"max_retries": -1}, {"timeout_s": 0}):
        with pytest.raises(ConfigError):
            OpenAIBackend(**bad)
    assert OpenAIBackend("http://h:1").base_url == "http://h:1/v1"
    assert OpenAIBackend("https://api.example.com/v1/").base_url == "https://api.example.com/v1"
