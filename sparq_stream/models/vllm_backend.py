"""GPU generation with vLLM's offline engine (the optional ``gpu`` extra).

Importing this module never imports vllm; constructing :class:`VLLMBackend` does. The request
and result mapping are plain functions (:func:`build_sampling_kwargs`, :func:`map_outputs`)
so they can be tested without vllm or a GPU.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparq_stream.errors import ConfigError, FatalError
from sparq_stream.models.base import Completion, GenerationResult, Prompt, SamplingParams
from sparq_stream.models.chat_format import chat_token_ids, prompt_error
from sparq_stream.models.packaged import model_display_name

__all__ = [
    "VLLM_MISSING",
    "VLLMBackend",
    "build_sampling_kwargs",
    "map_output",
    "map_outputs",
    "vllm_available",
]

log = logging.getLogger(__name__)

#: The error text when vllm is missing.
VLLM_MISSING = "vllm is not installed: pip install 'sparq-stream[gpu]'"

_FINISH = {"stop": "stop", "length": "length"}


def vllm_available() -> bool:
    """Return True when vllm can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def build_sampling_kwargs(params: SamplingParams, n: int) -> dict[str, Any]:
    """Return the ``vllm.SamplingParams`` keyword arguments for ``params`` and ``n`` samples."""
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    if params.max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1, got {params.max_tokens}")
    if params.temperature < 0:
        raise ConfigError(f"temperature must be >= 0, got {params.temperature}")
    kwargs: dict[str, Any] = {
        "n": n,
        "temperature": float(params.temperature),
        "top_p": float(params.top_p) if params.temperature > 0 else 1.0,
        "max_tokens": int(params.max_tokens),
    }
    if params.seed is not None:
        kwargs["seed"] = int(params.seed)
    stops = [s for s in params.stop if s]
    if stops:
        kwargs["stop"] = stops
    return kwargs


def map_output(output: Any) -> GenerationResult:
    """Map one vLLM ``RequestOutput`` (duck-typed) to a :class:`GenerationResult`."""
    samples = list(getattr(output, "outputs", None) or [])
    prompt_ids = getattr(output, "prompt_token_ids", None)
    prompt_tokens = len(prompt_ids) if prompt_ids is not None else 0
    if not samples:
        return GenerationResult(prompt_tokens=prompt_tokens, error="the engine returned no completions")
    ordered = sorted(samples, key=lambda s: getattr(s, "index", 0))
    completions = []
    for sample in ordered:
        reason = getattr(sample, "finish_reason", None)
        if reason not in _FINISH:
            return GenerationResult(prompt_tokens=prompt_tokens, error=f"completion ended with {reason!r}")
        completions.append(
            Completion(
                text=str(sample.text),
                tokens=len(getattr(sample, "token_ids", None) or ()),
                finish_reason=_FINISH[reason],
            )
        )
    return GenerationResult(completions=completions, prompt_tokens=prompt_tokens)


def map_outputs(outputs: Sequence[Any]) -> list[GenerationResult]:
    """Map a list of vLLM ``RequestOutput`` objects to results, in order."""
    return [map_output(o) for o in outputs]


def _import_vllm() -> Any:
    """Import vllm or raise a ConfigError that says how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise ConfigError(VLLM_MISSING) from exc
    return vllm


class VLLMBackend:
    """Generates with an offline ``vllm.LLM`` engine; n samples per prompt in one request."""

    name = "vllm"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        model_name: str | None = None,
        model_version: int = 0,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        seed: int = 0,
        cache_dir: Path | None = None,
        **engine_kwargs: Any,
    ) -> None:
        """Start the engine on ``model`` (GGUF, folder or default packaged SmolLM2, converted to HF once)."""
        self._vllm = _import_vllm()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: nothing may download
        self._engine_args = {
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "seed": seed,
            **engine_kwargs,
        }
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._llm: Any = self._start(model)
        self.model_name = model_name or model_display_name(model)
        self.model_version = model_version

    def _start(self, model: str | os.PathLike[str] | None) -> Any:
        """Resolve the model to an HF folder and build the engine."""
        from sparq_stream.models.transformers_backend import resolve_model_dir

        hf_dir, _, _ = resolve_model_dir(model, self.cache_dir)
        args = {k: v for k, v in self._engine_args.items() if v is not None}
        log.info("starting vLLM on %s", hf_dir)
        self.hf_dir = hf_dir
        return self._vllm.LLM(model=str(hf_dir), tokenizer=str(hf_dir), **args)

    @property
    def context_length(self) -> int:
        """The engine's maximum prompt + completion length."""
        return int(self._engine().llm_engine.model_config.max_model_len)

    def _engine(self) -> Any:
        """Return the engine or say the backend is closed."""
        if self._llm is None:
            raise FatalError("the vLLM backend is closed")
        return self._llm

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[GenerationResult]:
        """Return n completions per prompt, in order; a bad prompt gets an error, never an exception."""
        sampling = self._vllm.SamplingParams(**build_sampling_kwargs(params, n))
        with self._lock:
            llm = self._engine()
            tokenizer = llm.get_tokenizer()
            context = self.context_length
            results: list[GenerationResult | None] = [None] * len(prompts)
            token_prompts: dict[int, list[int]] = {}
            for i, prompt in enumerate(prompts):
                problem = prompt_error(prompt)
                if problem is None:
                    try:
                        ids = chat_token_ids(tokenizer, prompt)
                    except Exception as exc:  # a template can reject any odd input
                        problem = f"chat template failed: {exc}"
                    else:
                        if len(ids) + params.max_tokens > context:
                            problem = (
                                f"prompt too long: {len(ids)} tokens + max_tokens {params.max_tokens}"
                                f" > context {context}"
                            )
                        else:
                            token_prompts[i] = ids
                if problem is not None:
                    results[i] = GenerationResult(error=problem)
            order = list(token_prompts)
            for i, result in zip(order, self._run(llm, [token_prompts[i] for i in order], sampling), strict=True):
                results[i] = result
        return [r if r is not None else GenerationResult(error="no result") for r in results]

    def _run(self, llm: Any, batch: list[list[int]], sampling: Any) -> list[GenerationResult]:
        """Generate a batch; if the engine rejects it, retry prompt by prompt to isolate the bad one."""
        if not batch:
            return []
        try:
            outputs = list(llm.generate([{"prompt_token_ids": ids} for ids in batch], sampling, use_tqdm=False))
            if len(outputs) != len(batch):
                raise FatalError(f"the engine returned {len(outputs)} outputs for {len(batch)} prompts")
            return map_outputs(outputs)
        except Exception as exc:
            if len(batch) == 1:
                return [GenerationResult(error=f"generation failed: {type(exc).__name__}: {exc}")]
            log.warning("vLLM rejected a batch of %d (%s); retrying one by one", len(batch), exc)
        return [self._run(llm, [ids], sampling)[0] for ids in batch]

    def reload(self, model: str | os.PathLike[str], version: int | None = None, name: str | None = None) -> Path:
        """Restart the engine on a new model version; the GPU cannot hold both, so the old one stops first."""
        with self._lock:
            self._shutdown()
            self._llm = self._start(model)
            self.model_version = self.model_version + 1 if version is None else version
            if name is not None:
                self.model_name = name
        return self.hf_dir

    def close(self) -> None:
        """Stop the engine and free GPU memory."""
        with self._lock:
            self._shutdown()

    def _shutdown(self) -> None:
        """Drop the engine and ask torch to return cached GPU memory."""
        self._llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - vllm always brings torch
            pass
