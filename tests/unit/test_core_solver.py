"""The solver core with in-memory messages: batching, solve-rates, early stopping, errors, cache, reload."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import pytest
from pydantic import ValidationError

from sparq_stream.core import Core, Inbound
from sparq_stream.cores.solver import SolverConfig, SolverCore, build_solver
from sparq_stream.errors import ConfigError, FatalError, RetriableError
from sparq_stream.ids import problem_id
from sparq_stream.messages import Candidate, ModelVersion, NovelCandidate, SolveResult
from sparq_stream.models.base import (
    Completion,
    GenerationResult,
    Prompt,
    SamplingParams,
)
from sparq_stream.models.scripted import Script, ScriptedBackend
from sparq_stream.prompts import SOLVE, load_prompt
from sparq_stream.qd.quality import quality
from sparq_stream.settings import load_settings
from sparq_stream.verify import CheckerPool
from sparq_stream.verify.extract import final_answer

SOLVE_PROMPT = load_prompt(SOLVE)
RATES = (0.0, 0.125, 0.25, 0.5, 0.75, 0.875, 1.0)


@pytest.fixture(scope="module")
def pool() -> Iterator[CheckerPool]:
    with CheckerPool(workers=1, timeout_s=5.0) as p:
        yield p


def _problem(i: int) -> str:
    return f"A shop packs {i + 3} boxes of {2 * i + 5} pencils each. How many pencils are packed? (case {i})"


def _script(n: int = len(RATES)) -> Script:
    """Candidate i gets solve-rate RATES[i % 7] exactly."""
    return Script.from_dict({"seed": 7, "problems": {_problem(i): {"solve_rate": RATES[i % len(RATES)]} for i in range(n)}})


def _candidate(i: int, backend: ScriptedBackend, **extra: object) -> NovelCandidate:
    problem = _problem(i)
    fields = dict(
        id=problem_id(problem),
        problem=problem,
        solution="worked solution",
        answer=backend.answer_for(problem),
        parent_ids=[f"parent-{i}"],
        model="gen",
        model_version=3,
        prompt_hash="abc",
        step=i,
        variant="qd",
        skills=["multiplication"],
        niche="multiplication",
        novelty=0.25,
    )
    fields.update(extra)
    return NovelCandidate(**fields)


def _inbound(message: object, offset: int = 0) -> Inbound:
    key = getattr(message, "id", None)
    return Inbound("novel", key, message, 0, offset)  # type: ignore[arg-type]


def _results(outputs: list[list]) -> list[SolveResult]:
    found = []
    for outs in outputs:
        assert len(outs) == 1 and outs[0].topic == "solved"
        found.append(outs[0].message)
    return found


@dataclass
class Spy:
    """Wraps a backend and records every generate call (prompts, n, seed)."""

    inner: ScriptedBackend
    calls: list[tuple[int, int, int | None]] = field(default_factory=list)
    name: str = "spy"

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def model_version(self) -> int:
        return self.inner.model_version

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[GenerationResult]:
        self.calls.append((len(prompts), n, params.seed))
        return self.inner.generate(prompts, n, params)

    def close(self) -> None:
        pass


class Programmed:
    """A backend whose rollout j of a problem is correct iff ``outcomes[problem][j]``.

    The rollout index is read from the sampling seed (the solver passes seed + rollouts done),
    so chunked and one-call generation see the same rollouts. ``fail`` maps a problem to how
    many calls fail before it succeeds (or a permanent error text).
    """

    name = "programmed"
    model_name = "programmed"

    def __init__(self, outcomes: dict[str, list[bool]], answers: dict[str, str], fail: dict[str, object] | None = None) -> None:
        self.outcomes = outcomes
        self.answers = answers
        self.fail = dict(fail or {})
        self.model_version = 0
        self.calls: list[tuple[int, int]] = []
        self.reloads: list[tuple[str, int | None, str | None]] = []
        self.raise_on_reload = False

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[GenerationResult]:
        self.calls.append((len(prompts), n))
        start = params.seed or 0
        out = []
        for prompt in prompts:
            problem = SOLVE_PROMPT.match(prompt)["problem"]
            failing = self.fail.get(problem)
            if isinstance(failing, str):
                out.append(GenerationResult(error=failing))
                continue
            if isinstance(failing, int) and failing > 0:
                self.fail[problem] = failing - 1
                out.append(GenerationResult(error="HTTP 503: overloaded"))
                continue
            flags = self.outcomes[problem][start : start + n]
            answer = self.answers[problem]
            texts = [f"Rollout {start + j}. \\boxed{{{answer if ok else answer + '1'}}}" for j, ok in enumerate(flags)]
            out.append(GenerationResult(completions=[Completion(t, 10) for t in texts]))
        return out

    def reload(self, model: str, version: int | None = None, name: str | None = None) -> None:
        if self.raise_on_reload:
            raise RuntimeError("corrupt checkpoint")
        self.reloads.append((model, version, name))
        self.model_version = version if version is not None else self.model_version + 1
        if name:
            self.model_name = name

    def close(self) -> None:
        pass


def _programmed(counts: Sequence[int], k: int = 16, **kw: object) -> tuple[Programmed, list[NovelCandidate]]:
    """Candidates whose first ``count`` rollouts are correct (and the rest wrong)."""
    outcomes, answers, cands = {}, {}, []
    for i, count in enumerate(counts):
        problem = f"programmed problem {i}"
        outcomes[problem] = [j < count for j in range(k)]
        answers[problem] = str(100 + i)
        cands.append(NovelCandidate(id=problem_id(problem), problem=problem, solution="", answer=answers[problem]))
    return Programmed(outcomes, answers, **kw), cands


# ---------------------------------------------------------------------- solving


def test_one_generate_call_of_k_per_batch_and_exact_solve_rates(pool: CheckerPool) -> None:
    scripted = ScriptedBackend(_script(14))
    spy = Spy(scripted)
    core = SolverCore(spy, pool, SolverConfig(audit="off", early_stop="none", k=16))
    cands = [_candidate(i, scripted) for i in range(14)]
    results = _results(core.handle_batch([_inbound(c, i) for i, c in enumerate(cands)]))
    assert spy.calls == [(14, 16, None)]
    for cand, res in zip(cands, results):
        sr = scripted.solve_rate_for(cand.problem)
        assert res.id == cand.id and res.solve_rate == sr and res.n_correct == round(sr * 16)
        assert res.quality == quality(sr) and res.k == res.rollouts_used == 16 and not res.early_stopped
        assert len(res.correct_rollouts) == res.n_correct
        assert all(final_answer(t).value == cand.answer for t in res.correct_rollouts)
        # provenance and novelty fields pass through untouched
        assert (res.parent_ids, res.step, res.niche, res.novelty, res.model_version) == (
            cand.parent_ids, cand.step, cand.niche, cand.novelty, 3)
        assert res.solver_model == "scripted" and res.solver_version == 0
    m = core.metrics()
    assert m["candidates"] == 14 and m["rollouts_used"] == m["rollouts_asked"] == 14 * 16
    assert m["kept"] == sum(r.quality > 0 for r in results) == 10


def test_max_batch_splits_one_poll_batch_into_calls(pool: CheckerPool) -> None:
    scripted = ScriptedBackend(_script(10))
    spy = Spy(scripted)
    core = SolverCore(spy, pool, SolverConfig(audit="off", early_stop="none", k=4, max_batch=4))
    results = _results(core.handle_batch([_inbound(_candidate(i, scripted), i) for i in range(10)]))
    assert [c[0] for c in spy.calls] == [4, 4, 2] and all(c[1] == 4 for c in spy.calls)
    assert len(results) == 10 and len({r.id for r in results}) == 10


def test_exact_early_stop_saves_only_certain_rollouts_and_changes_no_decision(pool: CheckerPool) -> None:
    scripted = ScriptedBackend(_script(14))
    cands = [_candidate(i, scripted) for i in range(14)]
    full = _results(SolverCore(scripted, pool, SolverConfig(audit="off", early_stop="none")).handle_batch([_inbound(c) for c in cands]))
    spy = Spy(scripted)
    core = SolverCore(spy, pool, SolverConfig(audit="off", early_stop="exact", sampling_seed=100))
    exact = _results(core.handle_batch([_inbound(c, i) for i, c in enumerate(cands)]))
    # 15 rollouts first (the earliest point an exact stop is possible), then 1 for the survivors
    assert spy.calls == [(14, 15, 100), (10, 1, 115)]
    for a, b in zip(full, exact):
        assert (a.quality > 0) == (b.quality > 0) and a.quality == b.quality
        if b.early_stopped:
            assert a.solve_rate in (0.0, 1.0) and b.rollouts_used == 15 and b.quality == 0.0
        else:  # the same result; only the rollout texts differ (the scripted text depends on the index in a call)
            assert b.model_dump(exclude={"correct_rollouts"}) == a.model_dump(exclude={"correct_rollouts"})
            assert len(b.correct_rollouts) == len(a.correct_rollouts) == b.n_correct
    m = core.metrics()
    assert m["early_stop_too_easy"] == 2 and m["early_stop_unsolvable"] == 2
    assert m["rollouts_used"] == 14 * 16 - 4 and m["rollouts_saved"] == 4


def test_chunked_rounds_see_the_same_rollouts_as_one_call(pool: CheckerPool) -> None:
    counts = [0, 1, 2, 5, 8, 12, 14, 15, 16, 3]
    backend, cands = _programmed(counts)
    ref = _results(SolverCore(backend, pool, SolverConfig(audit="off", early_stop="none", sampling_seed=0)).handle_batch([_inbound(c) for c in cands]))
    assert [r.n_correct for r in ref] == counts
    backend.calls.clear()
    pred = SolverCore(backend, pool, SolverConfig(audit="off", early_stop="predictive", sampling_seed=0, rollout_chunk=4))
    got = _results(pred.handle_batch([_inbound(c) for c in cands]))
    # 12 rollouts is the earliest point this test can stop at; the survivors then finish
    assert backend.calls == [(10, 12), (5, 4)]
    m = pred.metrics()
    assert m["rollouts_used"] == 16 * len(counts) - 5 * 4
    assert m["early_stops"] == sum(1 for r in got if r.early_stopped) == 5
    # the approximation: 12 correct of the first 12 looks too easy, yet 12 of 16 is kept
    assert ref[5].quality > 0.0 and got[5].early_stopped and got[5].quality == 0.0
    for a, b in zip(ref, got):
        if not b.early_stopped:
            assert b.n_correct == a.n_correct and b.quality == a.quality
        else:
            assert b.quality == 0.0 and b.rollouts_used < 16
            assert b.solve_rate == pytest.approx(b.n_correct / b.rollouts_used)


def test_a_batch_gives_the_same_results_as_one_candidate_at_a_time(pool: CheckerPool) -> None:
    scripted = ScriptedBackend(_script(7))
    cands = [_candidate(i, scripted) for i in range(7)]
    batched = _results(SolverCore(scripted, pool).handle_batch([_inbound(c) for c in cands]))
    single = [SolverCore(scripted, pool).handle(_inbound(c))[0].message for c in cands]
    assert [r.model_dump() for r in batched] == [r.model_dump() for r in single]


def test_bad_gold_answer_is_dropped_without_generating(pool: CheckerPool) -> None:
    scripted = ScriptedBackend(_script(2))
    spy = Spy(scripted)
    core = SolverCore(spy, pool)
    bad = _candidate(0, scripted, answer="   ")
    good = _candidate(1, scripted)
    res = _results(core.handle_batch([_inbound(bad), _inbound(good, 1)]))
    assert res[0].rollouts_used == 0 and res[0].quality == 0.0 and res[0].early_stopped and res[0].k == 16
    assert all(n == 1 for n, _, _ in spy.calls)  # only the good candidate was generated
    assert core.metrics()["early_stop_bad_gold"] == 1


def test_hostile_outputs_are_incorrect_rollouts_not_errors(pool: CheckerPool) -> None:
    class Hostile(Programmed):
        def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[GenerationResult]:
            texts = ["\\boxed{", "{" * 5000 + "}" * 5000, "\\boxed{" + "x" * 5000 + "}", "", "\x00\\boxed{42}", "\\boxed{42}"]
            return [GenerationResult(completions=[Completion(texts[j % len(texts)]) for j in range(n)]) for _ in prompts]

    backend = Hostile({}, {})
    cand = NovelCandidate(id="h1", problem="what is 6 * 7?", solution="", answer="42")
    core = SolverCore(backend, pool, SolverConfig(audit="off", early_stop="none", k=12))
    res = _results(core.handle_batch([_inbound(cand)]))[0]
    assert res.rollouts_used == 12 and res.n_correct == 4 and res.solve_rate == pytest.approx(4 / 12)
    assert res.correct_rollouts == ["\x00\\boxed{42}", "\\boxed{42}"] * 2
    assert core.metrics()["checks_deduplicated"] == 6  # identical rollouts are checked once


# ---------------------------------------------------------------------- errors


def test_every_prompt_failing_is_retriable(pool: CheckerPool) -> None:
    backend, cands = _programmed([3, 4], fail={"programmed problem 0": 5, "programmed problem 1": 5})
    core = SolverCore(backend, pool, SolverConfig(audit="off", early_stop="none"))
    with pytest.raises(RetriableError):
        core.handle_batch([_inbound(c, i) for i, c in enumerate(cands)])


def test_a_backend_exception_is_retriable(pool: CheckerPool) -> None:
    class Broken(Programmed):
        def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[GenerationResult]:
            raise RuntimeError("CUDA out of memory")

    with pytest.raises(RetriableError, match="out of memory"):
        SolverCore(Broken({}, {}), pool).handle_batch([_inbound(NovelCandidate(id="x", problem="p", solution="", answer="1"))])


def test_one_failing_prompt_is_retried_inside_the_core(pool: CheckerPool) -> None:
    backend, cands = _programmed([3, 4, 5], fail={"programmed problem 1": 1})
    core = SolverCore(backend, pool, SolverConfig(audit="off", early_stop="none", sampling_seed=0))
    res = _results(core.handle_batch([_inbound(c, i) for i, c in enumerate(cands)]))
    assert [r.n_correct for r in res] == [3, 4, 5]
    assert backend.calls == [(3, 16), (1, 16)]
    assert core.metrics()["prompt_retries"] == 1


def test_a_permanently_failing_prompt_dead_letters_only_its_candidate(pool: CheckerPool) -> None:
    backend, cands = _programmed([3, 4, 5], fail={"programmed problem 1": 99})
    core = SolverCore(backend, pool, SolverConfig(audit="off", early_stop="none", sampling_seed=0, prompt_retries=2))
    batch = [_inbound(c, i) for i, c in enumerate(cands)]
    with pytest.raises(FatalError, match=cands[1].id):
        core.handle_batch(batch)
    assert backend.calls == [(3, 16), (1, 16), (1, 16)]
    # the wrapper's one-at-a-time retry: solved candidates come back without generating
    backend.calls.clear()
    assert core.handle(batch[0])[0].message.n_correct == 3
    assert core.handle(batch[2])[0].message.n_correct == 5
    assert backend.calls == []
    # alone in its call the failure looks like a backend outage: retried with back-off by the
    # wrapper, then dead-lettered when its attempts run out
    with pytest.raises(RetriableError):
        core.handle(batch[1])


def test_an_invalid_prompt_error_is_not_retried(pool: CheckerPool) -> None:
    backend, cands = _programmed([3, 4], fail={"programmed problem 0": "invalid prompt: empty content"})
    core = SolverCore(backend, pool, SolverConfig(audit="off", early_stop="none", prompt_retries=3, sampling_seed=0))
    with pytest.raises(FatalError, match="invalid prompt"):
        core.handle_batch([_inbound(c, i) for i, c in enumerate(cands)])
    assert backend.calls == [(2, 16)]


def test_wrong_message_type_dead_letters_and_tombstones_are_ignored(pool: CheckerPool) -> None:
    core = SolverCore(ScriptedBackend(), pool)
    assert core.handle(Inbound("novel", "k", None)) == []
    plain = Candidate(id="c", problem="p", solution="s", answer="1")
    with pytest.raises(FatalError, match="NovelCandidate"):
        core.handle(_inbound(plain))


# ---------------------------------------------------------------------- cache and reload


def test_a_redelivered_candidate_is_answered_from_the_cache(pool: CheckerPool) -> None:
    scripted = ScriptedBackend(_script(3))
    spy = Spy(scripted)
    core = SolverCore(spy, pool, SolverConfig(result_cache=2))
    cands = [_candidate(i, scripted) for i in range(3)]
    first = _results(core.handle_batch([_inbound(c) for c in cands]))
    calls = len(spy.calls)
    again = _results(core.handle_batch([_inbound(cands[2]), _inbound(cands[1])]))
    assert len(spy.calls) == calls and again == [first[2], first[1]]
    core.handle(_inbound(cands[0]))  # evicted from the 2-entry cache: solved again
    assert len(spy.calls) > calls and core.metrics()["cache_hits"] == 2


def test_duplicates_inside_one_batch_are_solved_once(pool: CheckerPool) -> None:
    scripted = ScriptedBackend(_script(1))
    spy = Spy(scripted)
    cand = _candidate(0, scripted)
    res = _results(SolverCore(spy, pool, SolverConfig(audit="off", early_stop="none")).handle_batch([_inbound(cand), _inbound(cand, 1)]))
    assert spy.calls == [(1, 16, None)] and res[0] == res[1]


def test_hot_reload_of_a_newer_model_version(pool: CheckerPool) -> None:
    backend, cands = _programmed([5, 6, 7])
    core = SolverCore(backend, pool, SolverConfig(audit="off", early_stop="none", follow_models=True, follow_model_name="student", models_root="/models"))
    assert core.tables == ("models",)
    def mv(v: int, name: str = "student") -> ModelVersion:
        return ModelVersion(name=name, number=v, path=f"/models/v{v}")

    core.on_table(Inbound("models", "student", mv(1)))
    core.on_table(Inbound("models", "student", mv(2)))
    core.on_table(Inbound("models", "other", mv(9, "other")))  # another model: ignored
    res = _results(core.handle_batch([_inbound(cands[0])]))[0]
    assert backend.reloads == [("/models/v2", 2, "student")]
    assert (res.solver_model, res.solver_version) == ("student", 2)
    core.on_table(Inbound("models", "student", mv(1)))  # older than the current one
    core.tick(0.0)
    assert len(backend.reloads) == 1
    backend.raise_on_reload = True
    core.on_table(Inbound("models", "student", mv(3)))
    core.tick(0.0)
    core.on_table(Inbound("models", "student", mv(3)))  # the same broken version is not tried twice
    res = _results(core.handle_batch([_inbound(cands[1])]))[0]
    assert res.solver_version == 2
    m = core.metrics()
    assert m["reloads"] == 1 and m["reload_failures"] == 1 and m["model_version"] == 2


def test_a_backend_without_reload_keeps_serving(pool: CheckerPool) -> None:
    scripted = ScriptedBackend(_script(1))
    core = SolverCore(scripted, pool, SolverConfig(follow_models=True, models_root="/"))
    core.on_table(Inbound("models", "m", ModelVersion(name="m", number=4, path="/x")))
    res = _results(core.handle_batch([_inbound(_candidate(0, scripted))]))[0]
    assert res.solver_version == 0 and core.metrics()["reload_unsupported"] == 1
    assert SolverCore(scripted, pool).tables == ()


# ---------------------------------------------------------------------- settings and factory


def test_config_validation_and_json_backend_options() -> None:
    cfg = SolverConfig(backend_options='{"seed": 3}', early_stop="predictive")
    assert cfg.backend_options == {"seed": 3}
    with pytest.raises(ValueError, match="t_low"):
        SolverConfig(t_low=0.8, t_high=0.2)
    with pytest.raises(ValueError):
        SolverConfig(audit="off", early_stop="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JSON"):
        SolverConfig(backend_options="{not json")


def test_config_merges_with_service_settings() -> None:
    from sparq_stream.settings import ServiceSettings

    class SolverSettings(ServiceSettings, SolverConfig):
        pass

    settings = load_settings(SolverSettings, k="8", early_stop="none", backend="scripted", bootstrap="h:1")
    assert settings.k == 8 and settings.early_stop == "none" and settings.bootstrap == "h:1"
    with pytest.raises(ConfigError, match="k"):
        load_settings(SolverSettings, k="0")


def test_build_solver_names_its_backend_and_owns_it(pool: CheckerPool) -> None:
    core = build_solver(SolverConfig(backend="scripted", backend_options={"seed": 5}, k=4), checker=pool)
    assert isinstance(core, Core) and core.name == "solver" and core.inputs == ("novel",)
    assert isinstance(core.backend, ScriptedBackend) and core.backend.script.seed == 5
    assert core._owned == [core.backend]  # the injected checker is not closed by the core
    core.close()
    with pytest.raises(ValidationError, match="Input should be 'transformers', 'openai', 'vllm' or 'scripted'"):
        SolverConfig(backend="nope")  # the one Backend choice, checked where the setting is read


def _timed_backend(monkeypatch: pytest.MonkeyPatch, scripted: ScriptedBackend) -> tuple[Spy, list[float]]:
    """A spy backend busy for 0.25 s of a patched clock per prompt (``fail``: it raises), and the clock."""
    import sparq_stream.cores.solver as solver_mod

    clock = [100.0]
    monkeypatch.setattr(solver_mod.time, "perf_counter", lambda: clock[0])

    class Timed(Spy):
        fail = False

        def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[GenerationResult]:
            clock[0] += 0.25 * len(prompts)
            if self.fail:
                raise RuntimeError("CUDA out of memory")
            return super().generate(prompts, n, params)

    return Timed(scripted), clock


def test_busy_seconds_counts_the_time_inside_the_backend_failed_calls_included(
    pool: CheckerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted = ScriptedBackend(_script(10))
    backend, clock = _timed_backend(monkeypatch, scripted)
    core = SolverCore(backend, pool, SolverConfig(early_stop="none", max_batch=4, audit="off"))  # rollouts only
    core.handle_batch([_inbound(_candidate(i, scripted), i) for i in range(10)])
    clock[0] += 7.0  # time outside the backend (checking, waiting for input) is not busy
    assert len(backend.calls) == 3 and core.metrics()["busy_seconds"] == pytest.approx(2.5)
    backend.fail = True
    with pytest.raises(RetriableError):
        core.handle_batch([_inbound(_candidate(20, scripted), 20)])
    assert core.metrics()["busy_seconds"] == pytest.approx(2.75)


def test_the_audit_verifiers_calls_count_as_busy_time_beside_the_solve_calls(
    pool: CheckerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted = ScriptedBackend(_script(10))
    backend, _ = _timed_backend(monkeypatch, scripted)
    core = SolverCore(backend, pool, SolverConfig(early_stop="none", max_batch=4, audit="kept"))
    core.handle_batch([_inbound(_candidate(i, scripted), i) for i in range(10)])
    m = core.metrics()
    assert m["audited"] > 0 and len(backend.calls) == 4  # 3 solve calls, then one verifier call for the kept ones
    assert m["solve_seconds"] == pytest.approx(2.5) and m["audit_seconds"] == pytest.approx(0.25 * m["audited"])
    assert m["busy_seconds"] == pytest.approx(m["solve_seconds"] + m["audit_seconds"])
