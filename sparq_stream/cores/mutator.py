"""The mutator core: sample parents from W, mutate each into a child problem, emit candidates.

Each *step* samples ``batch_size`` (the paper's b = 64) parents from its view of the
working set W with the variant's selection policy C (uniform, or diverse: uniform over
skill-sets, then within one) and a random generator seeded by ``(seed, step)``; renders
the generic mutation prompt per parent; asks the backend for one child each; parses
``<problem>``, ``<solution>`` and the solution's last ``\\boxed{}``; and emits a
:class:`~sparq_stream.messages.Candidate` per parsed child, with its provenance (parent
ids, operator ``mutate``, model name and version, the prompt's sha256, step, variant).
A child that does not parse is counted by reason (``parse_failures.<reason>``) and
dropped, never raised. Parents drawn twice in a step (a batch larger than W) are asked
for ``n = 2`` samples of one prompt, so they get two different children.

Message flow: tables ``seeds`` (W's seeds), ``elites`` (W's children, dynamic variants;
a tombstone deletes a slot) and, with ``follow_models``, ``models``; inputs ``solved`` and
``drops`` (the outcome of each candidate: scored by the solver, or dropped by the novelty
filter); output ``candidates`` (key = problem id), produced from :meth:`tick`.

Flow control is credit based: a candidate holds a credit from emission until its
``solved`` result or ``drops`` notice arrives (matched by problem id), and no more than
``max_in_flight`` credits are ever held, so a slow solver stalls the mutator instead of
growing a queue. A credit not returned within ``credit_timeout_s`` (a candidate lost to
a dead letter, or a crashed downstream) is reclaimed and counted (``credits_expired``).
Generation runs in chunks of ``chunk_size`` prompts, one chunk per call, so the first
children are downstream while the rest of the step is generated.

``synchronous`` (the default, and the paper's loop): step s+1 starts only once every
candidate of step s is accounted for AND W reflects their results: the core offers the
step's scored results to a copy of W with the same update policy (``variant``, ``cap``:
keep them equal to the archivist's) and waits until the elites table shows that state,
or ``sync_settle_s`` passes (counted as ``sync_settle_timeouts``). With a fixed seed and
a deterministic backend the candidates of every step are then exactly reproducible.
Asynchronous mode starts a step whenever credits allow; W then lags by the steps in flight.

Restart: with ``state_dir`` set, the step counter, budget, open step (its parents not yet
mutated) and the in-flight credits (with their emission time) are saved atomically after
every accounting batch and before every generation chunk; a restarted mutator continues
the same step and budget and still matches the outcomes of candidates emitted before the
crash. The chunk being generated at the crash is generated again (a deterministic backend
emits the same candidates; the novelty core recognises them). Without ``state_dir`` a
restart starts a new run: step 0, no credits held (downstream may then briefly hold up to
twice ``max_in_flight``).

Hot reload: with ``follow_models``, the newest :class:`ModelVersion` on the models table
(only ``follow_model_name``'s, when set) is loaded with ``backend.reload(path, version=,
name=)`` before the next generation chunk, also after a restart (the table is replayed);
candidates carry the backend's model name and version. A failed reload keeps the current
model (``reload_failures``); a backend without ``reload`` is counted (``reload_unsupported``).

Budget: ``steps`` (steps started) and ``max_candidates`` (candidates emitted). ``exhausted``
is true once nothing more will be emitted, ``done`` once in addition every emitted
candidate is accounted for.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sparq_stream.core import BaseCore, Inbound, Outgoing
from sparq_stream.errors import ConfigError, SparqError
from sparq_stream.ids import problem_id
from sparq_stream.messages import Candidate, Dropped, Elite, ModelVersion, Seed, SolveResult
from sparq_stream.models.base import GenerationBackend, GenerationResult, SamplingParams
from sparq_stream.models.model_root import UntrustedModelPath, model_path_inside
from sparq_stream.prompts import MUTATION, load_prompt
from sparq_stream.qd.working_set import VARIANTS, WorkingSet, make_working_set, variant_spec
from sparq_stream.verify.extract import extract_problem, extract_solution, last_boxed

__all__ = ["MutatorConfig", "MutatorCore", "build_mutator", "parse_child"]

log = logging.getLogger(__name__)

_STATE_FILE = "mutator-state.json"
_STATE_FORMAT = "sparq.mutator-state"
_STATE_VERSION = 1
_KEY = re.compile(r"[^a-z0-9]+")
_MAX_BACKOFF_S = 30.0


class MutatorConfig(BaseModel):
    """Every setting of the mutator core (defaults are the paper's where it has one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    variant: str = Field(default="qd", description="static-uniform | static-diverse | dynamic-uniform | qd (the archivist's too)")
    cap: int | None = Field(default=None, ge=1, description="W's cap (top-T or per-niche); unset: the variant's default; match the archivist")
    batch_size: int = Field(default=64, ge=1, description="parents per step (the paper's b = 64), one child each")
    seed: int = Field(default=0, ge=0, description="seed of parent sampling (per step) and of generation")
    backend: str = Field(default="transformers", description="generation backend: transformers | openai | vllm | scripted")
    model: str | None = Field(default=None, description="generator model (path or served name); unset: the backend's default")
    backend_options: dict[str, Any] = Field(default_factory=dict, description="generation backend constructor options")
    prompt_dir: str | None = Field(default=None, description="folder with a custom mutation.txt; unset: the packaged prompt")
    temperature: float = Field(default=0.8, ge=0.0, description="mutation sampling temperature")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=768, ge=16, description="token limit of one child (problem and solution)")
    max_in_flight: int = Field(default=256, ge=1, description="most candidates emitted but not yet solved or dropped downstream")
    chunk_size: int = Field(default=16, ge=1, description="prompts per generate call (one call per chunk)")
    steps: int | None = Field(default=None, ge=0, description="stop after this many steps (unset: no limit)")
    max_candidates: int | None = Field(default=None, ge=0, description="stop after emitting this many candidates (unset: no limit)")
    synchronous: bool = Field(default=True, description="paper's rounds: a step starts when the previous one is scored and in W")
    sync_settle_s: float = Field(default=15.0, ge=0.0, description="longest wait for the elites table to show a step's results")
    credit_timeout_s: float = Field(default=1800.0, ge=0.0, description="reclaim a credit not returned after this long (0: never)")
    min_seeds: int = Field(default=1, ge=1, description="wait until W holds this many seeds before the first step")
    follow_models: bool = Field(default=False, description="hot-reload new model versions from the models topic")
    follow_model_name: str | None = Field(default=None, description="only follow this model name (unset: any)")
    models_root: str | None = Field(
        default=None, description="model versions load only from inside this folder (others are dead-lettered)"
    )
    state_dir: str | None = Field(default=None, description="folder of the restart checkpoint; unset: a restart is a new run")
    lenient_parse: bool = Field(
        default=True, description="also accept 'Problem:/Solution:' headings and a stated final answer (small models)"
    )
    tick_budget_s: float = Field(default=1.0, gt=0.0, description="start no new chunk after this long in one tick")

    @field_validator("variant")
    @classmethod
    def _variant(cls, value: str) -> str:
        if value not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}")
        return value


@dataclass
class _Unit:
    """One parent's share of a step: ``n`` children, the first at generation offset ``offset``."""

    parent: Seed | Elite
    n: int
    offset: int


@dataclass
class _Step:
    """The step being emitted: its number and the units not yet generated."""

    number: int
    queue: list[_Unit]


_HEADED = re.compile(
    r"(?:^|\n)\s*\**(?:new\s+|rewritten\s+|harder\s+)?problem\**\s*[:：]\**\s*(?P<problem>.+?)"
    r"\n\s*\**(?:worked\s+)?solution\**\s*[:：]\**\s*(?P<solution>.+)$",
    re.IGNORECASE | re.DOTALL,
)
_LOOSE_TAGS = re.compile(
    r"<problem>\s*(?P<problem>(?:(?!<problem>).)+?)\s*(?:</problem>\s*)?<solution>\s*(?P<solution>.+?)\s*(?:</solution>|$)",
    re.IGNORECASE | re.DOTALL,
)
_STATED_ANSWER = re.compile(r"(?:final\s+answer\s*(?:is\b|[:：])|the\s+answer\s+is\b|answer\s*[:：])\s*\$?\s*(?P<answer>[^\n$]{1,60})", re.IGNORECASE)


def parse_child(text: str, *, lenient: bool = False) -> tuple[tuple[str, str, str] | None, str | None]:
    """Parse a mutation output into (problem, solution, boxed answer), or (None, failure reason).

    ``lenient`` also accepts "Problem: ... Solution: ..." headings and a stated final answer
    ("Final answer: 12") when the tags or the box are missing, as small models often write them.
    """
    problem = extract_problem(text)
    solution = extract_solution(text)
    if lenient and not (problem.ok and solution.ok):
        loose = _LOOSE_TAGS.search(text[:20_000])  # unclosed tags: <problem> ... <solution> ... [</solution>]
        if loose is not None:
            return _lenient_child(loose.group("problem").strip(), loose.group("solution").strip())
        headed = _HEADED.search(text[:20_000])
        if headed is not None:
            return _lenient_child(headed.group("problem").strip(), headed.group("solution").strip())
    if not problem.ok:
        return None, f"problem: {problem.reason}"
    if not solution.ok:
        return None, f"solution: {solution.reason}"
    answer = last_boxed(solution.value or "")
    if not answer.ok:
        if lenient:
            return _lenient_child(problem.value or "", solution.value or "")
        return None, f"answer: {answer.reason}"
    return (problem.value or "", solution.value or "", answer.value or ""), None


def _lenient_child(problem: str, solution: str) -> tuple[tuple[str, str, str] | None, str | None]:
    if not problem or not solution:
        return None, "problem: empty tag"
    boxed = last_boxed(solution)
    if boxed.ok:
        return (problem, solution, boxed.value or ""), None
    stated = list(_STATED_ANSWER.finditer(solution))
    answer = stated[-1].group("answer").strip().rstrip(".") if stated else ""
    if not answer:
        return None, "answer: no box"
    return (problem, f"{solution}\n\\boxed{{{answer}}}", answer), None


def _reason_key(reason: str) -> str:
    return "parse_failures." + _KEY.sub("_", reason.lower()).strip("_")


class MutatorCore(BaseCore):
    """Samples parents from W and emits their children under credit-based flow control."""

    name = "mutator"
    inputs: tuple[str, ...] = ("solved", "drops")

    def __init__(
        self,
        config: MutatorConfig,
        *,
        backend: GenerationBackend,
        clock: Any = time.time,
        owned: Sequence[Any] = (),
    ) -> None:
        """Build the core around an already-built generation backend (``clock`` is injectable for tests)."""
        self.config = config
        self.backend = backend
        self.spec = variant_spec(config.variant)
        self.template = load_prompt(MUTATION, config.prompt_dir)
        tables = ["seeds"]
        if self.spec.dynamic:
            tables.append("elites")
        if config.follow_models:
            tables.append("models")
        self.tables = tuple(tables)
        self.W: WorkingSet = make_working_set(config.variant, config.cap)
        self._clock = clock
        self._owned = list(owned)
        self._step = 0
        self._seed_count = 0
        self._emitted = 0
        self._open: _Step | None = None
        self._in_flight: dict[str, tuple[int, float]] = {}
        self._results: dict[int, dict[str, SolveResult]] = {}
        self._barrier: tuple[int, dict[str, str], float] | None = None
        self._w_dirty = True
        self._pending_model: ModelVersion | None = None
        self._model_number: int | None = None
        self._failed_models: set[tuple[str, int]] = set()
        self._backoff_until = 0.0
        self._backoff_s = 0.0
        self.counters: Counter[str] = Counter()
        self._timers: Counter[str] = Counter()
        self._state_path = Path(config.state_dir) / _STATE_FILE if config.state_dir else None
        if self._state_path is not None:
            self._load_state()

    # ------------------------------------------------------------------ status
    @property
    def step(self) -> int:
        """The number of steps started so far (the next step's number)."""
        return self._step

    @property
    def emitted(self) -> int:
        """Candidates emitted so far."""
        return self._emitted

    @property
    def in_flight(self) -> int:
        """Candidates emitted and not yet accounted for (credits held)."""
        return len(self._in_flight)

    @property
    def exhausted(self) -> bool:
        """True once the budget is spent: nothing more will be emitted."""
        cfg = self.config
        if cfg.max_candidates is not None and self._emitted >= cfg.max_candidates:
            return True
        open_work = self._open is not None and bool(self._open.queue)
        return cfg.steps is not None and self._step >= cfg.steps and not open_work

    @property
    def done(self) -> bool:
        """True once the budget is spent and every emitted candidate is solved or dropped."""
        return self.exhausted and not self._in_flight

    # ------------------------------------------------------------------ tables
    def on_table(self, inbound: Inbound) -> list[Outgoing]:
        """Keep W (seeds, elites by slot; a tombstone deletes) and note new model versions."""
        message = inbound.message
        if inbound.topic == "seeds":
            if isinstance(message, Seed) and self.W.add_seed(message):
                self._seed_count += 1
                self._w_dirty = True
        elif inbound.topic == "elites" and self.spec.dynamic:
            slot = inbound.key if inbound.key is not None else getattr(message, "slot", None)
            if slot is None:
                log.warning("elites record without a key at offset %d: ignored", inbound.offset)
            elif message is None or isinstance(message, Elite):
                self.W.restore(slot, message)
                self._w_dirty = True
        elif inbound.topic == "models" and isinstance(message, ModelVersion):
            self._note_model(message)
        return []

    # ------------------------------------------------------------------ accounting
    def handle_batch(self, batch: Sequence[Inbound]) -> list[list[Outgoing]]:
        """Return the credit of each solved or dropped candidate of ours (matched by problem id)."""
        changed = False
        now = self._clock()
        for item in batch:
            message = item.message
            if not isinstance(message, (SolveResult, Dropped)):
                self.counters["ignored_messages"] += 1
                continue
            flight = self._in_flight.pop(message.id, None)
            if flight is None:
                self.counters["unknown_outcomes"] += 1
                continue
            changed = True
            step, emitted_at = flight
            self._timers["outcome_latency_s"] += max(0.0, now - emitted_at)
            if isinstance(message, Dropped):
                self.counters["outcomes.dropped"] += 1
            else:
                self.counters["outcomes.solved"] += 1
                if self.config.synchronous and self.spec.dynamic and message.quality > 0:
                    self._results.setdefault(step, {})[message.id] = message
        if changed:
            self._save_state()
        return [[] for _ in batch]

    def handle(self, inbound: Inbound) -> list[Outgoing]:
        """Account for one outcome."""
        return self.handle_batch([inbound])[0]

    # ------------------------------------------------------------------ emission
    def tick(self, now: float) -> list[Outgoing]:
        """Start steps and generate chunks while credits, budget and the tick budget allow."""
        self._expire_credits()
        if self._clock() < self._backoff_until:
            return []
        out: list[Outgoing] = []
        started = time.monotonic()
        while time.monotonic() - started < self.config.tick_budget_s:
            if (self._open is None or not self._open.queue) and not self._start_step():
                break
            limit = self._chunk_limit()
            if limit <= 0:
                break
            try:
                out.extend(self._generate_chunk(limit))
            except SparqError as exc:
                if not exc.retriable:
                    raise
                self._backoff_s = min(_MAX_BACKOFF_S, max(0.5, self._backoff_s * 2))
                self._backoff_until = self._clock() + self._backoff_s
                self.counters["generate_retries"] += 1
                log.warning("generation failed (%s); retrying in %.1fs", exc, self._backoff_s)
                break
            self._backoff_s = 0.0
        return out

    def _start_step(self) -> bool:
        """Open the next step if the budget, the barrier, credits and W allow; return True if one is open."""
        cfg = self.config
        if self._open is not None and not self._open.queue:
            if cfg.synchronous and not self._step_settled(self._open.number):
                return False
            self.counters["steps_finished"] += 1
            self._open = None
            self._save_state()
        if self.exhausted:
            return False
        if cfg.max_candidates is not None and self._emitted >= cfg.max_candidates:
            return False
        if self._seed_count < cfg.min_seeds:
            self.counters["waits_for_seeds"] += 1
            return False
        if cfg.synchronous and self._in_flight:
            return False
        rng = np.random.default_rng([cfg.seed, self._step])
        parents = self.W.sample(cfg.batch_size, rng)
        if not parents:
            return False
        self._open = _Step(self._step, _units(parents))
        self._step += 1
        self._barrier = None
        self._save_state()
        return True

    def _chunk_limit(self) -> int:
        cfg = self.config
        limit = min(cfg.chunk_size, cfg.max_in_flight - len(self._in_flight))
        if cfg.max_candidates is not None:
            limit = min(limit, cfg.max_candidates - self._emitted)
        if limit <= 0:
            self.counters["waits_for_credits"] += 1
        return limit

    def _generate_chunk(self, limit: int) -> list[Outgoing]:
        assert self._open is not None
        step = self._open
        self._save_state()
        self._apply_pending_model()
        chunk: list[_Unit] = []
        taken = 0
        queue = list(step.queue)
        while queue and taken < limit:
            unit = queue[0]
            if unit.n <= limit - taken:
                chunk.append(queue.pop(0))
                taken += unit.n
            else:
                part = limit - taken
                chunk.append(_Unit(unit.parent, part, unit.offset))
                queue[0] = _Unit(unit.parent, unit.n - part, unit.offset + part)
                taken += part
        groups: dict[tuple[int, int], list[_Unit]] = {}
        for unit in chunk:
            groups.setdefault((unit.n, unit.offset), []).append(unit)
        generated: list[tuple[_Unit, list[Any], str | None]] = []
        begin = time.perf_counter()
        for (n, offset), units in groups.items():
            params = SamplingParams(
                temperature=self.config.temperature,
                top_p=self.config.top_p,
                max_tokens=self.config.max_tokens,
                seed=self._generation_seed(step.number, offset),
            )
            prompts = [self.template.render(problem=u.parent.problem, solution=u.parent.solution, answer=u.parent.answer) for u in units]
            results = list(self.backend.generate(prompts, n, params))
            if len(results) != len(units):
                log.error("the backend returned %d results for %d prompts", len(results), len(units))
                results = (results + [GenerationResult(error="no result")] * len(units))[: len(units)]
            for unit, result in zip(units, results):
                generated.append((unit, list(result.completions), result.error))
        self._timers["generate_seconds"] += time.perf_counter() - begin
        step.queue = queue
        return self._emit(step.number, generated)

    def _emit(self, step: int, generated: list[tuple[_Unit, list[Any], str | None]]) -> list[Outgoing]:
        out: list[Outgoing] = []
        now = self._clock()
        model = str(getattr(self.backend, "model_name", "") or getattr(self.backend, "name", ""))
        version = int(getattr(self.backend, "model_version", 0) or 0)
        for unit, completions, error in generated:
            self.counters["generated"] += unit.n
            if error is not None or not completions:
                self.counters["parse_failures"] += unit.n
                self.counters[_reason_key("generation error")] += unit.n
                continue
            for completion in completions[: unit.n]:
                parsed, reason = parse_child(completion.text, lenient=self.config.lenient_parse)
                if parsed is None:
                    self.counters["parse_failures"] += 1
                    self.counters[_reason_key(reason or "unknown")] += 1
                    continue
                problem, solution, answer = parsed
                cid = problem_id(problem)
                if cid in self._in_flight:
                    self.counters["local_duplicates"] += 1
                    continue
                if self.config.max_candidates is not None and self._emitted >= self.config.max_candidates:
                    self.counters["over_budget"] += 1
                    continue
                candidate = Candidate(
                    id=cid,
                    problem=problem,
                    solution=solution,
                    answer=answer,
                    parent_ids=[unit.parent.id],
                    operator="mutate",
                    model=model,
                    model_version=version,
                    prompt_hash=self.template.sha256,
                    step=step,
                    variant=self.config.variant,
                    created_at=now,
                )
                self._in_flight[cid] = (step, now)
                self._emitted += 1
                self.counters["emitted"] += 1
                out.append(Outgoing("candidates", candidate))
        return out

    def _generation_seed(self, step: int, offset: int) -> int:
        return (self.config.seed * 100_003 + step * self.config.batch_size + offset) % (2**31 - 1)

    # ------------------------------------------------------------------ the synchronous barrier
    def _step_settled(self, number: int) -> bool:
        """True once every candidate of step ``number`` is accounted for and W shows their results."""
        if any(step == number for step, _ in self._in_flight.values()):
            return False
        results = self._results.get(number, {})
        if not self.spec.dynamic or not results:
            self._results.pop(number, None)
            return True
        if self._barrier is None or self._barrier[0] != number:
            self._barrier = (number, self._expected_w(results.values()), self._clock())
            self._w_dirty = True
        _, expected, since = self._barrier
        if self._w_dirty:
            self._w_dirty = False
            if _slots(self.W) == expected:
                self.counters["sync_settled"] += 1
                self._results.pop(number, None)
                return True
        if self._clock() - since >= self.config.sync_settle_s:
            self.counters["sync_settle_timeouts"] += 1
            log.warning(
                "step %d: the elites table did not show the step's results within %.0fs; going on "
                "(is the archivist running with variant=%s cap=%s?)",
                number,
                self.config.sync_settle_s,
                self.config.variant,
                self.config.cap,
            )
            self._results.pop(number, None)
            return True
        return False

    def _expected_w(self, results: Any) -> dict[str, str]:
        shadow = make_working_set(self.config.variant, self.config.cap)
        shadow.add_seeds(self.W.seeds())
        for slot, elite in self.W.elites().items():
            shadow.restore(slot, elite)
        for result in sorted(results, key=lambda r: r.id):
            shadow.offer(result)
        return _slots(shadow)

    # ------------------------------------------------------------------ credits, models
    def _expire_credits(self) -> None:
        timeout = self.config.credit_timeout_s
        if timeout <= 0 or not self._in_flight:
            return
        cutoff = self._clock() - timeout
        expired = [cid for cid, (_, at) in self._in_flight.items() if at <= cutoff]
        for cid in expired:
            del self._in_flight[cid]
        if expired:
            self.counters["credits_expired"] += len(expired)
            log.warning("%d candidate(s) had no outcome after %.0fs: their credits are reclaimed", len(expired), timeout)
            self._save_state()

    def _note_model(self, message: ModelVersion) -> None:
        cfg = self.config
        if not cfg.follow_models or (cfg.follow_model_name is not None and message.name != cfg.follow_model_name):
            return
        try:
            model_path_inside(message.path, cfg.models_root)
        except UntrustedModelPath:
            self.counters["models_refused"] += 1
            raise
        number = _model_number(message)
        current = self._model_number if self._model_number is not None else -1
        pending = _model_number(self._pending_model) if self._pending_model is not None else -1
        if number > max(current, pending):
            self._pending_model = message

    def _apply_pending_model(self) -> None:
        message = self._pending_model
        if message is None:
            return
        self._pending_model = None
        number = _model_number(message)
        if (message.name, number) in self._failed_models:
            return
        reload = getattr(self.backend, "reload", None)
        if not callable(reload):
            self.counters["reload_unsupported"] += 1
            log.warning("model %s v%d published, but the %s backend cannot hot-reload", message.name, number, getattr(self.backend, "name", "?"))
            return
        try:
            reload(message.path, version=number, name=message.name)
        except Exception as exc:  # noqa: BLE001 - a bad model must not stop generation with the current one
            self._failed_models.add((message.name, number))
            self.counters["reload_failures"] += 1
            log.error("hot reload of %s v%d from %s failed (%s: %s); keeping the current model", message.name, number, message.path, type(exc).__name__, exc)
            return
        self._model_number = number
        self.counters["reloads"] += 1
        log.info("generating with %s v%d from %s", message.name, number, message.path)

    # ------------------------------------------------------------------ metrics, close
    def metrics(self) -> dict[str, float]:
        """Counters (emitted, parse failures by reason, outcomes, ...) and gauges (in flight, step, W size, done)."""
        out = {k: float(v) for k, v in self.counters.items()}
        out.update({k: float(v) for k, v in self._timers.items()})
        out.setdefault("parse_failures", 0.0)
        out["emitted"] = float(self._emitted)
        out["in_flight"] = float(len(self._in_flight))
        out["max_in_flight"] = float(self.config.max_in_flight)
        out["step"] = float(self._step)
        out["w_size"] = float(len(self.W))
        out["w_elites"] = float(len(self.W.elites()))
        out["model_version"] = float(getattr(self.backend, "model_version", 0) or 0)
        out["exhausted"] = float(self.exhausted)
        out["done"] = float(self.done)
        return out

    def close(self) -> None:
        """Save the checkpoint and release owned backends."""
        self._save_state()
        for resource in self._owned:
            closer = getattr(resource, "close", None)
            if callable(closer):
                closer()
        self._owned.clear()

    # ------------------------------------------------------------------ checkpoint
    def _fingerprint(self) -> dict[str, Any]:
        cfg = self.config
        return {"variant": cfg.variant, "seed": cfg.seed, "batch_size": cfg.batch_size}

    def _save_state(self) -> None:
        if self._state_path is None:
            return
        state = {
            "format": _STATE_FORMAT,
            "version": _STATE_VERSION,
            "run": self._fingerprint(),
            "step": self._step,
            "emitted": self._emitted,
            "open": None
            if self._open is None
            else {
                "number": self._open.number,
                "queue": [
                    {"parent": _parent_json(u.parent), "n": u.n, "offset": u.offset} for u in self._open.queue
                ],
            },
            "in_flight": [[cid, step, at] for cid, (step, at) in self._in_flight.items()],
            "results": {
                str(step): [r.model_dump(mode="json", exclude={"correct_rollouts"}) for r in results.values()]
                for step, results in self._results.items()
            },
        }
        path = self._state_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _load_state(self) -> None:
        assert self._state_path is not None
        if not self._state_path.is_file():
            return
        try:
            state = json.loads(self._state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the mutator checkpoint {self._state_path}: {exc}") from None
        if state.get("format") != _STATE_FORMAT or state.get("version") != _STATE_VERSION:
            raise ConfigError(f"{self._state_path} is not a version {_STATE_VERSION} mutator checkpoint")
        if state.get("run") != self._fingerprint():
            raise ConfigError(
                f"the checkpoint {self._state_path} belongs to another run ({state.get('run')}, this one is "
                f"{self._fingerprint()}): use another state_dir or delete it"
            )
        self._step = int(state["step"])
        self._emitted = int(state["emitted"])
        opened = state.get("open")
        if opened is not None:
            queue = [_Unit(_parent_from_json(u["parent"]), int(u["n"]), int(u["offset"])) for u in opened["queue"]]
            self._open = _Step(int(opened["number"]), queue)
        self._in_flight = {str(cid): (int(step), float(at)) for cid, step, at in state.get("in_flight", [])}
        self._results = {
            int(step): {r["id"]: SolveResult.model_validate(r) for r in results}
            for step, results in (state.get("results") or {}).items()
        }
        self.counters["restored_in_flight"] = len(self._in_flight)
        log.info(
            "resumed the mutator at step %d: %d emitted, %d in flight, open step %s",
            self._step,
            self._emitted,
            len(self._in_flight),
            None if self._open is None else self._open.number,
        )


def _units(parents: list[Seed | Elite]) -> list[_Unit]:
    """Group a step's parents by id (first appearance order): a parent drawn k times gets n = k."""
    counts: dict[str, int] = {}
    first: dict[str, Seed | Elite] = {}
    for parent in parents:
        counts[parent.id] = counts.get(parent.id, 0) + 1
        first.setdefault(parent.id, parent)
    return [_Unit(first[pid], counts[pid], 0) for pid in counts]


def _slots(w: WorkingSet) -> dict[str, str]:
    return {slot: elite.id for slot, elite in w.elites().items()}


def _model_number(message: ModelVersion) -> int:
    number = getattr(message, "number", None)
    if number is None:
        number = getattr(message, "version", 0)
    return int(number)


def _parent_json(parent: Seed | Elite) -> dict[str, Any]:
    return {"kind": "elite" if isinstance(parent, Elite) else "seed", "data": parent.model_dump(mode="json")}


def _parent_from_json(data: dict[str, Any]) -> Seed | Elite:
    cls = Elite if data.get("kind") == "elite" else Seed
    return cls.model_validate(data["data"])


def build_mutator(config: MutatorConfig, *, backend: GenerationBackend | None = None, clock: Any = time.time) -> MutatorCore:
    """Build the mutator core, creating the generation backend named in ``config`` unless given."""
    owned: list[Any] = []
    if backend is None:
        from sparq_stream.models.registry import make_generation_backend

        options = dict(config.backend_options)
        if config.model is not None:
            options.setdefault("model", config.model)
        backend = make_generation_backend(config.backend, **options)
        owned.append(backend)
    return MutatorCore(config, backend=backend, clock=clock, owned=owned)
