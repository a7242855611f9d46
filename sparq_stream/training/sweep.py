"""The paper's data experiments as one command: accuracy against training-set size, filtered against unfiltered.

``sparq eval --sweep`` reads a run's archive and builds two example sets in the same
deterministic (problem-id hash) order: *filtered* (kept problems x correct rollouts, audit
flags left out) and *unfiltered* (every scored child with its own solution, the baseline).
For each size n it fine-tunes the base model on the first n examples of each set (nested
slices: the set of size n holds the set of every smaller size) and evaluates each version
on every held-out set (GSM8K test: in distribution; MATH500: out of distribution), pass@1.
It fits a power law ``acc = a * n^b`` (least squares in log-log space, on the points with
accuracy > 0) per set and writes ``sweep.json`` and ``sweep.png`` (log-scale x axis).

On CPU with the 135M model the curves show the plumbing, not a gain.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sparq_stream.errors import ConfigError

__all__ = ["SWEEP_NAME", "fit_power_law", "plot_sweep", "run_sweep"]

log = logging.getLogger(__name__)

#: The sweep's result file (in its output folder, next to ``sweep.png``).
SWEEP_NAME = "sweep.json"


def fit_power_law(points: Sequence[tuple[float, float]]) -> dict[str, float] | None:
    """Fit ``y = a * x^b`` to the (x, y) points with x, y > 0 (least squares on logs); None with fewer than 2."""
    usable = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len(usable) < 2 or len({lx for lx, _ in usable}) < 2:
        return None
    mx = sum(lx for lx, _ in usable) / len(usable)
    my = sum(ly for _, ly in usable) / len(usable)
    sxx = sum((lx - mx) ** 2 for lx, _ in usable)
    b = sum((lx - mx) * (ly - my) for lx, ly in usable) / sxx
    a = math.exp(my - b * mx)
    return {"a": a, "b": b, "points": float(len(usable))}


def run_sweep(
    archive_dir: str | Path,
    out_dir: str | Path,
    heldout: dict[str, str | Path],
    sizes: Sequence[int],
    *,
    base_model: str | None = None,
    train_kwargs: dict[str, Any] | None = None,
    eval_limit: int = 50,
    eval_max_tokens: int = 512,
    train_fn: Callable[..., Any] | None = None,
    eval_fn: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Train and evaluate on nested slices of the filtered and unfiltered exports; write sweep.json and sweep.png."""
    from sparq_stream.qd.archive_log import iter_archive
    from sparq_stream.training.evaluate import evaluate
    from sparq_stream.training.export import build_examples, write_examples
    from sparq_stream.training.sft import train_sft

    if not sizes or any(n < 1 for n in sizes):
        raise ConfigError(f"sizes must be positive example counts, got {list(sizes)}")
    if not heldout:
        raise ConfigError("the sweep needs at least one held-out set to evaluate on")
    train_fn = train_fn or train_sft
    eval_fn = eval_fn or evaluate
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = list(iter_archive(archive_dir))
    sets = {"filtered": build_examples(results, filtered=True, source="archive"),
            "unfiltered": build_examples(results, filtered=False, source="archive")}  # fmt: skip
    largest = min(len(rows) for rows in sets.values())
    usable = sorted({n for n in sizes if n <= largest})
    if not usable:
        raise ConfigError(f"no size fits: filtered has {len(sets['filtered'])} examples, unfiltered {len(sets['unfiltered'])}")
    if len(usable) < len(set(sizes)):
        log.warning("sizes above %d examples (the smaller set) are skipped", largest)
    runs: list[dict[str, Any]] = []
    threads = (train_kwargs or {}).get("num_threads")  # evaluation runs on as many threads as training
    for kind, rows in sets.items():
        for n in usable:
            folder = out / f"{kind}-{n:06d}"
            write_examples(rows[:n], folder / "data", extra={"filtered": kind == "filtered", "limit": n})
            trained = train_fn(folder / "data", base_model, folder / "trained", overwrite=True, **(train_kwargs or {}))
            entry: dict[str, Any] = {"set": kind, "examples": n, "steps": trained.steps, "loss_last": trained.loss_last}
            for name, path in heldout.items():
                scored = eval_fn(trained.path, path, eval_limit, max_tokens=eval_max_tokens, num_threads=threads)
                entry[name] = {"accuracy": scored.accuracy, "n": scored.n}
            log.info("sweep %s n=%d: %s", kind, n, {k: v for k, v in entry.items() if isinstance(v, dict)})
            runs.append(entry)
    fits = {
        f"{kind}/{name}": fit_power_law([(r["examples"], r[name]["accuracy"]) for r in runs if r["set"] == kind])
        for kind in sets
        for name in heldout
    }
    report = {"sizes": usable, "available": {k: len(v) for k, v in sets.items()}, "heldout": {k: str(v) for k, v in heldout.items()},
              "runs": runs, "power_law": fits,
              "note": "on CPU with the 135M model this shows the plumbing, not a gain"}  # fmt: skip
    (out / SWEEP_NAME).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    plot_sweep(report, out / "sweep.png")
    return report


def plot_sweep(report: dict[str, Any], path: Path) -> Path:
    """Accuracy against examples (log x) per set and held-out file, with the fitted power laws dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    names = sorted(report.get("heldout") or {})
    for kind in ("filtered", "unfiltered"):
        for name in names:
            points = sorted((r["examples"], r[name]["accuracy"]) for r in report["runs"] if r["set"] == kind and name in r)
            if not points:
                continue
            (line,) = ax.plot([x for x, _ in points], [y for _, y in points], marker="o" if kind == "filtered" else "s",
                              linestyle="-" if kind == "filtered" else ":", label=f"{kind} / {name}")  # fmt: skip
            fit = (report.get("power_law") or {}).get(f"{kind}/{name}")
            if fit:
                xs = [points[0][0] * (points[-1][0] / points[0][0]) ** (i / 20) for i in range(21)]
                ax.plot(xs, [fit["a"] * x ** fit["b"] for x in xs], linestyle="--", color=line.get_color(), alpha=0.6,
                        label=f"fit {fit['a']:.3g}·n^{fit['b']:.2f}")  # fmt: skip
    ax.set_xscale("log")
    ax.set(xlabel="training examples (log scale)", ylabel="pass@1", title="Accuracy against training data", ylim=(0, 1))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
