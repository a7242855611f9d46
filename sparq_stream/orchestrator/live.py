"""The live view of ``sparq up``: one rich table of every stage, or a log line when not at a terminal."""

from __future__ import annotations

import logging
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = ["LiveView", "contamination_line", "render"]

log = logging.getLogger(__name__)

_BARS = " ▁▂▃▄▅▆▇█"


def _v(row: dict[str, Any] | None, name: str) -> float:
    if not row:
        return 0.0
    return float(row["counters"].get(name, row["gauges"].get(name, 0.0)))


def _sparkline(counts: list[float]) -> str:
    top = max(counts) if counts and max(counts) > 0 else 1.0
    return "".join(_BARS[min(len(_BARS) - 1, int(round(c / top * (len(_BARS) - 1))))] for c in counts)


def contamination_line(novelty: dict[str, Any] | None) -> str:
    """The contamination check in words, from novelty's gauges ("" until novelty reports)."""
    if not novelty or "contamination_check" not in novelty.get("gauges", {}):
        return ""
    if _v(novelty, "contamination_check") <= 0:
        return "contamination check OFF (--no-contamination-check): held-out problems are not dropped"
    replicas = max(1, int(novelty.get("instances", 1)))  # each replica holds the same sets: gauges sum over them
    return f"contamination check on: {_v(novelty, 'heldout_size') / replicas:,.0f} held-out problems"


def render(snapshot: dict[str, dict[str, Any]], rate: float, elapsed: float, services: list[Any]) -> Group:
    """Build the view: per-stage table, drops by reason, SR histogram, coverage and elites."""
    table = Table(title=f"sparq up — {elapsed:,.0f}s", expand=False)
    for col in ("stage", "procs", "in", "out", "lag", "end", "details"):  # end: the end-marker epoch the stage passed
        table.add_column(col, justify="right" if col in ("procs", "in", "out", "lag", "end") else "left")
    mut, nov, sol, arc, tra = (snapshot.get(n) for n in ("mutator", "novelty", "solver", "archivist", "trainer"))
    drops = {
        k.removeprefix("dropped_"): v
        for k, v in ({**(nov or {}).get("gauges", {}), **(nov or {}).get("counters", {})}).items()
        if k.startswith("dropped_") and v
    }
    replicas = max(1, int((mut or {}).get("instances", 1)))  # mutator replicas share each step: gauges sum over them
    details = {
        "mutator": f"step {_v(mut, 'step') / replicas:.0f}  emitted {_v(mut, 'emitted'):.0f}  in flight {_v(mut, 'in_flight'):.0f}  "
        f"{rate:.2f} cand/s" + ("  DONE" if _v(mut, "done") >= replicas else ""),
        "novelty": "drops " + (", ".join(f"{k} {v:.0f}" for k, v in sorted(drops.items())) or "none"),
        "solver": f"rollouts {_v(sol, 'rollouts_used'):.0f}",
        "archivist": f"scored {_v(arc, 'scored'):.0f}  kept {_v(arc, 'kept'):.0f}  skill-sets {_v(arc, 'coverage'):.0f}  "
        f"elites {_v(arc, 'w_elites'):.0f}  QD-score {_v(arc, 'qd_score'):.2f}",
        "trainer": f"examples {_v(tra, 'examples'):.0f}  exports {_v(tra, 'exports'):.0f}",
    }
    for name, row in (("mutator", mut), ("novelty", nov), ("solver", sol), ("archivist", arc), ("trainer", tra)):
        table.add_row(
            name,
            f"{(row or {}).get('instances', 0)}",
            f"{_v(row, 'consumed'):.0f}",
            f"{_v(row, 'produced'):.0f}",
            f"{_v(row, 'lag'):.0f}",
            f"{_v(row, 'end_passed'):.0f}" if _v(row, "end_passed") > 0 else "-",
            details[name],
        )
    bins = [_v(arc, f"sr_bin_{i}") for i in range(10)]
    lines = [Text(f"SR histogram 0→1: |{_sparkline(bins)}|  {' '.join(f'{b:.0f}' for b in bins)}")]
    check = contamination_line(nov)
    if check:
        lines.append(Text(check, style="bold red" if "OFF" in check else "dim"))
    dead = sum(_v(r, "dead_lettered") for r in snapshot.values())
    if dead:
        lines.append(Text(f"dead-lettered: {dead:.0f} (see the dlq topic)", style="yellow"))
    restarts = [f"{s.name}×{s.restarts}" for s in services if getattr(s, "restarts", 0)]
    if restarts:
        lines.append(Text("restarted: " + ", ".join(restarts), style="yellow"))
    return Group(table, *lines)


class LiveView:
    """A context manager refreshed by the run loop; logs a line every 10 s when not at a terminal."""

    def __init__(self, monitor: Any, supervisor: Any, console: Console | None = None) -> None:
        self.monitor = monitor
        self.supervisor = supervisor
        self.console = console or Console(stderr=True)
        self.started = time.monotonic()
        self._live: Live | None = None
        self._last_log = 0.0
        self._rate_mark: tuple[float, float] = (time.monotonic(), 0.0)
        self._rate = 0.0

    def __enter__(self) -> "LiveView":
        if self.console.is_terminal:
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self.refresh_view()
            self._live.__exit__(None, None, None)

    def refresh_view(self) -> None:
        """Redraw (at a terminal) or log a progress line (every 10 s otherwise)."""
        snap = self.monitor.snapshot()
        now = time.monotonic()
        emitted = _v(snap.get("mutator"), "emitted")
        mark_t, mark_n = self._rate_mark
        if now - mark_t >= 5.0:
            self._rate = (emitted - mark_n) / (now - mark_t)
            self._rate_mark = (now, emitted)
        if self._live is not None:
            self._live.update(render(snap, self._rate, now - self.started, self.supervisor.services), refresh=True)
        elif now - self._last_log >= 10.0:
            self._last_log = now
            arc = snap.get("archivist")
            log.info(
                "progress: emitted %.0f, scored %.0f, kept %.0f, skill-sets %.0f, %.2f cand/s%s",
                emitted, _v(arc, "scored"), _v(arc, "kept"), _v(arc, "coverage"), self._rate,
                "; contamination check OFF" if "OFF" in contamination_line(snap.get("novelty")) else "",
            )
