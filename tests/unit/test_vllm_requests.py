"""The vLLM backend's request and result mapping, tested with fake engine objects (no vllm needed),
plus one real-engine test on a CUDA machine with vllm installed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from sparq_stream.errors import ConfigError
from sparq_stream.models.base import GenerationBackend, SamplingParams
from sparq_stream.models.vllm_backend import VLLMBackend, build_sampling_kwargs, map_output, map_outputs


def _sample(text: str, ids: list[int], reason: str | None, index: int = 0) -> SimpleNamespace:
    return SimpleNamespace(text=text, token_ids=ids, finish_reason=reason, index=index)


def _output(prompt_ids: list[int], *samples: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(prompt_token_ids=prompt_ids, outputs=list(samples))


# -- request mapping ---------------------------------------------------------------------------


def test_sampling_kwargs_carry_every_setting() -> None:
    params = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=64, seed=11, stop=("</solution>", ""))
    assert build_sampling_kwargs(params, 4) == {
        "n": 4,
        "temperature": 0.8,
        "top_p": 0.9,
        "max_tokens": 64,
        "seed": 11,
        "stop": ["</solution>"],
    }


def test_sampling_kwargs_leave_out_unset_seed_and_stop() -> None:
    kwargs = build_sampling_kwargs(SamplingParams(seed=None, stop=()), 1)
    assert "seed" not in kwargs and "stop" not in kwargs and kwargs["n"] == 1


def test_greedy_requests_disable_nucleus_sampling() -> None:
    assert build_sampling_kwargs(SamplingParams(temperature=0.0, top_p=0.5), 1)["top_p"] == 1.0


@pytest.mark.parametrize(
    ("params", "n", "fragment"),
    [
        (SamplingParams(), 0, "n must be"),
        (SamplingParams(max_tokens=0), 1, "max_tokens"),
        (SamplingParams(temperature=-1.0), 1, "temperature"),
    ],
)
def test_bad_requests_are_config_errors(params: SamplingParams, n: int, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        build_sampling_kwargs(params, n)


# -- result mapping ----------------------------------------------------------------------------


def test_outputs_map_to_results_in_sample_order() -> None:
    out = _output([1, 2, 3], _sample("b", [7, 8], "length", index=1), _sample("a", [5], "stop", index=0))
    result = map_output(out)
    assert result.ok and result.prompt_tokens == 3
    assert [(c.text, c.tokens, c.finish_reason) for c in result.completions] == [("a", 1, "stop"), ("b", 2, "length")]


def test_aborted_or_empty_outputs_become_errors() -> None:
    results = map_outputs(
        [_output([1], _sample("x", [1], "abort")), _output([1, 2]), _output([4], _sample("ok", [9], "stop"))]
    )
    assert [r.ok for r in results] == [False, False, True]
    assert "abort" in results[0].error and "no completions" in results[1].error
    assert results[1].prompt_tokens == 2


def test_missing_prompt_ids_count_as_zero() -> None:
    out = SimpleNamespace(prompt_token_ids=None, outputs=[_sample("t", [1, 2], "stop")])
    assert map_output(out).prompt_tokens == 0 and map_output(out).completions[0].tokens == 2


# -- the guarded import ------------------------------------------------------------------------


def test_importing_the_module_does_not_import_vllm() -> None:
    code = "import sys, sparq_stream.models.vllm_backend; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_constructing_without_vllm_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(ConfigError, match=r"vllm is not installed: pip install 'sparq-stream\[gpu\]'"):
        VLLMBackend()


# -- generate() with a fake engine -------------------------------------------------------------


class _FakeTokenizer:
    def apply_chat_template(self, prompt, tokenize, add_generation_prompt):  # noqa: ANN001, ANN201
        return " ".join(t["content"] for t in prompt)

    def __call__(self, text, add_special_tokens):  # noqa: ANN001, ANN204
        return {"input_ids": list(range(len(text.split())))}


class _FakeLLM:
    """Answers each prompt with n samples; a prompt of exactly 3 tokens makes the whole batch fail."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=10))

    def get_tokenizer(self) -> _FakeTokenizer:
        return _FakeTokenizer()

    def generate(self, prompts, sampling, use_tqdm):  # noqa: ANN001, ANN201
        self.batches.append(len(prompts))
        if any(len(p["prompt_token_ids"]) == 3 for p in prompts):
            raise ValueError("engine rejects this prompt")
        return [
            _output(p["prompt_token_ids"], *[_sample(f"s{k}", [1] * (k + 1), "stop", k) for k in range(sampling["n"])])
            for p in prompts
        ]


def _fake_backend() -> tuple[VLLMBackend, _FakeLLM]:
    backend = object.__new__(VLLMBackend)
    llm = _FakeLLM()
    backend._vllm = SimpleNamespace(SamplingParams=lambda **kw: kw)
    backend._llm = llm
    backend._lock = threading.Lock()
    backend.model_name, backend.model_version = "fake", 0
    return backend, llm


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_generate_maps_each_prompt_and_isolates_failures() -> None:
    backend, llm = _fake_backend()
    assert isinstance(backend, GenerationBackend)
    prompts = [_chat("one"), "bad", _chat("a b c"), _chat("x " * 9), _chat("two words")]
    results = backend.generate(prompts, 2, SamplingParams(max_tokens=2))
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert "list of" in results[1].error and "engine rejects" in results[2].error
    assert "too long" in results[3].error
    assert [c.text for c in results[0].completions] == ["s0", "s1"] and results[4].prompt_tokens == 2
    assert llm.batches == [3, 1, 1, 1]  # one batch, then one by one after the engine refused it


def test_closed_backend_refuses_work() -> None:
    backend, _ = _fake_backend()
    backend.close()
    with pytest.raises(Exception, match="closed"):
        backend.generate([_chat("a")], 1, SamplingParams())


# -- the real engine ---------------------------------------------------------------------------


def _gpu_ready() -> tuple[bool, str]:
    if importlib.util.find_spec("vllm") is None:
        return False, "vllm is not installed (pip install 'sparq-stream[gpu]')"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU is available"
    return True, ""


@pytest.mark.gpu
def test_real_vllm_engine_on_smollm2(tmp_path_factory: pytest.TempPathFactory) -> None:
    ready, why = _gpu_ready()
    if not ready:
        pytest.skip(why)
    backend = VLLMBackend(
        cache_dir=Path(tmp_path_factory.mktemp("vllm-cache")), gpu_memory_utilization=0.3, max_model_len=2048
    )
    try:
        prompts = [_chat("Name a prime number."), "bad", _chat("Write one word.")]
        params = SamplingParams(temperature=0.8, max_tokens=32, seed=5)
        results = backend.generate(prompts, 3, params)
        assert [r.ok for r in results] == [True, False, True]
        for r in (results[0], results[2]):
            assert len(r.completions) == 3 and r.prompt_tokens > 0
            assert all(0 < c.tokens <= 32 and c.finish_reason in {"stop", "length"} for c in r.completions)
        again = backend.generate(prompts, 3, params)
        assert [c.text for c in again[0].completions] == [c.text for c in results[0].completions]
    finally:
        backend.close()
