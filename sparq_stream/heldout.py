"""The held-out test sets: packaged GSM8K test and MATH500, a user's own extras, and the checks against them.

GSM8K test (1,319 problems) and MATH500 (500) ship inside the package
(``sparq_stream/data/heldout/``, MIT, sources and sha256 in its README) and are read through
:mod:`importlib.resources`, so decontamination and evaluation work on any install. A user adds
test sets of their own with ``--heldout FILE`` (repeatable): they join both the contamination
check (novelty, ``sparq seed``) and the trainer's evaluation. The packaged sets are always on;
the only way to run without any held-out set is the explicit ``--no-contamination-check``.

This module holds the pieces the novelty core and the seed check share: reading held-out
problems, embedding them (:class:`HeldOut`, :func:`load_heldout`, vectors cached by content),
and :class:`HeldOutCheck`, the three rules a problem is held-out by: the same problem id, a
shared word 13-gram (:class:`~sparq_stream.verify.contamination.NgramIndex`), or cosine >=
the contamination threshold (0.90) to a held-out problem with the novelty embedder.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sparq_stream.errors import ConfigError
from sparq_stream.ids import problem_id
from sparq_stream.models.base import EmbeddingBackend
from sparq_stream.verify.contamination import NgramIndex

__all__ = [
    "CONTAMINATION_THRESHOLD",
    "NGRAM_N",
    "NO_CHECK_FLAG",
    "PACKAGED",
    "PACKAGED_SHA256",
    "HeldOut",
    "HeldOutCheck",
    "HeldOutMatch",
    "eval_sets",
    "filter_seeds",
    "heldout_files",
    "load_heldout",
    "packaged_paths",
    "read_problems",
    "sha256_of",
]

log = logging.getLogger(__name__)

#: The packaged held-out sets: evaluation name -> file name in ``sparq_stream/data/heldout``.
PACKAGED: dict[str, str] = {"gsm8k": "gsm8k_test.jsonl", "math500": "math500_test.jsonl"}
#: The sha256 of each packaged file (the same as in its README and the source data's).
PACKAGED_SHA256: dict[str, str] = {
    "gsm8k_test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "math500_test.jsonl": "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
}
#: The flag that turns the contamination check off (named in every refusal).
NO_CHECK_FLAG = "--no-contamination-check"
#: Cosine to a held-out problem at or above which a problem counts as that problem (novelty's default).
CONTAMINATION_THRESHOLD = 0.90
#: Word n-gram length of the decontamination rule.
NGRAM_N = 13

_RESOURCES = ExitStack()
atexit.register(_RESOURCES.close)
_PACKAGED_CACHE: list[Path] = []


def packaged_paths() -> list[Path]:
    """The packaged held-out files (GSM8K test, MATH500) as file-system paths; ConfigError when missing."""
    if not _PACKAGED_CACHE:
        folder = resources.files("sparq_stream") / "data" / "heldout"
        found = []
        for name in PACKAGED.values():
            entry = folder / name
            if not entry.is_file():
                raise ConfigError(
                    f"the packaged held-out file {name} is missing from this install (sparq_stream/data/heldout): "
                    f"reinstall the package, or give {NO_CHECK_FLAG} to run without a contamination check"
                )
            found.append(Path(_RESOURCES.enter_context(resources.as_file(entry))))
        _PACKAGED_CACHE.extend(found)
    return list(_PACKAGED_CACHE)


def sha256_of(path: str | Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def heldout_files(extra: Sequence[str | Path] = (), *, check: bool = True) -> list[Path]:
    """The held-out files of a run: the packaged sets plus ``extra`` (a user's own); [] when ``check`` is off.

    An extra file must exist (ConfigError otherwise); one with the same bytes as a packaged set
    or an earlier extra is skipped (deployments that still name the packaged files by path).
    """
    if not check:
        return []
    files = packaged_paths()
    seen = {PACKAGED_SHA256[p.name] for p in files}
    for raw in extra:
        path = Path(raw)
        if not path.is_file():
            raise ConfigError(f"held-out file {path} does not exist (--heldout)")
        digest = sha256_of(path)
        if digest in seen:
            log.info("held-out file %s is already included (same content)", path)
            continue
        seen.add(digest)
        files.append(path.resolve())
    if not files:  # only when the packaged files are absent and no extra was given
        raise ConfigError(f"no held-out set: give --heldout FILE, or {NO_CHECK_FLAG} to run without a contamination check")
    return files


def eval_sets(extra: Sequence[str | Path] = ()) -> dict[str, str]:
    """Named held-out sets for evaluation: ``gsm8k`` and ``math500`` (packaged), then each extra by its stem."""
    sets = {name: str(path) for name, path in zip(PACKAGED, packaged_paths())}
    packaged = set(PACKAGED_SHA256.values())
    for raw in extra:
        path = Path(raw)
        if not path.is_file():
            raise ConfigError(f"held-out file {path} does not exist (--heldout)")
        if sha256_of(path) in packaged:
            continue
        name = base = path.stem.removesuffix("_test") or path.stem
        number = 2
        while name in sets:
            name, number = f"{base}_{number}", number + 1
        sets[name] = str(path.resolve())
    return sets


def read_problems(path: str | Path) -> list[str]:
    """The problem texts of a held-out JSONL file (``problem`` or ``question`` field; other lines are skipped)."""
    path = Path(path)
    problems: list[str] = []
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    log.warning("%s:%d is not JSON; skipped", path, number)
                    continue
                text = obj.get("problem", obj.get("question")) if isinstance(obj, dict) else None
                if isinstance(text, str) and text.strip():
                    problems.append(text.strip())
    except OSError as exc:
        raise ConfigError(f"cannot read held-out file {path}: {exc}") from None
    return problems


@dataclass(frozen=True)
class HeldOut:
    """Held-out problems for the contamination check: ids, source file names and unit vectors."""

    ids: tuple[str, ...]
    sources: tuple[str, ...]
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def nearest(self, vectors: np.ndarray) -> list[tuple[float, int]]:
        """Return (best cosine, row) of the held-out problem nearest to each query row; row -1 when empty."""
        if not len(self.ids) or vectors.shape[0] == 0:
            return [(-1.0, -1)] * vectors.shape[0]
        sims = vectors @ self.vectors.T
        rows = sims.argmax(axis=1)
        return [(float(sims[i, r]), int(r)) for i, r in enumerate(rows)]

    @classmethod
    def empty(cls, dim: int) -> HeldOut:
        """No held-out problems (the contamination check is off)."""
        return cls((), (), np.zeros((0, dim), dtype=np.float32))


def load_heldout(
    paths: Sequence[str | Path] | None, embedder: EmbeddingBackend, cache_dir: str | Path | None = None
) -> HeldOut:
    """Read and embed held-out problems (None: the packaged sets); cache the vectors in ``cache_dir`` by content."""
    resolved = packaged_paths() if paths is None else [Path(p) for p in paths]
    missing = [str(p) for p in resolved if not p.is_file()]
    if missing:
        raise ConfigError(f"held-out file(s) not found: {', '.join(missing)}")
    ids: list[str] = []
    sources: list[str] = []
    blocks: list[np.ndarray] = []
    name = str(getattr(embedder, "model_name", type(embedder).__name__))
    for path in resolved:
        problems = read_problems(path)
        if not problems:
            continue
        digest = hashlib.sha256("\x1f".join([name, str(embedder.dim), *problems]).encode("utf-8")).hexdigest()[:16]
        cached = Path(cache_dir) / f"heldout-{path.stem}-{digest}.npy" if cache_dir else None
        vectors = None
        if cached is not None and cached.is_file():
            vectors = np.load(cached, allow_pickle=False)
            if vectors.shape != (len(problems), embedder.dim):
                vectors = None
        if vectors is None:
            vectors = np.asarray(embedder.embed(problems), dtype=np.float32)
            if cached is not None:
                try:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    tmp = cached.with_name(cached.name + f".{os.getpid()}.tmp.npy")
                    np.save(tmp, vectors, allow_pickle=False)
                    os.replace(tmp, cached)
                except OSError as exc:  # a cache only: the check itself goes on
                    log.warning("cannot cache held-out vectors in %s: %s", cached.parent, exc)
        ids.extend(problem_id(p) for p in problems)
        sources.extend([path.name] * len(problems))
        blocks.append(vectors)
        log.info("contamination check: %d held-out problems from %s", len(problems), path)
    matrix = np.concatenate(blocks) if blocks else np.zeros((0, embedder.dim), dtype=np.float32)
    return HeldOut(tuple(ids), tuple(sources), np.ascontiguousarray(matrix, dtype=np.float32))


@dataclass(frozen=True)
class HeldOutMatch:
    """Why a problem counts as held-out: the rule (a novelty drop reason), the matched file and problem id."""

    reason: str  # "contamination" (same id or cosine) or "contamination_ngram"
    source: str
    match_id: str
    similarity: float


class HeldOutCheck:
    """The held-out rules in novelty's order: the same problem id, a shared word n-gram, cosine >= threshold."""

    def __init__(self, heldout: HeldOut, ngrams: NgramIndex | None, threshold: float = CONTAMINATION_THRESHOLD) -> None:
        """Check against embedded held-out problems and (unless None) their n-gram index."""
        self.heldout = heldout
        self.ngrams = ngrams
        self.threshold = threshold
        self._ids = {pid: i for i, pid in enumerate(heldout.ids)}

    def __len__(self) -> int:
        return len(self.heldout)

    def by_id(self, pid: str) -> HeldOutMatch | None:
        """A match when ``pid`` is the id of a held-out problem."""
        row = self._ids.get(pid)
        return None if row is None else HeldOutMatch("contamination", self.heldout.sources[row], pid, 1.0)

    def by_ngram(self, text: str) -> HeldOutMatch | None:
        """A match when ``text`` shares a word n-gram with a held-out problem."""
        found = self.ngrams.match(text) if self.ngrams is not None else None
        return None if found is None else HeldOutMatch("contamination_ngram", found.source, found.doc_id, 1.0)

    def by_vector(self, nearest: tuple[float, int]) -> HeldOutMatch | None:
        """A match when the nearest held-out problem (``HeldOut.nearest``'s pair) is at least ``threshold`` close."""
        sim, row = nearest
        if row < 0 or sim < self.threshold:
            return None
        return HeldOutMatch("contamination", self.heldout.sources[row], self.heldout.ids[row], sim)

    def check(self, ids: Sequence[str], texts: Sequence[str], vectors: np.ndarray) -> list[HeldOutMatch | None]:
        """The first rule each problem (id, text, unit vector) breaks, or None."""
        nearest = self.heldout.nearest(vectors)
        return [self.by_id(i) or self.by_ngram(t) or self.by_vector(n) for i, t, n in zip(ids, texts, nearest)]

    @classmethod
    def build(
        cls,
        files: Sequence[str | Path],
        embedder: EmbeddingBackend,
        *,
        threshold: float = CONTAMINATION_THRESHOLD,
        ngram_n: int = NGRAM_N,
        cache_dir: str | Path | None = None,
    ) -> HeldOutCheck:
        """Embed ``files`` and index their n-grams (``ngram_n`` 0: no n-gram rule)."""
        heldout = load_heldout(list(files), embedder, cache_dir)
        ngrams = NgramIndex.from_files(list(files), ngram_n) if ngram_n > 0 else None
        return cls(heldout, ngrams, threshold)


def filter_seeds(
    seeds: Sequence[Any],
    files: Sequence[str | Path],
    embedder: EmbeddingBackend,
    *,
    threshold: float = CONTAMINATION_THRESHOLD,
    ngram_n: int = NGRAM_N,
    cache_dir: str | Path | None = None,
) -> tuple[list[Any], list[tuple[Any, HeldOutMatch]]]:
    """Split seeds (anything with ``id`` and ``problem``) into those kept and those refused as held-out problems."""
    if not files or not seeds:
        return list(seeds), []
    check = HeldOutCheck.build(files, embedder, threshold=threshold, ngram_n=ngram_n, cache_dir=cache_dir)
    vectors = np.asarray(embedder.embed([s.problem for s in seeds]), dtype=np.float32)
    kept: list[Any] = []
    refused: list[tuple[Any, HeldOutMatch]] = []
    for seed, found in zip(seeds, check.check([s.id for s in seeds], [s.problem for s in seeds], vectors)):
        if found is None:
            kept.append(seed)
        else:
            refused.append((seed, found))
    if refused:
        log.warning(
            "refused %d of %d seed(s) that are held-out test problems (%s)",
            len(refused), len(seeds), ", ".join(f"{r} {n}" for r, n in _count_reasons(refused).items()),
        )
    return kept, refused


def _count_reasons(refused: Sequence[tuple[Any, HeldOutMatch]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _seed, found in refused:
        out[found.reason] = out.get(found.reason, 0) + 1
    return dict(sorted(out.items()))
