"""Skills with a model: build the M=100 vocabulary from the seeds, and classify problems over it.

- :func:`build_skill_vocabulary` runs the skill-extraction prompt over (a sample of) the
  seeds, collects 1-3 free skill phrases per seed and keeps the ``m`` most frequent
  (:func:`sparq_stream.qd.vocabulary.build_vocabulary`); ``sparq skills build`` saves it.
- :func:`classify_skills` runs the skill-classification prompt (a problem plus the
  numbered vocabulary) and reads the answer with
  :func:`sparq_stream.qd.vocabulary.parse_skill_answer`: the descriptor of the novelty
  core, and of the seeds themselves (:func:`annotate_seeds`, or :func:`label_seeds` with a
  backend named, which the static-diverse variant needs: seeds read from JSONL carry no skills).
- :func:`load_vocabulary` reads a saved vocabulary, or the packaged hand-written fallback
  (``sparq_stream/data/default_skills.json``) when no path is given.
"""

from __future__ import annotations

import importlib.resources
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from sparq_stream.errors import ConfigError, FatalError
from sparq_stream.messages import Seed
from sparq_stream.models.base import GenerationBackend, SamplingParams
from sparq_stream.prompts import SKILL_CLASSIFICATION, SKILL_EXTRACTION, PromptTemplate, load_prompt
from sparq_stream.descriptors import MAX_SKILLS
from sparq_stream.qd.vocabulary import DEFAULT_M, Vocabulary, build_vocabulary, parse_skill_answer
from sparq_stream.seeds import BadLine, read_seeds

__all__ = [
    "DEFAULT_VOCABULARY",
    "SKILL_PARAMS",
    "SkillAnswer",
    "load_vocabulary",
    "parse_extracted_skills",
    "extract_skills",
    "classify_skills",
    "annotate_seeds",
    "label_seeds",
    "build_skill_vocabulary",
]

log = logging.getLogger(__name__)

#: The packaged hand-written fallback vocabulary (a resource path inside the package).
DEFAULT_VOCABULARY = "data/default_skills.json"
#: Greedy decoding with room for a few skill lines: the settings of both skill prompts.
SKILL_PARAMS = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=96)

_TAG = re.compile(r"<skills>(.*?)(?:</skills>|$)", re.IGNORECASE | re.DOTALL)
_BULLET = re.compile(r"^\s*(?:[-*\u2022\u00b7]+|\(?\d{1,3}[.):\]])\s*")
_MAX_PHRASE = 64
#: Called as ``progress(done, total)`` after every batch.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SkillAnswer:
    """The classifier's skills for one problem: sorted names, the parse note, and a generation error if any."""

    skills: list[str]
    reason: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the model answered (even if no known skill was in the answer)."""
        return self.error is None


def load_vocabulary(path: str | Path | None = None) -> Vocabulary:
    """Read a saved vocabulary, or the packaged hand-written fallback when ``path`` is None."""
    if path is not None and str(path):
        return Vocabulary.load(path)
    resource = importlib.resources.files("sparq_stream").joinpath(DEFAULT_VOCABULARY)
    with importlib.resources.as_file(resource) as file:
        vocab = Vocabulary.load(file)
    log.info("using the packaged hand-written fallback vocabulary (%d skills); build one with `sparq skills build`", len(vocab))
    return vocab


def parse_extracted_skills(text: str, limit: int = MAX_SKILLS) -> list[str]:
    """Return the (at most ``limit``) free skill phrases of a skill-extraction answer; never raises."""
    if not isinstance(text, str):
        return []
    tagged = _TAG.search(text[:4000])
    body = tagged.group(1) if tagged else text[:4000]
    phrases: list[str] = []
    for line in re.split(r"[\n;,]", body):
        phrase = _BULLET.sub("", line).strip().strip(".").strip()
        if phrase and len(phrase) <= _MAX_PHRASE and "<" not in phrase and phrase not in phrases:
            phrases.append(phrase)
        if len(phrases) == limit:
            break
    return phrases


def _batches(items: Sequence[str], size: int) -> Iterable[tuple[int, Sequence[str]]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def extract_skills(
    problems: Sequence[str],
    backend: GenerationBackend,
    *,
    batch_size: int = 32,
    params: SamplingParams = SKILL_PARAMS,
    template: PromptTemplate | None = None,
    progress: Progress | None = None,
) -> list[list[str] | None]:
    """Run the skill-extraction prompt; return the free phrases per problem (None where generation failed)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    template = template or load_prompt(SKILL_EXTRACTION)
    out: list[list[str] | None] = []
    for start, chunk in _batches(problems, batch_size):
        results = backend.generate([template.render(problem=p) for p in chunk], 1, params)
        for problem, result in zip(chunk, results):
            if not result.ok or not result.completions:
                log.warning("skill extraction failed for %r: %s", problem[:60], result.error or "no completion")
                out.append(None)
            else:
                out.append(parse_extracted_skills(result.completions[0].text))
        if progress is not None:
            progress(start + len(chunk), len(problems))
    return out


def classify_skills(
    problems: Sequence[str],
    backend: GenerationBackend,
    vocab: Vocabulary,
    *,
    batch_size: int = 64,
    params: SamplingParams = SKILL_PARAMS,
    template: PromptTemplate | None = None,
    max_skills: int = MAX_SKILLS,
) -> list[SkillAnswer]:
    """Run the skill-classification prompt over the vocabulary; return one :class:`SkillAnswer` per problem."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not len(vocab):
        raise ConfigError("the skill vocabulary is empty")
    template = template or load_prompt(SKILL_CLASSIFICATION)
    listing = vocab.numbered()
    out: list[SkillAnswer] = []
    for _, chunk in _batches(problems, batch_size):
        results = backend.generate([template.render(problem=p, skills=listing) for p in chunk], 1, params)
        if len(results) != len(chunk):
            raise FatalError(f"backend returned {len(results)} results for {len(chunk)} prompts")
        for result in results:
            if not result.ok or not result.completions:
                out.append(SkillAnswer([], "generation failed", result.error or "no completion"))
                continue
            skills, reason = parse_skill_answer(result.completions[0].text, vocab, max_skills)
            out.append(SkillAnswer(skills, reason))
    return out


def annotate_seeds(
    seeds: Sequence[Seed], backend: GenerationBackend, vocab: Vocabulary, *, batch_size: int = 64
) -> list[Seed]:
    """Return the seeds with ``skills`` set by the classifier (seeds whose generation failed keep theirs)."""
    answers = classify_skills([s.problem for s in seeds], backend, vocab, batch_size=batch_size)
    return [s.model_copy(update={"skills": a.skills}) if a.ok else s for s, a in zip(seeds, answers)]


def label_seeds(
    seeds: list[Seed],
    backend: str,
    *,
    backend_options: dict | None = None,
    vocabulary: str | Path | None = None,
    batch_size: int = 64,
) -> list[Seed]:
    """Give each seed its skill-set with the skill-classification prompt, on a backend made by name (the diverse variants need it)."""
    from sparq_stream.models.registry import make_generation_backend

    generator = make_generation_backend(backend, **(backend_options or {}))
    try:
        return annotate_seeds(seeds, generator, load_vocabulary(vocabulary), batch_size=batch_size)
    finally:
        generator.close()


def _sample(seeds: list[Seed], limit: int | None, seed: int) -> list[Seed]:
    if limit is None or limit >= len(seeds):
        return seeds
    if limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    picks = np.sort(np.random.default_rng(seed).choice(len(seeds), size=limit, replace=False))
    return [seeds[int(i)] for i in picks]


def build_skill_vocabulary(
    seeds_path: str | Path,
    backend: GenerationBackend | str,
    m: int = DEFAULT_M,
    limit: int | None = None,
    batch_size: int = 32,
    *,
    seed: int = 0,
    out: str | Path | None = None,
    backend_options: dict | None = None,
    progress: Progress | None = None,
) -> Vocabulary:
    """Build the top-``m`` skill vocabulary from (a seeded sample of ``limit``) seeds; save it to ``out`` if given."""
    if m < 1:
        raise ConfigError(f"m (vocabulary size) must be >= 1, got {m}")
    owned = isinstance(backend, str)
    if isinstance(backend, str):
        from sparq_stream.models.registry import make_generation_backend

        backend = make_generation_backend(backend, **(backend_options or {}))
    try:
        seeds = [s for s in read_seeds(seeds_path) if not isinstance(s, BadLine)]
        if not seeds:
            raise ConfigError(f"seed file {seeds_path} holds no usable seed")
        chosen = _sample(seeds, limit, seed)
        log.info("extracting skills from %d of %d seeds", len(chosen), len(seeds))
        phrases = extract_skills([s.problem for s in chosen], backend, batch_size=batch_size, progress=progress)
    finally:
        if owned:
            backend.close()
    answered = [p for p in phrases if p is not None]
    failed = len(phrases) - len(answered)
    if failed:
        log.warning("skill extraction failed for %d of %d seeds", failed, len(phrases))
    vocab = build_vocabulary(answered, m)
    if not len(vocab):
        raise FatalError(f"no skill was extracted from {len(chosen)} seeds ({failed} generation failures)")
    if len(vocab) < m:
        log.warning("only %d distinct skills found (asked for %d)", len(vocab), m)
    if out is not None:
        vocab.save(out)
        log.info("saved a %d-skill vocabulary to %s", len(vocab), out)
    return vocab
