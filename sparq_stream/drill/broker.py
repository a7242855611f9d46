"""Drill ``broker``: stop Apache Kafka mid-run and start it again on the same storage."""

from __future__ import annotations

import time
from typing import Any

from sparq_stream.drill.common import (
    DrillContext,
    DrillResult,
    compare_with_reference,
    drill_config,
    read_elites,
    reference_for,
    result_checks,
)
from sparq_stream.orchestrator.up import run_up

__all__ = ["run"]


def run(ctx: DrillContext) -> DrillResult:
    """Take the broker away for ``outage_s`` seconds once scoring has begun; the run must recover by itself."""
    budget = ctx.budget
    result = DrillResult("broker", ctx.broker, budget.name)
    if ctx.broker != "kafka" or ctx.kafka is None:
        result.skipped = "Tansu keeps topics in memory only: a broker restart loses every topic (see the resume drill)"
        return result
    out = ctx.folder("broker")
    config = drill_config(ctx, out, steps=budget.long_steps or budget.steps)  # room to act before the end
    reference = reference_for(ctx, config)
    record: dict[str, Any] = {}

    def outage(supervisor: Any, monitor: Any) -> None:
        # on the main thread: the broker's parent-death signal is tied to the thread that starts it
        now = time.monotonic()
        if "down_at" not in record:
            if monitor.value("archivist", "scored") >= 1:
                record["at_step"] = monitor.value("mutator", "step")
                ctx.kafka.stop()
                record["down_at"] = time.monotonic()
                record["stop_s"] = round(record["down_at"] - now, 1)
        elif "back_at" not in record and "error" not in record and now - record["down_at"] >= budget.outage_s:
            try:
                ctx.kafka.start()
                record["back_at"] = time.monotonic()
                record["restart_s"] = round(record["back_at"] - now, 1)
            except Exception as exc:  # recorded as the drill's failure; the run then ends by its timeout
                record["error"] = f"{type(exc).__name__}: {exc}"

    started = time.monotonic()
    try:
        up = run_up(config, on_tick=outage)
    finally:
        if not ctx.kafka.running:  # leave the broker up for the next drill whatever happened
            ctx.kafka.start()
    ended = time.monotonic()
    diff = compare_with_reference(reference, out / "archive", read_elites(config, up.bootstrap, up.prefix))
    back = record.pop("back_at", None)
    record.pop("down_at", None)
    result.figures.update(
        diff, outage_s=budget.outage_s, reason=up.reason, restarts=up.restarts, run_s=round(ended - started, 1),
        finished_after_broker_back_s=round(ended - back, 1) if back else None, **record,
    )
    result.checks.update(
        broker_restarted="error" not in record and back is not None,
        run_completed=up.reason == "budget reached",
        **result_checks(diff),
    )
    return result
