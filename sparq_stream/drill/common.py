"""What every drill shares: budgets, the run it disturbs, the undisturbed reference, the comparison."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sparq_stream.orchestrator.up import UpConfig

__all__ = [
    "BUDGETS",
    "Budget",
    "DrillContext",
    "DrillResult",
    "archive_ids",
    "compare_with_reference",
    "drill_config",
    "proc_memory_kib",
    "descendants",
    "proc_start_time",
    "read_elites",
    "reference_for",
    "result_checks",
    "wait_until",
]

log = logging.getLogger(__name__)

BrokerName = Literal["tansu", "kafka"]
BATCH, CHUNK, K, SEED_LIMIT, SEED = 64, 16, 4, 40, 7
# the fields of an archived result that a disturbed run must reproduce exactly (timestamps excepted)
RESULT_FIELDS = ("id", "problem", "answer", "parent_ids", "step", "k", "rollouts_used", "n_correct",
                 "solve_rate", "quality", "niche", "skills")


@dataclass(frozen=True)
class Budget:
    """How hard each drill pushes (``small`` for CI, ``full`` for ``sparq drill all``)."""

    name: str
    steps: int
    run_timeout_s: float
    kills: int
    kill_interval_s: float
    kills_of_one: int
    poison: int
    poison_large: int
    stall_s: float
    outage_s: float
    hostile_scale: int
    long_steps: int = 0  # steps of the drills that act mid-run (kill, stall, broker; 0: ``steps``): room to act before the end


BUDGETS: dict[str, Budget] = {
    "small": Budget("small", steps=2, run_timeout_s=300.0, kills=6, kill_interval_s=1.5, kills_of_one=3,
                    poison=600, poison_large=7, stall_s=10.0, outage_s=20.0, hostile_scale=1, long_steps=6),
    "full": Budget("full", steps=10, run_timeout_s=600.0, kills=20, kill_interval_s=2.5, kills_of_one=5,
                   poison=10_000, poison_large=14, stall_s=60.0, outage_s=30.0, hostile_scale=4),
}


@dataclass
class DrillResult:
    """One drill's outcome: named checks (True = held), figures, notes; ``passed`` = every check held."""

    drill: str
    broker: str
    budget: str
    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    error: str | None = None
    skipped: str | None = None
    timed_checks: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every check held, nothing raised and the drill ran."""
        return self.skipped is None and self.error is None and bool(self.checks) and all(self.checks.values())

    def untimed_failures(self) -> list[str]:
        """The checks that failed, other than those that compare a measured time with a limit."""
        return [name for name, ok in self.checks.items() if not ok and name not in self.timed_checks]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (with ``passed``)."""
        return {**asdict(self), "passed": self.passed}


@dataclass
class DrillContext:
    """Where a drill runs: its output folder, the broker, the budget, the seed file."""

    out: Path
    broker: BrokerName
    budget: Budget
    seeds: Path
    bootstrap: str | None = None
    kafka: Any = None  # the ApacheKafka object on the kafka broker (the broker drill stops and starts it)
    _references: dict[str, Any] = field(default_factory=dict)

    def folder(self, drill: str) -> Path:
        """A fresh folder for one drill's run(s)."""
        path = self.out / f"{drill}-{self.broker}"
        shutil.rmtree(path, ignore_errors=True)  # a run appends to its archive and resumes from its state
        path.mkdir(parents=True)
        return path


def drill_config(ctx: DrillContext, out: Path, **over: Any) -> UpConfig:
    """The run every drill disturbs: scripted backend, hash embedder, b=64 in chunks of 16, K=4, 40 seeds."""
    extra = {"mutator": ["--chunk-size", str(CHUNK)], **over.pop("extra", {})}
    values: dict[str, Any] = dict(
        seeds=ctx.seeds, out=out, steps=ctx.budget.steps, batch_size=BATCH, k=K, backend="scripted",
        embedder="hash", seed_limit=SEED_LIMIT, seed=SEED, timeout_s=ctx.budget.run_timeout_s,
        bootstrap=ctx.bootstrap, prefix=f"drill{uuid.uuid4().hex[:8]}", extra=extra,
    )
    values.update(over)
    return UpConfig(**values)


def reference_for(ctx: DrillContext, config: UpConfig) -> Any:
    """The undisturbed run of the same seed and settings: the in-memory bus with the same cores and flags.

    The end-to-end tests hold the streaming run equal to it exactly, so a disturbed run must equal it too.
    Cached per step count and extra flags.
    """
    from sparq_stream.orchestrator.local import run_local

    flags = json.dumps(config.extra, sort_keys=True)  # the stall drill caps the mutator: its own reference
    key = f"{config.steps}-{hashlib.sha256(flags.encode()).hexdigest()[:8]}"
    if key not in ctx._references:
        ref_out = ctx.out / f"reference-{key}"
        shutil.rmtree(ref_out, ignore_errors=True)  # the mutator would resume from an old checkpoint
        ref_config = config.model_copy(update={"out": ref_out, "bootstrap": None, "prefix": None})
        ctx._references[key] = run_local(ref_config)
    return ctx._references[key]


def archive_ids(directory: Path) -> list[str]:
    """Every id of every row the archive holds (duplicates kept): Parquet parts, then JSONL rows past them."""
    import pyarrow.parquet as pq

    from sparq_stream.cores.archivist import JSONL_NAME, OFFSET_NAME, part_files

    ids: list[str] = []
    parts = part_files(directory)
    for part in parts:
        ids.extend(str(i) for i in pq.read_table(part, columns=["id"]).column("id").to_pylist())
    start = 0
    if parts:
        try:
            start = max(0, int((directory / OFFSET_NAME).read_text(encoding="utf-8").strip()))
        except (OSError, ValueError):
            start = 0
    path = directory / JSONL_NAME
    if path.exists():
        with open(path, "rb") as fh:
            fh.seek(start)
            for line in fh:
                try:
                    ids.append(str(json.loads(line)["id"]))
                except (ValueError, KeyError, TypeError):
                    continue
    return ids


def _row(result: Any) -> tuple[Any, ...]:
    return tuple(tuple(v) if isinstance(v, list) else v for v in (getattr(result, f) for f in RESULT_FIELDS))


def compare_with_reference(reference: Any, archive_dir: Path, elites: dict[str, Any]) -> dict[str, Any]:
    """Lost, extra, changed and duplicate archive rows, and whether W (the elites) equals the reference's."""
    from sparq_stream.qd.archive_log import read_archive

    got = {r.id: r for r in read_archive(archive_dir)}
    want = {r.id: r for r in reference.results}
    raw = archive_ids(archive_dir)
    changed = sorted(i for i in set(got) & set(want) if _row(got[i]) != _row(want[i]))
    w_got = {slot: (e.id, e.quality, e.niche) for slot, e in elites.items()}
    w_want = {slot: (e.id, e.quality, e.niche) for slot, e in reference.elites.items()}
    return {
        "reference_rows": len(want),
        "archive_rows": len(raw),
        "lost": len(set(want) - set(got)),
        "extra": len(set(got) - set(want)),
        "changed": len(changed),
        "duplicate_lines": len(raw) - len(set(raw)),
        "elites": len(w_got),
        "reference_elites": len(w_want),
        "elites_equal": w_got == w_want,
        "elites_differ": len(set(w_got.items()) ^ set(w_want.items())),
    }


def result_checks(diff: dict[str, Any], *, with_elites: bool = True) -> dict[str, bool]:
    """The checks every drill makes of its run's outcome against the reference (W left out where ``with_elites`` is False).

    Both sides must hold rows (and elites): two empty sides compare equal and prove nothing.
    """
    checks = {
        "reference_not_empty": diff["reference_rows"] > 0 and (diff["reference_elites"] > 0 or not with_elites),
        "result_not_empty": diff["archive_rows"] > 0 and (diff["elites"] > 0 or not with_elites),
        "archive_equals_reference": diff["lost"] == 0 and diff["extra"] == 0 and diff["changed"] == 0,
        "nothing_lost": diff["lost"] == 0,
        "no_duplicate_lines": diff["duplicate_lines"] == 0,
    }
    if with_elites:
        checks["elites_equal_reference"] = bool(diff["elites_equal"])
    return checks


def read_elites(config: UpConfig, bootstrap: str, prefix: str) -> dict[str, Any]:
    """W as the run left it: the elites topic, last valid Elite per key (poison records on it are skipped)."""
    from sparq_stream.bus import read_latest
    from sparq_stream.errors import SparqError
    from sparq_stream.messages import Elite, decode
    from sparq_stream.settings import ServiceSettings

    def lenient(value: bytes) -> Any:
        try:
            return decode(value, expect=Elite)
        except SparqError:
            return None

    table = read_latest(ServiceSettings(bootstrap=bootstrap, prefix=prefix), f"{prefix}.elites", decoder=lenient)
    return {k: v for k, v in table.items() if v is not None}


def proc_memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM = peak RSS) of a process in KiB, from /proc; (0, 0) if it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0, 0
    return rss, hwm


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (to tell a pid from a reused one); None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (by parent pid, from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
            ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_until(predicate: Any, timeout_s: float, every_s: float = 0.5) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; return whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return bool(predicate())
