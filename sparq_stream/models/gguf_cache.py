"""Convert a GGUF checkpoint once into a Hugging Face folder (safetensors) and cache it on disk.

Loading a GGUF with transformers dequantises every tensor (tens of seconds); the converted
folder loads in well under a second. The cache lives in ``$SPARQ_CACHE_DIR`` or the user
cache dir, keyed by the GGUF's content hash, and is written atomically: the conversion goes
to a temporary folder that is renamed into place only once complete, under a file lock, so a
killed process never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sparq_stream.errors import ConfigError

__all__ = [
    "CACHE_ENV",
    "MARKER_NAME",
    "ConvertedModel",
    "cache_root",
    "gguf_fingerprint",
    "cached_hf_dir",
    "is_converted",
    "convert_gguf",
    "materialise_hf_dir",
]

log = logging.getLogger(__name__)

#: Environment variable that overrides the cache root.
CACHE_ENV = "SPARQ_CACHE_DIR"
#: File written last into a converted folder; its presence means the folder is complete.
MARKER_NAME = "sparq-converted.json"
#: Bump when the conversion changes, so old folders are not reused.
_FORMAT = "hf-v1"
#: Files larger than this are fingerprinted from samples rather than hashed in full.
_FULL_HASH_LIMIT = 1 << 30
_SAMPLE = 16 << 20

_fingerprints: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class ConvertedModel:
    """A converted Hugging Face folder and whether this call had to build it."""

    path: Path
    converted: bool
    seconds: float


def cache_root() -> Path:
    """Return the cache root: ``$SPARQ_CACHE_DIR`` or the platform user cache dir."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("sparq-stream"))


def gguf_fingerprint(gguf: Path) -> str:
    """Return a sha256 of the GGUF's content (sampled for files over 1 GiB), memoised per process."""
    gguf = Path(gguf)
    st = gguf.stat()
    memo = (str(gguf.resolve()), st.st_size, st.st_mtime_ns)
    if memo in _fingerprints:
        return _fingerprints[memo]
    digest = hashlib.sha256()
    with gguf.open("rb") as fh:
        if st.st_size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(f"sampled:{st.st_size}:".encode())
            for offset in (0, st.st_size // 2, st.st_size - _SAMPLE):
                fh.seek(offset)
                digest.update(fh.read(_SAMPLE))
    _fingerprints[memo] = digest.hexdigest()
    return _fingerprints[memo]


def cached_hf_dir(gguf: Path, cache_dir: Path | None = None) -> Path:
    """Return where the converted folder for ``gguf`` lives (it may not exist yet)."""
    import transformers

    major = transformers.__version__.split(".")[0]
    key = hashlib.sha256(f"{_FORMAT}:tf{major}:{gguf_fingerprint(gguf)}".encode()).hexdigest()[:20]
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return root / "hf" / f"{Path(gguf).stem}-{key}"


def is_converted(folder: Path) -> bool:
    """Return True when ``folder`` is a complete converted model (its marker is present)."""
    return (Path(folder) / MARKER_NAME).is_file()


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise ``gguf`` with transformers and save model + tokenizer as safetensors into ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    kwargs: dict[str, object] = {"gguf_file": gguf.name, "local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), dtype=torch.float32, **_dequantise_kwargs(), **kwargs
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"cannot load GGUF {gguf}: {exc}") from exc
    # The weights are plain dense tensors now; forget the GGUF origin so the folder saves and
    # reloads as an ordinary checkpoint.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def materialise_hf_dir(gguf: Path | None = None, *, cache_dir: Path | None = None) -> ConvertedModel:
    """Return the converted Hugging Face folder for ``gguf`` (default: packaged SmolLM2), converting once."""
    if gguf is None:
        from sparq_stream.models.packaged import smollm2_gguf_path

        gguf = smollm2_gguf_path()
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ConfigError(f"GGUF file not found: {gguf}")
    start = time.perf_counter()
    final = cached_hf_dir(gguf, cache_dir)
    if is_converted(final):
        return ConvertedModel(final, False, time.perf_counter() - start)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the model cache {final.parent} ({exc}); set {CACHE_ENV}") from exc
    with _lock(final.parent / f".{final.name}.lock"):
        if is_converted(final):  # another process finished it while we waited
            return ConvertedModel(final, False, time.perf_counter() - start)
        _remove_stale(final)
        tmp = final.parent / f".tmp-{final.name}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        log.info("converting %s into %s (first load; later loads use the cache)", gguf, final)
        try:
            convert_gguf(gguf, tmp)
            for item in tmp.iterdir():  # some writers create 0600 files; the cache may be shared
                if item.is_file():
                    item.chmod(0o644)
            _write_marker(tmp, gguf)
            if final.exists():
                shutil.rmtree(final)  # an incomplete folder without a marker
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    seconds = time.perf_counter() - start
    log.info("converted %s in %.1fs", gguf.name, seconds)
    return ConvertedModel(final, True, seconds)


def _dequantise_kwargs() -> dict[str, object]:
    """Ask transformers for a fully dequantised (serialisable) model where it supports the choice."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantise GGUF weights
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _write_marker(folder: Path, gguf: Path) -> None:
    """Record where the folder came from; written last, it marks the folder complete."""
    import transformers

    info = {
        "source": str(gguf),
        "sha256": gguf_fingerprint(gguf),
        "size": gguf.stat().st_size,
        "format": _FORMAT,
        "transformers": transformers.__version__,
        "created_at": time.time(),
    }
    with (folder / MARKER_NAME).open("w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())


def _remove_stale(final: Path) -> None:
    """Delete temporary folders left by killed conversions of the same key (we hold its lock)."""
    for stale in final.parent.glob(f".tmp-{final.name}-*"):
        log.warning("removing an unfinished conversion left behind: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (released by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no cross-process lock, rename stays atomic
        yield
        return
    try:
        fh = path.open("a+")
    except OSError as exc:
        raise ConfigError(f"cannot write to the model cache {path.parent} ({exc}); set {CACHE_ENV}") from exc
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish converting the model (lock %s)", path)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
