"""Drill ``resume``: ``kill -9`` of ``sparq up`` itself mid-run, then the same command again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sparq_stream.drill.common import (
    DrillContext,
    DrillResult,
    archive_ids,
    compare_with_reference,
    descendants,
    drill_config,
    proc_start_time,
    read_elites,
    reference_for,
    result_checks,
    wait_until,
)

__all__ = ["up_command", "run"]

GRACE_S = 15.0  # how long the first run's children get to go after their parent died


def up_command(config: Any) -> list[str]:
    """The ``sparq up`` command line of a drill config (no ``--prefix``: what a user types)."""
    cmd = [
        sys.executable, "-m", "sparq_stream.cli", "up", "--seeds", str(config.seeds), "--out", str(config.out),
        "--steps", str(config.steps), "--batch-size", str(config.batch_size), "--k", str(config.k),
        "--backend", "scripted", "--embedder", "hash", "--seed-limit", str(config.seed_limit),
        "--seed", str(config.seed), "--timeout", str(int(config.timeout_s or 0)),
    ]
    for service, flags in config.extra.items():
        cmd += ["--with", " ".join([service, *flags])]
    if config.bootstrap:
        cmd += ["--bootstrap", config.bootstrap]
    return cmd


def _start(cmd: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _alive(tree: dict[int, int | None]) -> list[int]:
    """The pids of ``tree`` still running as the same process (not a reused pid)."""
    return [pid for pid, started in tree.items() if started is not None and proc_start_time(pid) == started]


def run(ctx: DrillContext) -> DrillResult:
    """Kill ``sparq up`` once a step is archived; check for orphans; rerun; compare with the reference."""
    budget = ctx.budget
    result = DrillResult("resume", ctx.broker, budget.name)
    out = ctx.folder("resume")
    config = drill_config(ctx, out / "run", steps=budget.steps + 1, prefix=None,
                          bootstrap=ctx.bootstrap if ctx.broker == "kafka" else None)
    reference = reference_for(ctx, config)
    cmd = up_command(config)
    result.figures["command"] = " ".join(cmd[1:])
    if ctx.broker == "tansu":
        result.notes.append("sparq up starts its own embedded Tansu broker (no --bootstrap)")
    first = _start(cmd, out / "first.log")
    archive = out / "run" / "archive"
    reached = wait_until(lambda: first.poll() is not None or len(archive_ids(archive)) >= 64, budget.run_timeout_s)
    tree = {pid: proc_start_time(pid) for pid in [first.pid, *descendants(first.pid)]}
    rows_at_kill = len(archive_ids(archive))
    ended_early = first.poll() is not None
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    wait_until(lambda: len(_alive(tree)) == 0, GRACE_S)
    left = _alive(tree)
    for pid in left:  # clean up what the first run left, so the rerun is not raced by it
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    started = time.monotonic()
    second = _start(cmd, out / "second.log")
    try:
        code: int | None = second.wait(budget.run_timeout_s + 60)
    except subprocess.TimeoutExpired:
        code = None
        second_tree = {pid: proc_start_time(pid) for pid in [second.pid, *descendants(second.pid)]}
        os.killpg(second.pid, signal.SIGINT)
        try:
            second.wait(60)
        except subprocess.TimeoutExpired:
            second.kill()
        for pid in _alive(second_tree):
            os.kill(pid, signal.SIGKILL)
    rerun_s = time.monotonic() - started
    summary: dict[str, Any] = {}
    try:
        summary = json.loads((out / "run" / "summary.json").read_text())
    except (OSError, ValueError):
        pass
    elites: dict[str, Any] = {}
    if ctx.broker == "kafka":
        try:
            prefix = json.loads((out / "run" / "run.json").read_text())["prefix"]
            elites = read_elites(config, ctx.bootstrap or "", prefix)
        except (OSError, ValueError, KeyError) as exc:
            result.notes.append(f"elites not read: {exc}")
    diff = compare_with_reference(reference, archive, elites)
    result.figures.update(
        diff, processes_before_kill=len(tree), left_behind=len(left), rows_at_kill=rows_at_kill,
        rerun_exit=code, rerun_s=round(rerun_s, 1), summary_scored=summary.get("scored"),
    )
    result.checks.update(
        killed_mid_run=reached and not ended_early and 0 < rows_at_kill < diff["reference_rows"],
        no_process_left_behind=not left,
        rerun_completed=code == 0 and summary.get("stopped") == "budget reached",
        summary_counts_archive=summary.get("scored") == diff["archive_rows"] - diff["duplicate_lines"],
        **result_checks(diff, with_elites=ctx.broker == "kafka"),
    )
    if ctx.broker != "kafka":
        result.notes.append("W is not compared: the embedded broker and its elites topic end with the run")
        for name in ("elites", "elites_equal", "elites_differ"):
            result.figures[name] = None
    return result
