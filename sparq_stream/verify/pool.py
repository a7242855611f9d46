"""A pool of sandboxed checker processes with a per-check time limit and a memory cap.

The parent does the cheap, safe part of every check (:func:`prepare`: extraction, limits,
plain numbers, strings) and sends only what needs sympy to a worker. A worker that runs
past the limit is killed and replaced (that check: ``reason="timeout"``); one that dies
(segfault, MemoryError under its address-space cap) is replaced too (``"worker crashed"``).
Workers come from a ``forkserver`` (default; the server preloads and warms math-verify
once, so a replacement starts in ~0.1 s) or ``spawn`` context, never ``fork``, so the pool
is safe to create in a process that already runs Kafka client threads or torch.
Identical symbolic tasks in one batch (rollouts agreeing on an answer) are sent once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from sparq_stream.errors import ConfigError, FatalError, RetriableError
from sparq_stream.verify import _worker
from sparq_stream.verify.equivalence import (
    ERROR,
    TIMEOUT,
    WORKER_CRASHED,
    CheckResult,
    SymbolicTask,
    prepare,
)

__all__ = ["CheckerPool", "DEFAULT_TIMEOUT_S", "DEFAULT_MEMORY_MB"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_MB = 2048
_PRELOAD = ["sparq_stream.verify._preload"]
_MAX_START_FAILURES = 3
_STARTING, _IDLE, _BUSY = "starting", "idle", "busy"


@dataclass
class _Handle:
    """One worker process, its pipe and what it is doing."""

    process: Any
    conn: Connection
    started: float
    state: str = _STARTING
    task: int | None = None
    deadline: float = 0.0


@dataclass
class _Stats:
    """Counters since the pool started."""

    fast: int = 0
    symbolic: int = 0
    sent: int = 0
    timeouts: int = 0
    crashes: int = 0
    respawns: int = 0
    worker_s: float = 0.0
    by_reason: dict[str, int] = field(default_factory=dict)


def _stop(handles: list[_Handle]) -> None:
    """Ask idle workers to exit, then kill whatever is left (also used as a finaliser)."""
    for handle in handles:
        try:
            if handle.state == _IDLE:
                handle.conn.send(None)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 1.0
    for handle in handles:
        handle.process.join(max(0.0, deadline - time.monotonic()))
        if handle.process.is_alive():
            handle.process.kill()
            handle.process.join(1.0)
        try:
            handle.conn.close()
        except OSError:
            pass
    handles.clear()


class CheckerPool:
    """Check (gold, response) pairs in sandboxed worker processes with a per-check limit."""

    def __init__(
        self,
        workers: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        memory_mb: int | None = DEFAULT_MEMORY_MB,
        context: str = "forkserver",
        soft_limit: bool = True,
        start_timeout_s: float = 120.0,
    ) -> None:
        """Start ``workers`` processes (default: CPU count) and wait until they are ready.

        ``timeout_s`` is the hard per-check limit (the worker is killed and replaced);
        ``soft_limit`` also arms math-verify's own alarms in the worker at half of it, so
        most runaway checks end without a kill. ``memory_mb`` caps each worker's address
        space (None: no cap). As with any spawn/forkserver pool, a script that creates one
        must guard its entry point with ``if __name__ == "__main__":``.
        """
        if workers is None:
            workers = os.cpu_count() or 1
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        if context not in ("forkserver", "spawn"):
            raise ConfigError(f"context must be 'forkserver' or 'spawn', got {context!r}")
        self.workers = workers
        self.timeout_s = float(timeout_s)
        self.memory_mb = memory_mb
        self.start_timeout_s = start_timeout_s
        self._ctx = multiprocessing.get_context(context)
        if context == "forkserver":
            self._ctx.set_forkserver_preload(_PRELOAD)
        self._inner_timeout = max(1.0, self.timeout_s / 2) if soft_limit else None
        self._lock = threading.Lock()
        self._handles: list[_Handle] = []
        self._stats = _Stats()
        self._closed = False
        self._start_failures = 0
        self._finalizer = weakref.finalize(self, _stop, self._handles)
        try:
            for _ in range(workers):
                self._handles.append(self._spawn())
            with self._lock:
                self._wait_ready()
        except BaseException:
            self.close()
            raise

    # -- public API -------------------------------------------------------------------

    def check(self, gold: str, response: str) -> CheckResult:
        """Check one pair (see :meth:`check_many`)."""
        return self.check_many([(gold, response)])[0]

    def check_many(self, pairs: Iterable[tuple[str, str]]) -> list[CheckResult]:
        """Check pairs in parallel over the workers; results are in input order."""
        if self._closed:
            raise FatalError("CheckerPool is closed")
        results: list[CheckResult | None] = []
        tasks: list[tuple[int, SymbolicTask]] = []
        first: dict[tuple[str, str], int] = {}
        copies: list[tuple[int, int, str]] = []  # (position, position of the same task, extracted)
        for gold, response in pairs:
            prepared = prepare(gold, response)
            if isinstance(prepared, CheckResult):
                results.append(prepared)
                continue
            key = (prepared.gold, prepared.response)
            if key in first:
                copies.append((len(results), first[key], prepared.extracted))
            else:
                first[key] = len(results)
                tasks.append((len(results), prepared))
            results.append(None)
        with self._lock:
            if tasks:
                if self._closed:
                    raise FatalError("CheckerPool is closed")
                try:
                    self._run(tasks, results)
                except BaseException:
                    self._abandon()
                    raise
            for position, source, extracted in copies:
                done = results[source]
                if done is not None:
                    results[position] = CheckResult(extracted, done.equal, done.reason)
            out = [r if r is not None else CheckResult(None, False, ERROR) for r in results]
            self._count(out, symbolic=len(tasks) + len(copies))
        return out

    def stats(self) -> dict[str, Any]:
        """Counters: fast (decided here), symbolic, sent (unique symbolic tasks sent to workers),
        timeouts, crashes, respawns, worker seconds and results by reason."""
        s = self._stats
        return {
            "fast": s.fast,
            "symbolic": s.symbolic,
            "sent": s.sent,
            "timeouts": s.timeouts,
            "crashes": s.crashes,
            "respawns": s.respawns,
            "worker_s": round(s.worker_s, 3),
            "by_reason": dict(s.by_reason),
        }

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (they change when one is replaced)."""
        return [h.process.pid for h in self._handles]

    def close(self) -> None:
        """Stop all workers; the pool cannot be used afterwards."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> CheckerPool:
        """Use the pool as a context manager."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the pool on leaving the ``with`` block."""
        self.close()

    # -- internals --------------------------------------------------------------------

    def _count(self, results: list[CheckResult], symbolic: int) -> None:
        """Update the counters after a batch."""
        self._stats.symbolic += symbolic
        self._stats.fast += len(results) - symbolic
        for r in results:
            self._stats.by_reason[r.reason] = self._stats.by_reason.get(r.reason, 0) + 1

    def _spawn(self) -> _Handle:
        """Start one worker process."""
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker.worker_main,
            args=(child, self.memory_mb, self._inner_timeout),
            name="sparq-checker",
            daemon=True,
        )
        process.start()
        child.close()
        return _Handle(process=process, conn=parent, started=time.monotonic())

    def _replace(self, handle: _Handle) -> None:
        """Kill a worker and put a fresh one in its place."""
        if handle.process.is_alive():
            handle.process.kill()
        handle.process.join(1.0)
        try:
            handle.conn.close()
        except OSError:
            pass
        index = self._handles.index(handle)
        self._handles[index] = self._spawn()
        self._stats.respawns += 1

    def _abandon(self) -> None:
        """After an interrupted batch, replace busy workers so no stale answer arrives later."""
        for handle in list(self._handles):
            if handle.state == _BUSY:
                self._replace(handle)

    def _on_dead(self, handle: _Handle) -> None:
        """Note a worker that died before it was ready; give up after repeated failures."""
        self._start_failures += 1
        code = handle.process.exitcode
        logger.warning("checker worker %s died while starting (exit %s)", handle.process.pid, code)
        if self._start_failures > _MAX_START_FAILURES * self.workers:
            raise FatalError(f"checker workers keep dying on start (last exit code {code})")
        self._replace(handle)

    def _wait_ready(self) -> None:
        """Block until every worker has reported ready."""
        while any(h.state == _STARTING for h in self._handles):
            self._poll()

    def _run(self, tasks: list[tuple[int, SymbolicTask]], results: list[CheckResult | None]) -> None:
        """Send tasks to idle workers and collect answers, enforcing the per-check limit."""
        pending: deque[int] = deque(range(len(tasks)))
        in_flight: set[int] = set()
        while pending or in_flight:
            for handle in self._handles:
                if handle.state != _IDLE or not pending:
                    continue
                if not handle.process.is_alive():
                    self._stats.crashes += 1
                    self._replace(handle)
                    continue
                slot = pending.popleft()
                task = tasks[slot][1]
                try:
                    handle.conn.send((slot, task.gold, task.response))
                except (BrokenPipeError, OSError):
                    pending.appendleft(slot)
                    self._replace(handle)
                    continue
                self._stats.sent += 1
                handle.state = _BUSY
                handle.task = slot
                handle.deadline = time.monotonic() + self.timeout_s
                in_flight.add(slot)
            for slot, equal, reason in self._poll():
                in_flight.discard(slot)
                position, task = tasks[slot]
                results[position] = CheckResult(task.extracted, equal, reason)

    def _poll(self) -> list[tuple[int, bool, str]]:
        """Wait for one round of events; return finished (slot, equal, reason) triples."""
        now = time.monotonic()
        deadlines = [h.deadline for h in self._handles if h.state == _BUSY]
        deadlines += [h.started + self.start_timeout_s for h in self._handles if h.state == _STARTING]
        wait_s = max(0.0, min(deadlines) - now) if deadlines else None
        waitables: list[Any] = []
        for h in self._handles:
            if h.state != _IDLE:
                waitables += [h.conn, h.process.sentinel]
        if not waitables:
            return []
        ready = set(wait(waitables, wait_s))
        done: list[tuple[int, bool, str]] = []
        for handle in list(self._handles):
            if handle.state == _IDLE:
                continue
            message = None
            dead = False
            if handle.conn in ready or handle.process.sentinel in ready:
                try:
                    if handle.conn.poll():
                        message = handle.conn.recv()
                    else:
                        dead = True
                except (EOFError, OSError):
                    dead = True
            if message is not None:
                if handle.state == _STARTING:
                    if message[0] == _worker.READY:
                        handle.state = _IDLE
                        self._start_failures = 0
                    continue
                slot, equal, reason, elapsed = message
                self._stats.worker_s += elapsed
                if reason == TIMEOUT:
                    self._stats.timeouts += 1
                done.append((slot, equal, reason))
                handle.state, handle.task = _IDLE, None
                continue
            if dead:
                if handle.state == _STARTING:
                    self._on_dead(handle)
                    continue
                slot = handle.task
                self._stats.crashes += 1
                logger.warning(
                    "checker worker %s died (exit %s); replacing it",
                    handle.process.pid,
                    handle.process.exitcode,
                )
                self._replace(handle)
                if slot is not None:
                    done.append((slot, False, WORKER_CRASHED))
                continue
            now = time.monotonic()
            if handle.state == _BUSY and now >= handle.deadline:
                slot = handle.task
                self._stats.timeouts += 1
                logger.info("checker worker %s overran %.1fs; killing it", handle.process.pid, self.timeout_s)
                self._replace(handle)
                if slot is not None:
                    done.append((slot, False, TIMEOUT))
            elif handle.state == _STARTING and now >= handle.started + self.start_timeout_s:
                self._replace(handle)
                raise RetriableError(f"checker worker did not start within {self.start_timeout_s:.0f}s")
        return done
