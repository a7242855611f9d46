"""Signals and the stop of a service process: finish the batch in flight, or exit after a deadline."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback

from sparq_stream.bus.ops_http import Probes

__all__ = ["Lifecycle"]


class Lifecycle:
    """The stop request of one process: set by :meth:`stop` or SIGTERM/SIGINT, with a watchdog after a signal.

    A signal asks the loop to finish the batch in flight; the watchdog ends the process
    ``shutdown_timeout_s`` after it whatever it is blocked on (the broker gone, say), without a
    final commit, with exit code ``128 + signal``.
    """

    def __init__(self, probes: Probes, shutdown_timeout_s: float, log: logging.Logger) -> None:
        self.probes = probes
        self.shutdown_timeout_s = shutdown_timeout_s
        self.log = log
        self.event = threading.Event()
        self.stop_at: float | None = None  # monotonic time of the first stop request
        self._watchdog: threading.Timer | None = None

    def stop(self) -> None:
        """Ask the loop to finish the batch in flight, commit and exit (thread- and signal-safe)."""
        if self.stop_at is None:
            self.stop_at = time.monotonic()
        self.probes.stopping()
        self.event.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self.event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking on a stop request; return True when stopping."""
        return self.event.wait(seconds)

    def stopped_for(self, seconds: float) -> bool:
        """True when a stop was requested more than ``seconds`` ago."""
        return self.stop_at is not None and time.monotonic() - self.stop_at > seconds

    def install_signals(self) -> None:
        """Handle SIGTERM and SIGINT (only the main thread can install handlers)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        self.log.info("received %s: finishing the batch in flight (at most %.0fs)", name, self.shutdown_timeout_s)
        self.stop()
        if self._watchdog is None:
            self._watchdog = threading.Timer(self.shutdown_timeout_s, self._force_exit, args=(128 + signum,))
            self._watchdog.daemon = True
            self._watchdog.start()

    def _force_exit(self, code: int) -> None:
        """The stop did not finish in time (a broker gone, a blocked call): exit now, without a final commit."""
        frame = sys._current_frames().get(threading.main_thread().ident or 0)
        where = "".join(traceback.format_stack(frame, limit=6)) if frame is not None else "?"
        self.log.error(
            "did not stop within %.0fs of the signal (broker unreachable?): exiting without a final commit; "
            "uncommitted input is redelivered. Blocked in:\n%s",
            self.shutdown_timeout_s,
            where,
        )
        logging.shutdown()
        os._exit(code)
