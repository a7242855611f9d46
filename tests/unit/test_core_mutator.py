"""The mutator core with the scripted backend: parsing, provenance, determinism, credit-based
flow control, the synchronous barrier, budgets, restart from its checkpoint and hot reload;
and an in-memory loop (mutator -> novelty -> scripted solver -> archivist W) per variant."""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import pytest

from sparq_stream.core import FANOUT_HEADER, Inbound, Outgoing
from sparq_stream.cores.mutator import MutatorConfig, MutatorCore, build_mutator, parse_child
from sparq_stream.cores.novelty import HeldOut, NoveltyConfig, NoveltyCore
from sparq_stream.errors import ConfigError, RetriableError
from sparq_stream.ids import problem_id
from sparq_stream.messages import WATERMARK_KEY, Candidate, Dropped, Elite, ModelVersion, MutatorState, Seed, SolveResult, Watermark
from sparq_stream.models.base import GenerationResult, Prompt, SamplingParams
from sparq_stream.models.hashing_embedder import HashingEmbedder
from sparq_stream.models.scripted import ScriptedBackend
from sparq_stream.orchestrator.local import LocalBus
from sparq_stream.prompts import load_prompt
from sparq_stream.qd import make_working_set, quality
from sparq_stream.skills import annotate_seeds, load_vocabulary

SEED_TEXTS = [
    f"{name} has {a} {thing} and gets {b} more every {period}. How many {thing} after {c} {period}s?"
    for name, a, thing, b, period, c in [
        ("Ada", 3, "apples", 2, "day", 4),
        ("Ben", 10, "stamps", 5, "week", 3),
        ("Cleo", 7, "coins", 1, "hour", 9),
        ("Dev", 12, "books", 4, "month", 2),
        ("Eva", 5, "shells", 3, "day", 6),
        ("Finn", 8, "cards", 6, "week", 5),
        ("Gus", 2, "pens", 7, "day", 3),
        ("Hana", 9, "plums", 2, "hour", 8),
        ("Ivo", 4, "bolts", 9, "week", 2),
        ("Jo", 6, "tiles", 8, "month", 4),
    ]
]
SEEDS = [Seed(id=problem_id(t), problem=t, answer=str(i + 10), solution=f"Step by step, \\boxed{{{i + 10}}}") for i, t in enumerate(SEED_TEXTS)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(backend=None, clock=None, replay: Sequence[Outgoing] = (), **config) -> MutatorCore:
    """A mutator with the seeds table read, and ``replay`` (its state records) replayed as on start."""
    config.setdefault("variant", "static-uniform")
    config.setdefault("batch_size", 4)
    config.setdefault("models_root", "/models")
    core = MutatorCore(MutatorConfig(**config), backend=backend or ScriptedBackend(), clock=clock or FakeClock())
    for i, seed in enumerate(SEEDS):
        core.on_table(Inbound("seeds", seed.id, seed, offset=i))
    for i, record in enumerate(replay):
        core.on_table(Inbound(record.topic, record.key, record.message, offset=i))
    return core


def emit(core: MutatorCore, changelog: list[Outgoing] | None = None) -> list[Candidate]:
    """One tick (two when the first only opened a step); candidates out, state records to ``changelog``."""
    outs = core.tick(0.0)
    if len(outs) == 1 and outs[0].topic == "mutator-state" and outs[0].message.queue_n:
        if changelog is not None:
            changelog.append(outs[0])
        outs = core.tick(0.0)  # a tick that opens a step records its parents first
    states = [o for o in outs if o.topic == "mutator-state"]
    assert len(states) <= 1 and (not states or (outs[-1] is states[0] and states[0].after))
    assert all(isinstance(o.message, MutatorState) and o.key == core.config.state_key for o in states)
    if changelog is not None:
        changelog.extend(states)
    outs = [o for o in outs if o.topic != "mutator-state"]
    assert all(o.topic == "candidates" and o.resolved_key() == o.message.id and not o.after for o in outs)
    return [o.message for o in outs]


def watermark(offsets: dict[int, int], partition: int = 0, count: int = 1) -> Inbound:
    """A copy of the archivist's watermark as read from elites partition ``partition`` of ``count``."""
    message = Watermark(offsets={str(p): o for p, o in offsets.items()})
    return Inbound("elites", WATERMARK_KEY, message, partition=partition, headers=((FANOUT_HEADER, f"{partition}/{count}".encode()),))


def solved(c: Candidate, q: float = 0.0, skills: Sequence[str] = ()) -> SolveResult:
    data = {k: getattr(c, k) for k in Candidate.model_fields}
    sr = 1.0 - q if q else 1.0
    return SolveResult(**data, skills=list(skills), k=16, rollouts_used=16, n_correct=round(16 * sr), solve_rate=sr, quality=q)


def outcome(core: MutatorCore, *messages) -> None:
    core.handle_batch([Inbound("solved" if isinstance(m, SolveResult) else "drops", m.id, m) for m in messages])


def dropped(c: Candidate) -> Dropped:
    return Dropped(id=c.id, reason="near_duplicate", parent_ids=c.parent_ids, step=c.step)


def key(c: Candidate) -> tuple:
    return (c.id, c.step, tuple(c.parent_ids), c.answer)


# ---------------------------------------------------------------------- parsing and provenance


def test_parse_child() -> None:
    good = "<problem>\nTwo plus two?\n</problem>\n<solution>\n2+2=4, so \\boxed{4}.\n</solution>"
    assert parse_child(good) == (("Two plus two?", "2+2=4, so \\boxed{4}.", "4"), None)
    assert parse_child("no tags at all") == (None, "problem: missing tag")
    assert parse_child("<problem>x</problem><solution>no box</solution>") == (None, "answer: no box")
    assert parse_child("<problem>x</problem><solution>cut \\boxed{4") == (None, "solution: unclosed tag")
    assert parse_child("<problem> </problem>")[1] == "problem: empty tag"


def test_one_step_emits_children_with_provenance() -> None:
    backend = ScriptedBackend()
    core = make(backend, variant="static-uniform", batch_size=6)
    children = emit(core)
    assert len(children) == 6 and core.step == 1 and core.in_flight == 6
    seed_ids = {s.id for s in SEEDS}
    by_id = {s.id: s for s in SEEDS}
    sha = load_prompt("mutation").sha256
    for c in children:
        assert c.id == problem_id(c.problem)
        assert len(c.parent_ids) == 1 and c.parent_ids[0] in seed_ids
        assert (c.operator, c.model, c.model_version, c.prompt_hash, c.step, c.variant) == ("mutate", "scripted", 0, sha, 0, "static-uniform")
        assert c.answer == backend.answer_for(c.problem)
        assert c.problem.startswith(" ".join(by_id[c.parent_ids[0]].problem.split()[:6]))
    assert len({c.parent_ids[0] for c in children}) == 6  # b <= |W|: distinct parents
    assert backend.counts["mutation"] == 6


def test_parse_failures_are_counted_by_reason_and_dropped() -> None:
    script = {"problems": {t: {"children": [{"raw": "I cannot do that."}], "after_children": "cycle"} for t in SEED_TEXTS[:5]}}
    core = make(ScriptedBackend(script), batch_size=10)
    children = emit(core)
    assert len(children) == 5
    m = core.metrics()
    assert m["parse_failures"] == 5 and m["parse_failures.problem_missing_tag"] == 5 and m["emitted"] == 5


class ErrorBackend(ScriptedBackend):
    def __init__(self) -> None:
        super().__init__()
        self.raise_next = 0

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[GenerationResult]:
        if self.raise_next:
            self.raise_next -= 1
            raise RetriableError("backend busy")
        results = super().generate(prompts, n, params)
        return [GenerationResult(error="boom") if i == 0 else r for i, r in enumerate(results)]


def test_generation_errors_are_parse_failures_and_retriable_errors_back_off() -> None:
    backend = ErrorBackend()
    clock = FakeClock()
    core = make(backend, clock=clock, batch_size=4, chunk_size=4)
    first = emit(core)
    assert len(first) == 3
    assert core.metrics()["parse_failures.generation_error"] == 1
    outcome(core, *[solved(c) for c in first])
    backend.raise_next = 1
    assert emit(core) == [] and core.metrics()["generate_retries"] == 1
    assert emit(core) == []  # still backing off
    clock.now += 1
    assert [c.step for c in emit(core)] == [1, 1, 1]


def test_a_parent_drawn_twice_gets_two_different_children() -> None:
    core = make(batch_size=25)  # more than the 10 seeds: parents repeat
    children = emit(core)
    assert len(children) == 25 == len({c.id for c in children})


# ---------------------------------------------------------------------- determinism


def run_steps(core: MutatorCore, steps: int, changelog: list[Outgoing] | None = None) -> list[Candidate]:
    out: list[Candidate] = []
    for _ in range(steps):
        batch = emit(core, changelog)
        out += batch
        outcome(core, *[solved(c) for c in batch])
    return out


def test_same_seed_same_candidates_other_seed_other_parents() -> None:
    a = run_steps(make(seed=7, batch_size=5), 3)
    b = run_steps(make(seed=7, batch_size=5), 3)
    c = run_steps(make(seed=8, batch_size=5), 3)
    assert [key(x) for x in a] == [key(x) for x in b]
    assert [x.step for x in a] == [0] * 5 + [1] * 5 + [2] * 5
    assert [x.parent_ids for x in a] != [x.parent_ids for x in c]


def test_chunking_does_not_change_the_candidates() -> None:
    whole = run_steps(make(seed=3, batch_size=8, chunk_size=8), 2)
    chunked = make(seed=3, batch_size=8, chunk_size=3)
    got: list[Candidate] = []
    while len(got) < 16:
        batch = emit(chunked)
        got += batch
        outcome(chunked, *[solved(c) for c in batch])
    assert sorted(map(key, got)) == sorted(map(key, whole))


# ---------------------------------------------------------------------- flow control and budgets


def test_never_more_than_max_in_flight() -> None:
    core = make(batch_size=8, max_in_flight=5, chunk_size=4, synchronous=False)
    rng = random.Random(0)
    pending: list[Candidate] = []
    peak = 0
    for _ in range(200):
        pending += emit(core)
        peak = max(peak, core.in_flight)
        assert core.in_flight <= 5
        rng.shuffle(pending)
        k = rng.randint(0, len(pending))
        done, pending = pending[:k], pending[k:]
        outcome(core, *[solved(c) if rng.random() < 0.5 else dropped(c) for c in done])
    assert peak == 5 and core.emitted > 100
    m = core.metrics()
    assert m["outcomes.solved"] + m["outcomes.dropped"] == core.emitted - core.in_flight
    assert m["waits_for_credits"] > 0


def test_drops_return_credits_and_unknown_outcomes_are_ignored() -> None:
    core = make(batch_size=4, max_in_flight=4, synchronous=False)
    first = emit(core)
    assert emit(core) == []
    outcome(core, dropped(first[0]), solved(first[1]))
    outcome(core, dropped(first[0]))  # a second outcome for the same candidate
    stranger = Candidate(id="x" * 32, problem="p", solution="s", answer="1")
    outcome(core, solved(stranger))
    assert core.in_flight == 2 and core.metrics()["unknown_outcomes"] == 2
    assert len(emit(core)) == 2


def test_step_and_candidate_budgets() -> None:
    core = make(batch_size=3, steps=2)
    all_children = run_steps(core, 5)
    assert len(all_children) == 6 and core.step == 2 and core.done
    capped = make(batch_size=4, max_candidates=6, max_in_flight=4, synchronous=False)
    first = emit(capped)
    assert len(first) == 4 and not capped.exhausted
    outcome(capped, *[solved(c) for c in first])
    second = emit(capped)
    assert len(second) == 2 and capped.exhausted and not capped.done
    assert emit(capped) == []
    outcome(capped, *[solved(c) for c in second])
    assert capped.done and capped.metrics()["done"] == 1.0


def test_lost_credits_expire() -> None:
    clock = FakeClock()
    core = make(clock=clock, batch_size=3, credit_timeout_s=60)
    lost = emit(core)
    assert emit(core) == []  # synchronous: waits for step 0
    clock.now += 61
    second = emit(core)
    assert len(second) == 3 and core.metrics()["credits_expired"] == 3
    assert {c.step for c in second} == {1} and {c.id for c in lost}.isdisjoint(c.id for c in second)


# ---------------------------------------------------------------------- the synchronous barrier


def test_synchronous_steps_wait_for_every_outcome() -> None:
    core = make(variant="static-uniform", batch_size=4, max_in_flight=100)
    first = emit(core)
    assert emit(core) == []
    outcome(core, *[solved(c) for c in first[:3]])
    assert emit(core) == []
    outcome(core, dropped(first[3]))
    assert [c.step for c in emit(core)] == [1] * 4


def test_asynchronous_steps_overlap() -> None:
    core = make(variant="static-uniform", batch_size=4, max_in_flight=12, synchronous=False)
    children = emit(core) + emit(core) + emit(core)  # a tick opens at most one step
    assert [c.step for c in children] == [0] * 4 + [1] * 4 + [2] * 4


def elite_of(result: SolveResult, w) -> list[tuple[str, Elite | None]]:
    update = w.offer(result)
    return [(slot, e) for slot, e in update.written.items()] + [(slot, None) for slot in update.deleted]


def test_dynamic_synchronous_step_waits_for_the_watermark_of_every_elites_partition() -> None:
    clock = FakeClock()
    core = make(clock=clock, variant="qd", batch_size=4, sync_settle_s=30)
    archivist = make_working_set("qd")
    archivist.add_seeds(SEEDS)
    children = emit(core)
    results = [solved(c, q=0.5, skills=["ratio"] if i % 2 else ["area"]) for i, c in enumerate(children)]
    # results sit at solved[0]@10.. and solved[2]@7..
    where = [(0, 10), (2, 7), (0, 11), (2, 8)]
    core.handle_batch([Inbound("solved", r.id, r, partition=p, offset=o) for r, (p, o) in zip(results, where)])
    assert emit(core) == []  # all accounted for, but no watermark yet
    for slot, elite in [r for res in results for r in elite_of(res, archivist)]:
        core.on_table(Inbound("elites", slot, elite))
    core.on_table(watermark({0: 12, 2: 8}, 0, 2))  # partition 2 not covered yet
    core.on_table(watermark({0: 12, 2: 9}, 1, 2))
    assert emit(core) == []  # elites partition 0's watermark does not cover solved[2]@8
    core.on_table(Inbound("elites", "(none)", None))  # unrelated records do not settle it either
    core.on_table(watermark({0: 12, 2: 9, 1: 4}, 0, 2))
    nxt = emit(core)
    assert [c.step for c in nxt] == [1] * 4 and core.metrics()["sync_settled"] == 1
    assert set(core.W.elites()) == set(archivist.elites())


def test_dynamic_synchronous_step_never_goes_on_without_the_watermark() -> None:
    clock = FakeClock()
    core = make(clock=clock, variant="dynamic-uniform", batch_size=2, sync_settle_s=10)
    children = emit(core)
    core.handle_batch([Inbound("solved", c.id, solved(c, q=0.7), offset=i) for i, c in enumerate(children)])
    for _ in range(3):
        clock.now += 3600  # an outage of hours only delays the step
        assert emit(core) == []
    assert core.metrics()["sync_settle_waits"] >= 2
    core.on_table(Inbound("elites", WATERMARK_KEY, Watermark(offsets={"0": 2})))  # a copy without fan-out: unusable
    assert emit(core) == [] and core.metrics()["watermarks_unusable"] == 1
    core.on_table(watermark({0: 2}))
    assert len(emit(core)) == 2


def test_static_variants_ignore_elites() -> None:
    core = make(variant="static-diverse")
    assert core.tables == ("seeds", "mutator-state")
    elite = Elite(**solved(Candidate(id="e" * 32, problem="p", solution="s", answer="1"), q=0.5).model_dump(), slot="(none)")
    core.on_table(Inbound("elites", "(none)", elite))
    assert len(core.W) == len(SEEDS)
    assert make(variant="qd").tables == ("seeds", "elites", "mutator-state")
    assert make(variant="qd", follow_models=True, changelog=False).tables == ("seeds", "elites", "models")


def test_waits_for_seeds() -> None:
    core = MutatorCore(MutatorConfig(variant="static-uniform", batch_size=2, min_seeds=3), backend=ScriptedBackend())
    assert core.tick(0.0) == []
    for seed in SEEDS[:3]:
        core.on_table(Inbound("seeds", seed.id, seed))
    assert len(emit(core)) == 2


# ---------------------------------------------------------------------- restart


def test_restart_continues_the_step_budget_and_credits() -> None:
    config = dict(variant="static-uniform", batch_size=6, chunk_size=2, steps=3, seed=5)
    reference = make(**config)
    expected: list[Candidate] = []
    while not reference.done:
        batch = emit(reference)
        expected += batch
        outcome(reference, *[solved(c) for c in batch])

    changelog: list[Outgoing] = []
    first = make(**config)
    got = run_steps(first, 1, changelog)  # step 0 fully done
    partial = emit(first, changelog)  # step 1 (the tick budget lets it emit all 3 chunks at once)
    got += partial
    outcome(first, solved(partial[0]))
    assert emit(first, changelog) == []  # the tick after the outcome carries the state
    # kill -9: a new process restores from the changelog alone
    second = make(replay=changelog, **config)
    assert second.step == first.step and second.in_flight == first.in_flight == len(partial) - 1
    assert second.metrics()["restored_in_flight"] == len(partial) - 1
    outcome(second, *[solved(c) for c in partial[1:]])
    while not second.done:
        batch = emit(second)
        got += batch
        outcome(second, *[solved(c) for c in batch])
    assert [key(c) for c in got] == [key(c) for c in expected]


def test_a_chunk_whose_state_record_was_lost_is_generated_again() -> None:
    config = dict(variant="static-uniform", batch_size=6, chunk_size=2, max_in_flight=2, seed=1, synchronous=False)
    changelog: list[Outgoing] = []
    core = make(**config)
    first = emit(core, changelog)  # chunk 1 and the state covering it
    outcome(core, *[solved(c) for c in first])
    lost_state: list[Outgoing] = []
    lost = emit(core, lost_state)  # chunk 2 sent; the process dies before its state record is acknowledged
    assert len(lost) == 2 and lost_state[0].message.emitted == 4
    again = make(replay=changelog, **config)
    assert again.emitted == 2 and again.in_flight == 2
    outcome(again, *[solved(c) for c in first])  # their input offsets were not committed: redelivered
    assert [key(c) for c in emit(again)] == [key(c) for c in lost]


def test_a_state_of_another_run_is_refused() -> None:
    changelog: list[Outgoing] = []
    emit(make(seed=1), changelog)
    other = make(seed=2, replay=changelog)
    with pytest.raises(ConfigError, match="another run"):
        other.tick(0.0)
    assert make(seed=1, replay=changelog, state_key="another").step == 0  # another key: not ours


def test_the_local_cache_is_used_only_without_a_changelog(tmp_path) -> None:
    config = dict(batch_size=2, chunk_size=1, max_in_flight=1, synchronous=False, state_dir=str(tmp_path))
    changelog: list[Outgoing] = []
    core = make(**config)
    for _ in range(3):
        outcome(core, *[solved(c) for c in emit(core, changelog)])
    # the cache is one record behind the last emitted (whose send may not be acknowledged)
    emitted = [r.message.emitted for r in changelog]
    assert emitted[-2] < emitted[-1] and make(**config).emitted == emitted[-2]
    assert make(replay=changelog[:1], **config).emitted == emitted[0] < emitted[-2]  # the changelog wins


# ---------------------------------------------------------------------- hot reload


class ReloadingBackend(ScriptedBackend):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.reloads: list[tuple[str, int, str]] = []
        self.fail = fail

    def reload(self, model: str, version: int | None = None, name: str | None = None) -> None:
        if self.fail:
            raise OSError("no such model")
        self.reloads.append((model, version, name))
        self.model_version = version
        self.model_name = name


def model(number: int, name: str = "student") -> ModelVersion:
    return ModelVersion(name=name, number=number, path=f"/models/{name}-{number}")


def test_hot_reload_between_steps_and_provenance() -> None:
    backend = ReloadingBackend()
    core = make(backend, follow_models=True, batch_size=2)
    core.on_table(Inbound("models", "student", model(1)))
    core.on_table(Inbound("models", "student", model(2)))
    core.on_table(Inbound("models", "teacher", model(9, "teacher")))
    children = emit(core)
    assert backend.reloads == [("/models/teacher-9", 9, "teacher")]
    assert {(c.model, c.model_version) for c in children} == {("teacher", 9)}
    follow_one = make(ReloadingBackend(), follow_models=True, follow_model_name="student", batch_size=2)
    follow_one.on_table(Inbound("models", "teacher", model(9, "teacher")))
    follow_one.on_table(Inbound("models", "student", model(3)))
    assert {(c.model, c.model_version) for c in emit(follow_one)} == {("student", 3)}


def test_reload_failures_and_unsupported_backends_keep_generating() -> None:
    failing = make(ReloadingBackend(fail=True), follow_models=True, batch_size=2)
    failing.on_table(Inbound("models", "student", model(1)))
    assert {c.model_version for c in emit(failing)} == {0}
    assert failing.metrics()["reload_failures"] == 1
    plain = make(ScriptedBackend(), follow_models=True, batch_size=2)
    plain.on_table(Inbound("models", "student", model(1)))
    assert len(emit(plain)) == 2 and plain.metrics()["reload_unsupported"] == 1
    ignoring = make(ReloadingBackend(), batch_size=2)  # follow_models off
    ignoring.on_table(Inbound("models", "student", model(1)))
    emit(ignoring)
    assert ignoring.backend.reloads == []


def test_a_version_that_arrives_after_the_budget_gets_steps_until_a_child_of_it_is_scored() -> None:
    core = make(ReloadingBackend(), follow_models=True, batch_size=2, steps=1, new_model_steps=2)
    core.on_table(Inbound("models", "student", model(1)))
    first = emit(core)
    outcome(core, *[solved(c) for c in first])
    assert {c.model_version for c in first} == {1} and core.done and emit(core) == []
    core.on_table(Inbound("models", "student", model(2)))  # trained on step 0's results
    assert not core.done and core.metrics()["model_seen"] == 2.0 and core.metrics()["model_version"] == 1.0
    second = emit(core)
    assert {(c.step, c.model_version) for c in second} == {(1, 2)} and not core.done
    outcome(core, *[solved(c) for c in second])
    assert core.done and emit(core) == []  # version 2 has a scored child
    core.on_table(Inbound("models", "student", model(3)))
    third = emit(core)
    outcome(core, *[dropped(c) for c in third])  # nothing of version 3 scored: it would go on, but the cap is reached
    assert {(c.step, c.model_version) for c in third} == {(2, 3)} and core.done and emit(core) == []
    assert core.step == 3 and core.metrics()["new_model_steps"] == 2


def test_no_version_published_yet_gets_steps_past_the_budget_until_the_first_is_used_or_the_cap() -> None:
    core = make(ReloadingBackend(), follow_models=True, batch_size=2, steps=1, new_model_steps=3)
    outcome(core, *[solved(c) for c in emit(core)])
    assert not core.done  # a trainer may still be waiting for examples, or training
    waiting = emit(core)
    assert {(c.step, c.model_version) for c in waiting} == {(1, 0)} and core.metrics()["new_model_steps"] == 1
    core.on_table(Inbound("models", "student", model(1)))  # published while step 1 is in flight
    outcome(core, *[solved(c) for c in waiting])
    assert not core.done
    used = emit(core)
    assert {(c.step, c.model_version) for c in used} == {(2, 1)}
    outcome(core, *[solved(c) for c in used])
    assert core.done and emit(core) == [] and core.step == 3 and core.metrics()["new_model_steps"] == 2
    never = make(ReloadingBackend(), follow_models=True, batch_size=2, steps=1, new_model_steps=2)
    for _ in range(3):
        outcome(never, *[solved(c) for c in emit(never)])
    assert never.done and emit(never) == [] and never.step == 3  # no version came: the cap ends the run


def test_a_version_used_within_the_budget_or_not_followed_gets_no_extra_step() -> None:
    core = make(ReloadingBackend(), follow_models=True, batch_size=2, steps=2, new_model_steps=2)
    outcome(core, *[solved(c) for c in emit(core)])
    core.on_table(Inbound("models", "student", model(1)))
    last = emit(core)
    assert {c.model_version for c in last} == {1} and not core.done
    outcome(core, *[solved(c) for c in last])
    assert core.done and core.step == 2
    plain = make(ReloadingBackend(fail=True), follow_models=True, batch_size=2, steps=1, new_model_steps=2)
    plain.on_table(Inbound("models", "student", model(1)))
    outcome(plain, *[solved(c) for c in emit(plain)])  # the reload failed: nothing newer is in use
    assert plain.done and plain.step == 1
    off = make(ReloadingBackend(), follow_models=True, batch_size=2, steps=1)  # new_model_steps=0: the budget is the budget
    outcome(off, *[solved(c) for c in emit(off)])
    off.on_table(Inbound("models", "student", model(1)))
    assert off.done and emit(off) == []


def test_config_validation_and_factory() -> None:
    with pytest.raises(ValueError):
        MutatorConfig(variant="greedy")
    with pytest.raises(ValueError):
        MutatorConfig(max_in_flight=0)
    core = build_mutator(MutatorConfig(backend="scripted", variant="static-uniform", batch_size=2))
    for seed in SEEDS:
        core.on_table(Inbound("seeds", seed.id, seed))
    assert len(emit(core)) == 2
    core.close()


# ---------------------------------------------------------------------- the loop, in memory


class Loop:
    """mutator -> novelty -> a scripted solver -> an archivist W, wired by in-memory queues.

    ``lag`` delays the elites records and watermarks (the archivist's output) by that many rounds, and the
    order of the outcomes is shuffled, so W changes asynchronously as it would over Kafka.
    """

    def __init__(self, variant: str, *, lag: int = 0, shuffle: int | None = None, **config) -> None:
        self.backend = ScriptedBackend({"seed": 3})
        vocab = load_vocabulary()
        seeds = annotate_seeds(SEEDS, self.backend, vocab)
        config.setdefault("batch_size", 8)
        config.setdefault("steps", 4)
        self.mutator = MutatorCore(MutatorConfig(variant=variant, **config), backend=self.backend, clock=FakeClock())
        heldout = HeldOut((), (), np.zeros((0, 128), dtype=np.float32))
        self.novelty = NoveltyCore(
            NoveltyConfig(contamination_check=False, dup_threshold=0.97), embedder=HashingEmbedder(dim=128), backend=self.backend, heldout=heldout
        )
        self.archivist = make_working_set(variant)
        for seed in seeds:
            for core in (self.mutator, self.novelty):
                core.on_table(Inbound("seeds", seed.id, seed))
            self.archivist.add_seed(seed)
        self.lag = lag
        self.rng = random.Random(shuffle) if shuffle is not None else None
        self.archive: list[SolveResult] = []
        self.candidates: list[Candidate] = []

    def solve(self, novel) -> SolveResult:
        sr = self.backend.solve_rate_for(novel.problem)
        data = novel.model_dump()
        return SolveResult(**data, k=16, rollouts_used=16, n_correct=round(16 * sr), solve_rate=sr, quality=quality(sr))

    def downstream(self, outs: list[Outgoing]) -> tuple[list[Inbound], list[Inbound]]:
        """Candidates through novelty, the solver and the archivist: the outcomes, then the elites records and a watermark."""
        self.candidates += [o.message for o in outs]
        decided = self.novelty.handle_batch([Inbound("candidates", o.message.id, o.message) for o in outs])
        back, records = [], []
        for (o,) in decided:
            if o.topic == "novel":
                result = self.solve(o.message)
                self.archive.append(result)
                update = self.archivist.offer(result)
                records += [Inbound("elites", slot, e) for slot, e in update.written.items()]
                records += [Inbound("elites", slot, None) for slot in update.deleted]
                back.append(Inbound("solved", result.id, result, offset=len(self.archive) - 1))
            else:
                back.append(Inbound("drops", o.message.id, o.message))
        if self.archive:
            records.append(watermark({0: len(self.archive)}))  # after the round's elite records
        return back, records

    def run(self, rounds: int = 200) -> None:
        delayed: list[list[Inbound]] = []
        for _ in range(rounds):
            back, records = self.downstream([o for o in self.mutator.tick(0.0) if o.topic == "candidates"])
            if self.rng is not None:
                self.rng.shuffle(back)
            self.mutator.handle_batch(back)
            delayed.append(records)
            if len(delayed) > self.lag:
                for record in delayed.pop(0):
                    self.mutator.on_table(record)
            if self.mutator.done and not delayed:
                break
        assert self.mutator.done


@pytest.mark.parametrize("variant", ["static-uniform", "static-diverse", "dynamic-uniform", "qd"])
def test_the_synchronous_loop_is_exact_whatever_the_timing(variant: str) -> None:
    plain = Loop(variant)
    plain.run()
    late = Loop(variant, lag=2, shuffle=1)
    late.run()
    assert [key(c) for c in plain.candidates] == [key(c) for c in late.candidates]
    assert [r.id for r in plain.archive] == [r.id for r in late.archive]
    assert plain.archivist.elites() == late.archivist.elites()
    assert plain.mutator.step == 4 and plain.mutator.emitted == len(plain.candidates) == 32
    if variant in ("dynamic-uniform", "qd"):
        assert plain.archivist.elites(), "some children should enter W"
        # later steps draw children of W as parents
        elite_ids = {r.id for r in plain.archive}
        assert any(p in elite_ids for c in plain.candidates for p in c.parent_ids)
    else:
        seed_ids = {s.id for s in SEEDS}
        assert all(c.parent_ids[0] in seed_ids for c in plain.candidates)


def test_the_diverse_variant_spreads_parents_over_niches() -> None:
    loop = Loop("static-diverse", steps=1, batch_size=6)
    loop.run()
    niches = {s.id: s.skills for s in annotate_seeds(SEEDS, loop.backend, load_vocabulary())}
    chosen = {tuple(niches[c.parent_ids[0]]) for c in loop.candidates}
    assert len(chosen) == 6  # one parent per skill-set while there are more skill-sets than parents


def test_a_restarted_mutator_reloads_the_newest_model() -> None:
    first = make(ReloadingBackend(), follow_models=True, batch_size=2)
    first.on_table(Inbound("models", "student", model(1)))
    children = emit(first)  # its state record is lost with the process
    assert first.backend.reloads == [("/models/student-1", 1, "student")]
    second = make(ReloadingBackend(), follow_models=True, batch_size=2)
    second.on_table(Inbound("models", "student", model(1)))  # the table replay on start
    # no state record covers the chunk the first process generated: it is generated again
    again = emit(second)
    assert [key(c) for c in again] == [key(c) for c in children]
    assert {c.model_version for c in again} == {1}
    assert second.backend.reloads == [("/models/student-1", 1, "student")]


# ---------------------------------------------------------------------- kill -9 of the mutator over a fake bus


class MutatorKillBus(LocalBus):
    """The in-memory bus, with the mutator killed (-9) during chosen emitting ticks.

    A kill lands at one point of the wrapper's send of that tick: ``mid-send`` (half the
    candidates reached the broker, no state record), ``before-state`` (every candidate, no
    state record), ``before-commit`` (candidates and state, but no input offsets committed).
    The new process reads its tables from the beginning and its inputs from the last commit.
    """

    def __init__(self, cores: list, make_mutator, kills: dict[int, str]) -> None:
        super().__init__(cores)
        self.make_mutator = make_mutator
        self.kills = dict(kills)
        self.emitting = 0
        self.mutators = [cores[0]]

    def step_core(self, index: int, core) -> bool:
        if index != 0:
            return super().step_core(index, core)
        committed = self.cursors(index, core.inputs)
        moved = self.deliver(index, core)
        outs = core.tick(0.0)
        if any(o.topic == "candidates" for o in outs):
            self.emitting += 1
        mode = self.kills.pop(self.emitting, None) if outs else None
        if mode is None:
            self.publish(outs)
            return moved or bool(outs)
        sent = [o for o in outs if not o.after]
        if mode == "mid-send":
            self.publish(sent[: len(sent) // 2])
        elif mode == "before-state":
            self.publish(sent)
        else:
            assert mode == "before-commit"
            self.publish(outs)
        self.restart(index, self.make_mutator(), committed)
        self.mutators.append(self.cores[index])
        return True


def _kill_loop(tmp_path, kills: dict[int, str], **mutator_flags):
    from sparq_stream.orchestrator.local import build_local_cores
    from sparq_stream.orchestrator.up import UpConfig, load_seed_set, run_settings
    from tests.conftest import SEEDS_FILE

    config = UpConfig(
        seeds=SEEDS_FILE, out=tmp_path, steps=3, batch_size=64, k=4, backend="scripted",
        embedder="hash", variant="qd", seed_limit=40, seed=7,
        extra={"mutator": ["--chunk-size", "16", *[str(v) for kv in mutator_flags.items() for v in (f"--{kv[0].replace('_', '-')}", kv[1])]]},
    )
    settings = run_settings(config, "local", "in-memory:0")
    seeds, _ = load_seed_set(config)
    cores = build_local_cores(settings)
    bus = MutatorKillBus(list(cores.values()), lambda: build_local_cores(settings, order=("mutator",))["mutator"], kills)
    bus.publish([Outgoing("seeds", s) for s in seeds])
    idle = 0
    while not bus.cores[0].done:
        idle = 0 if bus.step() else idle + 1
        assert idle < 20, "the loop stalled: a credit would wait out its timeout"
    while bus.step():
        pass
    bus.close()
    assert not bus.kills, f"kills never reached: {bus.kills}"
    elites = {slot: (e.id, e.quality) for slot, e in bus.latest("elites").items() if isinstance(e, Elite)}
    scored = {r.message.id: (r.message.step, r.message.quality) for r in bus.logs["solved"]}
    return elites, scored, bus


@pytest.mark.slow
@pytest.mark.parametrize(
    "kills, flags",
    [
        ({2: "mid-send", 5: "before-state", 8: "before-commit"}, {"max_in_flight": 16}),  # one chunk per tick
        ({1: "mid-send", 2: "before-state", 3: "before-commit"}, {}),  # a whole step per tick
    ],
    ids=["chunk-per-tick", "step-per-tick"],
)
def test_kill_9_of_the_mutator_at_every_send_point_ends_in_the_reference(tmp_path, kills, flags) -> None:
    ref_elites, ref_scored, ref_bus = _kill_loop(tmp_path / "ref", {}, **flags)
    elites, scored, bus = _kill_loop(tmp_path / "killed", kills, **flags)
    assert len(ref_scored) > 64 and ref_elites
    assert elites == ref_elites and scored == ref_scored
    assert len(bus.mutators) == 1 + len(kills)
    final = bus.mutators[-1].metrics()
    assert final.get("credits_expired", 0) == 0 and final["done"] == 1.0
    assert sum(m.metrics().get("restored_in_flight", 0) for m in bus.mutators) > 0
