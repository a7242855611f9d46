"""Drill ``stall``: SIGSTOP the solver for a while; memory and in-flight stay bounded; the run completes.

The mutator runs with ``--max-in-flight`` at half a step (:data:`STALL_CAP` of the drill's 64),
so its credit cap binds: the solver is stopped once the mutator reports that many in flight, and
the mutator then waits at the cap. The drill samples the in-flight gauge during the stall and
checks that it was seen, that it stood at the cap and never passed it (the mutator's default cap,
256, is larger than a step: in the synchronous loop it could never bind).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from sparq_stream.drill.common import (
    BATCH,
    CHUNK,
    DrillContext,
    DrillResult,
    compare_with_reference,
    drill_config,
    proc_memory_kib,
    read_elites,
    reference_for,
    result_checks,
)
from sparq_stream.orchestrator.up import run_up

__all__ = ["RSS_GROWTH_LIMIT_MIB", "STALL_CAP", "in_flight_checks", "run"]

RSS_GROWTH_LIMIT_MIB = 128  # a stalled solver may not make any service grow by more than this
STALL_CAP = BATCH // 2  # the mutator's --max-in-flight in this drill: smaller than a step, so it binds


def in_flight_checks(samples: list[float], caps: list[float], cap: int = STALL_CAP) -> dict[str, bool]:
    """What the in-flight samples taken during the stall must show: seen, the drill's cap in force, reached, never passed."""
    seen = max(samples, default=0.0)
    return {
        "in_flight_seen": seen > 0,
        "cap_in_force": bool(caps) and set(caps) == {float(cap)},
        "cap_reached": seen >= cap,
        "in_flight_within_cap": bool(samples) and seen <= cap,
    }


def run(ctx: DrillContext) -> DrillResult:
    """Stop the solver once the mutator is at its cap, sample every service's RSS and the in-flight count, resume it."""
    budget = ctx.budget
    result = DrillResult("stall", ctx.broker, budget.name)
    out = ctx.folder("stall")
    flags = ["--chunk-size", str(CHUNK), "--max-in-flight", str(STALL_CAP)]
    config = drill_config(ctx, out, steps=budget.long_steps or budget.steps, extra={"mutator": flags})
    reference = reference_for(ctx, config)
    state: dict[str, Any] = {"stopped_at": None, "resumed": False, "pid": None}
    at_stop: dict[str, int] = {}
    peak_during: dict[str, int] = {}
    in_flight: list[float] = []
    cap: list[float] = []

    def watch(supervisor: Any, monitor: Any) -> None:
        now = time.monotonic()
        stopped = state["stopped_at"]
        # once the mutator reports itself at its cap: stopped there, the solver returns no credit and the cap holds it
        if stopped is None and monitor.value("mutator", "in_flight") >= STALL_CAP and monitor.value("mutator", "done") < 1:
            solver = next(s for s in supervisor.services if s.name == "solver-0")
            if solver.alive:
                os.kill(solver.proc.pid, signal.SIGSTOP)
                state.update(stopped_at=now, pid=solver.proc.pid)
                for svc in supervisor.services:
                    if svc.alive:
                        at_stop[svc.name] = proc_memory_kib(svc.proc.pid)[0]
            return
        if stopped is None or state["resumed"]:
            return
        in_flight.append(monitor.value("mutator", "in_flight"))
        cap.append(monitor.value("mutator", "max_in_flight"))
        for svc in supervisor.services:
            if svc.alive:
                rss = proc_memory_kib(svc.proc.pid)[0]
                peak_during[svc.name] = max(peak_during.get(svc.name, 0), rss)
        if now - stopped >= budget.stall_s:
            os.kill(state["pid"], signal.SIGCONT)
            state["resumed"] = True

    try:
        up = run_up(config, on_tick=watch)
    finally:
        if state["pid"] and not state["resumed"]:
            try:
                os.kill(state["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass
    diff = compare_with_reference(reference, out / "archive", read_elites(config, up.bootstrap, up.prefix))
    growth = {n: round((peak_during.get(n, 0) - at_stop.get(n, 0)) / 1024, 1) for n in at_stop}
    result.figures.update(
        diff, stall_s=budget.stall_s, reason=up.reason, rss_at_stop_mib={n: round(v / 1024, 1) for n, v in at_stop.items()},
        rss_peak_during_mib={n: round(v / 1024, 1) for n, v in peak_during.items()}, rss_growth_mib=growth,
        rss_growth_limit_mib=RSS_GROWTH_LIMIT_MIB, in_flight_max=max(in_flight, default=0.0), in_flight_cap=STALL_CAP,
        in_flight_samples=len(in_flight), restarts=up.restarts,
    )
    result.checks.update(
        solver_was_stopped=state["stopped_at"] is not None and state["resumed"],
        rss_growth_within_bound=bool(growth) and max(growth.values()) <= RSS_GROWTH_LIMIT_MIB,
        **in_flight_checks(in_flight, cap),
        no_restarts=not up.restarts,
        run_completed=up.reason == "budget reached",
        **result_checks(diff),
    )
    return result
