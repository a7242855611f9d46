"""The loop benchmark: three ratios, each measured in one run of this script.

(a) scaling: scored candidates/s with 1 vs 2 solver replicas (``sparq up`` on the embedded
    Tansu broker, every service its own process) on a latency-bound scripted solver: each
    backend call sleeps ``--latency`` seconds and holds at most ``--max-batch`` candidates,
    like a model server with a fixed batch capacity. Throughput is the archivist's
    ``scored`` counter between the moments it passes 10% and 90% of the run's total
    (start-up, group joins and the drain at the end excluded). Measured in the mutator's
    asynchronous mode (it keeps up to ``max_in_flight`` candidates downstream: the steady
    state a long job runs in) and in the paper's synchronous rounds (a step of b
    candidates must be scored before the next starts), where each step is profiled from
    the record timestamps on the broker: its length split into the novelty hop, the
    solving and the barrier (last result to the next step's first candidate), against the
    backend calls of its busiest replica (a partial batch costs a whole call). Busy
    fraction per replica: time in the backend (rollouts and the audit's verifier calls)
    over wall time.
(b) duplicates: a loop whose generator repeats itself (scripted children that cycle
    through a small pool of problems, exact copies and near copies) on the embedded
    broker; from the archive on disk, the share of rollouts spent on a problem that is an
    exact or near duplicate (cosine >= the novelty threshold, same embedder) of an
    earlier-scored problem or a seed; and what the novelty filter dropped (x K rollouts saved).
(c) coverage: skill-sets covered (distinct niches of kept children) by each variant at an
    equal candidate budget, with the scripted backend's heritable skills (a child inherits
    its parent's skill-set with one random change), on the in-memory reference runner
    (the same cores and flags as ``sparq up``, deterministic), mean over repetitions.

    python bench/loop.py                 # the full run (about 6 minutes on 2 cores)
    python bench/loop.py --quick         # smaller budgets (about 3 minutes)
    python bench/loop.py --only c --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: The seeds: the repository's 512 GSM8K training problems (``--data DIR`` reads DIR/gsm8k_train.jsonl instead).
DEFAULT_SEEDS = Path(__file__).resolve().parents[1] / "examples" / "seeds" / "gsm8k_train_512.jsonl"
SEEDS_FILE = "gsm8k_train.jsonl"
#: The small skill vocabulary of (c): 12 skills, so 12 + 66 + 220 = 298 possible skill-sets.
VOCAB_C = (
    "addition", "subtraction", "multiplication", "division", "fraction", "percentage",
    "ratio", "area", "probability", "counting", "average", "linear equation",
)
#: Scaling goals of issue 8 (replicas -> ratio against 1 replica); other counts: 0.9 x replicas.
TARGET_SCALING = {2: 1.9, 4: 3.6}

log = logging.getLogger("bench.loop")


# ---------------------------------------------------------------------- helpers


def _seeds_file(arg: str | None) -> Path:
    """The GSM8K seed file: DIR/gsm8k_train.jsonl with ``--data DIR``, else the repository's 512 seeds."""
    path = Path(arg) / SEEDS_FILE if arg else DEFAULT_SEEDS
    if not path.is_file():
        raise SystemExit(f"cannot find {path}: pass --data DIR (a folder holding {SEEDS_FILE})")
    return path


def _write_vocab(path: Path, skills: Sequence[str]) -> Path:
    from sparq_stream.qd.vocabulary import Vocabulary

    Vocabulary(tuple(skills)).save(path)
    return path


def _rate_between(samples: list[tuple[float, float]], total: float, lo: float = 0.1, hi: float = 0.9) -> tuple[float, float]:
    """Scored/s between the first samples at or above lo*total and hi*total; and that window's length."""
    t_lo = next((t for t, v in samples if v >= lo * total), None)
    v_lo = next((v for t, v in samples if v >= lo * total), None)
    t_hi = next((t for t, v in samples if v >= hi * total), None)
    v_hi = next((v for t, v in samples if v >= hi * total), None)
    if t_lo is None or t_hi is None or v_lo is None or v_hi is None or t_hi <= t_lo:
        return float("nan"), 0.0
    return (v_hi - v_lo) / (t_hi - t_lo), t_hi - t_lo


def _per_instance(monitor: Any, service: str, name: str) -> dict[str, float]:
    """A counter per instance of a service, summed over the instance's restarts."""
    return monitor.per_instance(service, name)


# ---------------------------------------------------------------------- (a) solver replicas


def _scaling_run(
    data: Path, work: Path, bootstrap: str, *, solvers: int, synchronous: bool, batch: int, args: argparse.Namespace
) -> dict[str, Any]:
    from sparq_stream.orchestrator.up import UpConfig, run_up

    script = {"seed": 3, "solve_rates": [0.25, 0.5, 0.75]}
    solver_options = {"script": script, "latency_per_call_s": args.latency}
    budget = args.scaling_candidates
    poll = args.solver_poll_records or args.max_batch * 2  # a short poll lingers for a whole poll: full calls only
    mutator = ["--chunk-size", "16"]
    if synchronous:
        mutator += ["--synchronous"]
        steps = args.sync_steps or max(4, args.sync_candidates // batch)
    else:
        mutator += ["--no-synchronous", "--max-in-flight", str(args.max_in_flight)]
        steps = None
    config = UpConfig(
        seeds=data,
        out=work,
        steps=steps,
        max_candidates=None if synchronous else budget,
        variant=args.variant,
        backend="scripted",
        backend_options={"script": script},
        embedder="hash",
        bootstrap=bootstrap,
        partitions=args.partitions,
        solvers=solvers,
        batch_size=batch,
        k=args.k,
        seed=11,
        seed_limit=200,
        label_seeds=False,
        contamination_check=False,
        timeout_s=args.run_timeout,
        metrics_interval_s=0.5,
        extra={
            "solver": [
                "--backend-options", json.dumps(solver_options),
                "--max-batch", str(args.max_batch),
                "--max-poll-records", str(poll),
                "--checker-workers", "1",
            ] + (["--batch-linger-records", str(poll), "--batch-linger-ms", str(args.solver_linger_ms)]
                 if args.solver_linger_ms else []),
            "mutator": mutator,
        },
    )
    samples: list[tuple[float, float]] = []
    per_solver: dict[str, float] = {}
    busy: list[tuple[float, dict[str, float]]] = []
    solving: list[tuple[float, dict[str, float]]] = []
    calls: dict[str, float] = {}
    prompts: dict[str, float] = {}

    def tick(supervisor: Any, monitor: Any) -> None:
        now = time.monotonic()
        samples.append((now, monitor.value("archivist", "scored")))
        per_solver.update(_per_instance(monitor, "solver", "candidates"))
        busy.append((now, _per_instance(monitor, "solver", "busy_seconds")))
        solving.append((now, _per_instance(monitor, "solver", "solve_seconds")))
        calls.update(_per_instance(monitor, "solver", "generate_calls"))
        prompts.update(_per_instance(monitor, "solver", "generate_prompts"))

    started = time.monotonic()
    result = run_up(config, on_tick=tick)
    wall = time.monotonic() - started
    total = float(result.summary.get("scored", samples[-1][1] if samples else 0.0))
    rate, window = _rate_between(samples, total)
    stages = result.summary.get("stages", {})
    return {
        "busy_fraction": _busy_fractions(samples, busy, total),
        "solve_fraction": _busy_fractions(samples, solving, total),
        "generate_calls": stages.get("solver.generate_calls"),
        "batch_fill": {name: prompts.get(name, 0.0) / n / args.max_batch for name, n in sorted(calls.items()) if n},
        "steps": _step_profile(result.bootstrap, result.prefix, solvers, args.max_batch, args.latency)
        if synchronous
        else None,
        "solvers": solvers,
        "mode": f"synchronous b={batch}" if synchronous else "asynchronous",
        "batch_size": batch,
        "scored": int(total),
        "rate": rate,
        "window_s": window,
        "wall_s": wall,
        "reason": result.reason,
        "per_solver_candidates": per_solver,
    }


def _busy_fractions(
    samples: list[tuple[float, float]], busy: list[tuple[float, dict[str, float]]], total: float
) -> dict[str, float]:
    """Per solver replica: seconds inside its backend / wall seconds, between the 10% and 90% marks of ``scored``.

    ``busy_seconds`` is the solver core's counter of time spent in ``backend.generate``
    (what a GPU would be generating: the rollouts and the validity audit's verifier calls;
    ``solve_seconds`` counts the rollouts alone); both ends are read from the same monitor ticks, so
    the metrics' reporting lag cancels.
    """
    t_lo = next((t for t, v in samples if v >= 0.1 * total), None)
    t_hi = next((t for t, v in samples if v >= 0.9 * total), None)
    if t_lo is None or t_hi is None or t_hi <= t_lo:
        return {}
    at_lo = next((b for t, b in busy if t >= t_lo), {})
    at_hi = next((b for t, b in busy if t >= t_hi), {})
    return {name: (at_hi[name] - at_lo.get(name, 0.0)) / (t_hi - t_lo) for name in sorted(at_hi)}


def _read_topic(bootstrap: str, topic: str) -> list[tuple[int, int, Any]]:
    """Every record of a topic as (partition, timestamp ms, decoded message), read from the beginning."""
    from kafka import KafkaConsumer

    from sparq_stream.bus.compacted import caught_up, partitions_of
    from sparq_stream.messages import decode

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        parts = partitions_of(consumer, topic)
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: list[tuple[int, int, Any]] = []
        deadline = time.monotonic() + 60
        while not caught_up(consumer, parts) and time.monotonic() < deadline:
            for tp, recs in consumer.poll(timeout_ms=200).items():
                out.extend((r.partition, r.timestamp, decode(r.value)) for r in recs if r.value is not None)
        return out
    finally:
        consumer.close()


def _step_profile(bootstrap: str, prefix: str, solvers: int, max_batch: int, latency: float) -> dict[str, Any]:
    """Per synchronous step, from the record timestamps of candidates, novel and solved on the broker.

    A step's length (its first candidate to the next step's first candidate) splits into
    ``novelty`` (first candidate -> first novel record), ``solving`` (first novel -> last
    solved record) and ``between`` (last solved -> the next step's first candidate: the
    barrier, the mutator's state record and its generation). ``call_bound`` is what the
    backend calls alone need: the replica holding the most of the step's novel records
    (replicas own contiguous ranges of partitions, kafka-python's range assignor) needs
    ceil(n / max_batch) calls of ``latency`` s.
    """
    from sparq_stream.bus.topics import TopicNames

    names = TopicNames(prefix)
    first: dict[int, float] = {}
    for _, ts, msg in _read_topic(bootstrap, names.topic("candidates")):
        first[msg.step] = min(first.get(msg.step, math.inf), ts / 1000)
    novel: dict[int, list[tuple[int, float]]] = {}
    for part, ts, msg in _read_topic(bootstrap, names.topic("novel")):
        novel.setdefault(msg.step, []).append((part, ts / 1000))
    last_solved: dict[int, float] = {}
    for _, ts, msg in _read_topic(bootstrap, names.topic("solved")):
        last_solved[msg.step] = max(last_solved.get(msg.step, 0.0), ts / 1000)
    rows = []
    for step in sorted(first):
        if step == min(first) or step + 1 not in first or step not in novel or step not in last_solved:
            continue  # the first step includes start-up, the last has no successor
        loads = [0] * solvers
        for part, _ in novel[step]:
            loads[part % solvers] += 1
        first_novel = min(t for _, t in novel[step])
        rows.append({
            "step_s": first[step + 1] - first[step],
            "novelty_s": first_novel - first[step],
            "novel_spread_s": max(t for _, t in novel[step]) - first_novel,
            "solving_s": last_solved[step] - first_novel,
            "between_s": first[step + 1] - last_solved[step],
            "call_bound_s": max(math.ceil(n / max_batch) for n in loads) * latency,
            "busiest_share": max(loads) / max(1, sum(loads)),
            "partition_loads": [sum(1 for p, _ in novel[step] if p == q) for q in range(1 + max(p for p, _ in novel[step]))],
        })
    if not rows:
        return {}
    mean = {key: statistics.fmean(r[key] for r in rows) for key in rows[0] if key != "partition_loads"}
    return {
        "measured_step_s": mean["step_s"],
        "novelty_s": mean["novelty_s"],
        "solving_s": mean["solving_s"],
        "between_s": mean["between_s"],
        "novel_spread_s": mean["novel_spread_s"],
        "call_bound_step_s": mean["call_bound_s"],
        "overhead_step_s": mean["step_s"] - mean["call_bound_s"],
        "busiest_replica_share": mean["busiest_share"],
        "steps_measured": len(rows),
        "partition_loads": [r["partition_loads"] for r in rows],
    }


def bench_scaling(data: Path, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """(a) scored candidates/s with 1 and 2 solver replicas, asynchronous and synchronous mutator."""
    from sparq_stream.brokers.tansu import EmbeddedBroker

    broker = EmbeddedBroker(log_path=root / "broker.log")
    bootstrap = broker.start()
    out: dict[str, Any] = {
        "settings": {
            "latency_per_call_s": args.latency, "max_batch": args.max_batch, "partitions": args.partitions,
            "k": args.k, "candidates_asynchronous": args.scaling_candidates, "max_in_flight": args.max_in_flight,
            "synchronous_candidates": args.sync_candidates, "synchronous_batches": args.sync_batches,
            "ideal_rate_per_solver": args.max_batch / args.latency, "variant": args.variant,
            "solver_poll_records": args.solver_poll_records or args.max_batch * 2, "solver_linger_ms": args.solver_linger_ms,
        },
        "runs": [],
    }
    try:
        modes = [("asynchronous", args.batch)] if "asynchronous" in args.modes else []
        modes += [("synchronous", b) for b in args.sync_batches] if "synchronous" in args.modes else []
        for kind, batch in modes:
            sync = kind == "synchronous"
            mode = f"synchronous b={batch}" if sync else kind
            rates = {}
            counts = sorted({int(c) for c in str(args.solver_counts).split(",")})  # without 1: busy fractions, no ratio
            for solvers in counts:
                work = root / f"a-{kind}-{batch}-{solvers}"
                run = _scaling_run(data, work, bootstrap, solvers=solvers, synchronous=sync, batch=batch, args=args)
                out["runs"].append(run)
                rates[solvers] = run["rate"]
                log.info("(a) %s, %d solver(s): %.1f scored/s (%d scored, window %.1fs, %s)",
                         mode, solvers, run["rate"], run["scored"], run["window_s"], run["per_solver_candidates"])
            for solvers in counts[1:] if counts[0] == 1 else ():
                ratio = rates[solvers] / rates[1] if rates[1] > 0 else float("nan")
                out[f"ratio_{mode}" if solvers == 2 else f"ratio_{mode}_x{solvers}"] = ratio
    finally:
        broker.stop()
    return out


# ---------------------------------------------------------------------- (b) duplicates

#: Copy kinds the generator makes, each labelled at construction (the ground truth of (b)).
COPY_KINDS = ("exact", "normalised", "edit", "paraphrase", "numbers")
_SYNONYMS = (("How many", "What is the number of"), ("bought", "purchased"), ("has", "owns"), ("each", "every"),
             ("gives", "hands"), ("total", "overall"), ("buys", "purchases"), ("makes", "earns"))
_WRAPPERS = ("Question: {}", "{} Show your work.", "Please solve this: {}", "{} Explain your answer.",
             "Here is a problem. {}", "Solve: {}")


def _edit(text: str, rng: np.random.Generator) -> str:
    """One to three character edits (swap, drop or double a letter): a typo'd copy."""
    chars = list(text)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(1, max(2, len(chars) - 2)))
        op = int(rng.integers(0, 3))
        if op == 0:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        elif op == 1:
            del chars[i]
        else:
            chars.insert(i, chars[i])
    return "".join(chars)


def _paraphrase(text: str, rng: np.random.Generator) -> str:
    """A template wrapper plus every synonym swap that applies: same problem, same numbers, other words."""
    import re as _re

    for a, b in _SYNONYMS:
        text = _re.sub(rf"\b{_re.escape(a)}\b", b, text)
    return _WRAPPERS[int(rng.integers(0, len(_WRAPPERS)))].format(text)


def _numbers(text: str, rng: np.random.Generator) -> str:
    """Every number changed (a different answer, the same wording): a number-swap copy."""
    import re as _re

    return _re.sub(r"\d+", lambda m: str(int(m.group()) + int(rng.integers(1, 9))), text)


def labelled_stream(problems: list[str], *, n_seeds: int, n_origins: int, n_fresh: int, seed: int) -> tuple[list[str], list[dict[str, Any]]]:
    """The seeds and a candidate stream in which every copy is labelled with its kind and origin.

    Origins are distinct GSM8K problems: ``n_seeds`` seeds (indexed before the stream) and
    ``n_origins`` candidates that appear once as themselves (label ``distinct``) and are
    copied later; ``n_fresh`` more distinct problems are never copied. Each origin gets one
    copy of every kind in COPY_KINDS: ``exact`` (the same text), ``normalised`` (case and
    spacing: the same problem id), ``edit`` (1-3 typos), ``paraphrase`` (a wrapper template
    and synonym swaps), ``numbers`` (every number changed). A copy always comes after its
    origin. Ground truth: a copy should be dropped, a distinct problem kept.
    """
    rng = np.random.default_rng(seed)
    pool = list(dict.fromkeys(problems))
    order = rng.permutation(len(pool))
    seeds = [pool[i] for i in order[:n_seeds]]
    origins = [pool[i] for i in order[n_seeds : n_seeds + n_origins]]
    fresh = [pool[i] for i in order[n_seeds + n_origins : n_seeds + n_origins + n_fresh]]
    makers = {
        "exact": lambda t: t,
        "normalised": lambda t: "  " + t.upper().replace(" ", "  ") + " ",
        "edit": lambda t: _edit(t, rng),
        "paraphrase": lambda t: _paraphrase(t, rng),
        "numbers": lambda t: _numbers(t, rng),
    }
    firsts = [{"problem": t, "kind": "distinct", "origin": t} for t in origins + fresh]
    firsts = [firsts[i] for i in rng.permutation(len(firsts))]
    copies = [{"problem": makers[k](t), "kind": k, "origin": t} for t in seeds + origins for k in COPY_KINDS]
    copies = [copies[i] for i in rng.permutation(len(copies))]
    stream: list[dict[str, Any]] = []
    placed: set[str] = set(seeds)
    pending = list(copies)
    for item in firsts:  # interleave: after each distinct problem, the copies whose origin has appeared
        stream.append(item)
        placed.add(item["origin"])
        ready = [c for c in pending if c["origin"] in placed and rng.random() < 0.5]
        stream.extend(ready)
        pending = [c for c in pending if c not in ready]
    stream.extend(pending)
    return seeds, stream


def _filter_decisions(seeds: list[str], stream: list[dict[str, Any]], embedder: Any, *, on: bool, batch: int) -> list[str]:
    """Run the novelty core over the stream in batches; the decision per candidate: accept or the drop reason."""
    from sparq_stream.core import Inbound
    from sparq_stream.cores.novelty import HeldOut, NoveltyConfig, NoveltyCore
    from sparq_stream.ids import problem_id
    from sparq_stream.messages import Candidate, Seed

    if not on:
        return ["accept"] * len(stream)
    heldout = HeldOut((), (), np.zeros((0, embedder.dim), np.float32))
    core = NoveltyCore(NoveltyConfig(classify=False, follow_novel=False, contamination_check=False), embedder=embedder, heldout=heldout)
    for i, text in enumerate(seeds):
        core.on_table(Inbound("seeds", None, Seed(id=problem_id(text), problem=text, answer="0"), offset=i))
    core.tick(0.0)
    decisions = []
    for start in range(0, len(stream), batch):
        chunk = stream[start : start + batch]
        cands = [Candidate(id=problem_id(c["problem"]), problem=c["problem"], solution="\\boxed{1}", answer="1",
                           parent_ids=[f"p{start + j}"]) for j, c in enumerate(chunk)]
        outs = core.handle_batch([Inbound("candidates", c.id, c, offset=start + j) for j, c in enumerate(cands)])
        for out in outs:
            msg = out[0].message if out else None
            decisions.append("accept" if out and out[0].topic == "novel" else str(getattr(msg, "reason", "dropped")))
    return decisions


def _score_filter(stream: list[dict[str, Any]], decisions: list[str], k: int) -> dict[str, Any]:
    """Rollouts spent on labelled copies per kind, false drops, precision and recall of the drops."""
    per_kind: dict[str, dict[str, int]] = {}
    for item, decision in zip(stream, decisions):
        row = per_kind.setdefault(item["kind"], {"candidates": 0, "dropped": 0, "rollouts": 0})
        row["candidates"] += 1
        if decision == "accept":
            row["rollouts"] += k
        else:
            row["dropped"] += 1
    copies = sum(v["candidates"] for n, v in per_kind.items() if n != "distinct")
    dropped_copies = sum(v["dropped"] for n, v in per_kind.items() if n != "distinct")
    false_drops = per_kind.get("distinct", {}).get("dropped", 0)
    dropped = dropped_copies + false_drops
    rollouts = sum(v["rollouts"] for v in per_kind.values())
    wasted = sum(v["rollouts"] for n, v in per_kind.items() if n != "distinct")
    return {
        "per_kind": per_kind,
        "rollouts": rollouts,
        "rollouts_on_copies": wasted,
        "share_on_copies": wasted / rollouts if rollouts else float("nan"),
        "false_drops": false_drops,
        "precision": dropped_copies / dropped if dropped else float("nan"),
        "recall": dropped_copies / copies if copies else float("nan"),
        "recall_without_numbers": (
            (dropped_copies - per_kind.get("numbers", {}).get("dropped", 0))
            / (copies - per_kind.get("numbers", {}).get("candidates", 0))
        ) if copies else float("nan"),
    }


def bench_duplicates(data: Path, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """(b) the novelty filter against the generator's labels: rollouts on copies per kind, false drops, precision, recall."""
    from sparq_stream.models.hashing_embedder import HashingEmbedder
    from sparq_stream.seeds import read_seeds

    problems = [s.problem for s in read_seeds(data)]
    n = dict(n_seeds=args.dup_seeds, n_origins=args.dup_origins, n_fresh=args.dup_fresh)
    seeds, stream = labelled_stream(problems, seed=7, **n)
    embedders: dict[str, Any] = {"hash": HashingEmbedder(seed=5)}
    if args.dup_embedders != ["hash"]:
        from sparq_stream.models.embeddings import SentenceTransformerEmbedder

        embedders["all-MiniLM-L6-v2"] = SentenceTransformerEmbedder()
    out: dict[str, Any] = {
        "settings": {**n, "candidates": len(stream), "k": args.k, "batch": 32, "dup_threshold": 0.95, "exact_threshold": 0.999,
                     "kinds": {kind: sum(1 for c in stream if c["kind"] == kind) for kind in ("distinct", *COPY_KINDS)}},
        "runs": {},
    }
    for name, embedder in embedders.items():
        if name not in args.dup_embedders and name != "hash":
            continue
        for on in (True, False):
            started = time.monotonic()
            decisions = _filter_decisions(seeds, stream, embedder, on=on, batch=32)
            result = _score_filter(stream, decisions, args.k)
            result["seconds"] = time.monotonic() - started
            out["runs"][f"{name}, filter {'on' if on else 'off'}"] = result
            log.info("(b) %s filter %s: %s", name, "on" if on else "off", {k: v for k, v in result.items() if k != "per_kind"})
    return out


# ---------------------------------------------------------------------- (c) coverage

#: What the scripted generator of (c) assumes: the figures measure the selection policy
#: under THIS model of mutation, not a language model.
COVERAGE_ASSUMPTIONS = (
    "seed skills: 1-3 of the 12-skill vocabulary drawn by a hash of the seed's text (the text matters only through its hash)",
    "a child inherits its parent's skill-set with at most one change: replace one skill (p=0.3), add one (0.15), drop one (0.15), else the same",
    "a child's solve-rate is drawn by a hash of its text from {0, .125, .25, .5, .75, .875, 1}, independent of its skills and its parent",
    "the classifier reads the inherited skills back exactly (no labelling noise); K=4 rollouts, exactly round(SR*K) correct",
)


def math_style_seeds(path: Path, n: int = 120, seed: int = 0) -> Path:
    """Write a procedural MATH-style seed file (LaTeX, algebra / number theory / counting / geometry); NOT math500."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b, c = (int(x) for x in rng.integers(2, 13, 3))
        kind = i % 6
        if kind == 0:
            r1, r2 = int(rng.integers(-9, 10)), int(rng.integers(-9, 10))
            q, ans = f"Find the sum of all real $x$ such that $x^2 {-(r1 + r2):+d}x {r1 * r2:+d} = 0$.", str(r1 + r2)
        elif kind == 1:
            q, ans = f"What is the remainder when ${a}^{{{b + 5}}}$ is divided by ${c + 1}$?", str(pow(a, b + 5, c + 1))
        elif kind == 2:
            n_, k = a + 4, min(b, a + 3)
            q, ans = f"Compute $\\dbinom{{{n_}}}{{{k}}}$.", str(__import__("math").comb(n_, k))
        elif kind == 3:
            q, ans = f"A right triangle has legs of length ${3 * a}$ and ${4 * a}$. What is the length of its hypotenuse?", str(5 * a)
        elif kind == 4:
            q, ans = f"If $f(x) = {a}x + {b}$, what is $f(f({c}))$?", str(a * (a * c + b) + b)
        else:
            q, ans = f"How many positive divisors does ${a * b * c}$ have?", str(sum(1 for d in range(1, a * b * c + 1) if (a * b * c) % d == 0))
        rows.append({"problem": q, "answer": ans, "solution": f"The answer is $\\boxed{{{ans}}}$."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _coverage_run(seeds: Path, work: Path, vocab: Path, *, variant: str, rep: int, label: bool, args: argparse.Namespace) -> dict[str, Any]:
    from sparq_stream.orchestrator.local import run_local
    from sparq_stream.orchestrator.up import UpConfig

    script = {"seed": rep, "skill_model": "inherit", "skill_vocabulary": list(VOCAB_C), "drift": args.drift}
    config = UpConfig(
        seeds=seeds,
        out=work,
        steps=args.cov_steps,
        variant=variant,
        backend="scripted",
        backend_options={"script": script},
        embedder="hash",
        batch_size=args.cov_batch,
        k=4,
        seed=rep,
        seed_limit=args.cov_seeds,
        label_seeds=label,
        vocabulary=vocab,
        contamination_check=False,
    )
    result = run_local(config)
    kept = [r for r in result.results if r.quality > 0]
    quarters = {}
    for q in (1, 2, 3, 4):
        last = math.ceil(args.cov_steps * q / 4) - 1
        quarters[f"{q * 25}%"] = len({r.niche for r in kept if r.step <= last})
    return {
        "coverage": len({r.niche for r in kept}),
        "scored": len(result.results),
        "dropped": len(result.drops),
        "kept": len(kept),
        "over_budget": quarters,
    }


def _spread(values: list[float]) -> dict[str, Any]:
    """Mean, min, max, standard deviation and a 95% t-interval of the mean."""
    from statistics import stdev

    n = len(values)
    mean = statistics.fmean(values)
    sd = stdev(values) if n > 1 else 0.0
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}.get(n, 2.0)
    half = t * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "min": min(values), "max": max(values), "sd": sd, "ci95": (mean - half, mean + half), "runs": values}


def bench_coverage(data: Path, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """(c) skill-sets covered by each variant at an equal budget, >= 5 seeds each, on a GSM8K and a MATH-style seed set."""
    vocab = _write_vocab(root / "c-vocabulary.json", VOCAB_C)
    seed_sets = {"gsm8k": data, "math-style (procedural)": math_style_seeds(root / "c-math-style.jsonl")}
    seed_sets = {k: v for k, v in seed_sets.items() if k.split()[0] in args.cov_sets}
    rows = [(v, True) for v in args.cov_variants]
    out: dict[str, Any] = {
        "settings": {
            "vocabulary": len(VOCAB_C), "skill_sets_possible": sum(math.comb(len(VOCAB_C), k) for k in (1, 2, 3)),
            "seeds": args.cov_seeds, "steps": args.cov_steps, "batch_size": args.cov_batch,
            "candidates": args.cov_steps * args.cov_batch, "k": 4, "repetitions": args.cov_reps, "drift": args.drift,
            "assumptions": list(COVERAGE_ASSUMPTIONS),
        },
        "seed_sets": {},
    }
    for set_name, seeds in seed_sets.items():
        block: dict[str, Any] = {"file": str(seeds), "variants": {}}
        for variant, label in rows:
            runs = []
            started = time.monotonic()
            for rep in range(args.cov_reps):
                work = root / f"c-{set_name.split()[0]}-{variant}-{rep}"
                runs.append(_coverage_run(seeds, work, vocab, variant=variant, rep=rep, label=label, args=args))
            block["variants"][variant] = {**_spread([float(r["coverage"]) for r in runs]), "seconds": time.monotonic() - started}
            log.info("(c) %s %s: coverage %s", set_name, variant, [r["coverage"] for r in runs])
        base = block["variants"].get("static-uniform", {}).get("mean")
        qd = block["variants"].get("qd", {}).get("mean")
        block["ratio_qd_static_uniform"] = qd / base if base and qd is not None else float("nan")
        out["seed_sets"][set_name] = block
    return out


# ---------------------------------------------------------------------- the table


def _table(figures: dict[str, Any]) -> str:
    lines = []
    a = figures.get("scaling")
    if a:
        st = a["settings"]
        lines.append(f"(a) scored candidates/s, 1 vs 2 solver replicas (scripted solver: {st['latency_per_call_s']} s per call of "
                     f"<= {st['max_batch']} candidates = {st['ideal_rate_per_solver']:.0f}/s per replica; {st['partitions']} partitions, K={st['k']})")
        lines.append(f"    variant {st['variant']}, solver max records per poll {st['solver_poll_records']}, "
                     f"a short poll lingers {st['solver_linger_ms']} ms for a whole poll")
        lines.append(f"    {'mutator mode':<20}{'solvers':>8}{'scored/s':>10}{'window s':>10}{'calls':>7}{'per replica':>16}"
                     "  busy fraction per replica (rollouts alone)")
        for run in a["runs"]:
            per = "/".join(str(int(v)) for v in run["per_solver_candidates"].values())
            fractions = " ".join(f"{v:.2f}" for v in run["busy_fraction"].values()) or "-"
            alone = " ".join(f"{v:.2f}" for v in run.get("solve_fraction", {}).values()) or "-"
            lines.append(f"    {run['mode']:<20}{run['solvers']:>8}{run['rate']:>10.1f}{run['window_s']:>10.1f}"
                         f"{run['generate_calls'] or 0:>7.0f}{per:>16}  {fractions} ({alone})")
        for key, ratio in a.items():
            if key.startswith("ratio_"):
                mode, _, n = key[6:].partition("_x")
                target = TARGET_SCALING.get(int(n or 2), 0.9 * int(n or 2))
                ok = "meets" if ratio >= target else "below"
                lines.append(f"    ratio {n or 2}/1, {mode}: {ratio:.2f}x ({ok} the {target:.1f}x target)")
        for run in a["runs"]:
            prof = run.get("steps")
            if prof:
                lines.append(
                    f"    {run['mode']} step, {run['solvers']} solver(s): {prof['measured_step_s']:.2f} s measured = "
                    f"{prof['novelty_s']:.2f} novelty + {prof['solving_s']:.2f} solving + {prof['between_s']:.2f} barrier/next step; "
                    f"backend calls alone {prof['call_bound_step_s']:.2f} s for the busiest replica "
                    f"(it holds {100 * prof['busiest_replica_share']:.0f}% of a step); "
                    f"calls {' '.join(f'{v:.2f}' for v in run['batch_fill'].values())} full"
                )
    b = figures.get("duplicates")
    if b:
        st = b["settings"]
        lines.append(f"(b) novelty filter vs the generator's labels: {st['candidates']} candidates "
                     f"({', '.join(f'{k} {v}' for k, v in st['kinds'].items())}), {st['n_seeds']} seeds indexed, K={st['k']}")
        kinds = list(st["kinds"])
        lines.append(f"    {'embedder, filter':<32}" + "".join(f"{k[:10]:>11}" for k in kinds)
                     + f"{'on copies':>11}{'false drops':>12}{'precision':>10}{'recall':>8}{'recall w/o numbers':>20}")
        for name, r in b["runs"].items():
            cells = "".join(f"{r['per_kind'][k]['rollouts']:>11}" for k in kinds)
            lines.append(f"    {name:<32}{cells}{100 * r['share_on_copies']:>10.1f}%{r['false_drops']:>12}"
                         f"{r['precision']:>10.3f}{r['recall']:>8.3f}{r['recall_without_numbers']:>20.3f}")
        lines.append("    (cells: rollouts spent per kind; 'on copies': share of all rollouts spent on labelled copies)")
    c = figures.get("coverage")
    if c:
        st = c["settings"]
        lines.append(f"(c) skill-sets covered at {st['candidates']} candidates ({st['steps']} steps x b={st['batch_size']}), "
                     f"{st['seeds']} seeds, {st['vocabulary']} skills ({st['skill_sets_possible']} skill-sets), {st['repetitions']} seeds per variant")
        lines.append("    the scripted generator assumes: " + "; ".join(st["assumptions"]))
        for set_name, block in c["seed_sets"].items():
            lines.append(f"    seed set {set_name}:")
            lines.append(f"      {'variant':<18}{'mean':>7}{'min':>6}{'max':>6}{'95% CI':>18}  runs")
            for name, v in block["variants"].items():
                ci = f"[{v['ci95'][0]:.1f}, {v['ci95'][1]:.1f}]"
                lines.append(f"      {name:<18}{v['mean']:>7.1f}{v['min']:>6.0f}{v['max']:>6.0f}{ci:>18}  {','.join(f'{x:.0f}' for x in v['runs'])}")
            lines.append(f"      qd / static-uniform (means): {block['ratio_qd_static_uniform']:.2f}x")
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller budgets")
    p.add_argument("--only", default="abc", help="which parts to run: any of a, b, c")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON to this file")
    p.add_argument("--data", default=None, help="folder with gsm8k_train.jsonl (default: examples/seeds/gsm8k_train_512.jsonl)")
    p.add_argument("--keep", type=Path, default=None, help="keep every run's output folder under this one")
    p.add_argument("-v", "--verbose", action="store_true")
    g = p.add_argument_group("(a) solver replicas")
    g.add_argument("--latency", type=float, default=0.4, help="seconds per solver backend call")
    g.add_argument("--max-batch", type=int, default=8, help="candidates per solver backend call")
    g.add_argument("--partitions", type=int, default=4)
    g.add_argument("--k", type=int, default=4, help="rollouts per candidate in (a) and (b)")
    g.add_argument("--batch", type=int, default=64, help="parents per step (b) of the asynchronous runs")
    g.add_argument("--sync-batches", default=None, help="b of the synchronous runs, comma-separated (default 64,256; quick 64)")
    g.add_argument("--sync-steps", type=int, default=None, help="steps of the synchronous runs (default: sync-candidates / b, at least 4)")
    g.add_argument("--sync-candidates", type=int, default=512, help="candidates per synchronous run (at least 4 steps)")
    g.add_argument("--scaling-candidates", type=int, default=None, help="candidates per run (default 1200, quick 600)")
    g.add_argument("--max-in-flight", type=int, default=128)
    g.add_argument("--modes", default="asynchronous,synchronous")
    g.add_argument("--solver-counts", default="1,2", help="solver replicas, e.g. 1,2,4: each compared with 1 (replicas should divide --partitions)")
    g.add_argument("--run-timeout", type=float, default=240.0)
    g.add_argument("--variant", default="static-uniform", help="selection variant of (a) (qd: the default, with W's watermark barrier)")
    g.add_argument("--solver-poll-records", type=int, default=None, help="the solvers' max records per poll (default 2 x max-batch)")
    g.add_argument("--solver-linger-ms", type=int, default=100, help="a solver's short poll waits this long for a whole poll of records (0: off)")
    g = p.add_argument_group("(b) duplicates")
    g.add_argument("--dup-seeds", type=int, default=40, help="seeds indexed before the stream (each copied 5 ways)")
    g.add_argument("--dup-origins", type=int, default=80, help="distinct candidates that are copied 5 ways later")
    g.add_argument("--dup-fresh", type=int, default=120, help="distinct candidates never copied")
    g.add_argument("--dup-embedders", default="hash,all-MiniLM-L6-v2", help="hash and/or all-MiniLM-L6-v2")
    g = p.add_argument_group("(c) coverage")
    g.add_argument("--cov-seeds", type=int, default=8)
    g.add_argument("--cov-steps", type=int, default=None, help="default 40, quick 20")
    g.add_argument("--cov-batch", type=int, default=32)
    g.add_argument("--cov-sets", default="gsm8k,math-style", help="seed sets: gsm8k and/or math-style (procedural)")
    g.add_argument("--cov-variants", default="static-uniform,static-diverse,dynamic-uniform,qd")
    g.add_argument("--cov-reps", type=int, default=None, help="seeds per variant (default 5, quick 5)")
    g.add_argument("--drift", type=json.loads, default={"replace": 0.3, "add": 0.15, "drop": 0.15}, help="JSON drift probabilities")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected parts, print a table, optionally write JSON."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.scaling_candidates is None:
        args.scaling_candidates = 600 if args.quick else 1200
    if args.sync_batches is None:
        args.sync_batches = "64" if args.quick else "64,256"
    args.sync_batches = [int(b) for b in str(args.sync_batches).split(",") if b.strip()]
    args.cov_sets = [x.strip() for x in args.cov_sets.split(",") if x.strip()]
    args.cov_variants = [x.strip() for x in args.cov_variants.split(",") if x.strip()]
    args.dup_embedders = [e.strip() for e in args.dup_embedders.split(",") if e.strip()]
    if args.cov_steps is None:
        args.cov_steps = 20 if args.quick else 40
    if args.cov_reps is None:
        args.cov_reps = 5
    data = _seeds_file(args.data)
    figures: dict[str, Any] = {"quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="sparq-bench-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        if "c" in args.only:
            figures["coverage"] = bench_coverage(data, root, args)
        if "b" in args.only:
            figures["duplicates"] = bench_duplicates(data, root, args)
        if "a" in args.only:
            figures["scaling"] = bench_scaling(data, root, args)
        figures["seconds"] = time.monotonic() - started
    print(_table(figures))
    print(f"total {figures['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
