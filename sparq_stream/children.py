"""Child processes that die with their parent: the services ``sparq up`` supervises, and the brokers it starts."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from typing import Callable

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks the kernel to send ``sig`` to the child when its parent dies (Linux).

    Everything is resolved here, in the parent; the child only makes the system call, then checks
    that the parent did not die between ``fork`` and ``prctl`` (it exits at once if so).
    The kernel sends it when the *thread* that spawned the child ends, so spawn from a thread that
    outlives the child (``sparq up`` spawns from its main thread).
    Returns None where the call does not exist (not Linux): the caller then spawns without it.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def _child() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return _child
