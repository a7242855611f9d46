"""The local backends with the real packaged models: SmolLM2-135M-Instruct (GGUF, converted once)
and all-MiniLM-L6-v2. The generator is tiny, so these check plumbing, not answers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sparq_stream.errors import ConfigError
from sparq_stream.models import gguf_cache
from sparq_stream.models.base import EmbeddingBackend, GenerationBackend, SamplingParams
from sparq_stream.models.embeddings import SentenceTransformerEmbedder
from sparq_stream.models.transformers_backend import TransformersBackend

pytestmark = pytest.mark.slow

MAX_TOKENS = 24


def _chat(text: str, system: str | None = None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh model cache, so the first load really converts the GGUF."""
    return tmp_path_factory.mktemp("sparq-cache")


@pytest.fixture(scope="module")
def backend(cache_dir: Path) -> Iterator[TransformersBackend]:
    """One SmolLM2 backend shared by the module (first load: converts and caches the GGUF).

    One torch thread: on a busy 2-core machine two OpenMP threads spin against each other and
    run several times slower; the previous setting is restored afterwards.
    """
    import torch

    threads = torch.get_num_threads()
    loaded = TransformersBackend(cache_dir=cache_dir, max_batch_size=16, num_threads=1)
    yield loaded
    loaded.close()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    """The packaged all-MiniLM-L6-v2, shared by the module."""
    return SentenceTransformerEmbedder(batch_size=8)


def test_first_load_converts_and_later_loads_use_the_cache(
    backend: TransformersBackend, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = backend.load_info
    assert info.converted and gguf_cache.is_converted(info.hf_dir) and info.hf_dir.parent == cache_dir / "hf"
    assert (info.hf_dir / "model.safetensors").is_file() and not list(info.hf_dir.parent.glob(".tmp-*"))

    def no_conversion(*_args: object) -> None:
        raise AssertionError("the cached folder should have been used")

    monkeypatch.setattr(gguf_cache, "convert_gguf", no_conversion)
    start = time.perf_counter()
    second = TransformersBackend(cache_dir=cache_dir)
    try:
        assert not second.load_info.converted and second.load_info.hf_dir == info.hf_dir
        assert time.perf_counter() - start < info.load_seconds
    finally:
        second.close()


def test_backend_identity(backend: TransformersBackend) -> None:
    assert isinstance(backend, GenerationBackend)
    assert (backend.name, backend.model_name, backend.model_version) == ("transformers", "SmolLM2-135M-Instruct", 0)
    assert backend.context_length == 8192


def test_batched_generation_returns_n_completions_per_prompt(backend: TransformersBackend) -> None:
    prompts = [_chat("What is 2 + 3?"), _chat("Name a colour.", system="You are terse.")]
    results = backend.generate(prompts, 3, SamplingParams(temperature=0.8, max_tokens=MAX_TOKENS, seed=1))
    assert len(results) == 2
    for result in results:
        assert result.ok and result.prompt_tokens > 0 and len(result.completions) == 3
        for completion in result.completions:
            assert isinstance(completion.text, str)
            assert 0 < completion.tokens <= MAX_TOKENS
            assert completion.finish_reason in {"stop", "length"}
            assert (completion.finish_reason == "length") == (completion.tokens == MAX_TOKENS)


def test_same_seed_same_texts(backend: TransformersBackend) -> None:
    prompts = [_chat("Tell me a short story about a fox."), _chat("Invent a name for a ship.")]
    params = SamplingParams(temperature=1.0, max_tokens=16, seed=42)

    def texts(p: SamplingParams) -> list[str]:
        return [c.text for r in backend.generate(prompts, 2, p) for c in r.completions]

    first = texts(params)
    assert texts(params) == first
    assert texts(SamplingParams(temperature=1.0, max_tokens=16, seed=43)) != first


def test_mutation_style_prompt_flows_through(backend: TransformersBackend) -> None:
    prompt = _chat(
        "Here is a maths problem: 'Tom has 3 apples and buys 4 more. How many apples does he have?'\n"
        "Write a new, harder variant. Reply exactly in the form "
        "<problem>...</problem><solution>... \\boxed{answer}</solution>",
        system="You write maths problems.",
    )
    result = backend.generate([prompt], 2, SamplingParams(temperature=0.7, max_tokens=32, seed=3))[0]
    assert result.ok and len(result.completions) == 2
    assert all(isinstance(c.text, str) and c.text.strip() and c.tokens > 0 for c in result.completions)


def test_a_bad_prompt_fails_alone(backend: TransformersBackend) -> None:
    prompts = [
        _chat("Say hello."),
        "not a list of turns",
        [{"role": "wizard", "content": "hi"}],
        _chat("word " * 9000),  # longer than the 8192-token context
        _chat("Say goodbye."),
    ]
    results = backend.generate(prompts, 2, SamplingParams(max_tokens=8, seed=0))
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert "too long" in results[3].error
    assert all(len(r.completions) == 2 for r in (results[0], results[4]))


def test_stop_strings_end_the_completion(backend: TransformersBackend) -> None:
    prompt = [_chat("List three fruits, separated by commas.")]
    greedy = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    full = backend.generate(prompt, 1, greedy)[0].completions[0]
    words = full.text.split()
    assert len(words) >= 3, full.text
    stop = words[2]
    cut = backend.generate(prompt, 1, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, stop=(stop,)))[0]
    completion = cut.completions[0]
    assert completion.text == full.text[: full.text.find(stop)]
    assert completion.finish_reason == "stop" and 0 < completion.tokens < full.tokens


def test_reload_swaps_in_a_saved_checkpoint(backend: TransformersBackend, cache_dir: Path, tmp_path: Path) -> None:
    serving = TransformersBackend(cache_dir=cache_dir)
    try:
        checkpoint = tmp_path / "v1"
        serving.hf_model.save_pretrained(str(checkpoint))  # stands in for a fine-tuned checkpoint
        serving.tokenizer.save_pretrained(str(checkpoint))
        with pytest.raises(ConfigError):
            serving.reload(tmp_path / "missing")
        assert serving.model_version == 0
        info = serving.reload(checkpoint, version=1, name="smollm2-ft")
        assert info.hf_dir == checkpoint and not info.converted
        assert (serving.model_name, serving.model_version) == ("smollm2-ft", 1)
        params = SamplingParams(temperature=0.0, max_tokens=12)
        prompt = [_chat("Say hello.")]
        assert serving.generate(prompt, 1, params)[0].completions == backend.generate(prompt, 1, params)[0].completions
    finally:
        serving.close()


def test_embeddings_are_unit_rows_that_rank_similar_text_higher(embedder: SentenceTransformerEmbedder) -> None:
    assert isinstance(embedder, EmbeddingBackend) and embedder.dim == 384
    texts = [
        "A train leaves at 3 pm travelling at 60 km/h.",
        "A train departs at 15:00 going 60 kilometres per hour.",
        "My grandmother grows tomatoes in her garden.",
        "What is the sum of the first ten primes?",
        "Compute the total of the first 10 prime numbers.",
    ]
    vectors = embedder.embed(texts)
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2 and sims[3, 4] > sims[3, 2] + 0.2
    assert embedder.embed([]).shape == (0, 384)
    np.testing.assert_allclose(embedder.embed(texts[:2]), vectors[:2], atol=1e-5)  # batching does not matter
