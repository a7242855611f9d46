"""The learning side of a run's summary: model versions with their evaluations, audit and contamination counts."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

__all__ = ["contamination_counts", "learning_summary", "model_versions"]

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
    """One entry per finished version folder in ``models_dir``: name, number, training figures, evaluation."""
    entries: list[dict[str, Any]] = []
    if not models_dir.is_dir():
        return entries
    for folder in sorted(models_dir.iterdir()):
        found = _VERSION_DIR.match(folder.name)
        if not found or not (folder / "train_result.json").is_file():
            continue
        trained = _read_json(folder / "train_result.json")
        settings = trained.get("settings") or {}
        entries.append(
            {
                "name": found.group("name"),
                "version": int(found.group("number")),
                "path": str(folder),
                "examples": trained.get("examples", 0),
                "steps": trained.get("steps", 0),
                "loss_first": trained.get("loss_first"),
                "loss_last": trained.get("loss_last"),
                "method": trained.get("method", ""),
                "trainer": settings.get("trainer", ""),
                "eval": _read_json(folder / "eval.json") if (folder / "eval.json").is_file() else {},
            }
        )
    entries.sort(key=lambda e: (e["name"], e["version"]))
    return entries


def contamination_counts(stages: dict[str, float]) -> dict[str, int]:
    """Dropped candidates by contamination reason (embedding, 13-gram overlap, the prompt's own example)."""
    out: dict[str, int] = {}
    for key, value in stages.items():
        service, _, name = key.partition(".")
        if service.startswith("novelty") and name.startswith("dropped_") and "duplicate" not in name:
            reason = name.removeprefix("dropped_")
            out[reason] = out.get(reason, 0) + int(value)
    return dict(sorted(out.items()))


def learning_summary(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The ``model_versions`` and ``contamination`` entries of ``summary.json``."""
    return {
        "model_versions": model_versions(out / "models"),
        "contamination": contamination_counts(summary.get("stages") or {}),
    }
