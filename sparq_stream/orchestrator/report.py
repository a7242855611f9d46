"""The end-of-run report: summary.json (counts per stage, yield, coverage, QD-score), plots and report.html.

The archive is read by the one archive reader, streamed (``summarize_archive``): bounded memory at any size.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["stage_counts", "write_report", "plot_report"]

log = logging.getLogger(__name__)


def stage_counts(metrics: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Flatten the services' final metrics into ``service.name`` counts (counters and core gauges)."""
    out: dict[str, float] = {}
    for service, row in sorted(metrics.items()):
        out[f"{service}.instances"] = float(row.get("instances", 0))
        if "incarnations" in row:
            out[f"{service}.incarnations"] = float(row["incarnations"])
        for name, value in sorted({**row.get("gauges", {}), **row.get("counters", {})}.items()):
            out[f"{service}.{name}"] = float(value)
    return out


def write_report(
    out: Path,
    metrics: dict[str, dict[str, Any]],
    *,
    reason: str,
    prefix: str,
    extra: dict[str, Any] | None = None,
    html: bool = True,
) -> dict[str, Any]:
    """Write ``summary.json`` (with ``extra`` keys: exit code, restarts), the plots and (``html``) ``report.html``; return the summary."""
    from sparq_stream.cores.archivist import summarize_archive
    from sparq_stream.orchestrator.learning_summary import learning_summary

    archive = out / "archive"
    # a rebuild from disk (``sparq report``, no live metrics) keeps the run's own stage counts and ending
    carried = {} if metrics else _carried(out / "summary.json")
    stages = stage_counts(metrics) if metrics else carried.pop("stages", {})
    summary = summarize_archive(archive, stages=stages) if archive.exists() else {"scored": 0, "stages": stages}
    summary = {"prefix": prefix, "stopped": reason, **carried, **summary, **(extra or {})}
    summary["export"] = _export_info(out / "export")
    summary.update(learning_summary(out, summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    try:
        summary["plots"] = [str(p) for p in plot_report(out, summary)]
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    except Exception as exc:  # plots are a convenience; the summary is already written
        log.warning("plots failed: %s", exc)
    try:
        if not html:
            return summary
        from sparq_stream.orchestrator.html_report import write_html_report

        summary["html"] = str(write_html_report(out, summary))
    except Exception as exc:  # noqa: BLE001 - the page is a convenience too
        log.warning("report.html failed: %s", exc)
    return summary


def _carried(path: Path) -> dict[str, Any]:
    """What a rebuilt summary keeps of the run's own: its stage counts and how it ended."""
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(previous, dict):
        return {}
    keys = ("stages", "stopped", "exit_code", "ended", "restarts", "given_up", "models_in_use", "contamination_check")
    return {k: previous[k] for k in keys if k in previous}


def _export_info(folder: Path) -> dict[str, Any]:
    files = sorted(p for p in folder.glob("*") if p.suffix in (".jsonl", ".parquet")) if folder.is_dir() else []
    rows = 0
    manifest = folder / "export.json"
    try:
        rows = int(json.loads(manifest.read_text(encoding="utf-8"))["examples"])
    except (OSError, ValueError, KeyError, TypeError):  # no manifest: count the JSONL lines
        for path in files:
            if path.suffix == ".jsonl":
                with path.open("rb") as fh:
                    rows = sum(1 for _ in fh)
    return {"dir": str(folder), "files": [p.name for p in files], "examples": rows}


def plot_report(out: Path, summary: dict[str, Any]) -> list[Path]:
    """Coverage over steps, the SR histogram and a niche heatmap, as PNG files in ``out/plots``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(6, 4))
    series = summary.get("coverage_over_steps") or [[0, 0]]
    ax.step([s for s, _ in series], [c for _, c in series], where="post")
    ax.set(xlabel="step", ylabel="skill-sets covered (kept children)", title="Coverage over steps")
    ax.grid(alpha=0.3)
    written.append(_save(fig, folder / "coverage.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    hist = summary.get("sr_histogram") or {"edges": [0, 1], "counts": [0]}
    edges, counts = hist["edges"], hist["counts"]
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge", edgecolor="black")
    ax.axvspan(0.1, 0.9, color="green", alpha=0.08, label="kept band")
    ax.set(xlabel="solve-rate", ylabel="children", title="Solve-rate histogram")
    ax.legend()
    written.append(_save(fig, folder / "sr_histogram.png"))

    written.append(_niche_heatmap(plt, summary.get("best_per_niche") or {}, folder / "niche_heatmap.png"))
    return written


def _niche_heatmap(plt: Any, best: dict[str, float], path: Path) -> Path:
    """Skill x skill grid: the best quality among niches holding both skills (diagonal: the skill alone)."""
    from sparq_stream.descriptors import parse_niche

    cells: dict[tuple[str, str], float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for niche, quality in best.items():
        try:
            skills = parse_niche(niche)
        except Exception:  # noqa: BLE001 - a foreign key is skipped, not fatal
            continue
        for a in skills:
            counts[a] += 1
            for b in skills:
                cells[(a, b)] = max(cells[(a, b)], quality)
    top = sorted(counts, key=lambda s: (-counts[s], s))[:25]
    fig, ax = plt.subplots(figsize=(8, 7))
    grid = [[cells.get((a, b), 0.0) for b in top] for a in top]
    image = ax.imshow(grid or [[0.0]], vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(top)), top, rotation=90, fontsize=7)
    ax.set_yticks(range(len(top)), top, fontsize=7)
    ax.set_title(f"Best quality per skill pair ({len(best)} niches)")
    fig.colorbar(image, ax=ax, label="best quality")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
