"""The backend registry: choose by name, lazy imports, helpful errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sparq_stream.errors import ConfigError
from sparq_stream.models import (
    EMBEDDING_BACKENDS,
    GENERATION_BACKENDS,
    EmbeddingBackend,
    GenerationBackend,
    make_embedding_backend,
    make_generation_backend,
)


def test_the_four_generation_backends_and_two_embedders_are_registered() -> None:
    assert set(GENERATION_BACKENDS) == {"transformers", "openai", "vllm", "scripted"}
    assert set(EMBEDDING_BACKENDS) == {"sentence-transformers", "hash"}


def test_light_backends_are_built_with_options() -> None:
    scripted = make_generation_backend("scripted", seed=4, model_version=2)
    assert isinstance(scripted, GenerationBackend)
    assert (scripted.name, scripted.script.seed, scripted.model_version) == ("scripted", 4, 2)
    openai = make_generation_backend("openai", base_url="http://127.0.0.1:9/v1", model="m", max_concurrency=3)
    assert isinstance(openai, GenerationBackend) and openai.max_concurrency == 3
    embedder = make_embedding_backend("hash", dim=32)
    assert isinstance(embedder, EmbeddingBackend)
    assert embedder.embed(["a"]).shape == (1, 32)


def test_unknown_names_list_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match="allowed: openai, scripted, transformers, vllm"):
        make_generation_backend("gpt")
    with pytest.raises(ConfigError, match="allowed: hash, sentence-transformers"):
        make_embedding_backend("word2vec")


def test_bad_options_name_the_accepted_ones() -> None:
    with pytest.raises(ConfigError, match="unexpected keyword argument 'temperature'.*accepted: .*max_concurrency"):
        make_generation_backend("openai", temperature=0.3)


def test_importing_the_package_and_light_backends_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from sparq_stream.models import make_generation_backend, make_embedding_backend\n"
        "make_generation_backend('scripted'); make_generation_backend('openai', model='m')\n"
        "make_embedding_backend('hash')\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'vllm') if m in sys.modules]\n"
        "print(','.join(heavy) or 'none')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "none"


def test_lazy_attributes_resolve_to_the_backend_classes() -> None:
    import sparq_stream.models as models
    from sparq_stream.models.hashing_embedder import HashingEmbedder
    from sparq_stream.models.scripted import ScriptedBackend

    assert models.ScriptedBackend is ScriptedBackend
    assert models.HashingEmbedder is HashingEmbedder
    assert set(models.__all__) >= {"OpenAIBackend", "TransformersBackend", "make_generation_backend"}
    with pytest.raises(AttributeError):
        models.NoSuchBackend  # noqa: B018
    assert np.isclose(np.linalg.norm(models.HashingEmbedder().embed(["x"])[0]), 1.0)
