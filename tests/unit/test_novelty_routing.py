"""Novelty replicas route candidates by embedding bucket: near duplicates are decided on one partition."""

from __future__ import annotations

import numpy as np

from sparq_stream.core import Inbound
from sparq_stream.cores.novelty import HeldOut, NoveltyConfig, NoveltyCore
from sparq_stream.cores.routing import ROUTED_HEADER, EmbeddingRouter, default_planes
from sparq_stream.ids import problem_id
from sparq_stream.messages import Candidate, Seed
from sparq_stream.models.hashing_embedder import HashingEmbedder

EMBEDDER = HashingEmbedder(dim=256)
TEXT = "Tom has 3 apples and buys 4 more apples at the market. How many apples does Tom have now?"


def _core(basis: str = "random", partitions: int = 4) -> NoveltyCore:
    heldout = HeldOut((), (), np.zeros((0, EMBEDDER.dim), np.float32))
    config = NoveltyConfig(classify=False, contamination_check=False, route_partitions=partitions, route_planes=2, route_basis=basis)
    return NoveltyCore(config, embedder=EMBEDDER, heldout=heldout)


def _inbound(text: str, partition: int, offset: int, routed: bool = False) -> Inbound:
    cand = Candidate(id=problem_id(text), problem=text, solution="\\boxed{7}", answer="7", parent_ids=[f"p{offset}"])
    headers = ((ROUTED_HEADER, b"1"),) if routed else ()
    return Inbound("candidates", cand.id, cand, partition=partition, offset=offset, headers=headers)


def test_a_candidate_off_its_bucket_partition_is_moved_there_once_and_decided_there() -> None:
    core = _core()
    target = int(core._routing().partitions_of(np.asarray(EMBEDDER.embed([TEXT]), np.float32))[0])
    other = (target + 1) % 4
    (moved,) = core.handle_batch([_inbound(TEXT, other, 0)])
    assert [(o.topic, o.partition, o.headers) for o in moved] == [("candidates", target, ((ROUTED_HEADER, b"1"),))]
    assert moved[0].message.id == problem_id(TEXT) and core.counters["routed"] == 1 and core.counters["received"] == 0
    (decided,) = core.handle_batch([_inbound(TEXT, target, 0, routed=True)])
    assert [o.topic for o in decided] == ["novel"]
    # a routed record is decided wherever it is (never moved twice), and a typo'd copy on its bucket is dropped
    typo = TEXT.replace("market", "markte")
    typo_target = int(core._routing().partitions_of(np.asarray(EMBEDDER.embed([typo]), np.float32))[0])
    (dropped,) = core.handle_batch([_inbound(typo, (typo_target + 1) % 4, 1, routed=True)])
    assert [o.topic for o in dropped] == ["drops"] and dropped[0].message.reason == "near_duplicate"


def test_the_seed_plane_is_fitted_the_same_in_every_replica() -> None:
    seeds = [f"Seed problem number {i}: Ann has {i} pens and {2 * i + 1} pencils; how many in all?" for i in range(40)]
    routers = []
    for order in (seeds, list(reversed(seeds))):  # replicas may read the seeds table in another order
        core = _core(basis="seeds")
        for i, text in enumerate(order):
            core.on_table(Inbound("seeds", None, Seed(id=problem_id(text), problem=text, answer="0"), offset=i))
        routers.append(core._routing())
    vectors = np.asarray(EMBEDDER.embed([TEXT, *seeds]), np.float32)
    assert (routers[0].partitions_of(vectors) == routers[1].partitions_of(vectors)).all()
    assert len(set(routers[0].partitions_of(vectors).tolist())) > 1  # the seeds spread over the partitions


def test_buckets_spread_over_the_partitions() -> None:
    assert [default_planes(n) for n in (1, 2, 3, 4, 6, 8)] == [1, 1, 2, 2, 3, 3]
    router = EmbeddingRouter(np.eye(2, 8, dtype=np.float32)[:1], np.zeros(1, np.float32), partitions=6)
    x = np.zeros((2, 8), np.float32)
    x[0, 0], x[1, 0] = -1.0, 1.0
    assert router.partitions_of(x).tolist() == [0, 3]  # one plane, two buckets: the first and the middle partition
