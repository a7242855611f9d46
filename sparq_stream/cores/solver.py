"""The solver core: K rollouts per novel candidate, answer checks, solve-rate and quality.

Message flow: ``novel`` (:class:`NovelCandidate`, key = problem id) -> ``solved``
(:class:`SolveResult`, same key). With ``follow_models`` the core also reads the ``models``
table and hot-reloads its backend when a newer :class:`ModelVersion` appears.

Batching: one poll batch is solved together. Every backend call holds the solve prompts of
up to ``max_batch`` candidates with one ``n``, so the backend sees large batches.

- ``early_stop="none"``: one call of ``n=K`` per candidate group, nothing else.
- ``early_stop="exact"`` (default) / ``"predictive"``: rollouts come in rounds. A
  candidate's next round runs to the earliest rollout count at which its stopping rule
  *could* stop (at least ``rollout_chunk`` more, at most what is left of K), so no round
  is wasted on a check that cannot fire. With the exact rule at K=16 and the band
  [0.1, 0.9] that is 15 rollouts, then 1 (a stop is only possible at 15 of 16: 15 or 0
  correct), i.e. at most one rollout saved per candidate for one extra round.
  After an early stop the published ``solve_rate`` is the estimate from the rollouts done
  and ``quality`` is 0 (see :mod:`sparq_stream.qd.early_stop`).

Backend errors (``GenerationResult.error``):

- every prompt of a call failed, and the call held prompts that had not failed before
  (server down, model gone): :class:`RetriableError`, the wrapper backs off and retries
  the whole batch;
- some prompts failed: those candidates are retried in the next round, up to
  ``prompt_retries`` times; errors that start with ``invalid prompt`` are never retried.
  A candidate that still fails makes the batch raise :class:`FatalError` *after* every
  other candidate was solved and kept aside: the wrapper then retries the batch one
  message at a time, the solved candidates come back from memory at once and only the
  failed one is dead-lettered (original bytes and the reason).

A bad model output (no ``\\boxed{}``, garbage, a checker timeout) is only an incorrect
rollout; it never fails a batch. A candidate whose own answer A' cannot be read is
published without generating anything (SR 0, quality 0, ``rollouts_used`` 0).

Idempotence: the output is keyed by problem id; a redelivered candidate is served from an
LRU cache of recent results (``result_cache``) or solved again (the archivist dedupes).
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, Sequence

from pydantic import ConfigDict, Field, field_validator, model_validator

from sparq_stream.core import BaseCore, Inbound, Outgoing
from sparq_stream.credentials import OpenAIKey, openai_key_option
from sparq_stream.errors import ConfigError, FatalError, RetriableError, SparqError
from sparq_stream.messages import ModelVersion, NovelCandidate, SolveResult
from sparq_stream.models.model_root import UntrustedModelPath, model_path_inside
from sparq_stream.qd.audit import AuditItem, Auditor
from sparq_stream.models.base import (
    GenerationBackend,
    GenerationResult,
    Prompt,
    SamplingParams,
)
from sparq_stream.prompts import SOLVE, PromptTemplate, load_prompt
from sparq_stream.qd.early_stop import COMPLETE, StopDecision, StopRule, make_stop_rule
from sparq_stream.qd.quality import T_HIGH, T_LOW, validate_thresholds
from sparq_stream.settings import Backend
from sparq_stream.verify.equivalence import BAD_GOLD, CheckResult, prepare

__all__ = ["SolverConfig", "Checker", "SolverCore", "build_solver", "BAD_GOLD_REASON"]

log = logging.getLogger(__name__)

#: The early-stop reason counted for a candidate whose own answer cannot be read.
BAD_GOLD_REASON = "bad_gold"
#: Backend error texts that no retry can fix.
_PERMANENT_ERRORS = ("invalid prompt",)
_NOVEL_FIELDS = tuple(NovelCandidate.model_fields)


class SolverConfig(OpenAIKey):
    """Every setting of the solver core, with the paper's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Backend = Field(default="transformers", description="generation backend")
    backend_options: dict[str, Any] = Field(
        default_factory=dict, description="keyword options of the backend's constructor (a JSON object on the command line)"
    )
    k: int = Field(default=16, ge=1, description="rollouts per candidate (K)")
    t_low: float = Field(default=T_LOW, ge=0.0, le=1.0, description="lowest solve-rate with positive quality")
    t_high: float = Field(default=T_HIGH, ge=0.0, le=1.0, description="highest solve-rate with positive quality")
    early_stop: Literal["none", "exact", "predictive"] = Field(
        default="none",
        description=(
            "none: always K rollouts in one call (fastest on latency-bound backends); exact: stop only when "
            "quality is certainly 0 (saves ~2% of rollouts at K=16 for a second round); predictive: opt-in approximate test"
        ),
    )
    rollout_chunk: int = Field(default=4, ge=1, description="fewest rollouts per round when stopping early")
    predictive_confidence: float = Field(
        default=0.95, gt=0.0, lt=1.0, description="predictive rule: stop when P(drop) exceeds this"
    )
    predictive_min_rollouts: int = Field(default=4, ge=0, description="predictive rule: never stop before this many rollouts")
    max_batch: int = Field(default=64, ge=1, description="most candidates in one backend call")
    temperature: float = Field(default=0.7, ge=0.0, description="sampling temperature of the rollouts")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_tokens: int = Field(default=512, ge=1, description="most tokens per rollout")
    sampling_seed: int | None = Field(
        default=None, description="base sampling seed (round r of a candidate uses seed + rollouts done); None: random"
    )
    prompt_dir: str | None = Field(default=None, description="folder with a solve.txt template (default: the packaged one)")
    prompt_retries: int = Field(default=1, ge=0, description="extra tries of one candidate's failed prompt before dead-lettering it")
    checker_workers: int = Field(default=2, ge=1, description="sandboxed answer-checker processes")
    checker_timeout_s: float = Field(default=5.0, gt=0.0, description="time limit of one symbolic answer check")
    checker_memory_mb: int | None = Field(default=2048, ge=64, description="address-space cap of a checker process")
    result_cache: int = Field(default=10_000, ge=0, description="recent results kept to answer a redelivered candidate")
    follow_models: bool = Field(default=False, description="read the models topic and hot-reload newer versions")
    follow_model_name: str = Field(default="", description="only follow this model name on the models topic ('' = any)")
    models_root: str | None = Field(
        default=None, description="model versions load only from inside this folder (others are dead-lettered)"
    )
    audit: Literal["kept", "all", "off"] = Field(
        default="kept", description="validity audit (qd/audit.py) of kept problems, of every problem, or none"
    )
    audit_verifier: bool = Field(default=True, description="run the audit's verifier prompt with the solver's backend")
    audit_max_tokens: int = Field(default=64, ge=8, description="token limit of one verifier answer")

    @field_validator("backend_options", mode="before")
    @classmethod
    def _json_options(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"backend_options must be a JSON object: {exc}") from None
            if not isinstance(value, dict):
                raise ValueError("backend_options must be a JSON object")
        return value

    @model_validator(mode="after")
    def _band(self) -> SolverConfig:
        if self.t_low > self.t_high:
            raise ValueError(f"t_low ({self.t_low}) must not exceed t_high ({self.t_high})")
        return self

    def stop_rule(self) -> StopRule:
        """Build the stopping rule these settings name."""
        if self.early_stop == "predictive":
            return make_stop_rule(
                "predictive",
                self.t_low,
                self.t_high,
                confidence=self.predictive_confidence,
                min_rollouts=self.predictive_min_rollouts,
            )
        return make_stop_rule(self.early_stop, self.t_low, self.t_high)

    def sampling(self) -> SamplingParams:
        """Return the base sampling parameters of the rollouts."""
        return SamplingParams(
            temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=self.sampling_seed
        )


class Checker(Protocol):
    """What the solver needs from an answer checker (a :class:`~sparq_stream.verify.CheckerPool`)."""

    def check_many(self, pairs: Sequence[tuple[str, str]]) -> list[CheckResult]:
        """Return one verdict per (gold, response) pair, in order."""
        ...


@dataclass
class _Job:
    """One candidate being solved: its prompt and running counts."""

    candidate: NovelCandidate
    prompt: Prompt
    done: int = 0
    correct: int = 0
    correct_texts: list[str] = field(default_factory=list)
    wrong_answers: list[str | None] = field(default_factory=list)
    failures: int = 0
    error: str | None = None
    decision: StopDecision | None = None


class SolverCore(BaseCore):
    """Solves novel candidates with K rollouts each; see the module docstring for the flow."""

    name = "solver"
    inputs: tuple[str, ...] = ("novel",)

    def __init__(
        self,
        backend: GenerationBackend,
        checker: Checker,
        config: SolverConfig | None = None,
        *,
        prompt: PromptTemplate | None = None,
        own_backend: bool = False,
        own_checker: bool = False,
    ) -> None:
        """Use ``backend`` and ``checker``; :meth:`close` closes those this core owns."""
        self.config = config or SolverConfig()
        validate_thresholds(self.config.t_low, self.config.t_high)
        self.backend = backend
        self.checker = checker
        self._owned = [dep for dep, own in ((backend, own_backend), (checker, own_checker)) if own]
        self.tables = ("models",) if self.config.follow_models else ()
        self.prompt = prompt or load_prompt(SOLVE, self.config.prompt_dir)
        self.rule = self.config.stop_rule()
        self.k = self.config.k
        self._params = self.config.sampling()
        self._decisions: dict[tuple[int, int], StopDecision] = {}
        self._earliest: dict[tuple[int, int], int] = {}
        self._cache: OrderedDict[str, SolveResult] = OrderedDict()
        self._rescued: dict[str, SolveResult] = {}
        self._pending_model: ModelVersion | None = None
        self._failed_versions: set[tuple[str, int]] = set()
        self._counters: dict[str, float] = {}
        audit_on = self.config.audit != "off"
        audit_backend = _TimedBackend(backend, self._inc)  # the verifier's calls are busy time too
        self._auditor = Auditor(audit_backend, verifier=self.config.audit_verifier, max_tokens=self.config.audit_max_tokens) if audit_on else None

    # ------------------------------------------------------------------ the core contract
    def handle(self, inbound: Inbound) -> list[Outgoing]:
        """Solve one candidate (the per-message fallback of :meth:`handle_batch`)."""
        return self.handle_batch([inbound])[0]

    def handle_batch(self, batch: Sequence[Inbound]) -> list[list[Outgoing]]:
        """Solve every candidate of the batch together; return one ``solved`` output per candidate."""
        self._apply_model()
        outputs: list[list[Outgoing]] = [[] for _ in batch]
        failures: list[SparqError] = []
        results: dict[str, SolveResult] = {}
        jobs: dict[str, _Job] = {}
        for item in batch:
            message = item.message
            if message is None:
                continue  # a tombstone on the novel topic carries nothing to solve
            if not isinstance(message, NovelCandidate) or isinstance(message, SolveResult):
                failures.append(FatalError(f"the solver takes NovelCandidate messages, got {type(message).__name__}"))
                continue
            known = self._known(message.id)
            if known is not None:
                results[message.id] = known
            elif message.id not in jobs:
                jobs[message.id] = _Job(message, self.prompt.render(problem=message.problem))
        if jobs:
            results.update(self._solve(list(jobs.values())))
        for job in jobs.values():
            if job.error is not None:
                failures.append(FatalError(f"candidate {job.candidate.id}: generation failed after {job.failures} tries: {job.error}"))
        for index, item in enumerate(batch):
            message = item.message
            if isinstance(message, NovelCandidate) and message.id in results:
                outputs[index].append(Outgoing("solved", results[message.id]))
        if failures:
            # Keep what was solved so the wrapper's one-at-a-time retry does not redo it.
            self._rescued.update(results)
            self._inc("failed_batches")
            raise failures[0]
        for result in results.values():
            self._remember(result)
        return outputs

    def on_table(self, inbound: Inbound) -> list[Outgoing]:
        """Note a newer model version on the models table; it is loaded before the next batch."""
        message = inbound.message
        if not (self.config.follow_models and isinstance(message, ModelVersion)):
            return []
        if self.config.follow_model_name and message.name != self.config.follow_model_name:
            return []
        try:
            model_path_inside(message.path, self.config.models_root)
        except UntrustedModelPath:
            self._inc("models_refused")
            raise
        newest = self._pending_model.number if self._pending_model is not None else self.backend.model_version
        if message.number > newest:
            self._pending_model = message
        return []

    def tick(self, now: float) -> list[Outgoing]:
        """Load a pending model version even when no input arrives."""
        self._apply_model()
        return []

    def metrics(self) -> dict[str, float]:
        """Counters: candidates, rollouts asked/used/saved, early stops, errors, cache hits, busy/solve/audit seconds."""
        out = dict(self._counters)
        if self._auditor is not None:
            out.update({k: float(v) for k, v in self._auditor.counts.items()})
        out["model_version"] = float(self.backend.model_version)
        asked = out.get("rollouts_asked", 0.0)
        out["rollouts_saved"] = asked - out.get("rollouts_used", 0.0)
        return out

    def close(self) -> None:
        """Close the backend and the checker when this core owns them."""
        owned, self._owned = self._owned, []
        for dep in owned:
            closer = getattr(dep, "close", None)
            if closer is not None:
                try:
                    closer()
                except Exception as exc:  # noqa: BLE001 - closing must not mask the exit reason
                    log.warning("closing %s: %s", type(dep).__name__, exc)

    # ------------------------------------------------------------------ solving
    def _solve(self, jobs: list[_Job]) -> dict[str, SolveResult]:
        """Run the rollout rounds of ``jobs``; return the finished results by problem id."""
        for job in jobs:
            verdict = prepare(job.candidate.answer, "\\boxed{0}")
            if isinstance(verdict, CheckResult) and verdict.reason == BAD_GOLD:
                job.decision = StopDecision(True, BAD_GOLD_REASON, 0.0, 0.0)
        active = [j for j in jobs if j.decision is None]
        while active:
            self._inc("rounds")
            groups: dict[tuple[int, int], list[_Job]] = {}
            for job in active:
                groups.setdefault((self._next_chunk(job), job.done), []).append(job)
            for (n, done), members in sorted(groups.items()):
                for start in range(0, len(members), self.config.max_batch):
                    self._run_call(members[start : start + self.config.max_batch], n, done)
            active = [j for j in active if j.decision is None and j.error is None]
        results = {j.candidate.id: self._result(j) for j in jobs if j.error is None}
        return self._audited(results, {j.candidate.id: j for j in jobs})

    def _audited(self, results: dict[str, SolveResult], jobs: dict[str, _Job]) -> dict[str, SolveResult]:
        """Attach the validity audit to the kept results (or every result with ``audit="all"``)."""
        if self._auditor is None:
            return results
        chosen = [pid for pid, r in results.items() if self.config.audit == "all" or r.quality > 0]
        items = [AuditItem(results[p].problem, results[p].answer, results[p].n_correct, jobs[p].wrong_answers) for p in chosen]
        for pid, entries in zip(chosen, self._auditor.audit(items)):
            results[pid] = results[pid].model_copy(update={"audit": entries})
        return results

    def _run_call(self, jobs: list[_Job], n: int, done: int) -> None:
        """Generate ``n`` rollouts for each job, check them and update the counts."""
        params = self._params
        if params.seed is not None:
            params = replace(params, seed=params.seed + done)
        started = time.perf_counter()
        try:
            results = self.backend.generate([j.prompt for j in jobs], n, params)
        except SparqError:
            raise
        except Exception as exc:  # a backend that raises (out of memory, a bug) is retried with back-off
            raise RetriableError(f"backend {self.backend.name} failed: {type(exc).__name__}: {exc}") from exc
        finally:  # busy_seconds: time inside the backend (solve and audit calls, failed ones included): busy fraction = its rate
            spent = time.perf_counter() - started
            self._inc("busy_seconds", spent)
            self._inc("solve_seconds", spent)
        self._inc("generate_calls")
        self._inc("generate_prompts", len(jobs))  # / generate_calls: how full the calls were
        self._inc("generate_seconds", time.perf_counter() - started)
        if len(results) != len(jobs):
            raise RetriableError(f"backend {self.backend.name} returned {len(results)} results for {len(jobs)} prompts")
        failed = [r for r in results if not _usable(r)]
        fresh = any(j.failures == 0 for j in jobs)
        if fresh and len(failed) == len(results) and not all(_permanent(r) for r in failed):
            # Nothing came back, not even for prompts that never failed: the backend itself is down.
            self._inc("failed_calls")
            raise RetriableError(f"backend {self.backend.name}: every prompt of a call failed: {_error_text(failed[0])}")
        pairs: list[tuple[str, str]] = []
        owners: list[_Job] = []
        for job, result in zip(jobs, results):
            if not _usable(result):
                self._inc("prompt_errors")
                job.failures += 1
                if _permanent(result) or job.failures > self.config.prompt_retries:
                    job.error = _error_text(result)
                    self._inc("failed_candidates")
                else:
                    self._inc("prompt_retries")
                continue
            for completion in result.completions[:n]:
                pairs.append((job.candidate.answer, completion.text))
                owners.append(job)
        started = time.perf_counter()
        verdicts = self._check(pairs)
        self._inc("check_seconds", time.perf_counter() - started)
        self._inc("rollouts_used", len(pairs))
        for job, (_, text), verdict in zip(owners, pairs, verdicts):
            job.done += 1
            if verdict.equal:
                job.correct += 1
                job.correct_texts.append(text)
            else:
                job.wrong_answers.append(verdict.extracted)
        for job in {id(j): j for j in owners}.values():
            decision = self._decide(job.done, job.correct)
            if decision.stop:
                job.decision = decision

    def _check(self, pairs: list[tuple[str, str]]) -> list[CheckResult]:
        """Check the pairs, each distinct (answer, rollout) once (identical rollouts are common)."""
        if not pairs:
            return []
        unique = list(dict.fromkeys(pairs))
        verdicts = self.checker.check_many(unique)
        if len(verdicts) != len(unique):
            raise FatalError(f"the checker returned {len(verdicts)} verdicts for {len(unique)} pairs")
        if len(unique) == len(pairs):
            return verdicts
        self._inc("checks_deduplicated", len(pairs) - len(unique))
        by_pair = dict(zip(unique, verdicts))
        return [by_pair[p] for p in pairs]

    def _decide(self, done: int, correct: int) -> StopDecision:
        """Return the (cached) decision of the stopping rule after ``done`` rollouts."""
        key = (done, correct)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decisions[key] = self.rule.decide(self.k, done, correct)
        return decision

    def _next_chunk(self, job: _Job) -> int:
        """Return how many rollouts the job's next round asks for."""
        left = self.k - job.done
        if self.config.early_stop == "none":
            return left
        return min(left, max(self.config.rollout_chunk, self._earliest_stop(job.done, job.correct) - job.done))

    def _earliest_stop(self, done: int, correct: int) -> int:
        """Return the smallest rollout count at which the rule could stop, whatever the outcomes."""
        key = (done, correct)
        found = self._earliest.get(key)
        if found is None:
            found = self.k
            for later in range(done + 1, self.k):
                if any(self._decide(later, c).stop for c in range(correct, correct + later - done + 1)):
                    found = later
                    break
            self._earliest[key] = found
        return found

    def _result(self, job: _Job) -> SolveResult:
        """Build the published result of a finished job and count it."""
        decision = job.decision
        assert decision is not None
        reason = decision.reason
        self._inc("candidates")
        self._inc("rollouts_asked", self.k)
        if reason != COMPLETE:
            self._inc("early_stops")
            self._inc(f"early_stop_{reason}")
        quality = float(decision.quality or 0.0)
        if quality > 0.0:
            self._inc("kept")
        data = {name: getattr(job.candidate, name) for name in _NOVEL_FIELDS}
        return SolveResult(
            **data,
            k=self.k,
            rollouts_used=job.done,
            n_correct=job.correct,
            solve_rate=float(decision.solve_rate or 0.0),
            quality=quality,
            early_stopped=reason != COMPLETE,
            correct_rollouts=list(job.correct_texts),
            solver_model=self.backend.model_name,
            solver_version=int(self.backend.model_version),
        )

    # ------------------------------------------------------------------ cache and reload
    def _known(self, problem_id: str) -> SolveResult | None:
        """Return a result solved before for this id (a redelivery), or None."""
        result = self._rescued.pop(problem_id, None)
        if result is None:
            result = self._cache.get(problem_id)
            if result is not None:
                self._cache.move_to_end(problem_id)
        if result is not None:
            self._inc("cache_hits")
        return result

    def _remember(self, result: SolveResult) -> None:
        """Keep a result in the LRU cache of recent results."""
        limit = self.config.result_cache
        if limit <= 0:
            return
        self._cache[result.id] = result
        self._cache.move_to_end(result.id)
        while len(self._cache) > limit:
            self._cache.popitem(last=False)

    def _apply_model(self) -> None:
        """Hot-reload the backend to the pending model version, if any; a failure keeps the old model."""
        pending, self._pending_model = self._pending_model, None
        if pending is None or (pending.name, pending.number) in self._failed_versions:
            return
        reload = getattr(self.backend, "reload", None)
        if reload is None:
            log.warning("model %s v%d published, but the %s backend cannot reload", pending.name, pending.number, self.backend.name)
            self._inc("reload_unsupported")
            return
        try:
            reload(pending.path, version=pending.number, name=pending.name)
        except Exception as exc:  # noqa: BLE001 - keep serving the current model
            self._failed_versions.add((pending.name, pending.number))
            self._inc("reload_failures")
            log.error("cannot load model %s v%d from %s: %s", pending.name, pending.number, pending.path, exc)
            return
        self._inc("reloads")
        log.info("solver now uses %s v%d", pending.name, pending.number)

    def _inc(self, name: str, by: float = 1.0) -> None:
        self._counters[name] = self._counters.get(name, 0.0) + by


class _TimedBackend:
    """The backend as the auditor sees it: time in its ``generate`` counts as ``audit_seconds`` and ``busy_seconds``."""

    def __init__(self, backend: GenerationBackend, inc: Any) -> None:
        self._backend = backend
        self._inc = inc

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[GenerationResult]:
        """Generate with the wrapped backend, counting the time."""
        started = time.perf_counter()
        try:
            return self._backend.generate(prompts, n, params)
        finally:
            spent = time.perf_counter() - started
            self._inc("audit_seconds", spent)
            self._inc("busy_seconds", spent)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def _usable(result: GenerationResult) -> bool:
    return result.error is None and bool(result.completions)


def _permanent(result: GenerationResult) -> bool:
    return result.error is not None and result.error.startswith(_PERMANENT_ERRORS)


def _error_text(result: GenerationResult) -> str:
    return result.error or "the backend returned no completions"


def build_solver(
    config: SolverConfig, *, backend: GenerationBackend | None = None, checker: Checker | None = None
) -> SolverCore:
    """Build a solver core, creating the backend and the checker pool the config names unless given."""
    from sparq_stream.models.registry import make_generation_backend
    from sparq_stream.verify.pool import CheckerPool

    if not isinstance(config, SolverConfig):
        raise ConfigError(f"build_solver needs a SolverConfig, got {type(config).__name__}")
    prompt = load_prompt(SOLVE, config.prompt_dir)
    own_backend, own_checker = backend is None, checker is None
    if backend is None:
        backend = make_generation_backend(config.backend, **config.backend_options, **openai_key_option(config))
    try:
        if checker is None:
            checker = CheckerPool(config.checker_workers, config.checker_timeout_s, memory_mb=config.checker_memory_mb)
    except BaseException:
        if own_backend:
            backend.close()
        raise
    return SolverCore(backend, checker, config, prompt=prompt, own_backend=own_backend, own_checker=own_checker)
