"""The novelty core with the hash embedder and the scripted classifier: dedup, contamination,
novelty score, skills, drop notices, redelivery and restart from a snapshot plus replay."""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import pytest

from sparq_stream.core import Inbound
from sparq_stream.cores.novelty import HeldOut, NoveltyConfig, NoveltyCore, build_novelty, load_heldout
from sparq_stream.errors import ConfigError, FatalError, RetriableError
from sparq_stream.ids import problem_id
from sparq_stream.messages import Candidate, Dropped, NovelCandidate, Seed
from sparq_stream.models.base import GenerationResult, Prompt, SamplingParams
from sparq_stream.models.hashing_embedder import HashingEmbedder
from sparq_stream.models.scripted import ScriptedBackend
from sparq_stream.descriptors import EMPTY_NICHE, niche_key
from sparq_stream.skills import load_vocabulary

PROBLEMS = [
    "A farmer has 12 cows and buys 7 more cows at the market. How many cows does the farmer have now?",
    "Lena reads 25 pages of a novel every evening for two weeks. How many pages has she read in total?",
    "A rectangle has a perimeter of 40 cm and one side of 8 cm. What is the area of the rectangle?",
    "The price of a bicycle rose from 200 dollars to 250 dollars. By what percentage did the price increase?",
    "Three friends share 84 marbles so that each gets twice as many as the previous one. How many does the first get?",
]
EMBEDDER = HashingEmbedder(dim=256)
NO_HELDOUT = HeldOut((), (), np.zeros((0, 256), dtype=np.float32))


def cand(problem: str, step: int = 0, parent: str = "seed-1") -> Candidate:
    return Candidate(
        id=problem_id(problem), problem=problem, solution="so \\boxed{1}", answer="1", parent_ids=[parent], step=step, variant="qd"
    )


def inbound(message, offset: int = 0, topic: str = "candidates", partition: int = 0) -> Inbound:
    return Inbound(topic, getattr(message, "id", None), message, partition=partition, offset=offset)


def make(config: NoveltyConfig | None = None, backend=None, heldout: HeldOut | None = NO_HELDOUT) -> NoveltyCore:
    config = config or NoveltyConfig(contamination_check=False)
    return NoveltyCore(config, embedder=EMBEDDER, backend=backend or ScriptedBackend(), heldout=heldout)


def run(core: NoveltyCore, *candidates: Candidate) -> list:
    outs = core.handle_batch([inbound(c, i) for i, c in enumerate(candidates)])
    assert all(len(o) == 1 for o in outs)
    return [o[0] for o in outs]


def test_a_new_candidate_gets_novelty_nearest_and_skills() -> None:
    core = make()
    seeds = [Seed(id=problem_id(p), problem=p, answer="1") for p in PROBLEMS[:3]]
    for i, seed in enumerate(seeds):
        core.on_table(inbound(seed, i, topic="seeds"))
    child = cand(PROBLEMS[3])
    (out,) = run(core, child)
    assert out.topic == "novel" and out.resolved_key() == child.id
    novel = out.message
    assert isinstance(novel, NovelCandidate)
    assert {k: getattr(novel, k) for k in Candidate.model_fields} == child.model_dump()
    vectors = EMBEDDER.embed([PROBLEMS[3], *PROBLEMS[:3]])
    sims = vectors[1:] @ vectors[0]
    assert novel.novelty == pytest.approx(float(np.mean(1 - sims)), abs=1e-5)
    assert novel.nearest_id == seeds[int(np.argmax(sims))].id
    assert novel.nearest_similarity == pytest.approx(float(sims.max()), abs=1e-5)
    vocab = load_vocabulary()
    expected = ScriptedBackend().skills_for(PROBLEMS[3], list(vocab.skills))
    assert novel.skills == sorted(expected) and 1 <= len(novel.skills) <= 3
    assert novel.niche == niche_key(expected)
    assert core.metrics()["accepted"] == 1 and core.metrics()["index_size"] == 4


def test_novelty_uses_only_the_k_nearest() -> None:
    core = make(NoveltyConfig(contamination_check=False, k_neighbours=1, classify=False), backend=None)
    run(core, cand(PROBLEMS[0]), cand(PROBLEMS[1]))
    (out,) = run(core, cand(PROBLEMS[2]))
    assert out.message.novelty == pytest.approx(1 - out.message.nearest_similarity, abs=1e-6)
    assert out.message.niche == EMPTY_NICHE and out.message.skills == []


def test_first_problem_has_novelty_one() -> None:
    (out,) = run(make(), cand(PROBLEMS[0]))
    assert out.message.novelty == 1.0 and out.message.nearest_id is None


def test_exact_duplicates_by_id_and_of_seeds_are_dropped_with_a_notice() -> None:
    core = make()
    core.on_table(inbound(Seed(id=problem_id(PROBLEMS[0]), problem=PROBLEMS[0], answer="1"), topic="seeds"))
    first, = run(core, cand(PROBLEMS[1], step=1))
    assert first.topic == "novel"
    # the same text again (other step: not a redelivery), and a child identical to its parent seed
    again, same_as_seed = run(core, cand(PROBLEMS[1], step=2), cand("  " + PROBLEMS[0].upper() + " ", step=2))
    for out, text in ((again, PROBLEMS[1]), (same_as_seed, PROBLEMS[0])):
        assert out.topic == "drops" and out.resolved_key() == problem_id(text)
        assert isinstance(out.message, Dropped)
        assert (out.message.reason, out.message.similarity, out.message.match_source) == ("exact_duplicate", 1.0, "seen")
        assert out.message.step == 2 and out.message.parent_ids == ["seed-1"]
    m = core.metrics()
    assert (m["received"], m["accepted"], m["dropped"], m["dropped_exact_duplicate"]) == (3, 1, 2, 2)


def test_near_duplicates_are_dropped_and_the_second_of_a_pair_in_one_batch() -> None:
    core = make(NoveltyConfig(contamination_check=False, dup_threshold=0.9))
    variant = PROBLEMS[0].replace("12 cows", "13 cows")
    sim = float((EMBEDDER.embed([PROBLEMS[0]]) @ EMBEDDER.embed([variant]).T)[0, 0])
    assert 0.9 <= sim < 0.999
    a, b, c = run(core, cand(PROBLEMS[0]), cand(variant), cand(PROBLEMS[1]))
    assert a.topic == "novel" and c.topic == "novel"
    assert b.topic == "drops" and b.message.reason == "near_duplicate"
    assert b.message.match_id == problem_id(PROBLEMS[0]) and b.message.similarity == pytest.approx(sim, abs=1e-5)
    # an identical pair inside one batch: the second is an exact duplicate
    x, y = run(core, cand(PROBLEMS[2], step=1), cand(PROBLEMS[2], step=2))
    assert x.topic == "novel" and y.topic == "drops" and y.message.reason == "exact_duplicate"
    assert core.metrics()["dropped_near_duplicate"] == 1


def test_decisions_do_not_depend_on_batching() -> None:
    texts = [PROBLEMS[0], PROBLEMS[0].replace("12", "14"), PROBLEMS[1], PROBLEMS[1], PROBLEMS[2]]
    config = NoveltyConfig(contamination_check=False, dup_threshold=0.9)
    together = run(make(config), *[cand(t, step=i) for i, t in enumerate(texts)])
    one_by_one_core = make(config)
    apart = [run(one_by_one_core, cand(t, step=i))[0] for i, t in enumerate(texts)]
    assert [o.topic for o in together] == [o.topic for o in apart] == ["novel", "drops", "novel", "drops", "novel"]
    for a, b in zip(together, apart):
        if a.topic == "novel":
            assert a.message.novelty == pytest.approx(b.message.novelty, abs=1e-5)


def test_contamination_by_similarity_and_by_id(tmp_path) -> None:
    heldout_file = tmp_path / "test_set.jsonl"
    rows = [{"question": PROBLEMS[4], "answer": "x #### 12"}, {"problem": PROBLEMS[3], "answer": "25"}]
    heldout_file.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    heldout = load_heldout([heldout_file], EMBEDDER, cache_dir=tmp_path / "cache")
    assert len(heldout) == 2 and heldout.sources == ("test_set.jsonl", "test_set.jsonl")
    assert list((tmp_path / "cache").glob("heldout-test_set-*.npy"))  # vectors are cached
    core = make(NoveltyConfig(contamination_threshold=0.9), heldout=heldout)
    near = PROBLEMS[3].replace("250 dollars", "260 dollars")
    exact, close, clean = run(core, cand(PROBLEMS[4]), cand(near), cand(PROBLEMS[0]))
    assert (exact.message.reason, exact.message.similarity) == ("contamination", 1.0)
    assert close.topic == "drops" and close.message.reason == "contamination"
    assert close.message.match_id == problem_id(PROBLEMS[3]) and close.message.match_source == "test_set.jsonl"
    assert clean.topic == "novel"
    assert core.metrics()["dropped_contamination"] == 2
    # contaminated problems are not indexed: only the clean one is
    assert len(core.index) == 1


def test_explicit_heldout_files_must_exist(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_heldout([tmp_path / "missing.jsonl"], EMBEDDER)
    assert len(load_heldout([], EMBEDDER)) == 0


def test_a_redelivered_candidate_re_emits_the_same_output() -> None:
    core = make()
    child = cand(PROBLEMS[0])
    (first,) = run(core, child)
    (again,) = run(core, child.model_copy(update={"created_at": child.created_at + 5}))
    assert again.topic == "novel" and again.message == first.message
    both = run(core, cand(PROBLEMS[1], step=3), cand(PROBLEMS[1], step=3))  # a producer retry inside one batch
    assert [o.topic for o in both] == ["novel", "novel"] and both[0].message == both[1].message
    m = core.metrics()
    assert (m["accepted"], m["redelivered"], m["dropped"]) == (2, 2, 0)


class FlakyBackend(ScriptedBackend):
    """Fails every prompt of the first ``failures`` generate calls."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[GenerationResult]:
        if self.failures > 0:
            self.failures -= 1
            return [GenerationResult(error="HTTP 503") for _ in prompts]
        return super().generate(prompts, n, params)


def test_a_classifier_failure_is_retriable_and_leaves_the_index_unchanged() -> None:
    core = make(backend=FlakyBackend(failures=1))
    batch = [inbound(cand(PROBLEMS[0]), 0), inbound(cand(PROBLEMS[1]), 1)]
    with pytest.raises(RetriableError, match="HTTP 503"):
        core.handle_batch(batch)
    assert len(core.index) == 0 and core.metrics()["skill_errors"] == 2
    outs = core.handle_batch(batch)  # the wrapper's retry
    assert [o[0].topic for o in outs] == ["novel", "novel"]


def test_unknown_skills_give_the_empty_niche() -> None:
    backend = ScriptedBackend({"problems": {PROBLEMS[0]: {"skills": ["underwater basket weaving"]}}})
    (out,) = run(make(backend=backend), cand(PROBLEMS[0]))
    assert out.message.niche == EMPTY_NICHE
    assert out.message.skills == []


def test_other_messages_are_fatal() -> None:
    core = make()
    with pytest.raises(FatalError):
        core.handle(inbound(Seed(id="s", problem="p", answer="1")))
    with pytest.raises(FatalError, match="tombstone"):
        core.handle(Inbound("candidates", "k", None))


def test_restart_from_a_snapshot_still_drops_duplicates(tmp_path) -> None:
    config = NoveltyConfig(contamination_check=False, state_dir=str(tmp_path), dup_threshold=0.9)
    core = make(config)
    run(core, cand(PROBLEMS[0]), cand(PROBLEMS[1]))
    core.close()  # writes the snapshot
    assert (tmp_path / "novelty-index" / "manifest.json").is_file()  # the default auto index: segments + manifest
    restarted = make(config)
    assert len(restarted.index) == 2
    same, near, new = run(
        restarted, cand(PROBLEMS[0], step=9), cand(PROBLEMS[1].replace("25 pages", "26 pages"), step=9), cand(PROBLEMS[2])
    )
    assert (same.message.reason, near.message.reason, new.topic) == ("exact_duplicate", "near_duplicate", "novel")


def test_restart_replays_what_was_accepted_after_the_snapshot(tmp_path) -> None:
    config = NoveltyConfig(contamination_check=False, state_dir=str(tmp_path))
    core = make(config)
    (a,) = run(core, cand(PROBLEMS[0]))
    core.on_table(inbound(a.message, 0, topic="novel"))  # its own output comes back on the novel table
    core.snapshot()
    (b,) = run(core, cand(PROBLEMS[1]))  # accepted after the snapshot, then the process dies (no close)
    restarted = make(config)
    assert problem_id(PROBLEMS[1]) not in restarted.index
    # the wrapper replays the novel table from the beginning: A is below the snapshot offset, B is new
    restarted.on_table(inbound(a.message, 0, topic="novel"))
    restarted.on_table(inbound(b.message, 1, topic="novel"))
    assert restarted.metrics()["replayed"] == 1
    restarted.tick(0.0)
    assert problem_id(PROBLEMS[1]) in restarted.index and len(restarted.index) == 2
    # B redelivered (its batch was never committed) re-emits the same output; a new B is a duplicate
    redelivered, duplicate = run(restarted, cand(PROBLEMS[1]), cand(PROBLEMS[1], step=4))
    assert redelivered.topic == "novel" and redelivered.message == b.message
    assert duplicate.message.reason == "exact_duplicate"


def test_snapshots_are_taken_when_due(tmp_path) -> None:
    core = make(NoveltyConfig(contamination_check=False, state_dir=str(tmp_path), snapshot_every_items=2))
    run(core, cand(PROBLEMS[0]))
    core.tick(0.0)
    assert core.metrics().get("snapshots", 0) == 0
    run(core, cand(PROBLEMS[1]))
    core.tick(0.0)
    assert core.metrics()["snapshots"] == 1
    core.tick(0.0)  # nothing new: no snapshot
    assert core.metrics()["snapshots"] == 1


def test_a_snapshot_of_another_embedder_is_refused(tmp_path) -> None:
    config = NoveltyConfig(contamination_check=False, state_dir=str(tmp_path))
    core = make(config)
    run(core, cand(PROBLEMS[0]))
    core.close()
    with pytest.raises(ConfigError, match="embedder"):
        NoveltyCore(config, embedder=HashingEmbedder(dim=128), backend=ScriptedBackend(), heldout=NO_HELDOUT)


def test_tables_and_config_validation() -> None:
    assert make().tables == ("seeds", "novel")
    assert make(NoveltyConfig(contamination_check=False, follow_novel=False)).tables == ("seeds",)
    with pytest.raises(ValueError):
        NoveltyConfig(dup_threshold=0.99, exact_threshold=0.9)
    with pytest.raises(ConfigError, match="backend"):
        NoveltyCore(NoveltyConfig(contamination_check=False), embedder=EMBEDDER, heldout=NO_HELDOUT)


def test_build_novelty_from_names(tmp_path) -> None:
    config = NoveltyConfig(embedder="hash", embedder_options={"dim": 64}, backend="scripted", contamination_check=False)
    core = build_novelty(config)
    try:
        (out,) = run(core, cand(PROBLEMS[0]))
        assert out.topic == "novel" and out.message.niche != EMPTY_NICHE
    finally:
        core.close()
