"""Drill ``kill``: random ``kill -9`` of services every few seconds while the loop runs, and one at the end.

The planned kills act while the loop runs. Then the archivist is stopped (SIGSTOP) once the
mutator has emitted its last candidate and killed once the mutator reports every outcome in: it
dies holding unread results while its last report said it had read everything, the moment a stop
rule trusting a dead process's last report would end the run without them.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
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

__all__ = ["kill_plan", "run"]

SERVICES = ("mutator", "novelty", "solver-0", "archivist", "trainer")
#: Stopped when the mutator has emitted its last candidate, killed when every outcome is in.
AT_DONE = "archivist"


def kill_plan(total: int, of_one: int, seed: int) -> list[str]:
    """The victims in kill order: ``of_one`` kills of the solver, the rest spread over the others."""
    others = [s for s in SERVICES if s != "solver-0"]
    plan = ["solver-0"] * of_one + [others[i % len(others)] for i in range(max(0, total - of_one))]
    random.Random(seed).shuffle(plan)
    return plan


def run(ctx: DrillContext) -> DrillResult:
    """Kill services on a schedule until the plan is done; the run must end equal to the reference."""
    budget = ctx.budget
    result = DrillResult("kill", ctx.broker, budget.name)
    out = ctx.folder("kill")
    config = drill_config(ctx, out, steps=budget.long_steps or budget.steps)
    reference = reference_for(ctx, config)
    plan = kill_plan(budget.kills, budget.kills_of_one, seed=len(ctx.broker))
    limit = budget.kills + 5
    config = config.model_copy(update={"max_restarts": limit})  # every kill is a crash the supervisor must restart
    result.notes.append(f"restart limit raised: --max-restarts {limit}")
    done: list[tuple[float, str, float]] = []
    state: dict[str, Any] = {"next": 0.0, "t0": time.monotonic()}
    first_seen: dict[int, float] = {}

    def chaos(supervisor: Any, monitor: Any) -> None:
        now = time.monotonic()
        if len(done) >= len(plan):
            _kill_at_done(supervisor, monitor, now)
            return
        if now < state["next"] or monitor.value("archivist", "scored") < 1:
            return
        victim = plan[len(done)]
        svc = next((s for s in supervisor.services if s.name == victim), None)
        if svc is None or not svc.alive:
            return  # still being restarted: try again next tick
        seen = first_seen.setdefault(svc.proc.pid, now)
        if now - seen < budget.kill_interval_s:
            return  # let a restarted service get going before it dies again
        os.kill(svc.proc.pid, signal.SIGKILL)
        done.append((round(now - state["t0"], 1), victim, monitor.value("mutator", "step")))
        state["next"] = now + budget.kill_interval_s

    def _kill_at_done(supervisor: Any, monitor: Any, now: float) -> None:
        # Stopped once the last candidate is out, killed once its outcome is in: the archivist then
        # certainly holds unread results while its last report (from before the stop) said "lag 0".
        # A stop rule that trusted a dead process's last report would end the run without them.
        if state.get("at_done") is not None or monitor.value("mutator", "exhausted") < 1:
            return
        svc = next((s for s in supervisor.services if s.name == AT_DONE), None)
        if svc is None or not svc.alive:
            return
        if not state.get("stopped"):
            os.kill(svc.proc.pid, signal.SIGSTOP)
            state["stopped"] = svc.proc.pid
        if monitor.value("mutator", "done") < 1 or state["stopped"] != svc.proc.pid:
            return
        os.kill(svc.proc.pid, signal.SIGKILL)
        state["at_done"] = round(now - state["t0"], 1)

    up = run_up(config, on_tick=chaos)
    diff = compare_with_reference(reference, out / "archive", read_elites(config, up.bootstrap, up.prefix))
    per_service = Counter(v for _, v, _ in done)
    result.figures.update(
        diff, kills=len(done), kills_per_service=dict(per_service), restarts=up.restarts, reason=up.reason,
        kill_times_s=[t for t, _, _ in done], scored=up.summary.get("scored"), killed_at_done_s=state.get("at_done"),
    )
    result.checks.update(
        run_completed=up.reason == "budget reached",
        kills_done=len(done) >= budget.kills,
        one_service_killed_often=bool(per_service) and max(per_service.values()) >= budget.kills_of_one,
        killed_at_done=state.get("at_done") is not None,
        **result_checks(diff),
    )
    return result
