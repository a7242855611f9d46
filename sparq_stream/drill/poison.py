"""Drill ``poison``: malformed values on every input and table topic while the loop runs.

Kinds: random bytes, wrong shape (valid msgpack that is not this topic's struct), truncated
(a valid value cut short), large (random bytes up to the broker's record limit), unknown
version, key != id (a valid message under a key it does not own), tombstones (on topics whose
records are never deleted: on elites and models a tombstone is a legitimate delete) and invalid
values (well-formed, schema-typed records that break a value rule: NaN, a rate of 7.5, a quality
its solve-rate contradicts, n_correct > k, a negative step: what a foreign producer that read the
JSON Schemas might write). Each one must reach the dead-letter topic with a reason (an invalid
value as ``InvalidValue``), the services must not crash, and the run must end equal to its
undisturbed reference. Dead letters are matched to injected records
by their source topic, partition and offset headers.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import Counter
from typing import Any

import msgpack

from sparq_stream.drill.common import (
    DrillContext,
    DrillResult,
    compare_with_reference,
    drill_config,
    read_elites,
    reference_for,
    result_checks,
)
from sparq_stream.bus.topics import spec_of
from sparq_stream.messages import Candidate, Dropped, Elite, ModelVersion, NovelCandidate, Seed, SolveResult, encode
from sparq_stream.orchestrator.up import run_up

__all__ = ["KINDS", "POISON_TOPICS", "RECORD_LIMIT", "make_poison", "run"]

# every topic a service reads, as input or as table, and the struct each one carries
POISON_TOPICS: dict[str, type] = {
    "seeds": Seed, "candidates": Candidate, "novel": NovelCandidate, "solved": SolveResult,
    "drops": Dropped, "elites": Elite, "models": ModelVersion,
}
KINDS = ("random_bytes", "wrong_shape", "truncated", "large", "unknown_version", "key_not_id", "tombstone", "invalid_value")
_NAN = float("nan")
#: Per topic, the value-rule breaches an ``invalid_value`` record carries (one set per record, in turn).
INVALID_VALUES: dict[str, list[dict[str, Any]]] = {
    "seeds": [{"line": -5}, {"id": "not-a-problem-id"}],
    "candidates": [{"step": -3}, {"model_version": -1}, {"created_at": _NAN}, {"variant": "evil"}],
    "novel": [{"novelty": _NAN}, {"nearest_similarity": 7.5}, {"step": -1}, {"niche": "foreign|niche"}],
    "solved": [{"novelty": _NAN, "quality": 0.9}, {"n_correct": 9}, {"solve_rate": -3.5}, {"solve_rate": float("inf")},
               {"quality": 0.9}],
    "drops": [{"similarity": float("inf")}, {"step": -1}, {"reason": "boring"}],
    "elites": [{"quality": 0.9}, {"solve_rate": 7.5}, {"inserted_step": -2}, {"novelty": _NAN}],
    "models": [{"number": -1}, {"parent_version": 10_000}, {"metrics": {"accuracy": _NAN}}],
}
RECORD_LIMIT = 1_048_400  # Apache Kafka's default message.max.bytes (1,048,588) less the key and batch overhead


def _valid(kind: type, n: int) -> Any:
    """A valid message of ``kind`` that no run would ever produce (its own id)."""
    text = f"Poison problem {n}: what is {n} + {n}?"
    pid = hashlib.sha256(text.encode()).hexdigest()[:32]
    solved = dict(k=4, rollouts_used=4, n_correct=2, solve_rate=0.5, quality=0.5, skills=["poison"])
    body: dict[str, Any] = {
        Seed: dict(id=pid, problem=text, answer=str(2 * n)),
        Candidate: dict(id=pid, problem=text, solution="\\boxed{0}", answer=str(2 * n)),
        NovelCandidate: dict(id=pid, problem=text, solution="\\boxed{0}", answer=str(2 * n)),
        SolveResult: dict(id=pid, problem=text, solution="\\boxed{0}", answer=str(2 * n), **solved),
        Elite: dict(id=pid, problem=text, solution="\\boxed{0}", answer=str(2 * n), slot=f"poison-{n}", **solved),
        Dropped: dict(id=pid, reason="exact_duplicate"),
        ModelVersion: dict(name=f"poison-{n}", number=n, path="/nonexistent"),
    }[kind]
    return kind(**body)


def make_poison(topic: str, kind: str, n: int, rng: random.Random, size: int = 0) -> tuple[bytes | None, bytes | None]:
    """One malformed record for ``topic``: (key, value)."""
    message = _valid(POISON_TOPICS[topic], n)
    key = f"poison-{kind}-{n}".encode()
    if kind == "random_bytes":
        return key, rng.randbytes(rng.randint(1, 512))
    if kind == "wrong_shape":
        shapes: list[Any] = [[1, 2, 3], 42, "text", {"schema": "sparq.metric", "version": 1}, {"id": 7}, None,
                             {"schema": POISON_TOPICS[topic].SCHEMA, "version": 1, "id": [], "problem": {}}]
        return key, msgpack.packb(shapes[n % len(shapes)])
    if kind == "truncated":
        data = encode(message)
        return key, data[: max(1, len(data) // 2 - n % 7)]
    if kind == "large":
        return key, rng.randbytes(size)
    if kind == "unknown_version":
        body = msgpack.unpackb(encode(message))
        body["version"] = 99
        return (message.kafka_key() or "").encode(), msgpack.packb(body)
    if kind == "key_not_id":
        return key, encode(message)
    if kind == "tombstone":
        return key, None
    if kind == "invalid_value":  # under the message's own key: only the value rule can refuse it
        breaches = INVALID_VALUES[topic]
        body = {**msgpack.unpackb(encode(message)), **breaches[n % len(breaches)]}
        return (message.kafka_key() or "").encode(), msgpack.packb(body)
    raise ValueError(f"unknown poison kind {kind!r}")


def _plan(total: int, large: int, seed: int) -> list[tuple[str, str, int]]:
    """(topic, kind, size) for every poison record: kinds and topics round-robin, ``large`` big ones."""
    topics = list(POISON_TOPICS)
    small = [k for k in KINDS if k != "large"]
    # one value at the limit on every topic first, then smaller ones (halving per round)
    plan = [(topics[i % len(topics)], "large", RECORD_LIMIT >> (i // len(topics))) for i in range(large)]
    plan += [(topics[i % len(topics)], small[(i // len(topics)) % len(small)], 0) for i in range(total - large)]
    # a tombstone is a legitimate delete on a topic that carries deletes (elites, models): poison only elsewhere
    plan = [(t, "key_not_id" if k == "tombstone" and spec_of(t).deletes else k, size) for t, k, size in plan]
    random.Random(seed).shuffle(plan)
    return plan


def _inject(bootstrap: str, prefix: str, plan: list[tuple[str, str, int]], sent: dict[Any, tuple[str, str, bytes | None]],
            record: dict[str, Any]) -> None:
    """Produce every poison record; remember where each landed."""
    from kafka import KafkaProducer

    rng = random.Random(11)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=RECORD_LIMIT + 64 * 1024,
                             request_timeout_ms=60_000)
    rejected: Counter[str] = Counter()
    record["t_start"] = time.time()
    try:
        futures = []
        for n, (topic, kind, size) in enumerate(plan):
            key, value = make_poison(topic, kind, n, rng, size)
            futures.append((topic, kind, key, producer.send(f"{prefix}.{topic}", key=key, value=value)))
        producer.flush(120)
        for topic, kind, key, future in futures:
            try:
                meta = future.get(timeout=60)
            except Exception as exc:  # the broker refused it (too large for this broker): not injected
                rejected[f"{kind}: {type(exc).__name__}"] += 1
                continue
            sent[(meta.topic, meta.partition, meta.offset)] = (topic, kind, key)
    finally:
        producer.close(10)
        record["t_end"] = time.time()
        record["rejected_by_broker"] = dict(rejected)


def _dead_letters(bootstrap: str, prefix: str) -> list[Any]:
    """Every record of the run's dead-letter topic, as DeadLetter views."""
    from sparq_stream.bus.compacted import partitions_of
    from sparq_stream.bus.dlq import dead_letter_from_record
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_bytes=64 * 1024 * 1024,
                             max_partition_fetch_bytes=4 * 1024 * 1024)
    try:
        parts = partitions_of(consumer, f"{prefix}.dlq")
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out: list[Any] = []
        idle = 0
        while idle < 6:
            batch = consumer.poll(timeout_ms=500, max_records=2000)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                out.extend(dead_letter_from_record(r.key, r.value, r.headers or []) for r in records)
            if all(consumer.position(p) >= ends[p] for p in parts) and not batch:
                break
        return out
    finally:
        consumer.close()


def _keys_at(bootstrap: str, coords: list[tuple[str, int, int]]) -> dict[tuple[str, int, int], bytes | None]:
    """The key of the record the broker holds at each (topic, partition, offset); absent when there is none."""
    from kafka import KafkaConsumer, TopicPartition

    found: dict[tuple[str, int, int], bytes | None] = {}
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_bytes=64 * 1024 * 1024,
                             max_partition_fetch_bytes=4 * 1024 * 1024)
    try:
        for topic, partition, offset in coords:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, offset)
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and (topic, partition, offset) not in found:
                for rec in consumer.poll(timeout_ms=500, max_records=1).get(tp, []):
                    if rec.offset == offset:
                        found[(topic, partition, offset)] = rec.key
                    break  # past it (a compacted or missing offset) or found: one record is enough
                if consumer.position(tp) > offset:
                    break
    finally:
        consumer.close()
    return found


def run(ctx: DrillContext) -> DrillResult:
    """Inject the poison once scoring has begun, let the run finish, match dead letters to what was sent."""
    budget = ctx.budget
    result = DrillResult("poison", ctx.broker, budget.name)
    out = ctx.folder("poison")
    config = drill_config(ctx, out)
    reference = reference_for(ctx, config)
    plan = _plan(budget.poison, budget.poison_large, seed=3)
    sent: dict[Any, tuple[str, str, bytes | None]] = {}
    record: dict[str, Any] = {}
    threads: list[threading.Thread] = []

    def poison(supervisor: Any, monitor: Any) -> None:
        if threads or monitor.value("archivist", "scored") < 1:
            return
        thread = threading.Thread(target=_inject, args=(config.bootstrap or "", config.prefix, plan, sent, record), daemon=True)
        threads.append(thread)
        thread.start()

    # the run may not end before every poison record is in (a slow injection on a loaded machine)
    up = run_up(config, on_tick=poison, hold=lambda: not threads or threads[0].is_alive())
    for thread in threads:
        thread.join(180)
    dead = _dead_letters(up.bootstrap, up.prefix)
    covered: dict[Any, Any] = {}
    for letter in dead:
        where = (letter.source_topic, letter.partition, letter.offset)
        if where in sent:
            covered.setdefault(where, letter)
    with_reason = [w for w, letter in covered.items() if letter.error_type and letter.error]
    missing = [w for w in sent if w not in covered]
    missed = Counter(f"{sent[w][0]}/{sent[w][1]}" for w in missing)
    # a missed record is the services' miss only if the broker holds it where it acknowledged it
    held = _keys_at(up.bootstrap, missing) if missing else {}
    not_held = [w for w in missing if w not in held or held[w] != sent[w][2]]
    by_reason = Counter(f"{sent[w][0]}: {letter.error_type}" for w, letter in covered.items())
    invalid = [w for w in sent if sent[w][1] == "invalid_value"]
    invalid_as_invalid = [w for w in invalid if w in covered and covered[w].error_type == "InvalidValue"]
    last = max((letter.ts for letter in covered.values()), default=None)
    # the poison written to the elites topic stays there whatever the services did with it: W is the rest
    elites = {k: v for k, v in read_elites(config, up.bootstrap, up.prefix).items() if not k.startswith("poison-")}
    diff = compare_with_reference(reference, out / "archive", elites)
    result.figures.update(
        diff, planned=len(plan), injected=len(sent), dead_lettered=len(covered), dlq_records=len(dead),
        dead_lettered_pct=round(100.0 * len(covered) / len(sent), 2) if sent else 0.0,
        missed_by_topic_kind=dict(sorted(missed.items())), dead_by_topic_reason=dict(sorted(by_reason.items())),
        missed_at=[f"{t}[{p}]@{o}: {'held there, never dead-lettered' if (t, p, o) not in not_held else 'not held there by the broker'}"
                   for t, p, o in missing],
        not_held_by_broker=len(not_held),
        inject_s=round(record.get("t_end", 0) - record.get("t_start", 0), 1),
        drain_s=round(last - record["t_end"], 1) if last and "t_end" in record else None,
        rejected_by_broker=record.get("rejected_by_broker", {}), reason=up.reason, restarts=up.restarts,
        largest=max((s for _, k, s in plan if k == "large"), default=0),
        invalid_values=len(invalid), invalid_values_as_invalid_value=len(invalid_as_invalid),
    )
    result.checks.update(
        all_injected=len(sent) == len(plan),
        all_dead_lettered=bool(sent) and len(covered) == len(sent),
        every_dead_letter_has_reason=len(with_reason) == len(covered),
        invalid_values_dead_lettered_as_invalid_value=bool(invalid) and len(invalid_as_invalid) == len(invalid),
        no_crash=not up.restarts,
        run_completed=up.reason == "budget reached",
        **result_checks(diff),
    )
    return result
