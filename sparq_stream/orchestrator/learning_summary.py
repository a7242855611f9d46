"""The learning side of a run's summary: model versions with their evaluations, audit and contamination counts."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

__all__ = ["audit_counts", "contamination_counts", "contamination_status", "learning_summary", "model_versions", "models_in_use"]

log = logging.getLogger(__name__)

_VERSION_DIR = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)-v(?P<number>\d{4,})$")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return {}
    return value if isinstance(value, dict) else {}


def model_versions(models_dir: Path) -> list[dict[str, Any]]:
    """One entry per version folder in ``models_dir``: version 0 (the base model, evaluated) and each trained one.

    Each entry carries its evaluation (``eval``: pass@1 per held-out set) and ``delta_vs_base``:
    per set, its pass@1 minus version 0's (empty for version 0 itself, or without a base evaluation).
    """
    entries: list[dict[str, Any]] = []
    if not models_dir.is_dir():
        return entries
    for folder in sorted(models_dir.iterdir()):
        found = _VERSION_DIR.match(folder.name)
        if not found:
            continue
        number = int(found.group("number"))
        evaluation = _read_json(folder / "eval.json") if (folder / "eval.json").is_file() else {}
        if number == 0:  # the base model: evaluated by the trainer at start, never trained
            if not evaluation:
                continue
            base = _read_json(folder / "base.json") if (folder / "base.json").is_file() else {}
            entries.append({
                "name": found.group("name"), "version": 0, "base": True, "path": str(folder),
                "base_model": base.get("base_model", ""), "examples": 0, "steps": 0, "loss_first": None, "loss_last": None,
                "method": "", "trainer": "", "eval": evaluation,
            })  # fmt: skip
            continue
        if not (folder / "train_result.json").is_file():
            continue
        trained = _read_json(folder / "train_result.json")
        settings = trained.get("settings") or {}
        entries.append(
            {
                "name": found.group("name"),
                "version": number,
                "base": False,
                "path": str(folder),
                "examples": trained.get("examples", 0),
                "steps": trained.get("steps", 0),
                "loss_first": trained.get("loss_first"),
                "loss_last": trained.get("loss_last"),
                "method": trained.get("method", ""),
                "trainer": settings.get("trainer", ""),
                "eval": evaluation,
            }
        )
    entries.sort(key=lambda e: (e["name"], e["version"]))
    bases = {e["name"]: e["eval"] for e in entries if e["base"]}
    for entry in entries:
        entry["delta_vs_base"] = _delta_vs_base(entry["eval"], bases.get(entry["name"], {})) if not entry["base"] else {}
    return entries


def _delta_vs_base(evaluation: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    """Per held-out set scored by both: pass@1 minus the base model's."""
    out = {}
    for name, scored in evaluation.items():
        ref = base.get(name)
        if isinstance(scored, dict) and isinstance(ref, dict) and "accuracy" in scored and "accuracy" in ref:
            out[name] = float(scored["accuracy"]) - float(ref["accuracy"])
    return dict(sorted(out.items()))


def contamination_counts(stages: dict[str, float]) -> dict[str, int]:
    """Dropped candidates by contamination reason (embedding, 13-gram overlap, the prompt's own example)."""
    out: dict[str, int] = {}
    for key, value in stages.items():
        service, _, name = key.partition(".")
        if service.startswith("novelty") and name.startswith("dropped_") and "duplicate" not in name:
            reason = name.removeprefix("dropped_")
            out[reason] = out.get(reason, 0) + int(value)
    return dict(sorted(out.items()))


def contamination_status(stages: dict[str, float]) -> dict[str, Any] | None:
    """Whether novelty ran its contamination check, in words, from its ``contamination_check`` gauge (None: unknown)."""
    values = [v for k, v in stages.items() if k.partition(".")[0].startswith("novelty") and k.endswith(".contamination_check")]
    if not values:
        return None
    on = all(v > 0 for v in values)
    held = sum(v for k, v in stages.items() if k.partition(".")[0].startswith("novelty") and k.endswith(".heldout_size"))
    held /= max(1.0, stages.get("novelty.instances", 1.0))  # every replica holds the same sets
    return {"on": on, "status": "contamination check on" if on else "contamination check OFF", "heldout_problems": int(held)}


def audit_counts(archive_dir: Path) -> dict[str, Any]:
    """Validity audit counts over the archive: kept, audited, flagged, per flag, and how many were not audited."""
    return _archive_counts(archive_dir)[0]


def _archive_counts(archive_dir: Path) -> tuple[dict[str, Any], dict[tuple[str, int], dict[str, int]]]:
    """One pass over the archive: the audit counts, and per (model, version) the children it generated and solved."""
    from sparq_stream.qd.archive_log import iter_archive
    from sparq_stream.qd.audit import audit_flags

    counts: dict[str, Any] = {"kept": 0, "audited": 0, "flagged": 0, "not_audited_kept": 0, "flags": {}}
    usage: dict[tuple[str, int], dict[str, int]] = {}
    if not archive_dir.is_dir():
        return counts, usage
    try:
        for row in iter_archive(archive_dir):
            for role, key in (("generated", (row.model, row.model_version)), ("solved", (row.solver_model, row.solver_version))):
                used = usage.setdefault(key, {"generated": 0, "solved": 0})
                used[role] += 1
            kept = row.quality > 0
            counts["kept"] += int(kept)
            if row.audit is None:
                counts["not_audited_kept"] += int(kept)
                continue
            counts["audited"] += 1
            counts["flagged"] += int(bool(row.audit))
            for flag in audit_flags(row.audit):
                counts["flags"][flag] = counts["flags"].get(flag, 0) + 1
    except Exception as exc:  # noqa: BLE001 - the summary must not fail on an unreadable archive
        log.warning("audit counts: cannot read %s: %s", archive_dir, exc)
    counts["flags"] = dict(sorted(counts["flags"].items()))
    return counts, usage


def models_in_use(stages: dict[str, float]) -> dict[str, int]:
    """The model version each generating service (mutator, solver) had loaded at the end, from its stage gauges.

    A service's gauge is summed over its instances, so one with several instances is left out
    here: ``sparq up`` records the version of each instance (``solver-0``, ``solver-1``) itself.
    """
    out = {}
    for key, value in stages.items():
        service, _, name = key.partition(".")
        if name == "model_version" and service in ("mutator", "solver") and stages.get(f"{service}.instances", 1.0) <= 1:
            out[service] = int(value)
    return dict(sorted(out.items()))


def _with_usage(
    versions: list[dict[str, Any]], usage: dict[tuple[str, int], dict[str, int]], in_use: dict[str, int]
) -> list[dict[str, Any]]:
    """Add to each version the archived children it generated and solved, and the services using it at the end."""
    for entry in versions:
        used = usage.get((entry["name"], entry["version"]), {})
        entry["children_generated"] = used.get("generated", 0)
        entry["children_solved"] = used.get("solved", 0)
        entry["in_use_by"] = [service for service, number in in_use.items() if number == entry["version"]]
    return versions


def learning_summary(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The ``model_versions``, ``models_in_use``, ``audit`` and ``contamination`` entries of ``summary.json``.

    Each version lists the archived children it generated (``children_generated``: the
    mutator used it) and solved (``children_solved``: a solver used it), and ``in_use_by``, the
    services that had it loaded at the end (``models_in_use``: service -> version).
    """
    stages = summary.get("stages") or {}
    audit, usage = _archive_counts(out / "archive")
    in_use = summary.get("models_in_use") or models_in_use(stages)  # per instance when the run recorded it
    body = {
        "model_versions": _with_usage(model_versions(out / "models"), usage, in_use),
        "models_in_use": in_use,
        "audit": audit,
        "contamination": contamination_counts(stages),
    }
    status = contamination_status(stages)
    if status is not None:  # sparq up's own record (held-out files, seeds refused) is kept, and completed
        body["contamination_check"] = {**status, **(summary.get("contamination_check") or {})}
        body["contamination_check"]["on"] = status["on"] and body["contamination_check"].get("on", True)
        body["contamination_check"]["status"] = "contamination check " + ("on" if body["contamination_check"]["on"] else "OFF")
    if (out / "sweep" / "sweep.json").is_file():  # written by `sparq eval --sweep --archive DIR/archive`
        body["sweep"] = _read_json(out / "sweep" / "sweep.json")
    return body
