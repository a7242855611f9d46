"""The loop benchmark: three ratios, each measured in one run of this script.

(a) scaling: scored candidates/s with 1 vs 2 solver replicas (``sparq up`` on the embedded
    Tansu broker, every service its own process) on a latency-bound scripted solver: each
    backend call sleeps ``--latency`` seconds and holds at most ``--max-batch`` candidates,
    like a model server with a fixed batch capacity. Throughput is the archivist's
    ``scored`` counter between the moments it passes 10% and 90% of the run's total
    (start-up, group joins and the drain at the end excluded). Measured in the mutator's
    asynchronous mode (it keeps up to ``max_in_flight`` candidates downstream: the steady
    state a long job runs in) and in the paper's synchronous rounds (a step of b
    candidates must be scored before the next starts), where each step is profiled: its
    measured length against the backend calls of its busiest replica (keys spread over
    partitions by hash, so one replica holds more than half of a step, and a partial
    batch costs a whole call) plus the hops between services.
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

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEEDS_FILE = "gsm8k_train.jsonl"
#: The small skill vocabulary of (c): 12 skills, so 12 + 66 + 220 = 298 possible skill-sets.
VOCAB_C = (
    "addition", "subtraction", "multiplication", "division", "fraction", "percentage",
    "ratio", "area", "probability", "counting", "average", "linear equation",
)
TARGET_SCALING = 1.8
TARGET_DUP_SHARE = 0.01

log = logging.getLogger("bench.loop")


# ---------------------------------------------------------------------- helpers


def _data_dir(arg: str | None) -> Path:
    for folder in [arg, DATA, Path("/work/shared/data"), Path("../shared/data")]:
        if folder and (Path(folder) / SEEDS_FILE).is_file():
            return Path(folder)
    raise SystemExit(f"cannot find {SEEDS_FILE}: pass --data DIR")


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
    """The latest value of a counter per instance of a service (private state of the monitor; {} if it moved)."""
    latest = getattr(monitor, "_latest", None)
    if not isinstance(latest, dict):
        return {}
    out: dict[str, float] = {}
    for (svc, instance), metric in list(latest.items()):
        if svc == service:
            out[instance] = float(metric.counters.get(name, metric.gauges.get(name, 0.0)))
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------- (a) solver replicas


def _scaling_run(
    data: Path, work: Path, bootstrap: str, *, solvers: int, synchronous: bool, batch: int, args: argparse.Namespace
) -> dict[str, Any]:
    from sparq_stream.orchestrator.up import UpConfig, run_up

    script = {"seed": 3, "solve_rates": [0.25, 0.5, 0.75]}
    solver_options = {"script": script, "latency_per_call_s": args.latency}
    budget = args.scaling_candidates
    mutator = ["--chunk-size", "16"]
    if synchronous:
        mutator += ["--synchronous"]
        steps = args.sync_steps or max(4, args.sync_candidates // batch)
    else:
        mutator += ["--no-synchronous", "--max-in-flight", str(args.max_in_flight)]
        steps = None
    config = UpConfig(
        seeds=data / SEEDS_FILE,
        out=work,
        steps=steps,
        max_candidates=None if synchronous else budget,
        variant="static-uniform",
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
        contamination=[],
        timeout_s=args.run_timeout,
        metrics_interval_s=0.5,
        extra={
            "solver": [
                "--backend-options", json.dumps(solver_options),
                "--max-batch", str(args.max_batch),
                "--max-poll-records", str(args.max_batch * 2),
                "--checker-workers", "1",
            ],
            "mutator": mutator,
        },
    )
    samples: list[tuple[float, float]] = []
    per_solver: dict[str, float] = {}

    def tick(supervisor: Any, monitor: Any) -> None:
        samples.append((time.monotonic(), monitor.value("archivist", "scored")))
        per_solver.update(_per_instance(monitor, "solver", "candidates"))

    started = time.monotonic()
    result = run_up(config, on_tick=tick)
    wall = time.monotonic() - started
    total = float(result.summary.get("scored", samples[-1][1] if samples else 0.0))
    rate, window = _rate_between(samples, total)
    stages = result.summary.get("stages", {})
    return {
        "generate_calls": stages.get("solver.generate_calls"),
        "steps": _step_profile(work / "archive", args.partitions, solvers, args.max_batch, args.latency) if synchronous else None,
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


def _partition(key: str, partitions: int) -> int:
    """The partition kafka-python's default partitioner gives a key (murmur2, as the services' producers)."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def _step_profile(archive: Path, partitions: int, solvers: int, max_batch: int, latency: float) -> dict[str, Any]:
    """Per synchronous step: measured duration (start to next start) and the backend-call bound of the busiest replica.

    Replicas get contiguous ranges of partitions (kafka-python's range assignor); a replica
    holding n candidates of a step needs at least ceil(n / max_batch) calls of ``latency`` s.
    """
    rows = _raw_archive(archive)
    by_step: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_step.setdefault(int(row["step"]), []).append(row)
    starts = {s: min(float(r["created_at"]) for r in rs) for s, rs in by_step.items()}
    per = partitions // solvers if partitions % solvers == 0 else None
    durations, bounds, shares = [], [], []
    for step in sorted(by_step):
        if step == min(by_step) or step + 1 not in starts:
            continue  # the first step includes start-up, the last has no successor
        durations.append(starts[step + 1] - starts[step])
        loads = [0] * solvers
        for row in by_step[step]:
            part = _partition(row["id"], partitions)
            loads[min(solvers - 1, part // per) if per else part % solvers] += 1
        bounds.append(max(math.ceil(n / max_batch) for n in loads) * latency)
        shares.append(max(loads) / max(1, sum(loads)))
    if not durations:
        return {}
    return {
        "measured_step_s": statistics.fmean(durations),
        "call_bound_step_s": statistics.fmean(bounds),
        "overhead_step_s": statistics.fmean(durations) - statistics.fmean(bounds),
        "busiest_replica_share": statistics.fmean(shares),
        "steps_measured": len(durations),
    }


def _raw_archive(directory: Path) -> list[dict[str, Any]]:
    """Every row of the archive JSONL as written (repeated ids included), in order."""
    path = directory / "archive.jsonl"
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
    return rows


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
            "ideal_rate_per_solver": args.max_batch / args.latency,
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
            counts = sorted({1, *(int(c) for c in str(args.solver_counts).split(","))})
            for solvers in counts:
                work = root / f"a-{kind}-{batch}-{solvers}"
                run = _scaling_run(data, work, bootstrap, solvers=solvers, synchronous=sync, batch=batch, args=args)
                out["runs"].append(run)
                rates[solvers] = run["rate"]
                log.info("(a) %s, %d solver(s): %.1f scored/s (%d scored, window %.1fs, %s)",
                         mode, solvers, run["rate"], run["scored"], run["window_s"], run["per_solver_candidates"])
            for solvers in counts[1:]:
                ratio = rates[solvers] / rates[1] if rates[1] > 0 else float("nan")
                out[f"ratio_{mode}" if solvers == 2 else f"ratio_{mode}_x{solvers}"] = ratio
    finally:
        broker.stop()
    return out


# ---------------------------------------------------------------------- (b) duplicates


def _duplicate_script(seeds: list[Any], pool: list[Any], fresh: list[Any]) -> dict[str, Any]:
    """Children that repeat: per seed a cycle of shared pool problems, exact and near copies, and a few new ones."""
    problems: dict[str, Any] = {}
    per_seed = max(1, len(fresh) // max(1, len(seeds)))
    for i, seed in enumerate(seeds):
        p = len(pool)
        a, b, c, d = pool[(2 * i) % p], pool[(2 * i + 1) % p], pool[(2 * i + 5) % p], pool[(i + 7) % p]
        children = [
            {"problem": a.problem, "answer": a.answer},  # the same problem as other seeds' children
            {"problem": b.problem, "answer": b.answer},
            {"problem": "Question: " + c.problem, "answer": c.answer},  # a near copy (cosine ~0.99)
            {"problem": c.problem + " Show your work.", "answer": c.answer},  # another near copy
            {"problem": "  " + d.problem.upper() + " ", "answer": d.answer},  # the same normalised text: same id
        ]
        children += [{"problem": f.problem, "answer": f.answer} for f in fresh[i * per_seed : (i + 1) * per_seed]]
        problems[seed.problem] = {"children": children, "after_children": "cycle"}
    return {"seed": 5, "problems": problems, "solve_rates": [0.25, 0.5, 0.75, 1.0]}


def _duplicate_run(data: Path, work: Path, args: argparse.Namespace, *, novelty: list[str]) -> dict[str, Any]:
    """One repetitive loop on the embedded broker; count rollouts spent on duplicates from its archive."""
    from sparq_stream.messages import Seed
    from sparq_stream.models.hashing_embedder import HashingEmbedder
    from sparq_stream.orchestrator.up import UpConfig, run_up
    from sparq_stream.seeds import read_seeds

    everything = [s for s in read_seeds(data / SEEDS_FILE) if isinstance(s, Seed)]
    n_seeds = 16
    seeds, pool, fresh = everything[:n_seeds], everything[300:324], everything[400 : 400 + 4 * n_seeds]
    run_seed = 5
    config = UpConfig(
        seeds=data / SEEDS_FILE,
        seed_limit=n_seeds,
        out=work,
        steps=args.dup_steps,
        variant="static-uniform",
        backend="scripted",
        backend_options={"script": _duplicate_script(seeds, pool, fresh)},
        embedder="hash",
        partitions=args.partitions,
        batch_size=32,
        k=args.k,
        seed=run_seed,
        label_seeds=False,
        timeout_s=args.run_timeout,
        extra={"novelty": novelty} if novelty else {},
    )
    started = time.monotonic()
    result = run_up(config)
    wall = time.monotonic() - started
    stages = result.summary.get("stages", {})
    rows = _raw_archive(config.out / "archive")
    threshold = 0.95  # the novelty core's default dup_threshold: what counts as a near duplicate here
    embedder = HashingEmbedder(seed=run_seed)  # what sparq up gives the novelty core for --embedder hash
    seen_ids = {s.id for s in seeds}
    seen = embedder.embed([s.problem for s in seeds])
    vectors = embedder.embed([row["problem"] for row in rows]) if rows else np.zeros((0, seen.shape[1]), np.float32)
    dup_rollouts = archived = exact = near = 0
    for i, row in enumerate(rows):
        earlier = np.concatenate([seen, vectors[:i]])
        best = float((earlier @ vectors[i]).max())
        used = int(row.get("rollouts_used", row.get("k", 0)))
        archived += used
        if row["id"] in seen_ids:
            exact += 1
            dup_rollouts += used
        elif best >= threshold:
            near += 1
            dup_rollouts += used
        seen_ids.add(row["id"])
    solver_rollouts = int(stages.get("solver.rollouts_used", archived))
    # rollouts the solver spent on a result the archivist did not append (an id it already had) went to duplicates too
    unarchived = max(0, solver_rollouts - archived)
    dup_rollouts += unarchived
    drops = {k.split("dropped_", 1)[1]: int(v) for k, v in stages.items() if k.startswith("novelty.dropped_")}
    dropped = int(stages.get("novelty.dropped", sum(drops.values())))
    local = int(stages.get("mutator.local_duplicates", 0))
    return {
        "novelty_flags": novelty,
        "candidates": int(stages.get("mutator.emitted", 0)),
        "scored": len(rows),
        "rollouts": solver_rollouts,
        "duplicate_rollouts": dup_rollouts,
        "duplicate_results": {"exact": exact, "near": near, "rollouts_not_archived": unarchived},
        "duplicate_share": dup_rollouts / solver_rollouts if solver_rollouts else float("nan"),
        "dropped": dropped,
        "drops_by_reason": drops,
        "mutator_local_duplicates": local,
        "rollouts_saved": (dropped + local) * args.k,
        "wall_s": wall,
        "reason": result.reason,
    }


def bench_duplicates(data: Path, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """(b) share of rollouts spent on duplicates with the novelty filter, and a control with its near-duplicate test off."""
    out = _duplicate_run(data, root / "b-run", args, novelty=[])
    out["settings"] = {"steps": args.dup_steps, "batch_size": 32, "k": args.k, "seeds": 16, "pool": 24, "fresh": 64,
                       "dup_threshold": 0.95, "embedder": "hash"}
    if not args.quick:
        control = _duplicate_run(data, root / "b-control", args, novelty=["--dup-threshold", "1.0", "--exact-threshold", "1.0"])
        out["control_near_filter_off"] = control
    return out


# ---------------------------------------------------------------------- (c) coverage


def _coverage_run(data: Path, work: Path, vocab: Path, *, variant: str, rep: int, label: bool, args: argparse.Namespace) -> dict[str, Any]:
    from sparq_stream.orchestrator.local import run_local
    from sparq_stream.orchestrator.up import UpConfig

    script = {"seed": rep, "skill_model": "inherit", "skill_vocabulary": list(VOCAB_C), "drift": args.drift}
    config = UpConfig(
        seeds=data / SEEDS_FILE,
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
        contamination=[],
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


def bench_coverage(data: Path, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """(c) skill-sets covered by each variant at an equal candidate budget (heritable skills, in-memory runner)."""
    vocab = _write_vocab(root / "c-vocabulary.json", VOCAB_C)
    rows = [
        ("static-uniform", True), ("static-diverse", True), ("dynamic-uniform", True), ("qd", True), ("qd", False),
    ]
    out: dict[str, Any] = {
        "settings": {
            "vocabulary": len(VOCAB_C), "skill_sets_possible": sum(math.comb(len(VOCAB_C), k) for k in (1, 2, 3)),
            "seeds": args.cov_seeds, "steps": args.cov_steps, "batch_size": args.cov_batch,
            "candidates": args.cov_steps * args.cov_batch, "k": 4, "repetitions": args.cov_reps, "drift": args.drift,
        },
        "variants": {},
    }
    for variant, label in rows:
        name = variant if label else f"{variant} (seeds unlabelled)"
        runs = []
        started = time.monotonic()
        for rep in range(args.cov_reps):
            runs.append(_coverage_run(data, root / f"c-{variant}-{int(label)}-{rep}", vocab, variant=variant, rep=rep, label=label, args=args))
        covs = [r["coverage"] for r in runs]
        out["variants"][name] = {
            "coverage_mean": statistics.fmean(covs),
            "coverage": covs,
            "scored_mean": statistics.fmean(r["scored"] for r in runs),
            "over_budget_mean": {k: statistics.fmean(r["over_budget"][k] for r in runs) for k in runs[0]["over_budget"]},
            "seconds": time.monotonic() - started,
        }
        log.info("(c) %s: coverage %s", name, covs)
    base = out["variants"]["static-uniform"]["coverage_mean"]
    out["ratio_qd_static_uniform"] = out["variants"]["qd"]["coverage_mean"] / base if base else float("nan")
    return out


# ---------------------------------------------------------------------- the table


def _table(figures: dict[str, Any]) -> str:
    lines = []
    a = figures.get("scaling")
    if a:
        st = a["settings"]
        lines.append(f"(a) scored candidates/s, 1 vs 2 solver replicas (scripted solver: {st['latency_per_call_s']} s per call of "
                     f"<= {st['max_batch']} candidates = {st['ideal_rate_per_solver']:.0f}/s per replica; {st['partitions']} partitions, K={st['k']})")
        lines.append(f"    {'mutator mode':<20}{'solvers':>8}{'scored/s':>10}{'window s':>10}{'calls':>7}{'per replica':>16}")
        for run in a["runs"]:
            per = "/".join(str(int(v)) for v in run["per_solver_candidates"].values())
            lines.append(f"    {run['mode']:<20}{run['solvers']:>8}{run['rate']:>10.1f}{run['window_s']:>10.1f}{run['generate_calls'] or 0:>7.0f}{per:>16}")
        for key, ratio in a.items():
            if key.startswith("ratio_"):
                mode, _, n = key[6:].partition("_x")
                ok = "meets" if ratio >= TARGET_SCALING * int(n or 2) / 2 else "below"
                lines.append(f"    ratio {n or 2}/1, {mode}: {ratio:.2f}x ({ok} the {TARGET_SCALING * int(n or 2) / 2:.1f}x target)")
        for run in a["runs"]:
            prof = run.get("steps")
            if prof:
                lines.append(
                    f"    {run['mode']} step, {run['solvers']} solver(s): {prof['measured_step_s']:.2f} s measured = "
                    f"{prof['call_bound_step_s']:.2f} s of backend calls for the busiest replica "
                    f"(it holds {100 * prof['busiest_replica_share']:.0f}% of a step) + {prof['overhead_step_s']:.2f} s hops"
                )
    b = figures.get("duplicates")
    if b:
        ok = "meets" if b["duplicate_share"] <= TARGET_DUP_SHARE else "above"
        lines.append(f"(b) duplicates: {b['candidates']} candidates from a repetitive generator, {b['scored']} scored, {b['rollouts']} rollouts")
        lines.append(f"    rollouts on duplicates: {b['duplicate_rollouts']} = {100 * b['duplicate_share']:.2f}% ({ok} the {100 * TARGET_DUP_SHARE:.0f}% target)")
        reasons = ", ".join(f"{k} {v}" for k, v in b["drops_by_reason"].items())
        lines.append(f"    novelty dropped {b['dropped']} ({reasons}); mutator in-flight duplicates {b['mutator_local_duplicates']}; "
                     f"rollouts saved = {b['rollouts_saved']} (x K={b['settings']['k']})")
        ctl = b.get("control_near_filter_off")
        if ctl:
            lines.append(f"    control, near-duplicate test off (ids still checked): {ctl['duplicate_rollouts']} of {ctl['rollouts']} rollouts "
                         f"= {100 * ctl['duplicate_share']:.1f}% on duplicates ({ctl['duplicate_results']['near']} near copies scored)")
    c = figures.get("coverage")
    if c:
        st = c["settings"]
        lines.append(f"(c) skill-sets covered at {st['candidates']} candidates ({st['steps']} steps x b={st['batch_size']}), "
                     f"{st['seeds']} seeds, {st['vocabulary']} skills ({st['skill_sets_possible']} skill-sets), heritable skills, "
                     f"mean of {st['repetitions']}")
        lines.append(f"    {'variant':<34}{'covered':>9}{'  at 25/50/75/100% of the budget':<34}{'runs':>16}")
        for name, v in c["variants"].items():
            q = "/".join(f"{x:.0f}" for x in v["over_budget_mean"].values())
            runs = ",".join(str(x) for x in v["coverage"])
            lines.append(f"    {name:<34}{v['coverage_mean']:>9.1f}  {q:<32}{runs:>16}")
        lines.append(f"    qd / static-uniform: {c['ratio_qd_static_uniform']:.2f}x")
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller budgets")
    p.add_argument("--only", default="abc", help="which parts to run: any of a, b, c")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON to this file")
    p.add_argument("--data", default=None, help="folder with gsm8k_train.jsonl (default: ../shared/data)")
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
    g.add_argument("--solver-counts", default="1,2", help="solver replicas to compare with 1, e.g. 1,2,4 (with --partitions 16)")
    g.add_argument("--run-timeout", type=float, default=240.0)
    g = p.add_argument_group("(b) duplicates")
    g.add_argument("--dup-steps", type=int, default=None, help="steps of 32 parents (default 12, quick 6)")
    g = p.add_argument_group("(c) coverage")
    g.add_argument("--cov-seeds", type=int, default=8)
    g.add_argument("--cov-steps", type=int, default=None, help="default 40, quick 20")
    g.add_argument("--cov-batch", type=int, default=32)
    g.add_argument("--cov-reps", type=int, default=None, help="repetitions (default 3, quick 2)")
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
    if args.dup_steps is None:
        args.dup_steps = 6 if args.quick else 12
    if args.cov_steps is None:
        args.cov_steps = 20 if args.quick else 40
    if args.cov_reps is None:
        args.cov_reps = 2 if args.quick else 3
    data = _data_dir(args.data)
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
