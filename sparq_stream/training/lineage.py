"""Lineage of exported examples: is each row's chain (parent, candidate, novel, solved) on the run's topics?

Every exported example names its run (``run``: the topic prefix), its problem
(``problem_id``), its parents (``parent_ids``), the model versions that wrote and solved it
(``model_version``, ``solver_version``) and the solved record it was made from
(``solved_topic``, ``solved_partition``, ``solved_offset``). :func:`verify_lineage` checks
those names against the records of the run's topics, one link at a time:

- ``run``: the row names a run (or one is given);
- ``parent``: the row names at least one parent, and every parent id is a seed of the run
  (``seeds``) or a child scored at an earlier step (``solved``, ``archive`` or ``elites``);
- ``candidate``: a ``candidates`` record with the row's problem id, the same parents and the
  same generator version;
- ``novel``: a ``novel`` record with that id, the same parents and generator version;
- ``solved``: the record at (partition, offset) of ``<run>.solved`` exists and is the row's
  problem: the same id, answer, parents and model versions, and the row's target is its
  correct rollout at ``rollout_index`` (its own solution for index -1).

The checker is pure: it takes the rows and an iterable of :class:`~sparq_stream.core.Inbound`
records whose ``topic`` is the full Kafka topic name (``<run>.<logical>``), keeps only the
records some row needs (memory bounded by the rows, not the topics), and returns a
:class:`LineageReport`. :func:`read_run_records` is the thin Kafka side: every record of a
run's lineage topics, read with :func:`sparq_stream.bus.compacted.iter_records`.
``sparq export --verify`` runs both.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sparq_stream.core import Inbound
from sparq_stream.errors import ConfigError, SparqError
from sparq_stream.messages import Candidate, Message, NovelCandidate, Seed, SolveResult

__all__ = [
    "LINKS",
    "LINEAGE_TOPICS",
    "BrokenLink",
    "BrokenRow",
    "LineageIndex",
    "LineageReport",
    "read_run_records",
    "verify_lineage",
]

log = logging.getLogger(__name__)

#: The links of a row's chain, in the order they are checked and reported.
LINKS: tuple[str, ...] = ("run", "parent", "candidate", "novel", "solved")
#: The logical topics whose records the check reads.
LINEAGE_TOPICS: tuple[str, ...] = ("seeds", "elites", "archive", "candidates", "novel", "solved")
_CHILD_TOPICS = ("solved", "archive", "elites")


@dataclass(frozen=True)
class BrokenLink:
    """One link of a row's chain that the topics do not hold, and why."""

    link: str
    reason: str


@dataclass(frozen=True)
class BrokenRow:
    """An exported example whose chain is broken: which links, and why."""

    id: str
    problem_id: str
    run: str
    links: tuple[BrokenLink, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the row as a JSON-ready dict: ``broken`` maps each broken link to its reason."""
        return {"id": self.id, "problem_id": self.problem_id, "run": self.run, "broken": {b.link: b.reason for b in self.links}}


@dataclass
class LineageReport:
    """What :func:`verify_lineage` found: rows checked, the broken ones, the records read per topic, and what was not read."""

    rows: int = 0
    broken: list[BrokenRow] = field(default_factory=list)
    records: dict[str, int] = field(default_factory=dict)
    unread: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every row's chain is whole."""
        return not self.broken

    def by_link(self) -> dict[str, int]:
        """Broken rows per link (a row with two broken links counts under both)."""
        counts = Counter(b.link for row in self.broken for b in row.links)
        return {link: counts[link] for link in LINKS if counts[link]}

    def summary(self) -> dict[str, Any]:
        """The JSON-ready count summary."""
        return {
            "rows": self.rows,
            "ok": self.rows - len(self.broken),
            "broken": len(self.broken),
            "by_link": self.by_link(),
            "records": dict(sorted(self.records.items())),
            "unread": dict(sorted(self.unread.items())),
        }


def _split(topic: str) -> tuple[str, str]:
    """(run, logical topic) of a full Kafka topic name ``<run>.<logical>``."""
    run, _, logical = topic.rpartition(".")
    return run, logical


def _int(value: Any, default: int = -1) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class LineageIndex:
    """The records the rows need, collected from any stream of run records; then checks rows against them."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], run: str | None = None) -> None:
        """Note which ids, parents and solved coordinates ``rows`` name (``run`` overrides each row's own)."""
        self.run_override = run or None
        self._ids: set[tuple[str, str]] = set()
        self._parents: set[tuple[str, str]] = set()
        self._coords: set[tuple[str, int, int]] = set()
        for row in rows:
            run_of = self.run_of(row)
            if not run_of:
                continue
            self._ids.add((run_of, str(row.get("problem_id") or "")))
            self._parents.update((run_of, str(p)) for p in row.get("parent_ids") or ())
            self._coords.add((f"{run_of}.solved", _int(row.get("solved_partition")), _int(row.get("solved_offset"))))
        self.seeds: set[tuple[str, str]] = set()
        self.children: dict[tuple[str, str], int] = {}  # (run, id) -> earliest step it was scored at
        self.candidates: dict[tuple[str, str], list[Candidate]] = {}
        self.novel: dict[tuple[str, str], list[NovelCandidate]] = {}
        self.solved: dict[tuple[str, int, int], Message] = {}
        self.records: Counter[str] = Counter()

    def run_of(self, row: Mapping[str, Any]) -> str:
        """The run a row is checked against: the override, else the row's own ``run``."""
        return self.run_override or str(row.get("run") or "")

    def add(self, record: Inbound) -> None:
        """Take one record of a run topic (``record.topic`` is the full name); keep it if a row needs it."""
        run, logical = _split(record.topic)
        self.records[record.topic] += 1
        message = record.message
        if message is None:
            return
        key = (run, str(getattr(message, "id", "")))
        if logical == "seeds" and isinstance(message, Seed):
            if key in self._parents:
                self.seeds.add(key)
        elif logical in _CHILD_TOPICS and isinstance(message, SolveResult) and key in self._parents:
            step = int(message.step)
            self.children[key] = min(step, self.children.get(key, step))
        if logical == "candidates" and isinstance(message, Candidate) and key in self._ids:
            self.candidates.setdefault(key, []).append(message)
        elif logical == "novel" and isinstance(message, NovelCandidate) and key in self._ids:
            self.novel.setdefault(key, []).append(message)
        elif logical == "solved" and (record.topic, record.partition, record.offset) in self._coords:
            self.solved[(record.topic, record.partition, record.offset)] = message

    def check(self, row: Mapping[str, Any]) -> tuple[BrokenLink, ...]:
        """Return the broken links of one row's chain (empty: the chain is whole)."""
        run = self.run_of(row)
        if not run:
            return (BrokenLink("run", "the row names no run (give the run's topic prefix)"),)
        problem_id = str(row.get("problem_id") or "")
        key = (run, problem_id)
        broken = [
            self._parent(run, row),
            self._made(self.candidates.get(key), "candidates", run, row),
            self._made(self.novel.get(key), "novel", run, row),
            self._solved(run, row),
        ]
        return tuple(b for b in broken if b is not None)

    def _parent(self, run: str, row: Mapping[str, Any]) -> BrokenLink | None:
        parents = [str(p) for p in row.get("parent_ids") or ()]
        if not parents:
            return BrokenLink("parent", "the row names no parent")
        step = _int(row.get("step"), 0)
        for parent in parents:
            if (run, parent) in self.seeds:
                continue
            scored = self.children.get((run, parent))
            if scored is None:
                return BrokenLink("parent", f"parent {parent} is neither a seed of {run} nor a scored child")
            if scored >= step:
                return BrokenLink("parent", f"parent {parent} was scored at step {scored}, not before the row's step {step}")
        return None

    def _made(self, found: list[Any] | None, logical: str, run: str, row: Mapping[str, Any]) -> BrokenLink | None:
        link = "candidate" if logical == "candidates" else logical
        if not found:
            return BrokenLink(link, f"no {logical} record with id {row.get('problem_id')} on {run}.{logical}")
        reasons = [_differs(message, row, ("parent_ids", "model_version")) for message in found]
        if any(reason is None for reason in reasons):
            return None
        return BrokenLink(link, f"the {logical} record differs: {reasons[0]}")

    def _solved(self, run: str, row: Mapping[str, Any]) -> BrokenLink | None:
        topic = f"{run}.solved"
        partition, offset = _int(row.get("solved_partition")), _int(row.get("solved_offset"))
        if partition < 0 or offset < 0:
            return BrokenLink("solved", "the row names no solved record (partition/offset unknown)")
        named = str(row.get("solved_topic") or "")
        if named and named != topic and self.run_override is None:
            return BrokenLink("solved", f"the row names topic {named}, not its run's {topic}")
        where = f"{topic}[{partition}]@{offset}"
        message = self.solved.get((topic, partition, offset))
        if message is None:
            return BrokenLink("solved", f"no record at {where}")
        if not isinstance(message, SolveResult):
            return BrokenLink("solved", f"the record at {where} is a {type(message).__name__}, not a solved result")
        reason = _differs(message, row, ("id", "answer", "parent_ids", "model_version", "solver_version"))
        if reason is None:
            reason = _target_differs(message, row)
        return BrokenLink("solved", f"the record at {where} differs: {reason}") if reason else None


def _differs(message: Any, row: Mapping[str, Any], names: Sequence[str]) -> str | None:
    """The first of ``names`` whose value in the message differs from the row's, as a short reason."""
    for name in names:
        mine = getattr(message, name)
        theirs = row.get("problem_id" if name == "id" else name)
        if name == "parent_ids":
            mine, theirs = list(mine), list(theirs or ())
        if mine != theirs:
            return f"{name} {_short(mine)} != the row's {_short(theirs)}"
    return None


def _target_differs(message: SolveResult, row: Mapping[str, Any]) -> str | None:
    """Why the row's assistant target is not the record's rollout at ``rollout_index`` (or its solution), or None."""
    index = _int(row.get("rollout_index"), -2)
    response = row.get("response")
    if index == -1:
        return None if message.solution == response else "the row's target is not the record's solution"
    if not 0 <= index < len(message.correct_rollouts):
        return f"rollout_index {index} is outside its {len(message.correct_rollouts)} correct rollouts"
    return None if message.correct_rollouts[index] == response else f"the row's target is not its correct rollout {index}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def verify_lineage(rows: Sequence[Mapping[str, Any]], records: Iterable[Inbound], *, run: str | None = None) -> LineageReport:
    """Check every row's chain against ``records`` (full topic names); ``run`` overrides the rows' own run."""
    index = LineageIndex(rows, run)
    for record in records:
        index.add(record)
    report = LineageReport(rows=len(rows), records=dict(index.records))
    for row in rows:
        links = index.check(row)
        if links:
            report.broken.append(BrokenRow(str(row.get("id") or ""), str(row.get("problem_id") or ""), index.run_of(row), links))
    return report


# ---------------------------------------------------------------------- the Kafka side
def read_run_records(
    settings: Any,
    run: str,
    *,
    topics: Sequence[str] = LINEAGE_TOPICS,
    timeout_s: float = 600.0,
    stats: Counter[str] | None = None,
) -> Iterator[Inbound]:
    """Yield every record of a run's lineage topics (``<run>.<topic>``) as :class:`Inbound`, decoded.

    A topic that does not exist is skipped with a warning (its links are then reported broken;
    ``stats["missing_topics"]`` counts it); an undecodable record is passed on with no message
    (``stats["undecodable"]`` counts it).
    """
    from sparq_stream.bus.compacted import iter_records
    from sparq_stream.messages import decode

    for logical in topics:
        topic = f"{run}.{logical}"
        try:
            for rec in iter_records(settings, topic, timeout_s=timeout_s):
                key = rec.key.decode("utf-8", "replace") if rec.key is not None else None
                headers = tuple((str(k), bytes(v or b"")) for k, v in (rec.headers or ()))
                message = None
                if rec.value is not None:
                    try:
                        message = decode(rec.value)
                    except SparqError:
                        if stats is not None:
                            stats["undecodable"] += 1
                yield Inbound(rec.topic, key, message, rec.partition, rec.offset, rec.timestamp or 0, headers)
        except ConfigError as exc:
            if stats is not None:
                stats["missing_topics"] += 1
            log.warning("cannot read %s (%s): the links it holds are reported broken", topic, exc)


#: The export columns the check reads.
_ROW_COLUMNS = ("id", "problem_id", "rollout_index", "answer", "response", "parent_ids", "model_version", "solver_version",
                "step", "run", "solved_topic", "solved_partition", "solved_offset")  # fmt: skip


def verify_export(path: Any, settings: Any, *, run: str | None = None, timeout_s: float = 600.0) -> tuple[LineageReport, list[str]]:
    """Check an export folder or file against its runs' topics; return the report and the runs read.

    ``run`` (a topic prefix) overrides the run each row names; ``settings`` reach the broker.
    """
    from sparq_stream.training.export import read_examples

    rows = [_with_defaults(row) for row in read_examples(path)]
    runs = sorted({run} if run else {str(r.get("run") or "") for r in rows} - {""})
    stats: Counter[str] = Counter()
    records = (record for name in runs for record in read_run_records(settings, name, timeout_s=timeout_s, stats=stats))
    report = verify_lineage(rows, records, run=run)
    report.unread = dict(stats)
    return report, runs


def _with_defaults(row: Mapping[str, Any]) -> dict[str, Any]:
    """The columns the check reads (an export written before the lineage columns lacks some: None)."""
    return {name: row.get(name) for name in _ROW_COLUMNS}
