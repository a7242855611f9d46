"""Duplicates passed by 2 novelty replicas vs 1, on the labelled duplicate stream of ``bench/loop.py`` (b).

    python bench/novelty_replicas.py --json novelty_replicas.json
    python bench/novelty_replicas.py --embedder all-MiniLM-L6-v2 --partitions 6

The real novelty cores (classification off, ``follow_novel`` on, no held-out sets) run the
stream of ``labelled_stream`` (seeds indexed first; every copy labelled with its kind and
origin) the way the partitions of ``candidates`` deliver it: each candidate is keyed by its
problem id onto one of ``--partitions`` partitions (Kafka's murmur2 partitioner), and the
partitions are split over the replicas as the range assignor does. Time runs in rounds: each
round ``--arrivals`` more candidates of the stream arrive; every replica handles what arrived
on its partitions as one batch, at the same time as the other replicas; after the round every
replica indexes what the others accepted (the ``novel`` table) and routed candidates arrive on
their bucket's partition for the next round. A batch is in (partition, offset) order, as the
process wrapper hands a poll's records to the core. So two copies arriving in one round on different
replicas meet only through routing, as in the streaming run.

Three runs: 1 replica; 2 replicas keyed by id (``follow_novel`` only); 2 replicas routed by
embedding bucket (``route_partitions``). Figure: duplicates passed (accepted problems beyond
the first of each origin's group; a seed's group allows none) out of all labelled copies, and
the difference from 1 replica in percentage points (goal: at most +0.5).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from loop import SEEDS_FILE, _data_dir, labelled_stream  # noqa: E402

from kafka.partitioner.default import murmur2  # noqa: E402

from sparq_stream.core import Inbound  # noqa: E402
from sparq_stream.cores.novelty import HeldOut, NoveltyConfig, NoveltyCore  # noqa: E402
from sparq_stream.cores.routing import default_planes  # noqa: E402
from sparq_stream.ids import problem_id  # noqa: E402
from sparq_stream.messages import Candidate, Seed  # noqa: E402


def _partition(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def _owners(partitions: int, replicas: int) -> dict[int, int]:
    """Partition -> replica, as the range assignor splits one topic."""
    per, extra = divmod(partitions, replicas)
    owner, start = {}, 0
    for r in range(replicas):
        size = per + (1 if r < extra else 0)
        for p in range(start, start + size):
            owner[p] = r
        start += size
    return owner


def run(seeds: list[str], stream: list[dict[str, Any]], embedder: Any, *, replicas: int, partitions: int, routed: bool,
        arrivals: int, basis: str = "seeds") -> list[str]:
    """The decision (accept or a drop reason) for every item of the stream."""
    heldout = HeldOut((), (), np.zeros((0, embedder.dim), np.float32))
    config = NoveltyConfig(classify=False, follow_novel=True, contamination_check=False, route_partitions=partitions if routed else 0,
                           route_planes=default_planes(replicas), route_basis=basis)
    cores = [NoveltyCore(config, embedder=embedder, heldout=heldout) for _ in range(replicas)]
    for core in cores:
        for i, text in enumerate(seeds):
            core.on_table(Inbound("seeds", None, Seed(id=problem_id(text), problem=text, answer="0"), offset=i))
        core.tick(0.0)
    owner = _owners(partitions, replicas)
    offsets = [0] * partitions
    novel_offsets = [0] * partitions
    waiting: list[Inbound] = []
    index_of: dict[str, int] = {}  # parent id (one per stream item) -> stream index
    decisions = ["?"] * len(stream)
    cursor = 0
    while cursor < len(stream) or waiting:
        for j in range(cursor, min(cursor + arrivals, len(stream))):
            text = stream[j]["problem"]
            cand = Candidate(id=problem_id(text), problem=text, solution="\\boxed{1}", answer="1", parent_ids=[f"p{j}"])
            p = _partition(cand.id, partitions)
            waiting.append(Inbound("candidates", cand.id, cand, partition=p, offset=offsets[p]))
            offsets[p] += 1
            index_of[f"p{j}"] = j
        cursor += arrivals
        batches: list[list[Inbound]] = [[] for _ in cores]
        for item in waiting:
            batches[owner[item.partition]].append(item)
        for batch in batches:  # the wrapper hands a poll's records over sorted by partition, then offset
            batch.sort(key=lambda item: (item.partition, item.offset))
        waiting = []
        accepted: list[tuple[int, Any]] = []
        for r, batch in enumerate(batches):
            if not batch:
                continue
            for item, outs in zip(batch, cores[r].handle_batch(batch)):
                out = outs[0]
                j = index_of[item.message.parent_ids[0]]
                if out.topic == "candidates":  # moved to its bucket's partition: arrives next round
                    p = int(out.partition)
                    waiting.append(Inbound("candidates", item.key, out.message, partition=p, offset=offsets[p], headers=out.headers))
                    offsets[p] += 1
                elif out.topic == "novel":
                    decisions[j] = "accept"
                    accepted.append((r, out.message))
                else:
                    decisions[j] = str(out.message.reason)
        for r, message in accepted:  # the novel table: every other replica indexes what one accepted
            p = _partition(message.id, partitions)
            for other, core in enumerate(cores):
                if other != r:
                    core.on_table(Inbound("novel", message.id, message, partition=p, offset=novel_offsets[p]))
            novel_offsets[p] += 1
    assert "?" not in decisions
    return decisions


def _duplicates_passed(seeds: list[str], stream: list[dict[str, Any]], decisions: list[str]) -> int:
    """Accepted problems beyond the first of each origin's group (none for a seed's group: the seed is indexed).

    A group is an origin and its labelled copies. Replicas may decide a copy before its origin
    (a routed candidate arrives a round later); either way one member of a group passing is
    right, and each further one is a duplicate passed. With one replica, in stream order, this
    is the number of labelled copies accepted.
    """
    seed_set = set(seeds)
    accepted: dict[str, int] = {}
    for item, decision in zip(stream, decisions):
        if decision == "accept":
            accepted[item["origin"]] = accepted.get(item["origin"], 0) + 1
    return sum(max(0, n - (0 if origin in seed_set else 1)) for origin, n in accepted.items())


def main() -> int:
    """Run the three configurations and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedder", default="hash", help="hash or all-MiniLM-L6-v2")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--arrivals", type=int, default=64, help="candidates arriving per round (a step of b=64)")
    parser.add_argument("--dup-seeds", type=int, default=40)
    parser.add_argument("--dup-origins", type=int, default=80)
    parser.add_argument("--dup-fresh", type=int, default=120)
    parser.add_argument("--stream-seeds", type=lambda v: [int(x) for x in v.split(",")], default=[7, 8, 9],
                        help="labelled streams to run, comma-separated (figures per stream and their mean)")
    parser.add_argument("--data", default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from sparq_stream.seeds import read_seeds

    problems = [s.problem for s in read_seeds(_data_dir(args.data) / SEEDS_FILE)]
    if args.embedder == "hash":
        from sparq_stream.models.hashing_embedder import HashingEmbedder

        embedder: Any = HashingEmbedder(seed=5)
    else:
        from sparq_stream.models.embeddings import SentenceTransformerEmbedder

        embedder = SentenceTransformerEmbedder()
    runs = (("1 replica", 1, False, "seeds"), ("2 replicas, keyed by id", 2, False, "seeds"),
            ("2 replicas, routed (random plane)", 2, True, "random"), ("2 replicas, routed (seeds' principal plane)", 2, True, "seeds"))
    figures: dict[str, Any] = {"embedder": args.embedder, "partitions": args.partitions, "arrivals": args.arrivals,
                               "streams": {}, "mean": {}}
    for stream_seed in args.stream_seeds:
        seeds, stream = labelled_stream(problems, n_seeds=args.dup_seeds, n_origins=args.dup_origins, n_fresh=args.dup_fresh,
                                        seed=stream_seed)
        copies = sum(1 for c in stream if c["kind"] != "distinct")
        rows: dict[str, Any] = {}
        for name, replicas, routed, basis in runs:
            decisions = run(seeds, stream, embedder, replicas=replicas, partitions=args.partitions, routed=routed,
                            arrivals=args.arrivals, basis=basis)
            passed = _duplicates_passed(seeds, stream, decisions)
            rows[name] = {"duplicates_passed": passed, "copies": copies, "passed_pct": round(100.0 * passed / copies, 2)}
        for row in rows.values():
            row["vs_1_replica_pp"] = round(row["passed_pct"] - rows["1 replica"]["passed_pct"], 2)
        figures["streams"][str(stream_seed)] = rows
    for name, *_rest in runs:
        values = [figures["streams"][str(s)][name] for s in args.stream_seeds]
        figures["mean"][name] = {k: round(sum(v[k] for v in values) / len(values), 2) for k in ("passed_pct", "vs_1_replica_pp")}
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
