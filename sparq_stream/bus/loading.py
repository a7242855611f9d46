"""Build a core (load its models) in a worker thread, with progress in the log and a prompt SIGTERM.

A model load can take minutes in C code that a Python signal handler cannot interrupt. So the load
runs in a daemon thread while the main thread waits on an event in one-second slices: it logs a
"still loading" line every ``report_every_s`` (with the last thing the load logged: its stage),
keeps the liveness probe fresh, and on SIGTERM/SIGINT exits the process at once with
``128 + signal`` (143 for SIGTERM, 130 for SIGINT). Nothing was consumed yet, so nothing is
committed or lost.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Callable, TypeVar

__all__ = ["load_in_thread"]

T = TypeVar("T")


class _LastMessage(logging.Handler):
    """Remembers the last log message of one thread (the load's current stage)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.thread: int | None = None
        self.message = "starting"

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the message if the loading thread logged it."""
        if record.thread == self.thread:
            try:
                self.message = record.getMessage()
            except Exception:  # noqa: BLE001 - a bad log call must not break the load
                pass


def load_in_thread(
    build: Callable[[], T],
    *,
    what: str,
    log: logging.Logger,
    report_every_s: float = 10.0,
    on_wait: Callable[[], None] | None = None,
    exit_on_signal: bool = True,
) -> T:
    """Return ``build()`` run in a worker thread; log progress; exit the process at once on SIGTERM/SIGINT.

    An exception raised by ``build`` is raised here. ``on_wait`` is called about once a second
    while waiting (e.g. to keep a liveness probe fresh). The signal handlers are installed only
    with ``exit_on_signal`` and from the main thread.
    """
    result: dict[str, Any] = {}
    done = threading.Event()
    stage = _LastMessage()

    def _run() -> None:
        stage.thread = threading.get_ident()
        try:
            result["value"] = build()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            result["error"] = exc
        finally:
            done.set()

    def _on_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        log.warning("received %s while loading %s after %.1fs: exiting now (nothing consumed, nothing to commit)", name, what, time.monotonic() - started)
        logging.shutdown()
        os._exit(128 + signum)

    root = logging.getLogger()
    root.addHandler(stage)
    handle = exit_on_signal and threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)} if handle else {}
    started = time.monotonic()
    log.info("loading %s (models load in the background; SIGTERM exits at once)", what)
    worker = threading.Thread(target=_run, name=f"load-{what}", daemon=True)
    worker.start()
    next_report = started + report_every_s
    try:
        while not done.wait(min(1.0, report_every_s)):
            if on_wait is not None:
                on_wait()
            now = time.monotonic()
            if now >= next_report:
                log.info("still loading %s: %.0fs so far; last step: %s", what, now - started, stage.message)
                next_report = now + report_every_s
    finally:
        root.removeHandler(stage)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "error" in result:
        raise result["error"]
    log.info("loaded %s in %.1fs", what, time.monotonic() - started)
    return result["value"]
