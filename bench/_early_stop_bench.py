"""Solver and archivist core benchmarks on the scripted backend (no broker).

1. solver throughput: candidates/s of :class:`SolverCore` at batch 64, K=16, for each
   early-stop rule; once with an instant backend (the core's own overhead: prompts,
   checks, bookkeeping) and once with a latency-bound one (``--latency-ms`` per call plus
   ``--token-us`` per generated token), where an extra round of calls costs wall time;
2. early-stop savings: rollouts saved and keep/drop decisions changed by the exact and
   predictive rules, (a) measured in the core on the scripted backend's default solve-rate
   distribution (deterministic: exactly round(sr * n) of n samples correct) and
   (b) simulated with Bernoulli rollouts on the same rates (qd.simulate_early_stop);
   since (a) never meets variance, ``bernoulli_decisions`` measures the decisions that
   matter: every rollout correct with probability SR (independent draws), through the
   real SolverCore (a scripted backend whose rollout j of a problem is a fixed Bernoulli
   draw, so the full-K reference and the early-stopped run see the same rollouts) over
   several seeds, and with the simulation over many more; the fraction of keep/drop
   decisions changed, with a 95% Wilson interval over all decisions and the per-seed range;
3. archivist throughput: results/s of :class:`ArchivistCore` (qd variant, JSONL + Parquet
   on disk, archive records published) in batches of 500.

Ratios are against the "none" rule measured in the same run.
Run: ``python bench/_early_stop_bench.py [--batches N] [--latency-ms MS] [--token-us US]``;
``python bench/_early_stop_bench.py --only bernoulli`` prints only the Bernoulli table.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from typing import Any

__all__ = ["solver_throughput", "early_stop_savings", "bernoulli_decisions", "archivist_throughput"]

RULES = (("exact", {}), ("predictive", {}), ("predictive@0.8", {"predictive_confidence": 0.8}))


def _candidates(backend: Any, n: int, offset: int) -> list[Any]:
    from sparq_stream.core import Inbound
    from sparq_stream.ids import problem_id
    from sparq_stream.messages import NovelCandidate

    out = []
    for i in range(offset, offset + n):
        problem = f"A baker sells {i % 17 + 2} cakes every day for {i % 9 + 2} days. How many cakes? (#{i})"
        cand = NovelCandidate(
            id=problem_id(problem), problem=problem, solution="", answer=backend.answer_for(problem),
            skills=["multiplication"], niche="multiplication", step=i // 64,
        )
        out.append(Inbound("novel", cand.id, cand, 0, i))
    return out


def solver_throughput(batches: int, latency_ms: float, token_us: float) -> dict[str, Any]:
    """Candidates/s per early-stop rule, instant and latency-bound backends."""
    from sparq_stream.cores.solver import SolverConfig, SolverCore
    from sparq_stream.models.scripted import ScriptedBackend
    from sparq_stream.verify import CheckerPool

    out: dict[str, Any] = {}
    with CheckerPool(workers=1) as pool:
        for label, latency in (("instant", (0.0, 0.0)), ("latency-bound", (latency_ms / 1000, token_us / 1e6))):
            backend = ScriptedBackend(seed=1, latency_per_call_s=latency[0], latency_per_token_s=latency[1])
            n_batches = batches if label == "instant" else max(2, batches // 4)
            row = {}
            for r, rule in enumerate(("none", "exact", "predictive")):
                # fresh problems per rule: no rule profits from caches another one warmed
                data = [_candidates(backend, 64, (r * (n_batches + 1) + b) * 64) for b in range(n_batches + 1)]
                core = SolverCore(backend, pool, SolverConfig(k=16, early_stop=rule, max_batch=64, result_cache=0))
                core.handle_batch(data[0])  # warm-up
                start = time.perf_counter()
                for batch in data[1:]:
                    core.handle_batch(batch)
                elapsed = time.perf_counter() - start
                m = core.metrics()
                row[rule] = {
                    "candidates_per_s": round(64 * n_batches / elapsed, 1),
                    "calls_per_batch": m["generate_calls"] / (n_batches + 1),
                    "rollouts_saved": round(m["rollouts_saved"] / m["rollouts_asked"], 4),
                }
            for rule in ("exact", "predictive"):
                row[rule]["ratio_vs_none"] = round(row[rule]["candidates_per_s"] / row["none"]["candidates_per_s"], 3)
            out[label] = row
    return out


def early_stop_savings(problems: int = 7000) -> dict[str, Any]:
    """Rollouts saved and decisions changed by each rule, in the core and simulated."""
    from sparq_stream.cores.solver import SolverConfig, SolverCore
    from sparq_stream.models.scripted import ScriptedBackend
    from sparq_stream.qd.early_stop import make_stop_rule, simulate_early_stop
    from sparq_stream.verify import CheckerPool

    backend = ScriptedBackend(seed=2)
    rates = backend.script.solve_rates
    data = _candidates(backend, 64 * 16, 0)
    out: dict[str, Any] = {"scripted_rates": rates}
    with CheckerPool(workers=1) as pool:
        ref = {}
        core = SolverCore(backend, pool, SolverConfig(early_stop="none", result_cache=0))
        for i in range(0, len(data), 64):
            for outs in core.handle_batch(data[i : i + 64]):
                ref[outs[0].message.id] = outs[0].message.quality > 0
        for rule, extra in (("exact", {}), ("predictive", {}), ("predictive@0.8", {"predictive_confidence": 0.8})):
            core = SolverCore(backend, pool, SolverConfig(early_stop=rule.split("@")[0], result_cache=0, **extra))
            changed = 0
            for i in range(0, len(data), 64):
                for outs in core.handle_batch(data[i : i + 64]):
                    changed += (outs[0].message.quality > 0) != ref[outs[0].message.id]
            m = core.metrics()
            out[f"core/{rule}"] = {
                "saved_fraction": round(m["rollouts_saved"] / m["rollouts_asked"], 4),
                "changed_fraction": round(changed / len(data), 4),
                "rounds_per_batch": m["rounds"] / (len(data) // 64),
            }
    rng = random.Random(0)
    true_rates = [rng.choice(rates) for _ in range(problems)]
    for name, rule, chunk in (
        ("exact/chunk1", make_stop_rule("exact"), 1),
        ("predictive/chunk4", make_stop_rule("predictive"), 4),
        ("predictive/chunk1", make_stop_rule("predictive"), 1),
        ("predictive@0.8/chunk1", make_stop_rule("predictive", confidence=0.8), 1),
    ):
        rep = simulate_early_stop(rule, true_rates, k=16, chunk=chunk, seed=1)
        out[f"simulated/{name}"] = {
            "saved_fraction": round(rep.saved_fraction, 4),
            "changed_fraction": round(rep.changed_fraction, 4),
            "lost_keep_fraction": round(rep.lost_keep_fraction, 4),
        }
    return out


def _wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _bernoulli_backend(run_seed: int) -> Any:
    """A scripted backend whose rollout j of a problem is correct with probability SR, a fixed draw per (problem, j)."""
    import hashlib

    from sparq_stream.ids import problem_id
    from sparq_stream.models.scripted import ScriptedBackend

    class Bernoulli(ScriptedBackend):
        offset = 0

        def generate(self, prompts: Any, n: int, params: Any) -> Any:
            self.offset = params.seed or 0  # the solver passes sampling_seed + rollouts done
            return super().generate(prompts, n, params)

        def correct_samples(self, problem: str, n: int) -> list[bool]:
            rate, pid = self.solve_rate_for(problem), problem_id(problem)
            out = []
            for i in range(self.offset, self.offset + n):
                digest = hashlib.blake2b(f"{run_seed}/{pid}/{i}".encode(), digest_size=8).digest()
                out.append(int.from_bytes(digest, "big") / 2**64 < rate)
            return out

    return Bernoulli(seed=2)


def bernoulli_decisions(core_seeds: int = 5, core_problems: int = 256, sim_seeds: int = 50, sim_problems: int = 2000) -> dict[str, Any]:
    """Keep/drop decisions changed by each rule when rollouts are Bernoulli(SR): through the core and simulated."""
    import numpy as np

    from sparq_stream.cores.solver import SolverConfig, SolverCore
    from sparq_stream.qd.early_stop import make_stop_rule, simulate_early_stop
    from sparq_stream.verify import CheckerPool

    out: dict[str, Any] = {"core": {}, "simulated": {}}
    per_rule: dict[str, dict[str, list[int]]] = {r: {"changed": [], "lost_keeps": [], "n": [], "used": [], "asked": []} for r, _ in RULES}
    with CheckerPool(workers=1) as pool:
        for seed in range(core_seeds):
            backend = _bernoulli_backend(seed)
            rates = backend.script.solve_rates
            data = _candidates(backend, core_problems, seed * 100_000)
            decided: dict[str, dict[str, bool]] = {}
            for rule, extra in (("none", {}), *RULES):
                core = SolverCore(backend, pool, SolverConfig(k=16, early_stop=rule.split("@")[0], result_cache=0, sampling_seed=0, **extra))
                decided[rule] = {}
                for i in range(0, len(data), 64):
                    for outs in core.handle_batch(data[i : i + 64]):
                        decided[rule][outs[0].message.id] = outs[0].message.quality > 0
                if rule != "none":
                    m = core.metrics()
                    ref = decided["none"]
                    row = per_rule[rule]
                    row["changed"].append(sum(decided[rule][i] != ref[i] for i in ref))
                    row["lost_keeps"].append(sum(ref[i] and not decided[rule][i] for i in ref))
                    row["n"].append(len(ref))
                    row["used"].append(int(m["rollouts_used"]))
                    row["asked"].append(int(m["rollouts_asked"]))
    for rule, row in per_rule.items():
        changed, n = sum(row["changed"]), sum(row["n"])
        out["core"][rule] = {
            "seeds": core_seeds, "decisions": n, "changed": changed, "changed_fraction": changed / n if n else float("nan"),
            "changed_ci95": _wilson(changed, n), "lost_keeps": sum(row["lost_keeps"]),
            "per_seed_changed_fraction": [c / k for c, k in zip(row["changed"], row["n"])],
            "saved_fraction": 1 - sum(row["used"]) / sum(row["asked"]),
        }
    rng = np.random.default_rng(0)
    for name, rule, chunk in (
        ("exact", make_stop_rule("exact"), 1),
        ("predictive", make_stop_rule("predictive"), 1),
        ("predictive@0.8", make_stop_rule("predictive", confidence=0.8), 1),
    ):
        reports = [simulate_early_stop(rule, rng.choice(rates, sim_problems), k=16, chunk=chunk, seed=s) for s in range(sim_seeds)]
        changed = sum(r.changed_fraction * sim_problems for r in reports)
        fractions = [r.changed_fraction for r in reports]
        out["simulated"][name] = {
            "seeds": sim_seeds, "decisions": sim_problems * sim_seeds, "changed_fraction": float(np.mean(fractions)),
            "changed_ci95": _wilson(round(changed), sim_problems * sim_seeds),
            "per_seed_min_max": (min(fractions), max(fractions)),
            "saved_fraction": float(np.mean([r.saved_fraction for r in reports])),
            "lost_keep_fraction": float(np.mean([r.lost_keep_fraction for r in reports])),
        }
    out["rates"] = list(rates)
    return out


def archivist_throughput(n: int = 20_000, batch: int = 500) -> dict[str, Any]:
    """Results/s of the archivist core (qd, disk archive, archive topic records)."""
    from sparq_stream.core import Inbound
    from sparq_stream.cores.archivist import ArchivistConfig, ArchivistCore
    from sparq_stream.messages import SolveResult

    rng = random.Random(0)
    skills = [f"skill {i}" for i in range(60)]
    results = []
    for i in range(n):
        q = rng.choice([0.0, 0.0, 0.125, 0.25, 0.5, 0.75])
        results.append(SolveResult(
            id=f"{i:032x}", problem=f"problem {i} " + "x" * 200, solution="s" * 300, answer=str(i),
            skills=sorted(rng.sample(skills, rng.randint(1, 3))), k=16, rollouts_used=16,
            n_correct=round((1 - q) * 16) if q else 0, solve_rate=1 - q if q else 0.0, quality=q,
            correct_rollouts=["r" * 400] * (round((1 - q) * 16) if q else 0), step=i // 64,
        ))
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, cfg in (("qd", {"variant": "qd"}), ("dynamic-uniform", {"variant": "dynamic-uniform"})):
            core = ArchivistCore(ArchivistConfig(archive_dir=f"{tmp}/{label}", **cfg))
            core.tick(0.0)
            start = time.perf_counter()
            for i in range(0, n, batch):
                core.handle_batch([Inbound("solved", r.id, r, 0, i + j) for j, r in enumerate(results[i : i + batch])])
            core.close()
            elapsed = time.perf_counter() - start
            start = time.perf_counter()
            restarted = ArchivistCore(ArchivistConfig(archive_dir=f"{tmp}/{label}", **cfg))
            resume_s = time.perf_counter() - start
            out[label] = {
                "results_per_s": round(n / elapsed, 1),
                "elites": len(core.working_set.elites()),
                "resume_scan_s": round(resume_s, 2),
                "scored_after_resume": restarted.metrics()["scored"],
            }
    return out


def main() -> None:
    """Run every benchmark and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--token-us", type=float, default=5.0)
    parser.add_argument("--only", default=None, help="bernoulli: only the Bernoulli decisions table")
    parser.add_argument("--core-seeds", type=int, default=5)
    parser.add_argument("--sim-seeds", type=int, default=50)
    args = parser.parse_args()
    if args.only == "bernoulli":
        report = bernoulli_decisions(core_seeds=args.core_seeds, sim_seeds=args.sim_seeds)
        print(json.dumps(report, indent=2))
        print(f"{'rule':<16}{'through':>10}{'decisions':>11}{'changed':>9}{'95% CI':>20}{'per seed min-max':>20}{'saved':>8}")
        for where in ("core", "simulated"):
            for rule, r in report[where].items():
                lo, hi = r["changed_ci95"]
                per = r.get("per_seed_changed_fraction") or r["per_seed_min_max"]
                print(f"{rule:<16}{where:>10}{r['decisions']:>11}{100 * r['changed_fraction']:>8.2f}%"
                      f"{f'[{100 * lo:.2f}, {100 * hi:.2f}]%':>20}{f'{100 * min(per):.2f}-{100 * max(per):.2f}%':>20}"
                      f"{100 * r['saved_fraction']:>7.1f}%")
        return
    report = {
        "solver": solver_throughput(args.batches, args.latency_ms, args.token_us),
        "early_stop": early_stop_savings(),
        "archivist": archivist_throughput(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
