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
candidate of step s is accounted for AND W reflects their results. The core remembers where
each of the step's scored results sits in ``solved`` (partition, offset) and waits until
the archivist's watermarks (one per elites partition, written after the elite records they
cover) show that the elites table was read past them (:mod:`.barrier`). There is no
timeout: an outage only delays the step (``sync_settle_s`` only sets when to log that a
step is still waiting). With a fixed seed and a deterministic backend the candidates of
every step are then exactly reproducible. Asynchronous mode starts a step whenever credits
allow; W then lags by the steps in flight.

State (:mod:`.state`): the step counter, emitted count, open step (its parents not yet
mutated), in-flight credits (with their emission time) and each step's barrier positions
go to the compacted ``mutator-state`` topic (key ``state_key``) at the end of every tick
that changed them, flagged ``after``: the wrapper sends it once the candidates it accounts
for are acknowledged and commits input offsets only after it (one transaction under
exactly-once). A restarted mutator reads it back as a table and continues the same step and
budget, still matching the outcomes of candidates emitted before the crash. A tick that
opens a step emits only the state (the step's parents), so they are recorded before any of
the step's children exist: W may change before a restart (results of the children already
sent reach the archivist), the parents do not. Candidates sent
but not yet covered by a state record are generated again (a deterministic backend emits
the same ids; the novelty core re-emits a redelivered candidate; a second outcome for one
credit is counted as ``unknown_outcomes``). ``state_dir`` keeps a local cache one record
behind the last one emitted (whose send had returned), used only when the topic holds none
(a memory-only broker that restarted).

Hot reload: with ``follow_models``, the newest :class:`ModelVersion` on the models table
(only ``follow_model_name``'s, when set) is loaded with ``backend.reload(path, version=,
name=)`` before the next generation chunk, also after a restart (the table is replayed);
candidates carry the backend's model name and version. A failed reload keeps the current
model (``reload_failures``); a backend without ``reload`` is counted (``reload_unsupported``).

Replicas (``replica_count`` > 1, synchronous only): replica 0 samples each step and publishes
the plan, replica i generates every N-th parent unit, and replica 0 opens the next step once
every replica's share is accounted for and W shows all their results (:mod:`.replicas`). Each
replica reads every outcome (``group_member``: a consumer group of its own); an outcome of
another replica's candidate is counted as ``peer_outcomes``.

Budget: ``steps`` (steps started) and ``max_candidates`` (candidates emitted). ``exhausted``
is true once nothing more will be emitted, ``done`` once in addition every emitted
candidate is accounted for. With ``follow_models`` and ``new_model_steps`` > 0, the budget
grows by at most ``new_model_steps`` steps while no version has been published yet (a trainer
may still be waiting for its first examples, or training) or the newest version is newer than
every scored child's generator (one that arrived after the last step, e.g. trained on that
step's results), until a child of a followed version is scored: training in the loop then
ends with the newest version in use whenever one is trained in time (``sparq up
--train-every``). Counted as
``new_model_steps``; the scored version is not in the state, so a restarted mutator may
spend one such step on a version already used.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import Counter
from typing import Any, Sequence

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from sparq_stream.core import BaseCore, Inbound, Outgoing, SourceEnd
from sparq_stream.cores.mutator.barrier import WatermarkBarrier
from sparq_stream.cores.mutator.parsing import DEFAULT_MAX_CHARS, ParseWork, parse_child
from sparq_stream.cores.mutator.reload import ModelFollower
from sparq_stream.cores.mutator.planners import make_planner, units_of
from sparq_stream.cores.mutator.replicas import ReplicaSet
from sparq_stream.cores.mutator.state import Credit, MutatorSnapshot, StepState, Unit, read_cache, write_cache
from sparq_stream.credentials import OpenAIKey, openai_key_option
from sparq_stream.errors import ConfigError, SparqError
from sparq_stream.ids import problem_id
from sparq_stream.messages import WATERMARK_KEY, Candidate, Dropped, Elite, ModelVersion, MutatorState, Seed, SolveResult
from sparq_stream.models.base import GenerationBackend, GenerationResult, SamplingParams
from sparq_stream.prompts import MUTATION, load_prompt
from sparq_stream.qd.working_set import WorkingSet, make_working_set, variant_spec
from sparq_stream.settings import Backend, Variant

__all__ = ["MutatorConfig", "MutatorCore", "build_mutator", "parse_child"]

log = logging.getLogger(__name__)

#: The logical topic of the mutator's changelog.
STATE_TOPIC = "mutator-state"
_KEY = re.compile(r"[^a-z0-9]+")
_MAX_BACKOFF_S = 30.0


class MutatorConfig(OpenAIKey):
    """Every setting of the mutator core (defaults are the paper's where it has one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    variant: Variant = Field(default="qd", description="how W is kept and parents are sampled (the archivist's too)")
    cap: int | None = Field(default=None, ge=1, description="W's cap (top-T or per-niche); unset: the variant's default; match the archivist")
    batch_size: int = Field(default=64, ge=1, description="parents per step (the paper's b = 64), one child each")
    seed: int = Field(default=0, ge=0, description="seed of parent sampling (per step) and of generation")
    backend: Backend = Field(default="transformers", description="generation backend")
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
    sync_settle_s: float = Field(
        default=15.0, ge=0.0, description="log a warning when a step waits longer than this for the archivist's watermark (it never goes on without it)"
    )
    credit_timeout_s: float = Field(default=1800.0, ge=0.0, description="reclaim a credit not returned after this long (0: never)")
    min_seeds: int = Field(default=1, ge=1, description="wait until W holds this many seeds before the first step")
    follow_models: bool = Field(default=False, description="hot-reload new model versions from the models topic")
    follow_model_name: str | None = Field(default=None, description="only follow this model name (unset: any)")
    new_model_steps: int = Field(
        default=0,
        ge=0,
        description="with follow_models and a step budget: up to this many steps past the budget while no model "
        "version has been published yet or the newest has no scored child (a version trained near the end is still used)",
    )
    models_root: str | None = Field(
        default=None, description="model versions load only from inside this folder (others are dead-lettered)"
    )
    state_dir: str | None = Field(default=None, description="folder of a local cache of the state (used only when the changelog topic holds none)")
    state_key: str = Field(default="mutator", min_length=1, description="key of this mutator's record on the mutator-state changelog topic")
    changelog: bool = Field(default=True, description="keep the state on the mutator-state topic (off: a restart is a new run)")
    lenient_parse: bool = Field(
        default=True, description="also accept 'Problem:/Solution:' headings and a stated final answer (small models)"
    )
    max_parse_chars: int = Field(
        default=DEFAULT_MAX_CHARS, ge=1_000, description="parse at most this many characters of one completion (the rest is cut and counted)"
    )
    tick_budget_s: float = Field(default=1.0, gt=0.0, description="start no new chunk after this long in one tick")
    replica_count: int = Field(
        default=1, ge=1, description="mutator replicas sharing each step's parents (synchronous rounds; replica 0 plans each step)"
    )
    replica_index: int = Field(default=0, ge=0, description="this replica's index, 0 .. replica_count - 1")

    @model_validator(mode="after")
    def _replicas(self) -> "MutatorConfig":
        if self.replica_index >= self.replica_count:
            raise ValueError(f"replica_index must be in 0..{self.replica_count - 1} (replica_count {self.replica_count}); got {self.replica_index}")
        if self.replica_count > 1 and not self.synchronous:
            raise ValueError("replica_count > 1 needs synchronous = true (replicas share the steps of the paper's rounds)")
        if self.replica_count > 1 and self.max_candidates is not None:
            raise ValueError("replica_count > 1: use steps, not max_candidates (a candidate budget cannot be split exactly)")
        return self


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
        if config.changelog:
            tables.append(STATE_TOPIC)
        self.tables = tuple(tables)
        self.W: WorkingSet = make_working_set(config.variant, config.cap)
        self._clock = clock
        self._owned = list(owned)
        self._step = 0
        self._seed_count = 0
        self._emitted = 0
        self._open: StepState | None = None
        self._in_flight: dict[str, Credit] = {}
        self._waits: dict[int, dict[int, int]] = {}
        self._scored_version = 0  # the newest generator version among this mutator's scored children
        self._barrier = WatermarkBarrier()
        self._waiting_since: tuple[int, float] | None = None
        self._live = False
        self._dirty = False
        self._state_error: ConfigError | None = None
        self._last_state: MutatorState | None = None
        self._restored_from: str | None = None
        self._backoff_until = 0.0
        self._backoff_s = 0.0
        self.counters: Counter[str] = Counter()
        self._parse_work = ParseWork()
        self._models = ModelFollower(config.follow_models, config.follow_model_name, self.counters, root=config.models_root)
        self._timers: Counter[str] = Counter()
        self._replicas = ReplicaSet(config.state_key, config.replica_count, config.replica_index)
        self._planner = make_planner(self._replicas)
        if config.state_dir:
            cached = read_cache(config.state_dir)
            if cached is not None:
                self._restore(cached, "the local cache")

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
    def group_member(self) -> str | None:
        """With replicas, each reads every outcome: its own consumer group ``<group>.<index>`` (None: the service's group)."""
        return self._planner.group_member

    @property
    def exhausted(self) -> bool:
        """True once the budget is spent: nothing more will be emitted."""
        return self._planner.exhausted(self)

    def _budget_spent(self) -> bool:
        """True once this mutator's own budget (steps, candidates) is spent."""
        cfg = self.config
        if cfg.max_candidates is not None and self._emitted >= cfg.max_candidates:
            return True
        open_work = self._open is not None and bool(self._open.queue)
        return cfg.steps is not None and self._step >= cfg.steps and not open_work and not self._wants_model_step()

    def _wants_model_step(self) -> bool:
        """Past the step budget: one more step while no version is published yet or the newest has no scored child."""
        cfg = self.config
        if not cfg.follow_models or cfg.steps is None or self._step >= cfg.steps + cfg.new_model_steps:
            return False
        # outcomes still to come may show the version in use already
        return not self._in_flight and (self._models.seen == 0 or self._models.newest > self._scored_version)

    @property
    def done(self) -> bool:
        """True once the budget is spent and every emitted candidate is solved or dropped."""
        return self.exhausted and not self._in_flight

    @property
    def source_end(self) -> SourceEnd | None:
        """This replica's end of the run once :attr:`done` (epoch: steps started + 1, so more steps end anew)."""
        if not self.done:
            return None
        return SourceEnd(self._step + 1, self._replicas.index, self._replicas.count)

    @property
    def wakes_on_tables(self) -> bool:
        """True when a table record can let this core emit (the archivist's watermark settles a step)."""
        return self.config.synchronous and (self.spec.dynamic or self._planner.replicated)

    # ------------------------------------------------------------------ tables
    def on_table(self, inbound: Inbound) -> list[Outgoing]:
        """Keep W (seeds, elites by slot; a tombstone deletes) and note new model versions."""
        message = inbound.message
        if inbound.topic == "seeds":
            if isinstance(message, Seed) and self.W.add_seed(message):
                self._seed_count += 1
        elif inbound.topic == "elites" and self.spec.dynamic:
            slot = inbound.key if inbound.key is not None else getattr(message, "slot", None)
            if slot == WATERMARK_KEY:
                if not self._barrier.observe(inbound):
                    self.counters["watermarks_unusable"] += 1
            elif slot is None:
                log.warning("elites record without a key at offset %d: ignored", inbound.offset)
            elif message is None or isinstance(message, Elite):
                self.W.restore(slot, message)
        elif inbound.topic == "models" and isinstance(message, ModelVersion):
            self._models.note(message)
        elif inbound.topic == STATE_TOPIC and isinstance(message, MutatorState):
            self._on_state(message)
        return []

    def _on_state(self, message: MutatorState) -> None:
        """Our own record (restored before going live), the leader's plan, or another replica's state."""
        replicas = self._replicas
        if message.key == replicas.own_key:
            if self._live:
                self.counters["state_echoes"] += 1  # our own record coming back
            else:
                self._restore(message, "the changelog")
        elif message.key == replicas.plan_key:
            self._planner.on_plan(self, message)
        elif message.key in replicas.peer_keys:
            snap = self._read_shared(message)
            if snap is not None:
                replicas.peers[message.key] = snap

    def _read_shared(self, message: MutatorState) -> MutatorSnapshot | None:
        """A plan or another replica's state; one of another run stops this replica once it goes live."""
        try:
            return MutatorSnapshot.from_message(message, self._fingerprint())
        except ConfigError as exc:
            self._state_error = exc
            return None

    # ------------------------------------------------------------------ accounting
    def handle_batch(self, batch: Sequence[Inbound]) -> list[list[Outgoing]]:
        """Return the credit of each solved or dropped candidate of ours (matched by problem id)."""
        self._go_live()
        now = self._clock()
        for item in batch:
            message = item.message
            if not isinstance(message, (SolveResult, Dropped)):
                self.counters["ignored_messages"] += 1
                continue
            flight = self._in_flight.pop(message.id, None)
            if flight is None:
                self.counters[self._planner.foreign_outcome] += 1
                continue
            self._dirty = True
            step = flight.step
            self._timers["outcome_latency_s"] += max(0.0, now - flight.at)
            if isinstance(message, Dropped):
                self.counters["outcomes.dropped"] += 1
            else:
                self.counters["outcomes.solved"] += 1
                self._scored_version = max(self._scored_version, message.model_version)
                if self.config.synchronous and self.spec.dynamic and message.quality > 0:
                    # W must show this result before the next step: remember where it sits in solved.
                    need = self._waits.setdefault(step, {})
                    need[item.partition] = max(need.get(item.partition, 0), item.offset + 1)
        return [[] for _ in batch]

    def handle(self, inbound: Inbound) -> list[Outgoing]:
        """Account for one outcome."""
        return self.handle_batch([inbound])[0]

    # ------------------------------------------------------------------ emission
    def tick(self, now: float) -> list[Outgoing]:
        """Start steps and generate chunks while credits, budget and the tick budget allow; then the state record."""
        self._go_live()
        first = self._planner.before_emit(self)
        if first is not None:
            return first
        out = self._emit_chunks()
        self._planner.after_emit(self)
        if self._replicas.pending is not None:
            out.append(self._plan_output())
        if self._dirty:
            out.append(self._state_output())
        return out

    def _draw(self, step: int) -> list[Seed | Elite]:
        """Step ``step``'s parents from W, by the generator seeded with ``(seed, step)``."""
        return self.W.sample(self.config.batch_size, np.random.default_rng([self.config.seed, step]))

    def _plan_output(self) -> Outgoing:
        """The pending plan as a changelog record, sent after this tick's candidates."""
        replicas = self._replicas
        assert replicas.pending is not None
        plan, replicas.pending = replicas.pending, None
        return Outgoing(STATE_TOPIC, plan.to_message(replicas.plan_key, self._fingerprint()), key=replicas.plan_key, after=True)

    def _emit_chunks(self) -> list[Outgoing]:
        self._expire_credits()
        if self._clock() < self._backoff_until:
            return []
        out: list[Outgoing] = []
        started = time.monotonic()
        while time.monotonic() - started < self.config.tick_budget_s:
            if self._open is None or not self._open.queue:
                # A new step's parents reach the changelog before any of its children: a restarted
                # mutator regenerates the same children even if W has moved on meanwhile.
                self._start_step()
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
            self._dirty = True
        return self._planner.open_step(self)

    def _open_drawn_step(self) -> bool:
        """Open the next step with parents drawn from W if the budget, credits and W allow (a lone mutator, the leader)."""
        cfg = self.config
        if self.exhausted:
            return False
        if cfg.max_candidates is not None and self._emitted >= cfg.max_candidates:
            return False
        if self._seed_count < cfg.min_seeds:
            self.counters["waits_for_seeds"] += 1
            return False
        if cfg.synchronous and self._in_flight:
            return False
        if self._planner.planned(self._step):
            return self._adopt_plan()
        parents = self._draw(self._step)
        if not parents:
            return False
        if cfg.steps is not None and self._step >= cfg.steps:
            self.counters["new_model_steps"] += 1
            reason = f"so that model version {self._models.newest} is used" if self._models.seen else "while no model version is published yet"
            log.info("step %d: one step past the budget %s", self._step, reason)
        units = units_of(parents)
        self._open = StepState(self._step, self._replicas.share(units))
        self._planner.opened(self._step, units)
        log.info(
            "step %d opened: %d parents from W of %d (parents %s, emitted so far %d)",
            self._step, len(parents), len(self.W), _digest(p.id for p in parents), self._emitted,
        )
        self._step += 1
        self._dirty = True
        return True

    def _adopt_plan(self) -> bool:
        """A replica other than the leader opens the step the leader planned next, with its share of the parents."""
        plan = self._replicas.plan
        if plan is None or plan.open is None or plan.open.number != self._step:
            return False
        share = self._replicas.share(plan.open.queue)
        self._open = StepState(self._step, share)
        self._waits = {s: w for s, w in self._waits.items() if s >= self._step}  # the leader has read the older ones
        log.info(
            "step %d opened from the plan: %d of its %d parent units (parents %s, emitted so far %d)",
            self._step, len(share), len(plan.open.queue), _digest(u.parent.id for u in share), self._emitted,
        )
        self._step += 1
        self._dirty = True
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
        self._models.apply(self.backend)
        chunk: list[Unit] = []
        taken = 0
        queue = list(step.queue)
        while queue and taken < limit:
            unit = queue[0]
            if unit.n <= limit - taken:
                chunk.append(queue.pop(0))
                taken += unit.n
            else:
                part = limit - taken
                chunk.append(Unit(unit.parent, part, unit.offset))
                queue[0] = Unit(unit.parent, unit.n - part, unit.offset + part)
                taken += part
        groups: dict[tuple[int, int], list[Unit]] = {}
        for unit in chunk:
            groups.setdefault((unit.n, unit.offset), []).append(unit)
        generated: list[tuple[Unit, list[Any], str | None]] = []
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
        self._dirty = True
        return self._emit(step.number, generated)

    def _emit(self, step: int, generated: list[tuple[Unit, list[Any], str | None]]) -> list[Outgoing]:
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
                parsed, reason = parse_child(
                    completion.text, lenient=self.config.lenient_parse, max_chars=self.config.max_parse_chars, work=self._parse_work
                )
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
                self._in_flight[cid] = Credit(step, now)
                self._emitted += 1
                self.counters["emitted"] += 1
                out.append(Outgoing("candidates", candidate))
        return out

    def _generation_seed(self, step: int, offset: int) -> int:
        return (self.config.seed * 100_003 + step * self.config.batch_size + offset) % (2**31 - 1)

    # ------------------------------------------------------------------ the synchronous barrier
    def _step_settled(self, number: int) -> bool:
        """True once every candidate of step ``number`` is accounted for and W shows their results."""
        if any(credit.step == number for credit in self._in_flight.values()):
            return False
        return self._planner.settled(self, number)

    def _results_shown(self, number: int, need: dict[int, int] | None) -> bool:
        """True once W shows the results of step ``number`` at the solved positions ``need`` (static: at once)."""
        if not self.spec.dynamic or not need:
            self._waits.pop(number, None)
            return True
        if self._barrier.covers(need):
            self.counters["sync_settled"] += 1
            self._waits.pop(number, None)
            self._waiting_since = None
            self._dirty = True
            return True
        now = self._clock()
        if self._waiting_since is None or self._waiting_since[0] != number:
            self._waiting_since = (number, now)
        elif now - self._waiting_since[1] >= self.config.sync_settle_s:
            self.counters["sync_settle_waits"] += 1
            log.warning(
                "step %d: still waiting (%.0fs) for the archivist's watermark to cover %s in solved; is the archivist running?",
                number,
                now - self._waiting_since[1],
                need,
            )
            self._waiting_since = (number, now)
        return False

    # ------------------------------------------------------------------ credits, models
    def _expire_credits(self) -> None:
        timeout = self.config.credit_timeout_s
        if timeout <= 0 or not self._in_flight:
            return
        cutoff = self._clock() - timeout
        expired = [cid for cid, credit in self._in_flight.items() if credit.at <= cutoff]
        for cid in expired:
            del self._in_flight[cid]
        if expired:
            self.counters["credits_expired"] += len(expired)
            log.warning("%d candidate(s) had no outcome after %.0fs: their credits are reclaimed", len(expired), timeout)
            self._dirty = True

    # ------------------------------------------------------------------ metrics, close
    def metrics(self) -> dict[str, float]:
        """Counters (emitted, parse failures by reason, outcomes, ...) and gauges (in flight, step, W size, done)."""
        out = {k: float(v) for k, v in self.counters.items()}
        out.update({k: float(v) for k, v in self._timers.items()})
        out.setdefault("parse_failures", 0.0)
        out["parse_chars_cut"] = float(self._parse_work.cut)
        out["parse_truncated"] = float(self._parse_work.truncated)
        out["parse_chars_scanned"] = float(self._parse_work.scanned)
        out["emitted"] = float(self._emitted)
        out["in_flight"] = float(len(self._in_flight))
        out["max_in_flight"] = float(self.config.max_in_flight)
        out["step"] = float(self._step)
        out["w_size"] = float(len(self.W))
        out["w_elites"] = float(len(self.W.elites()))
        out["model_version"] = float(getattr(self.backend, "model_version", 0) or 0)
        out["model_seen"] = float(self._models.seen)  # `sparq up` waits until the trainer's newest is seen here
        out["exhausted"] = float(self.exhausted)
        out["done"] = float(self.done)
        return out

    def close(self) -> None:
        """Release owned backends (the state is already on the changelog topic)."""
        for resource in self._owned:
            closer = getattr(resource, "close", None)
            if callable(closer):
                closer()
        self._owned.clear()

    # ------------------------------------------------------------------ state
    def _fingerprint(self) -> dict[str, int | str]:
        cfg = self.config
        return {"variant": cfg.variant, "seed": cfg.seed, "batch_size": cfg.batch_size}

    def _snapshot(self) -> MutatorSnapshot:
        return MutatorSnapshot(self._step, self._emitted, self._open, dict(self._in_flight), {s: dict(w) for s, w in self._waits.items()})

    def _state_output(self) -> Outgoing:
        """The state record, sent after the outputs it accounts for (and cached locally when asked)."""
        self._dirty = False
        state = self._snapshot().to_message(self._replicas.own_key, self._fingerprint())
        if self.config.state_dir and self._last_state is not None:
            # One record behind: the previous record's send returned before this tick began.
            write_cache(self.config.state_dir, self._last_state)
        self._last_state = state
        return Outgoing(STATE_TOPIC, state, key=self._replicas.own_key, after=True)

    def _restore(self, message: MutatorState, where: str) -> None:
        try:
            snap = MutatorSnapshot.from_message(message, self._fingerprint())
        except ConfigError as exc:
            self._state_error = exc  # raised once the core goes live, so the service stops with the reason
            return
        self._state_error = None
        self._step, self._emitted, self._open = snap.step, snap.emitted, snap.open
        self._in_flight, self._waits = snap.in_flight, snap.waits
        self.counters["restored_in_flight"] = len(self._in_flight)
        self._restored_from = where  # logged once, when the core goes live (a table replay restores record by record)

    def _go_live(self) -> None:
        if self._state_error is not None:
            raise self._state_error
        if not self._live and self._restored_from is not None:
            log.info(
                "restored the mutator from %s at step %d: %d emitted, %d in flight, open step %s",
                self._restored_from,
                self._step,
                self._emitted,
                len(self._in_flight),
                None if self._open is None else self._open.number,
            )
        self._live = True


def _digest(ids: Any) -> str:
    """A short digest of a sequence of ids (equal steps log equal digests)."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]


def build_mutator(config: MutatorConfig, *, backend: GenerationBackend | None = None, clock: Any = time.time) -> MutatorCore:
    """Build the mutator core, creating the generation backend named in ``config`` unless given."""
    owned: list[Any] = []
    if backend is None:
        from sparq_stream.models.registry import make_generation_backend

        options = dict(config.backend_options)
        if config.model is not None:
            options.setdefault("model", config.model)
        backend = make_generation_backend(config.backend, **options, **openai_key_option(config))
        owned.append(backend)
    return MutatorCore(config, backend=backend, clock=clock, owned=owned)
