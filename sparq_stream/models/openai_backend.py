"""A client for OpenAI-compatible ``/v1/chat/completions`` servers (vLLM, llama.cpp, hosted APIs).

The client runs its own asyncio event loop in a background thread, so :meth:`generate`
is an ordinary blocking call that works from any thread, with or without a running loop,
and one connection pool and one concurrency limit are shared by every caller. Requests
that meet 429, 408, 5xx, a connect error or a timeout are retried with exponential
back-off and jitter (``Retry-After`` is honoured); a request that still fails becomes the
error of its prompt's :class:`GenerationResult`: one bad prompt never raises.

Servers that return fewer choices than ``n`` (llama.cpp ignores ``n``) are fanned out:
extra requests are sent until every prompt has ``n`` completions. Request ``j`` of a prompt
is seeded ``seed + offset_j`` (``offset_j`` = index of its first completion), so the same
call gives the same seeds whether or not the server honours ``n``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Coroutine, Sequence, TypeVar
from urllib.parse import urlsplit

import httpx

from sparq_stream.errors import ConfigError, RetriableError
from sparq_stream.models.base import Completion, GenerationResult, Prompt, SamplingParams
from sparq_stream.models.chat_format import prompt_error

__all__ = ["OpenAIBackend", "RETRY_STATUSES", "map_finish_reason"]

log = logging.getLogger(__name__)

#: HTTP statuses worth a retry: request timeout, conflict, too early, rate limit, and every 5xx.
RETRY_STATUSES = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))

_FINISH = {
    None: "stop",
    "stop": "stop",
    "eos": "stop",
    "eos_token": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_calls": "stop",
    "function_call": "stop",
    "length": "length",
    "max_tokens": "length",
    "model_length": "length",
}
_T = TypeVar("_T")
_CHARS_PER_TOKEN = 4
_SNIPPET = 200


def map_finish_reason(reason: Any) -> str:
    """Map a server's finish_reason to ``stop`` or ``length`` (other reasons pass through lower-cased)."""
    if reason is None or isinstance(reason, str):
        key = reason.lower() if isinstance(reason, str) else None
        return _FINISH.get(key, key or "stop")
    return "stop"


@dataclass(frozen=True)
class _Failure:
    """Why a request gave up (after its retries, or at once when retrying cannot help)."""

    message: str


class _LoopThread:
    """An asyncio event loop running forever in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, _T]) -> Future[_T]:
        """Schedule a coroutine on the loop; return a concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """Stop the loop and join its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


class OpenAIBackend:
    """Chat generation through an OpenAI-compatible HTTP server, with retries and fan-out."""

    name = "openai"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str | None = None,
        api_key: str | None = None,
        *,
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        retry_after_max_s: float = 120.0,
        model_version: int = 0,
        extra_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Configure the client; nothing connects until the first :meth:`generate`.

        ``base_url`` is the API root as for the OpenAI SDK (``http://host:port/v1``; a bare
        ``http://host:port`` gets ``/v1``). ``model=None`` asks the server's ``/models``
        and uses the first id. ``extra_body`` is merged into every request body.
        """
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ConfigError("timeout_s and connect_timeout_s must be > 0")
        if backoff_base_s < 0 or backoff_max_s < 0 or retry_after_max_s < 0:
            raise ConfigError("backoff_base_s, backoff_max_s and retry_after_max_s must be >= 0")
        self.base_url = _api_root(base_url)
        self.model_name = model or ""
        self.model_version = model_version
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.extra_body = dict(extra_body or {})
        self._headers = dict(headers or {})
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._choices_cap: int | None = None
        self._jitter = random.Random()
        self._lock = threading.Lock()
        self._runner: _LoopThread | None = None
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._model_lock: asyncio.Lock | None = None

    # ------------------------------------------------------------------ public API

    @property
    def choices_cap(self) -> int | None:
        """The most choices one response has held when more were asked (None: n seemed honoured)."""
        return self._choices_cap

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[GenerationResult]:
        """Return ``n`` completions per prompt, in order; a prompt that fails carries ``error``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n must be an integer >= 1, got {n!r}")
        if not prompts:
            return []
        runner = self._ensure_runner()
        if threading.current_thread() is runner.thread:
            raise RuntimeError("OpenAIBackend.generate cannot be called from its own event loop thread")
        return runner.submit(self._generate(list(prompts), n, params)).result()

    def list_models(self) -> list[str]:
        """Return the model ids the server lists at ``/models``; an unreachable server raises RetriableError."""
        runner = self._ensure_runner()
        found = runner.submit(self._list_models()).result()
        if isinstance(found, _Failure):
            raise RetriableError(f"{self.base_url}/models: {found.message}")
        return found

    def close(self) -> None:
        """Close the connection pool and stop the background loop (a later call restarts them)."""
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            runner.submit(self._aclose()).result(timeout=10)
        except Exception as exc:  # closing must not raise: log and go on stopping the loop
            log.warning("closing the HTTP client failed: %s", exc)
        runner.stop()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ loop plumbing

    def _ensure_runner(self) -> _LoopThread:
        with self._lock:
            if self._runner is None:
                self._runner = _LoopThread(f"openai-backend-{id(self):x}")
                self._runner.submit(self._aopen()).result()
            return self._runner

    async def _aopen(self) -> None:
        timeout = httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s)
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        self._client = httpx.AsyncClient(timeout=timeout, limits=limits, headers=self._headers)
        self._semaphore = asyncio.Semaphore(self.max_concurrency)
        self._model_lock = asyncio.Lock()

    async def _aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        self._client = None

    # ------------------------------------------------------------------ generation

    async def _generate(self, prompts: list[Prompt], n: int, params: SamplingParams) -> list[GenerationResult]:
        started = time.perf_counter()
        model = await self._resolve_model()
        if isinstance(model, _Failure):
            return [GenerationResult(error=f"cannot find the server's model: {model.message}") for _ in prompts]
        results = await asyncio.gather(*(self._one_prompt(p, n, params) for p in prompts))
        failed = sum(1 for r in results if not r.ok)
        log.debug("generated %d prompts x n=%d in %.2fs (%d failed)", len(prompts), n, time.perf_counter() - started, failed)
        return list(results)

    async def _one_prompt(self, prompt: Prompt, n: int, params: SamplingParams) -> GenerationResult:
        invalid = prompt_error(prompt)
        if invalid:
            return GenerationResult(error=f"invalid prompt: {invalid}")
        try:
            return await self._fan_out(prompt, n, params)
        except Exception as exc:  # the contract: one prompt's failure is its error, never an exception
            log.exception("unexpected failure for one prompt")
            return GenerationResult(error=f"unexpected {type(exc).__name__}: {exc}")

    async def _fan_out(self, prompt: Prompt, n: int, params: SamplingParams) -> GenerationResult:
        chunks: dict[int, list[Completion]] = {}
        prompt_tokens = 0
        plan = _split(0, n, self._choices_cap)
        while plan:
            replies = await asyncio.gather(*(self._chat(prompt, count, params, offset) for offset, count in plan))
            errors = [r.message for r in replies if isinstance(r, _Failure)]
            next_plan: list[tuple[int, int]] = []
            for (offset, count), reply in zip(plan, replies):
                if isinstance(reply, _Failure):
                    continue
                completions, tokens = reply
                prompt_tokens = prompt_tokens or tokens
                if not completions:
                    errors.append("the server returned no choices")
                    continue
                chunks[offset] = completions[:count]
                if len(completions) < count:
                    self._learn_cap(len(completions))
                    next_plan += _split(offset + len(completions), count - len(completions), self._choices_cap)
            if errors:
                got = sum(len(c) for c in chunks.values())
                return GenerationResult(prompt_tokens=prompt_tokens, error=f"{errors[0]} ({got} of {n} completions received)")
            plan = next_plan
        completions = [c for offset in sorted(chunks) for c in chunks[offset]]
        return GenerationResult(completions=completions, prompt_tokens=prompt_tokens)

    def _learn_cap(self, returned: int) -> None:
        if self._choices_cap is None or returned < self._choices_cap:
            log.info("%s returns at most %d choice(s) per request; fanning out", self.base_url, returned)
            self._choices_cap = returned

    async def _chat(self, prompt: Prompt, count: int, params: SamplingParams, offset: int) -> tuple[list[Completion], int] | _Failure:
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": [{"role": t["role"], "content": t["content"]} for t in prompt],
            "n": count,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            body["seed"] = params.seed + offset
        if params.stop:
            body["stop"] = list(params.stop)
        body.update(self.extra_body)
        reply = await self._send("POST", "/chat/completions", body)
        if isinstance(reply, _Failure):
            return reply
        try:
            return _parse_chat(reply.json())
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return _Failure(f"malformed chat response: {type(exc).__name__}: {exc}; body: {reply.text[:_SNIPPET]!r}")

    async def _resolve_model(self) -> str | _Failure:
        if self.model_name:
            return self.model_name
        assert self._model_lock is not None
        async with self._model_lock:
            if not self.model_name:
                found = await self._list_models()
                if isinstance(found, _Failure):
                    return found
                if not found:
                    return _Failure("the server lists no model")
                self.model_name = found[0]
                log.info("%s serves model %s", self.base_url, self.model_name)
        return self.model_name

    async def _list_models(self) -> list[str] | _Failure:
        reply = await self._send("GET", "/models", None)
        if isinstance(reply, _Failure):
            return reply
        try:
            return [str(m["id"]) for m in reply.json()["data"]]
        except (ValueError, TypeError, KeyError) as exc:
            return _Failure(f"malformed /models response: {exc}; body: {reply.text[:_SNIPPET]!r}")

    async def _send(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response | _Failure:
        assert self._client is not None and self._semaphore is not None
        url = self.base_url + path
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                async with self._semaphore:
                    response = await self._client.request(method, url, json=body)
            except httpx.TimeoutException as exc:
                last = f"timeout ({type(exc).__name__}) on {method} {url}"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__} on {method} {url}: {exc}"
            else:
                if response.status_code < 300:
                    return response
                last = f"HTTP {response.status_code} on {method} {url}: {response.text[:_SNIPPET]!r}"
                if response.status_code not in RETRY_STATUSES:
                    return _Failure(last)
                retry_after = _retry_after(response.headers.get("retry-after"))
            if attempt == self.max_retries:
                break
            delay = self._delay(attempt, retry_after)
            log.debug("attempt %d failed (%s); retrying in %.2fs", attempt + 1, last, delay)
            await asyncio.sleep(delay)
        return _Failure(f"{last} (gave up after {self.max_retries + 1} attempts)")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.retry_after_max_s)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        return ceiling * (0.5 + 0.5 * self._jitter.random())


def _api_root(base_url: str) -> str:
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"base_url must be an http(s) URL like http://host:8000/v1, got {base_url!r}")
    return url if parts.path not in ("", "/") else url + "/v1"


def _split(offset: int, count: int, cap: int | None) -> list[tuple[int, int]]:
    if cap is None or cap >= count:
        return [(offset, count)]
    return [(offset + i, min(cap, count - i)) for i in range(0, count, cap)]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _parse_chat(data: Any) -> tuple[list[Completion], int]:
    choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
    texts = [((c.get("message") or {}).get("content") or "", map_finish_reason(c.get("finish_reason"))) for c in choices]
    usage = data.get("usage") or {}
    total = usage.get("completion_tokens")
    if isinstance(total, int) and not isinstance(total, bool) and total >= 0 and texts:
        tokens = _share(total, [len(t) for t, _ in texts])
    else:
        tokens = [max(1, math.ceil(len(t) / _CHARS_PER_TOKEN)) if t else 0 for t, _ in texts]
    prompt_tokens = usage.get("prompt_tokens")
    prompt_tokens = prompt_tokens if isinstance(prompt_tokens, int) and not isinstance(prompt_tokens, bool) else 0
    return [Completion(text=t, tokens=k, finish_reason=f) for (t, f), k in zip(texts, tokens)], prompt_tokens


def _share(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` tokens over choices in proportion to their text lengths (sums to ``total``)."""
    if len(weights) == 1:
        return [total]
    if sum(weights) == 0:
        weights = [1] * len(weights)
    exact = [w * total / sum(weights) for w in weights]
    shares = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (shares[i] - exact[i], i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares
