"""The checker worker process: a memory cap, then a loop of symbolic comparisons.

Kept free of heavy imports at module level so that the parent can name
:func:`worker_main` as a process target without importing sympy itself.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from multiprocessing.connection import Connection

__all__ = ["worker_main", "READY", "CRASH_EXIT_CODE"]

READY = "ready"
CRASH_EXIT_CODE = 70
_ERROR = "error"
_HEADROOM_BYTES = 64 * 1024 * 1024


def _cap_memory(memory_mb: int | None) -> None:
    """Limit this process's address space so a hostile expression hits MemoryError."""
    if not memory_mb:
        return
    limit = int(memory_mb) * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def worker_main(conn: Connection, memory_mb: int | None, timeout_s: float | None) -> None:
    """Serve (index, gold, response) requests on ``conn`` until it closes or sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from sparq_stream.verify.symbolic import symbolic_equal, warm_up

    _cap_memory(memory_mb)
    try:
        headroom = bytearray(_HEADROOM_BYTES)  # the cap must leave room to work
        del headroom
        healthy = warm_up()
    except MemoryError:
        healthy = False
    if not healthy:  # e.g. the memory cap is below what the interpreter needs
        os._exit(CRASH_EXIT_CODE)
    conn.send((READY, os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, gold, response = message
        started = time.monotonic()
        try:
            equal, reason = symbolic_equal(gold, response, timeout_s)
        except MemoryError:
            os._exit(CRASH_EXIT_CODE)
        except Exception:  # noqa: BLE001 - any parser failure is a failed check, not a dead worker
            equal, reason = False, _ERROR
        try:
            conn.send((index, bool(equal), str(reason), time.monotonic() - started))
        except (BrokenPipeError, OSError):
            return
        except MemoryError:
            os._exit(CRASH_EXIT_CODE)
