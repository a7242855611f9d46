"""The novelty core: drop duplicates and contamination before the solver, attach novelty and skills.

It sits before the solver on purpose: rejecting a duplicate costs one embedding, solving
it costs K generations. For every batch of candidates it

1. embeds the problem texts (one embedder call per batch);
2. drops, in this order, ``exact_duplicate`` (the problem id was seen, or cosine >=
   ``exact_threshold``), ``contamination`` (cosine >= ``contamination_threshold`` to a
   held-out problem, or the same id), ``prompt_example`` (a word 8-gram shared with the
   mutation prompt's worked example: the model wrote the example back), ``contamination_ngram``
   (a word 13-gram shared with a held-out problem, the usual decontamination rule; both in
   :mod:`sparq_stream.verify.contamination`, checked before the embedding threshold) and
   ``near_duplicate`` (cosine >= ``dup_threshold``
   to something seen), each counted as ``dropped_<reason>``. "Seen" is every seed and
   every accepted candidate, including those accepted earlier in the same batch, so of
   two candidates that duplicate each other the second is dropped;
3. attaches ``novelty`` = mean cosine distance (1 - similarity) to the ``k_neighbours``
   nearest seen problems (as pyribs' ProximityArchive; 1.0 when nothing was seen yet),
   ``nearest_id`` and ``nearest_similarity``;
4. classifies the survivors with the skill-classification prompt over the vocabulary
   (``niche`` = :func:`~sparq_stream.descriptors.niche_key` of the skills);
5. adds the survivors to the index and emits a :class:`NovelCandidate` to ``novel``; every
   dropped candidate becomes a :class:`Dropped` notice on ``drops`` (it returns the
   mutator's flow-control credit: a duplicate never reaches ``solved``).

Held-out sets (:mod:`sparq_stream.heldout`): GSM8K test and MATH500 ship with the package and are
always checked; ``heldout`` adds a user's own files. Only ``contamination_check=false``
(``--no-contamination-check``) runs without them, and the core then says so in its log and in its
``contamination_check`` gauge (0), which the live view, summary.json and report.html show.

Nothing changes in the index until the whole batch is decided and classified, so a
retried batch (a retriable classifier failure) is decided the same way again.

Message flow: inputs ``candidates``; tables ``seeds`` (indexed, never emitted) and, with
``follow_novel``, ``novel`` (every accepted problem, from any replica); outputs ``novel``
(key = problem id) and ``drops`` (key = problem id).

Restart safety (snapshot plus replay): with ``state_dir`` set, the index, the ids, the
offsets of the ``novel`` table it has read and the recent accepted outputs are
snapshotted atomically every ``snapshot_every_s`` seconds or ``snapshot_every_items``
additions, and on close. On start the snapshot is loaded; the wrapper then replays the
tables: seeds already indexed are skipped by id, ``novel`` records below the snapshot's
offsets are skipped, and the rest (what was accepted after the snapshot, by this or
another replica) is embedded and added. So everything accepted before a crash is in the
index again, and a candidate seen again after a restart is still a duplicate. A candidate
*redelivered* (same problem and provenance: its batch was handled but not committed) is
recognised against the recent outputs and re-emits the same NovelCandidate instead of
being dropped as its own duplicate.

Replicas: with ``follow_novel`` each replica also indexes what the others accept (they
embed it once more), so near duplicates across partitions are caught once the other
replica's output arrives; with ``route_partitions`` each candidate is first moved to the
partition of its embedding bucket (:mod:`sparq_stream.cores.routing`), so near duplicates
are decided by one replica even when they arrive together; one replica is exact.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from sparq_stream.core import BaseCore, Inbound, Outgoing
from sparq_stream.cores.routing import ROUTED_HEADER, EmbeddingRouter
from sparq_stream.credentials import OpenAIKey, openai_key_option
from sparq_stream.errors import ConfigError, FatalError, RetriableError
from sparq_stream.heldout import (
    CONTAMINATION_THRESHOLD,
    NO_CHECK_FLAG,
    PACKAGED,
    HeldOut,
    HeldOutCheck,
    heldout_files,
    load_heldout,
    packaged_paths,
)
from sparq_stream.ids import problem_id
from sparq_stream.index import VectorIndex
from sparq_stream.index.scalable import SCALABLE_KINDS, ScalableIndex
from sparq_stream.messages import Candidate, Dropped, NovelCandidate, Seed
from sparq_stream.models.base import EmbeddingBackend, GenerationBackend, SamplingParams
from sparq_stream.prompts import MUTATION, SKILL_CLASSIFICATION, load_prompt
from sparq_stream.descriptors import niche_key
from sparq_stream.qd.vocabulary import Vocabulary
from sparq_stream.settings import Backend, Embedder
from sparq_stream.skills import classify_skills, load_vocabulary
from sparq_stream.verify.contamination import NgramIndex, prompt_examples

__all__ = [
    "DROP_REASONS",
    "DEFAULT_HELDOUT_FILES",
    "NoveltyConfig",
    "HeldOut",
    "load_heldout",
    "text_contamination_checks",
    "NoveltyCore",
    "build_novelty",
]

log = logging.getLogger(__name__)

EXACT = "exact_duplicate"
NEAR = "near_duplicate"
CONTAMINATION = "contamination"
CONTAMINATION_NGRAM = "contamination_ngram"
PROMPT_EXAMPLE = "prompt_example"
#: Every reason a candidate can be dropped for.
DROP_REASONS: tuple[str, ...] = (EXACT, NEAR, CONTAMINATION, CONTAMINATION_NGRAM, PROMPT_EXAMPLE)
#: The packaged held-out files, always checked unless ``contamination_check`` is off.
DEFAULT_HELDOUT_FILES: tuple[str, ...] = tuple(PACKAGED.values())
_CANDIDATE_FIELDS = tuple(f for f in Candidate.model_fields if f != "created_at")
_TABLE_FLUSH = 256
_SNAPSHOT_DIR = "novelty-index"
_ROUTE_FIT_SEEDS = 4096  # seeds (the first by id) whose principal directions are the routing planes


class NoveltyConfig(OpenAIKey):
    """Every setting of the novelty core (defaults are the paper's where it has one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    embedder: Embedder = Field(default="sentence-transformers", description="embedding backend")
    embedder_options: dict[str, Any] = Field(default_factory=dict, description="embedding backend constructor options")
    backend: Backend = Field(default="transformers", description="skill classifier backend")
    model: str | None = Field(default=None, description="classifier model (path or served name); unset: the backend's default")
    backend_options: dict[str, Any] = Field(default_factory=dict, description="generation backend constructor options")
    vocabulary: Path | None = Field(default=None, description="skill vocabulary JSON (sparq skills build); unset: the packaged fallback")
    classify: bool = Field(default=True, description="attach the skill-set descriptor (off: every problem is in the empty niche)")
    skill_batch_size: int = Field(default=64, ge=1, description="prompts per skill-classification call")
    skill_max_tokens: int = Field(default=96, ge=8, description="token limit of a skill-classification answer")
    dup_threshold: float = Field(default=0.95, gt=0.0, le=1.0, description="cosine at or above which a candidate is a near duplicate")
    exact_threshold: float = Field(default=0.999, gt=0.0, le=1.0, description="cosine at or above which it counts as an exact duplicate")
    heldout: list[Path] = Field(
        default_factory=list,
        description="your own held-out JSONL files (question or problem field), checked besides the packaged "
        "GSM8K test and MATH500 (always on)",
    )
    contamination_check: bool = Field(
        default=True,
        description="drop candidates that are held-out problems (packaged GSM8K test + MATH500 + heldout); "
        "off only with --no-contamination-check",
    )
    contamination: list[str] | None = Field(
        default=None,
        description="deprecated: the same as heldout (extra files; the packaged sets are always checked); "
        "[] is refused: turn the check off with --no-contamination-check",
    )
    contamination_threshold: float = Field(
        default=CONTAMINATION_THRESHOLD, gt=0.0, le=1.0, description="cosine to a held-out problem at or above which a candidate is contamination"
    )
    ngram_n: int = Field(
        default=13, ge=0, description="drop a candidate sharing a word n-gram with a held-out problem (13: the usual rule; 0: off)"
    )
    prompt_example_n: int = Field(
        default=8, ge=0, description="drop a candidate sharing a word n-gram with the mutation prompt's worked example (0: off)"
    )
    k_neighbours: int = Field(default=10, ge=1, description="k of the novelty score (mean distance to the k nearest seen)")
    index_kind: Literal["auto", "ivfpq", "flat", "flat-fp16", "hnsw", "hnsw-fp16"] = Field(
        default="auto",
        description="FAISS index: auto = exact flat up to index_threshold items, then OPQ+IVF-PQ codes with exact "
        "refinement (20M items in ~2 GB); ivfpq = compressed as soon as it can train; flat/hnsw kinds as before",
    )
    index_threshold: int = Field(default=200_000, ge=1, description="auto index: items at which flat becomes IVF-PQ")
    index_nlist: int = Field(default=4096, ge=1, description="IVF-PQ index: coarse lists")
    index_nprobe: int = Field(default=16, ge=1, description="IVF-PQ index: lists searched per query")
    hnsw_m: int = Field(default=32, ge=4, description="HNSW graph degree")
    ef_search: int = Field(default=128, ge=1, description="HNSW search breadth")
    state_dir: str | None = Field(default=None, description="folder of the index snapshot; unset: no snapshot (restart = empty index)")
    snapshot_every_s: float = Field(default=300.0, gt=0, description="snapshot at most this often while items are added")
    snapshot_every_items: int = Field(default=20_000, ge=1, description="snapshot after this many additions")
    follow_novel: bool = Field(default=True, description="also index the novel topic as a table (restart replay, replicas)")
    route_partitions: int = Field(
        default=0, ge=0, description="replicas: route each candidate to the partition of its embedding bucket so near "
        "duplicates meet on one replica (the partition count of candidates; 0 = off)",
    )
    route_planes: int | None = Field(default=None, ge=1, le=16, description="hyperplanes of the routing buckets (unset: the fewest that reach every partition)")
    route_basis: Literal["random", "seeds"] = Field(
        default="random", description="routing hyperplanes: seeded random ones, or the principal directions of the seeds' embeddings"
    )
    route_seed: int = Field(default=0, description="seed of random routing hyperplanes (the same in every replica)")
    redelivery_window: int = Field(default=2048, ge=0, description="recent outputs kept to recognise a redelivered candidate")

    @model_validator(mode="after")
    def _thresholds(self) -> NoveltyConfig:
        if self.exact_threshold < self.dup_threshold:
            raise ValueError("exact_threshold must be >= dup_threshold")
        if self.contamination is not None and not self.contamination:
            raise ValueError(
                f"contamination=[] no longer turns the contamination check off: give {NO_CHECK_FLAG} "
                "(contamination_check=false); held-out files of your own go in heldout"
            )
        return self

    def heldout_files(self) -> list[Path]:
        """The held-out files checked: the packaged sets plus ``heldout`` (and deprecated ``contamination``); [] when off."""
        return heldout_files([*self.heldout, *(self.contamination or [])], check=self.contamination_check)


@dataclass
class _Decision:
    """What happens to one candidate of a batch."""

    kind: Literal["accept", "drop", "redeliver", "invalid"]
    reason: str = ""
    similarity: float = 0.0
    match_id: str | None = None
    match_source: str = ""
    novelty: float = 1.0
    output: NovelCandidate | None = None
    same_as: int | None = None


# ---------------------------------------------------------------- text contamination (n-grams, the prompt's example)
def text_contamination_checks(
    files: Sequence[str | Path] | None, ngram_n: int, prompt_example_n: int
) -> list[tuple[str, NgramIndex]]:
    """The (drop reason, n-gram index) checks run before the embedding check: the prompt's example, held-out 13-grams.

    ``files`` are the held-out files (None: the packaged sets; []: no n-gram check).
    """
    checks: list[tuple[str, NgramIndex]] = []
    if prompt_example_n > 0:
        examples = prompt_examples(load_prompt(MUTATION))
        checks.append((PROMPT_EXAMPLE, NgramIndex.from_texts(((t, "mutation_prompt", problem_id(t)) for t in examples), prompt_example_n)))
    paths = packaged_paths() if files is None else [Path(p) for p in files]
    if ngram_n > 0 and paths:
        checks.append((CONTAMINATION_NGRAM, NgramIndex.from_files(paths, ngram_n)))
    return checks


def _text_contamination(checks: list[tuple[str, NgramIndex]], problem: str) -> _Decision | None:
    """A drop decision when the problem shares an n-gram with the prompt's example or a held-out problem."""
    for reason, index in checks:
        found = index.match(problem)
        if found is not None:
            return _Decision("drop", reason, 1.0, found.doc_id, found.source)
    return None


def _same_candidate(candidate: Candidate, seen: Candidate) -> bool:
    """True when two candidates carry the same problem and provenance (a redelivery, not a new duplicate)."""
    return all(getattr(candidate, f) == getattr(seen, f) for f in _CANDIDATE_FIELDS)


class NoveltyCore(BaseCore):
    """Dedup, contamination, novelty score and skill-set descriptor (see the module docstring)."""

    name = "novelty"
    inputs: tuple[str, ...] = ("candidates",)

    def __init__(
        self,
        config: NoveltyConfig,
        *,
        embedder: EmbeddingBackend,
        backend: GenerationBackend | None = None,
        vocabulary: Vocabulary | None = None,
        heldout: HeldOut | None = None,
        owned: Sequence[Any] = (),
    ) -> None:
        """Build the core from already-built dependencies (``backend`` may be None when ``classify`` is off)."""
        if config.classify and backend is None:
            raise ConfigError("the novelty core needs a generation backend to classify skills (or classify=false)")
        self.config = config
        self.embedder = embedder
        self.backend = backend
        self.vocabulary = vocabulary if vocabulary is not None else (load_vocabulary(config.vocabulary) if config.classify else None)
        self.tables = ("seeds", "novel") if config.follow_novel else ("seeds",)
        self._owned = list(owned)
        self._template = load_prompt(SKILL_CLASSIFICATION)
        self._skill_params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=config.skill_max_tokens)
        self._embedder_name = str(getattr(embedder, "model_name", type(embedder).__name__))
        self.counters: Counter[str] = Counter()
        self._timers: Counter[str] = Counter()
        self._recent: OrderedDict[str, NovelCandidate] = OrderedDict()
        self._pending: OrderedDict[str, str] = OrderedDict()
        self._table_offsets: dict[str, int] = {}
        self._skip_below: dict[str, int] = {}
        self._snapshot_root = Path(config.state_dir) / _SNAPSHOT_DIR if config.state_dir else None
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self.index = self._load_or_create()
        files = config.heldout_files()
        if not config.contamination_check:
            log.warning("the contamination check is OFF (%s): held-out problems are not dropped", NO_CHECK_FLAG)
        if heldout is None:
            cache = Path(config.state_dir) if config.state_dir else None
            heldout = load_heldout(files, embedder, cache) if files else HeldOut.empty(embedder.dim)
        if heldout.vectors.shape[1] != embedder.dim:
            raise ConfigError(f"held-out vectors have dimension {heldout.vectors.shape[1]}, the embedder {embedder.dim}")
        self.heldout = heldout
        self._heldout_check = HeldOutCheck(heldout, None, config.contamination_threshold)
        self._text_checks = text_contamination_checks(files, config.ngram_n, config.prompt_example_n)
        self._router: EmbeddingRouter | None = None
        self._seed_texts: dict[str, str] = {}  # routing by the seeds' principal directions: fitted on the first batch

    # ------------------------------------------------------------------ the core contract
    def handle(self, inbound: Inbound) -> list[Outgoing]:
        """Handle one candidate (the batch path does the work)."""
        return self.handle_batch([inbound])[0]

    def handle_batch(self, batch: Sequence[Inbound]) -> list[list[Outgoing]]:
        """Decide a batch of candidates together (one embedding call, one classifier pass)."""
        self._flush_pending()
        candidates: list[Candidate] = []
        for item in batch:
            if not isinstance(item.message, Candidate):
                got = "a tombstone" if item.message is None else type(item.message).__name__
                raise FatalError(f"the novelty core reads Candidate messages, got {got} at {item.topic}[{item.partition}]@{item.offset}")
            candidates.append(item.message)
        if not candidates:
            return []
        started = time.perf_counter()
        vectors = np.asarray(self.embedder.embed([c.problem for c in candidates]), dtype=np.float32)
        self._timers["embed_seconds"] += time.perf_counter() - started
        if self.config.route_partitions:
            return self._route(batch, candidates, vectors)
        return self._decide_batch(candidates, vectors)

    def _routing(self) -> EmbeddingRouter:
        """The router, fitted on the seeds (every replica reads the same seeds table) on first use."""
        if self._router is None:
            cfg = self.config
            ids = sorted(self._seed_texts)[:_ROUTE_FIT_SEEDS]
            if cfg.route_basis == "seeds" and len(ids) >= 8:
                fit = np.asarray(self.embedder.embed([self._seed_texts[i] for i in ids]), dtype=np.float32)
                self._router = EmbeddingRouter.fitted(fit, cfg.route_partitions, cfg.route_planes)
            else:
                self._router = EmbeddingRouter.random(self.embedder.dim, cfg.route_partitions, cfg.route_planes, cfg.route_seed)
            self._seed_texts.clear()
        return self._router

    def _route(self, batch: Sequence[Inbound], candidates: list[Candidate], vectors: np.ndarray) -> list[list[Outgoing]]:
        """Decide the candidates on their bucket's partition; move the others there (once)."""
        targets = self._routing().partitions_of(vectors)
        stay = [i for i, item in enumerate(batch) if int(targets[i]) == item.partition or _routed(item)]
        outputs: list[list[Outgoing]] = [
            [Outgoing("candidates", cand, partition=int(target), headers=((ROUTED_HEADER, b"1"),))]
            for cand, target in zip(candidates, targets)
        ]
        self.counters["routed"] += len(batch) - len(stay)
        if stay:
            for i, outs in zip(stay, self._decide_batch([candidates[i] for i in stay], vectors[stay])):
                outputs[i] = outs
        return outputs

    def _decide_batch(self, candidates: list[Candidate], vectors: np.ndarray) -> list[list[Outgoing]]:
        """Decide candidates already embedded: drop, or classify and accept."""
        started = time.perf_counter()
        decisions = self._decide(candidates, vectors)
        self._timers["search_seconds"] += time.perf_counter() - started
        accepted = [i for i, d in enumerate(decisions) if d.kind == "accept"]
        skills = self._classify([candidates[i].problem for i in accepted])
        for i, names in zip(accepted, skills):
            decisions[i].output = self._novel(candidates[i], decisions[i], names)
        self._apply(candidates, vectors, decisions)
        return [self._outputs(c, d) for c, d in zip(candidates, decisions)]

    def on_table(self, inbound: Inbound) -> list[Outgoing]:
        """Index seeds, and (``follow_novel``) problems accepted after the snapshot or by another replica."""
        message = inbound.message
        if inbound.topic == "seeds" and isinstance(message, Seed):
            if self.config.route_partitions and self._router is None:
                self._seed_texts[message.id] = message.problem
            if message.id not in self.index:
                self._pending.setdefault(message.id, message.problem)
                self.counters["seeds_indexed"] += 1
        elif inbound.topic == "novel" and isinstance(message, NovelCandidate):
            part = str(inbound.partition)
            if inbound.offset < self._skip_below.get(part, 0):
                return []
            self._table_offsets[part] = max(self._table_offsets.get(part, 0), inbound.offset + 1)
            if message.id not in self.index:
                self._pending.setdefault(message.id, message.problem)
                self.counters["replayed"] += 1
            self._remember(message)
        if len(self._pending) >= _TABLE_FLUSH:
            self._flush_pending()
        return []

    def tick(self, now: float) -> list[Outgoing]:
        """Index what the tables brought in, and snapshot when due."""
        self._flush_pending()
        if self._snapshot_root is not None and self._since_snapshot:
            due = time.monotonic() - self._last_snapshot >= self.config.snapshot_every_s
            if due or self._since_snapshot >= self.config.snapshot_every_items:
                self.snapshot()
        return []

    def metrics(self) -> dict[str, float]:
        """Counters (received, accepted, dropped, dropped_<reason>, ...) and gauges (index size and memory, timings)."""
        out = {k: float(v) for k, v in self.counters.items()}
        out.update({k: float(v) for k, v in self._timers.items()})
        for name in ("received", "accepted", "dropped", "redelivered", *(f"dropped_{r}" for r in DROP_REASONS)):
            out.setdefault(name, 0.0)
        out["index_size"] = float(len(self.index))
        out["index_bytes"] = float(self.index.memory_bytes())
        out["heldout_size"] = float(len(self.heldout))
        out["contamination_check"] = float(self.config.contamination_check)
        out["pending"] = float(len(self._pending))
        return out

    def close(self) -> None:
        """Index what is pending, write a last snapshot, release owned backends."""
        self._flush_pending()
        if self._snapshot_root is not None and self._since_snapshot:
            self.snapshot()
        for resource in self._owned:
            closer = getattr(resource, "close", None)
            if callable(closer):
                closer()
        self._owned.clear()

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> Path | None:
        """Write the index snapshot now (no-op without ``state_dir``); return its folder."""
        if self._snapshot_root is None:
            return None
        self._flush_pending()
        started = time.perf_counter()
        extra = {
            "embedder": self._embedder_name,
            "novel_offsets": dict(self._table_offsets),
            "recent": [nc.model_dump(mode="json") for nc in self._recent.values()],
        }
        folder = self.index.snapshot(self._snapshot_root, extra)
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self.counters["snapshots"] += 1
        self._timers["snapshot_seconds"] += time.perf_counter() - started
        log.info("novelty index snapshot: %d items -> %s", len(self.index), folder)
        return folder

    def _load_or_create(self) -> VectorIndex | ScalableIndex:
        cfg = self.config
        if self._snapshot_root is not None:
            loaded: tuple[VectorIndex | ScalableIndex, dict] | None = ScalableIndex.restore(self._snapshot_root)
            if loaded is None:
                loaded = VectorIndex.restore(self._snapshot_root)
            if loaded is not None:
                index, extra = loaded
                if index.dim != self.embedder.dim or extra.get("embedder") != self._embedder_name:
                    raise ConfigError(
                        f"the index snapshot in {self._snapshot_root} was made with embedder {extra.get('embedder')!r} "
                        f"({index.dim}-d), this core uses {self._embedder_name!r} ({self.embedder.dim}-d): "
                        "use another state_dir or delete the snapshot"
                    )
                if index.kind != cfg.index_kind:
                    log.warning("the snapshot holds a %s index; index_kind=%s is ignored", index.kind, cfg.index_kind)
                self._skip_below = {str(k): int(v) for k, v in (extra.get("novel_offsets") or {}).items()}
                self._table_offsets = dict(self._skip_below)
                for data in extra.get("recent") or []:
                    self._remember(NovelCandidate.model_validate(data))
                log.info("restored the novelty index: %d items from %s", len(index), self._snapshot_root)
                self.counters["restored_items"] = len(index)
                return index
        if cfg.index_kind in SCALABLE_KINDS:
            return ScalableIndex(self.embedder.dim, cfg.index_kind, threshold=cfg.index_threshold, nlist=cfg.index_nlist,
                                 nprobe=cfg.index_nprobe, pq_m=_pq_m(self.embedder.dim), folder=self._snapshot_root)
        return VectorIndex(self.embedder.dim, cfg.index_kind, hnsw_m=cfg.hnsw_m, ef_search=cfg.ef_search)

    # ------------------------------------------------------------------ internals
    def _flush_pending(self) -> None:
        if not self._pending:
            return
        ids = list(self._pending)
        texts = [self._pending[i] for i in ids]
        self._pending.clear()
        started = time.perf_counter()
        vectors = np.asarray(self.embedder.embed(texts), dtype=np.float32)
        self._timers["embed_seconds"] += time.perf_counter() - started
        self._since_snapshot += self.index.add(ids, vectors)

    def _remember(self, output: NovelCandidate) -> None:
        if self.config.redelivery_window <= 0:
            return
        self._recent[output.id] = output
        self._recent.move_to_end(output.id)
        while len(self._recent) > self.config.redelivery_window:
            self._recent.popitem(last=False)

    def _decide(self, candidates: list[Candidate], vectors: np.ndarray) -> list[_Decision]:
        cfg = self.config
        found = self.index.search(vectors, cfg.k_neighbours)
        held = self.heldout.nearest(vectors)
        gram = vectors @ vectors.T
        accepted: list[int] = []
        accepted_by_id: dict[str, int] = {}
        decisions: list[_Decision] = []
        for i, cand in enumerate(candidates):
            decisions.append(self._decide_one(i, cand, found[i], held[i], gram, accepted, accepted_by_id, candidates))
            if decisions[-1].kind == "accept":
                accepted.append(i)
                accepted_by_id[cand.id] = i
        return decisions

    def _decide_one(
        self,
        i: int,
        cand: Candidate,
        found: list[tuple[str, float]],
        held: tuple[float, int],
        gram: np.ndarray,
        accepted: list[int],
        accepted_by_id: dict[str, int],
        candidates: list[Candidate],
    ) -> _Decision:
        cfg = self.config
        if cand.id in accepted_by_id:
            first = accepted_by_id[cand.id]
            if _same_candidate(cand, candidates[first]):
                return _Decision("redeliver", same_as=first)
            return _Decision("drop", EXACT, 1.0, cand.id, "seen")
        if cand.id in self.index:
            previous = self._recent.get(cand.id)
            if previous is not None and _same_candidate(cand, previous):
                return _Decision("redeliver", output=previous)
            return _Decision("drop", EXACT, 1.0, cand.id, "seen")
        same = self._heldout_check.by_id(cand.id)
        if same is not None:
            return _Decision("drop", CONTAMINATION, 1.0, same.match_id, same.source)
        text_drop = _text_contamination(self._text_checks, cand.problem)
        if text_drop is not None:
            return text_drop
        close = self._heldout_check.by_vector(held)
        if close is not None:
            return _Decision("drop", CONTAMINATION, close.similarity, close.match_id, close.source)
        neighbours = list(found)
        neighbours.extend((candidates[j].id, float(gram[i, j])) for j in accepted)
        neighbours.sort(key=lambda pair: (-pair[1], pair[0]))
        neighbours = neighbours[: cfg.k_neighbours]
        if neighbours:
            best_id, best = neighbours[0]
            if best >= cfg.exact_threshold:
                return _Decision("drop", EXACT, best, best_id, "seen")
            if best >= cfg.dup_threshold:
                return _Decision("drop", NEAR, best, best_id, "seen")
            novelty = float(np.mean([1.0 - s for _, s in neighbours]))
            return _Decision("accept", similarity=best, match_id=best_id, novelty=novelty)
        return _Decision("accept", similarity=0.0, match_id=None, novelty=1.0)

    def _classify(self, problems: list[str]) -> list[list[str]]:
        if not problems or not self.config.classify:
            return [[] for _ in problems]
        assert self.backend is not None and self.vocabulary is not None
        started = time.perf_counter()
        answers = classify_skills(
            problems,
            self.backend,
            self.vocabulary,
            batch_size=self.config.skill_batch_size,
            params=self._skill_params,
            template=self._template,
        )
        self._timers["classify_seconds"] += time.perf_counter() - started
        failed = [a.error for a in answers if not a.ok]
        if failed:
            self.counters["skill_errors"] += len(failed)
            raise RetriableError(f"skill classification failed for {len(failed)} of {len(problems)} problems: {failed[0]}")
        for answer in answers:
            if not answer.skills:
                self.counters["skill_parse_failures"] += 1
        return [a.skills for a in answers]

    def _novel(self, cand: Candidate, decision: _Decision, skills: list[str]) -> NovelCandidate:
        data = {name: getattr(cand, name) for name in Candidate.model_fields}
        return NovelCandidate(
            **data,
            novelty=decision.novelty,
            skills=sorted(skills),
            niche=niche_key(skills),
            nearest_id=decision.match_id,
            nearest_similarity=decision.similarity,
        )

    def _apply(self, candidates: list[Candidate], vectors: np.ndarray, decisions: list[_Decision]) -> None:
        accepted = [i for i, d in enumerate(decisions) if d.kind == "accept"]
        if accepted:
            self._since_snapshot += self.index.add([candidates[i].id for i in accepted], vectors[accepted])
        for decision in decisions:
            self.counters["received"] += 1
            if decision.same_as is not None:
                decision.output = decisions[decision.same_as].output
            if decision.kind in ("accept", "redeliver"):
                assert decision.output is not None
                self._remember(decision.output)
                self.counters["accepted" if decision.kind == "accept" else "redelivered"] += 1
            else:
                self.counters["dropped"] += 1
                self.counters[f"dropped_{decision.reason}"] += 1

    def _outputs(self, cand: Candidate, decision: _Decision) -> list[Outgoing]:
        if decision.output is not None:
            return [Outgoing("novel", decision.output)]
        dropped = Dropped(
            id=cand.id,
            reason=decision.reason,
            similarity=decision.similarity,
            match_id=decision.match_id,
            match_source=decision.match_source,
            problem=cand.problem,
            parent_ids=list(cand.parent_ids),
            step=cand.step,
            variant=cand.variant,
            model=cand.model,
        )
        return [Outgoing("drops", dropped)]


def _routed(item: Inbound) -> bool:
    """True for a candidate a replica already moved to its bucket's partition (never moved twice)."""
    return any(name == ROUTED_HEADER for name, _value in item.headers)


def build_novelty(
    config: NoveltyConfig,
    *,
    embedder: EmbeddingBackend | None = None,
    backend: GenerationBackend | None = None,
    vocabulary: Vocabulary | None = None,
    heldout: HeldOut | None = None,
) -> NoveltyCore:
    """Build the novelty core, creating the embedder and classifier backend named in ``config`` unless given."""
    from sparq_stream.models.registry import make_embedding_backend, make_generation_backend

    owned: list[Any] = []
    if embedder is None:
        embedder = make_embedding_backend(config.embedder, **config.embedder_options)
        owned.append(embedder)
    if backend is None and config.classify:
        options = dict(config.backend_options)
        if config.model is not None:
            options.setdefault("model", config.model)
        backend = make_generation_backend(config.backend, **options, **openai_key_option(config))
        owned.append(backend)
    if vocabulary is None and config.classify:
        vocabulary = load_vocabulary(config.vocabulary)
    return NoveltyCore(
        config, embedder=embedder, backend=backend, vocabulary=vocabulary, heldout=heldout, owned=owned
    )


def _pq_m(dim: int) -> int:
    """PQ sub-quantizers for ``dim``: 64 for 384-d (6 dims each), else the largest divisor of dim <= dim // 6."""
    for m in range(max(1, min(64, dim // 6)), 0, -1):
        if dim % m == 0:
            return m
    return 1
