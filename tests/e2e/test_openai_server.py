"""OpenAIBackend against a REAL OpenAI-compatible server (llama-cpp-python serving SmolLM2)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from sparq_stream.models.base import GenerationResult, SamplingParams
from sparq_stream.models.openai_backend import OpenAIBackend
from sparq_stream.prompts import SOLVE, load_prompt

from .conftest import LlamaServer

pytestmark = pytest.mark.slow


def _solve_prompts(count: int) -> list[list[dict[str, str]]]:
    template = load_prompt(SOLVE)
    return [template.render(problem=f"Tom has {i + 2} apples and buys {i + 3} more. How many apples does he have?") for i in range(count)]


def test_batched_n_gt_1_returns_n_completions_per_prompt(llama_server: LlamaServer) -> None:
    with OpenAIBackend(llama_server.base_url, max_concurrency=2, timeout_s=120.0, max_retries=2) as backend:
        params = SamplingParams(temperature=0.8, max_tokens=16, seed=7)
        start = time.perf_counter()
        results = backend.generate(_solve_prompts(3), 3, params)
        elapsed = time.perf_counter() - start
        assert backend.model_name.endswith(".gguf")  # discovered from /v1/models
        assert backend.choices_cap == 1  # llama.cpp ignores n: the client fanned out
    assert len(results) == 3
    for result in results:
        assert result.ok, result.error
        assert len(result.completions) == 3
        assert result.prompt_tokens > 0
        for completion in result.completions:
            assert completion.text.strip()
            assert 1 <= completion.tokens <= 16
            assert completion.finish_reason in ("stop", "length")
    tokens = sum(c.tokens for r in results for c in r.completions)
    print(f"llama.cpp server: {tokens} completion tokens in {elapsed:.1f}s ({tokens / elapsed:.0f} tok/s, 9 requests)")
    assert llama_server.served_chat_requests() >= 9


def test_server_stopped_mid_batch_gives_per_prompt_errors(llama_server_factory: Callable[[], LlamaServer]) -> None:
    server = llama_server_factory()
    backend = OpenAIBackend(
        server.base_url, model="smollm2", max_concurrency=1, timeout_s=20.0,
        connect_timeout_s=2.0, max_retries=1, backoff_base_s=0.05, backoff_max_s=0.1,
    )  # fmt: skip
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["results"] = backend.generate(_solve_prompts(8), 1, SamplingParams(max_tokens=48, seed=1))
        except BaseException as exc:  # the test asserts that nothing is raised
            outcome["raised"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 120
    while server.served_chat_requests() < 2 and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.05)
    assert server.served_chat_requests() >= 2, server.log_tail()
    server.kill()
    worker.join(timeout=60)
    backend.close()
    assert not worker.is_alive(), "generate hung after the server died"
    assert "raised" not in outcome, outcome.get("raised")
    results = outcome["results"]
    assert isinstance(results, list) and len(results) == 8
    assert all(isinstance(r, GenerationResult) for r in results)
    served = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    assert len(served) >= 2 and failed
    assert all(len(r.completions) == 1 for r in served)
    assert all(r.completions == [] and "attempts" in r.error for r in failed)


def test_the_api_key_reaches_the_server_from_the_environment_or_a_file(
    llama_server_factory: Callable[..., LlamaServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that wants a key: the solver's settings hand it over from SPARQ_OPENAI_API_KEY or the key file."""
    from sparq_stream.credentials import openai_key_option
    from sparq_stream.models.registry import make_generation_backend
    from sparq_stream.services import service_settings

    key = "sk-llama-test-5d1e"
    server = llama_server_factory(api_key=key)
    flags = ["--backend", "openai", "--backend-options", json.dumps({"base_url": server.base_url, "max_retries": 0})]
    params = SamplingParams(max_tokens=4, seed=1)

    def first_result(settings: object) -> GenerationResult:
        with make_generation_backend("openai", **settings.backend_options, **openai_key_option(settings)) as backend:
            return backend.generate(_solve_prompts(1), 1, params)[0]

    monkeypatch.delenv("SPARQ_OPENAI_API_KEY", raising=False)
    refused = first_result(service_settings("solver", flags))
    assert not refused.ok and "401" in (refused.error or "")
    monkeypatch.setenv("SPARQ_OPENAI_API_KEY", key)
    assert first_result(service_settings("solver", flags)).ok
    monkeypatch.delenv("SPARQ_OPENAI_API_KEY")
    key_file = tmp_path / "openai.key"
    key_file.write_text(key + "\n")
    assert first_result(service_settings("solver", [*flags, "--openai-api-key-file", str(key_file)])).ok
