"""Renders ``drills.json`` as the table of ``docs/reliability.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["BEGIN", "END", "ROW_COUNTS", "render_table", "row_counts", "write_reliability_doc"]

BEGIN = "<!-- drills:begin (written by `sparq drill`; do not edit by hand) -->"
END = "<!-- drills:end -->"

#: The row counts a drill's report prints, in this order, with their labels (those a drill has).
ROW_COUNTS = (
    ("reference_rows", "reference rows"), ("archive_rows", "result rows"), ("lost", "lost"), ("extra", "extra"),
    ("changed", "changed"), ("duplicate_lines", "duplicate lines"), ("reference_elites", "reference W"),
    ("elites", "result W"), ("rows_at_kill", "rows at kill"), ("injected", "injected"),
    ("dead_lettered", "dead-lettered"), ("dlq_records", "dlq records"),
)


def row_counts(figures: dict[str, Any]) -> str:
    """The drill's row counts as one line (``reference rows 128, result rows 128, ...``); empty for a drill without rows."""
    return ", ".join(f"{label} {figures[key]}" for key, label in ROW_COUNTS if figures.get(key) is not None)


def _figures(entry: dict[str, Any]) -> str:
    """The few figures that say how a drill went."""
    f = entry.get("figures", {})
    drill = entry["drill"]
    common = f"{row_counts(f)}, W equal {f.get('elites_equal', '?')}"
    if drill == "kill":
        per = f.get("kills_per_service", {})
        return f"{f.get('kills', 0)} kills (max {max(per.values(), default=0)} of one); {common}; {f.get('reason', '')}"
    if drill == "broker":
        return (f"down {f.get('outage_s', '?')} s at step {f.get('at_step', '?')}, restart {f.get('restart_s', '?')} s, "
                f"done {f.get('finished_after_broker_back_s', '?')} s after; {common}; {f.get('reason', '')}")
    if drill == "poison":
        return (f"{f.get('injected', 0)}/{f.get('planned', 0)} injected (largest {f.get('largest', 0):,} B), "
                f"{f.get('dead_lettered_pct', 0)}% dead-lettered, drain {f.get('drain_s', '?')} s; {common}; {f.get('reason', '')}")
    if drill == "stall":
        growth = f.get("rss_growth_mib", {})
        return (f"solver stopped {f.get('stall_s', '?')} s; max RSS growth {max(growth.values(), default=0)} MiB "
                f"(limit {f.get('rss_growth_limit_mib', '?')}); in-flight max {f.get('in_flight_max', '?')} "
                f"(cap {f.get('in_flight_cap', '?')}); {common}; {f.get('reason', '')}")
    if drill == "resume":
        return (f"{f.get('left_behind', '?')} of {f.get('processes_before_kill', '?')} processes left behind; "
                f"rerun exit {f.get('rerun_exit', '?')} in {f.get('rerun_s', '?')} s; {common}")
    if drill == "hostile":
        return "; ".join(f"{p} {s} s (limit {f.get('limit_s', {}).get(p, '?')})" for p, s in f.get("max_s", {}).items())
    return ""


def _status(entry: dict[str, Any]) -> str:
    if entry.get("skipped"):
        return "skipped"
    if entry.get("passed"):
        return "pass"
    failed = [name for name, ok in entry.get("checks", {}).items() if not ok]
    why = entry.get("error") or ", ".join(failed)
    return f"**FAIL**: {why}"


def render_table(data: dict[str, Any]) -> str:
    """A Markdown table of every drill result, with the command and date that produced it."""
    rows = ["| drill | broker | budget | result | figures | wall s |", "|---|---|---|---|---|---|"]
    order = ["kill", "broker", "poison", "stall", "resume", "hostile"]
    entries = sorted(data.get("results", []), key=lambda e: (e["budget"], order.index(e["drill"]) if e["drill"] in order else 99, e["broker"]))
    for e in entries:
        figures = e.get("skipped") or _figures(e)
        rows.append(f"| {e['drill']} | {e['broker']} | {e['budget']} | {_status(e)} | {figures} | {e.get('wall_s', 0)} |")
    commands = sorted({e.get("command") or data.get("command", "?") for e in entries})
    head = f"Measured (last {data.get('updated', '?')}) on {data.get('cpus', '?')} CPUs with " + ", ".join(f"`{c}`" for c in commands) + "."
    return "\n".join([head, "", *rows])


def write_reliability_doc(drills_json: Path, doc: Path) -> Path:
    """Replace the table between the markers of ``doc`` with the one rendered from ``drills_json``."""
    data = json.loads(drills_json.read_text())
    table = render_table(data)
    text = doc.read_text() if doc.exists() else f"# Reliability drills\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    return doc
