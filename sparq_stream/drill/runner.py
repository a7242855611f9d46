"""Runs drills against one or both brokers and keeps their figures in ``DIR/drills.json``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from sparq_stream.drill import broker, hostile, kill, poison, resume, stall
from sparq_stream.drill.common import BUDGETS, DrillContext, DrillResult
from sparq_stream.drill.table import row_counts

__all__ = ["DRILLS", "BROKER_INDEPENDENT", "default_seeds", "run_drills", "write_results"]

log = logging.getLogger(__name__)

DRILLS: dict[str, Callable[[DrillContext], DrillResult]] = {
    "kill": kill.run, "broker": broker.run, "poison": poison.run, "stall": stall.run,
    "resume": resume.run, "hostile": hostile.run,
}
BROKER_INDEPENDENT = frozenset({"hostile"})  # runs once, on the first broker asked for


def default_seeds() -> Path:
    """The repository's GSM8K seed file (``examples/seeds/gsm8k_train_512.jsonl``); outside a checkout, give --seeds."""
    path = Path(__file__).resolve().parents[2] / "examples" / "seeds" / "gsm8k_train_512.jsonl"
    if not path.is_file():
        from sparq_stream.errors import ConfigError

        raise ConfigError(f"the default drill seeds {path} are not here (not a repository checkout): give --seeds FILE")
    return path


@contextmanager
def _broker(name: str, out: Path) -> Iterator[tuple[str, Any]]:
    """A broker for the drills: (bootstrap, the ApacheKafka object or None)."""
    if name == "tansu":
        from sparq_stream.brokers.tansu import EmbeddedBroker

        tansu = EmbeddedBroker(log_path=out / "logs" / "tansu.log")
        tansu.start()
        try:
            yield tansu.bootstrap, None
        finally:
            tansu.stop()
    elif name == "kafka":
        from sparq_stream.brokers.apache import ApacheKafka

        workdir = out / "kafka-data"
        shutil.rmtree(workdir, ignore_errors=True)
        kafka = ApacheKafka(workdir=workdir)
        kafka.start()
        try:
            yield kafka.bootstrap, kafka
        finally:
            kafka.stop()
    else:
        raise ValueError(f"unknown broker {name!r}: tansu | kafka")


def write_results(out: Path, results: list[DrillResult], command: str) -> Path:
    """Merge results into ``out/drills.json`` (one entry per drill, broker and budget) and return its path."""
    path = out / "drills.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {"results": []}
    for entry in data.get("results", []):
        entry.setdefault("command", data.get("command", ""))
    fresh = {(r.drill, r.broker, r.budget) for r in results}
    kept = [e for e in data.get("results", []) if (e["drill"], e["broker"], e["budget"]) not in fresh]
    data.update(
        results=kept + [{**r.to_json(), "command": command} for r in results], command=command,
        updated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), cpus=os.cpu_count(),
    )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def run_drills(names: list[str], out: Path, brokers: list[str], budget: str = "small", *,
               seeds: Path | None = None, command: str = "") -> list[DrillResult]:
    """Run each named drill on each broker; write ``out/drills.json`` after every drill; return the results."""
    unknown = [n for n in names if n not in DRILLS]
    if unknown:
        raise ValueError(f"unknown drill(s) {', '.join(unknown)}; known: {', '.join(DRILLS)}")
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: list[DrillResult] = []
    for index, name_of_broker in enumerate(brokers):
        todo = [n for n in names if index == 0 or n not in BROKER_INDEPENDENT]
        if not todo:
            continue
        with _broker(name_of_broker, out) as (bootstrap, kafka):
            ctx = DrillContext(out=out, broker=name_of_broker, budget=BUDGETS[budget], seeds=seeds or default_seeds(),  # type: ignore[arg-type]
                               bootstrap=bootstrap, kafka=kafka)
            for name in todo:
                log.info("drill %s on %s (%s budget)", name, name_of_broker, budget)
                started = time.monotonic()
                try:
                    result = DRILLS[name](ctx)
                except Exception as exc:  # a drill that raised is a failed drill, with its reason
                    result = DrillResult(name, name_of_broker, budget, error=f"{type(exc).__name__}: {exc}")
                    log.warning("drill %s on %s raised:\n%s", name, name_of_broker, traceback.format_exc())
                result.wall_s = round(time.monotonic() - started, 1)
                log.info("drill %s on %s: %s; rows: %s", name, name_of_broker,
                         "skipped" if result.skipped else ("passed" if result.passed else "FAILED"), row_counts(result.figures) or "none")
                results.append(result)
                write_results(out, [result], command)
    return results
