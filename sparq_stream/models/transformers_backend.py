"""Local generation with Hugging Face transformers (CPU by default): batched chat, n samples per prompt."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparq_stream.errors import ConfigError, FatalError
from sparq_stream.models.base import Completion, GenerationResult, Prompt, SamplingParams
from sparq_stream.models.chat_format import chat_token_ids, cut_at_stop, prompt_error
from sparq_stream.models.packaged import model_display_name

__all__ = ["LoadInfo", "TransformersBackend", "resolve_model_dir", "torch_dtype"]

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


@dataclass(frozen=True)
class LoadInfo:
    """How the current model was loaded: its folder, whether a GGUF was converted, and timings."""

    source: str
    hf_dir: Path
    converted: bool
    convert_seconds: float
    load_seconds: float


@dataclass
class _Loaded:
    """A loaded model with everything generation needs, swapped as one unit on reload."""

    model: Any
    tokenizer: Any
    context: int
    end_ids: frozenset[int]
    pad_id: int
    info: LoadInfo


def torch_dtype(name: str) -> Any:
    """Map a dtype name ("float32", "bf16", ...) to the torch dtype."""
    import torch

    key = _DTYPES.get(name.lower())
    if key is None:
        raise ConfigError(f"dtype {name!r} is not supported; allowed: {sorted(_DTYPES)}")
    return getattr(torch, key)


def resolve_model_dir(model: str | os.PathLike[str] | None, cache_dir: Path | None = None) -> tuple[Path, bool, float]:
    """Turn a GGUF file, a folder holding one GGUF, or an HF folder into an HF folder (converting once)."""
    from sparq_stream.models.gguf_cache import materialise_hf_dir

    if model is None:
        done = materialise_hf_dir(None, cache_dir=cache_dir)
        return done.path, done.converted, done.seconds
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        done = materialise_hf_dir(path, cache_dir=cache_dir)
        return done.path, done.converted, done.seconds
    if path.is_dir():
        if (path / "config.json").is_file():
            return path, False, 0.0
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            done = materialise_hf_dir(ggufs[0], cache_dir=cache_dir)
            return done.path, done.converted, done.seconds
        raise ConfigError(f"{path} holds neither config.json nor exactly one .gguf file")
    raise ConfigError(f"model path {path} does not exist (give a .gguf file or a save_pretrained folder)")


class TransformersBackend:
    """A causal LM run with transformers ``generate``: left-padded batches, n samples per prompt."""

    name = "transformers"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        model_name: str | None = None,
        model_version: int = 0,
        dtype: str = "float32",
        device: str = "cpu",
        num_threads: int | None = None,
        max_batch_size: int = 32,
        cache_dir: Path | None = None,
    ) -> None:
        """Load ``model`` (default: the packaged SmolLM2-135M-Instruct GGUF) offline."""
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if num_threads is not None:
            if num_threads < 1:
                raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
            import torch

            torch.set_num_threads(num_threads)
        self.dtype = torch_dtype(dtype)
        self.device = device
        self.max_batch_size = max_batch_size
        self.cache_dir = cache_dir
        self._lock = threading.RLock()
        self._state: _Loaded | None = self._load(model)
        self.model_name = model_name or model_display_name(model)
        self.model_version = model_version

    # -- loading -----------------------------------------------------------------------------

    @property
    def load_info(self) -> LoadInfo:
        """How the current model was loaded (folder, converted or cached, seconds)."""
        return self._loaded().info

    @property
    def hf_model(self) -> Any:
        """The underlying transformers model (for benchmarks and the trainer)."""
        return self._loaded().model

    @property
    def tokenizer(self) -> Any:
        """The underlying tokenizer (left padding)."""
        return self._loaded().tokenizer

    @property
    def context_length(self) -> int:
        """The most tokens (prompt + completion) the model accepts."""
        return self._loaded().context

    def reload(self, model: str | os.PathLike[str], version: int | None = None, name: str | None = None) -> LoadInfo:
        """Load a new model version (GGUF or save_pretrained folder) and swap it in; the old one serves until then."""
        state = self._load(model)  # a failure here leaves the current model in place
        with self._lock:
            self._state = state
            self.model_version = self.model_version + 1 if version is None else version
            if name is not None:
                self.model_name = name
        gc.collect()
        log.info("reloaded %s version %s from %s", self.model_name, self.model_version, state.info.hf_dir)
        return state.info

    def close(self) -> None:
        """Drop the model so its memory can be freed."""
        with self._lock:
            self._state = None
        gc.collect()

    def _loaded(self) -> _Loaded:
        """Return the loaded model or say that the backend is closed."""
        state = self._state
        if state is None:
            raise FatalError("the transformers backend is closed")
        return state

    def _load(self, model: str | os.PathLike[str] | None) -> _Loaded:
        """Resolve and load model + tokenizer, offline."""
        log.info("loading the causal LM %s: importing transformers", model or "SmolLM2-135M-Instruct (packaged)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        start = time.perf_counter()
        hf_dir, converted, convert_s = resolve_model_dir(model, self.cache_dir)
        log.info("loading the causal LM: reading %s", hf_dir)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
            hf_model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=self.dtype, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot load a causal LM from {hf_dir}: {exc}") from exc
        hf_model.to(self.device).train(False)  # inference mode
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"the tokenizer in {hf_dir} has no chat template")
        tokenizer.padding_side = "left"
        end_ids = _end_token_ids(hf_model, tokenizer)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(end_ids)
        context = int(getattr(hf_model.config, "max_position_embeddings", 0) or tokenizer.model_max_length)
        source = str(model) if model is not None else "packaged SmolLM2-135M-Instruct GGUF"
        info = LoadInfo(source, hf_dir, converted, convert_s, time.perf_counter() - start)
        log.info("loaded %s in %.1fs (%s)", hf_dir.name, info.load_seconds, "converted GGUF" if converted else "cached")
        return _Loaded(hf_model, tokenizer, context, end_ids, pad_id, info)

    # -- generation --------------------------------------------------------------------------

    def encode(self, prompt: Prompt) -> list[int]:
        """Return the token ids of ``prompt`` rendered by the chat template, ready for generation."""
        return chat_token_ids(self._loaded().tokenizer, prompt)

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[GenerationResult]:
        """Return n completions per prompt, in order; a bad prompt gets an error, never an exception."""
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        if params.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {params.max_tokens}")
        with self._lock:
            state = self._loaded()
            errors: dict[int, str] = {}
            encoded: dict[int, list[int]] = {}
            for i, prompt in enumerate(prompts):
                problem = prompt_error(prompt)
                if problem is None:
                    try:
                        encoded[i] = self.encode(prompt)
                    except Exception as exc:  # a template can reject any odd input
                        problem = f"chat template failed: {exc}"
                if problem is None and len(encoded[i]) + params.max_tokens > state.context:
                    problem = (
                        f"prompt too long: {len(encoded[i])} tokens + max_tokens {params.max_tokens}"
                        f" > context {state.context}"
                    )
                    del encoded[i]
                if problem is not None:
                    errors[i] = problem
            samples = self._sample_all(state, encoded, n, params, errors)
        return [
            GenerationResult(error=errors[i])
            if i in errors
            else GenerationResult(completions=[samples[(i, k)] for k in range(n)], prompt_tokens=len(encoded[i]))
            for i in range(len(prompts))
        ]

    def _sample_all(
        self,
        state: _Loaded,
        encoded: dict[int, list[int]],
        n: int,
        params: SamplingParams,
        errors: dict[int, str],
    ) -> dict[tuple[int, int], Completion]:
        """Run every (prompt, sample) row in length-sorted chunks of ``max_batch_size``."""
        rows = sorted(((i, k) for i in encoded for k in range(n)), key=lambda r: len(encoded[r[0]]))
        samples: dict[tuple[int, int], Completion] = {}
        with self._seeded(params.seed):
            for at in range(0, len(rows), self.max_batch_size):
                chunk = rows[at : at + self.max_batch_size]
                if any(i in errors for i, _ in chunk):
                    chunk = [r for r in chunk if r[0] not in errors]
                    if not chunk:
                        continue
                try:
                    done = self._run_chunk(state, [encoded[i] for i, _ in chunk], params)
                except Exception as exc:  # e.g. out of memory: fail these prompts, keep the rest
                    log.exception("generation failed for %d rows", len(chunk))
                    for i, _ in chunk:
                        errors.setdefault(i, f"generation failed: {type(exc).__name__}: {exc}")
                    continue
                samples.update(zip(chunk, done, strict=True))
        return samples

    def _run_chunk(self, state: _Loaded, rows: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Generate one left-padded batch and decode it into completions."""
        import torch

        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), state.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for j, ids in enumerate(rows):
            input_ids[j, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[j, width - len(ids) :] = 1
        kwargs = self._generate_kwargs(state, params)
        with torch.inference_mode():
            out = state.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), **kwargs
            )
        generated = out[:, width:].cpu()
        length = generated.shape[1]
        ends = torch.isin(generated, torch.tensor(sorted(state.end_ids | {state.pad_id}), dtype=generated.dtype))
        first_end = torch.where(ends.any(dim=1), ends.int().argmax(dim=1), torch.tensor(length)).tolist()
        texts = state.tokenizer.batch_decode(
            [generated[j, : first_end[j]].tolist() for j in range(len(rows))], skip_special_tokens=True
        )
        completions = []
        for j, text in enumerate(texts):
            cut, stopped = cut_at_stop(text, params.stop)
            if stopped:
                completions.append(Completion(cut, tokens=first_end[j], finish_reason="stop"))
            elif first_end[j] < length:
                completions.append(Completion(text, tokens=first_end[j] + 1, finish_reason="stop"))
            else:
                completions.append(Completion(text, tokens=length, finish_reason="length"))
        return completions

    def _generate_kwargs(self, state: _Loaded, params: SamplingParams) -> dict[str, Any]:
        """Build the ``generate`` arguments for ``params`` (top_k off: nucleus sampling only)."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "pad_token_id": state.pad_id,
            "eos_token_id": sorted(state.end_ids),
            "use_cache": True,
        }
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=state.tokenizer)
        return kwargs

    @contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        """Seed torch for one call without disturbing the process's global random state."""
        if seed is None:
            yield
            return
        import torch

        devices = [torch.device(self.device).index or 0] if str(self.device).startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield


def _end_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Collect the ids that end a completion (generation config and tokenizer EOS)."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(x) for x in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise ConfigError("the model defines no end-of-sequence token")
    return frozenset(ids)
