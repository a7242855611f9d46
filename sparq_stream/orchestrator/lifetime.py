"""Process lifetime of a run: children that die with their parent, and the lock that makes a run own its ``--out``."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
import sys
from pathlib import Path
from typing import Callable, IO

from sparq_stream.errors import ConfigError

__all__ = ["die_with_parent", "RunLock", "check_out_dir"]

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


def check_out_dir(out: Path) -> None:
    """Create ``--out`` if needed; a file, an unwritable folder or a failed mkdir is a one-line ConfigError."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: the folder is not writable")


class RunLock:
    """An exclusive ``flock`` on ``<out>/.lock`` held for the whole run; the file names the owner's pid.

    The kernel releases it when the process ends, however it ends, so a crashed run never leaves
    a stale lock; the descriptor is not inherited by the services (close-on-exec).
    """

    def __init__(self, out: Path) -> None:
        self.path = out / ".lock"
        self._fh: IO[str] | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise a ConfigError naming the pid that holds it."""
        try:
            fh = open(self.path, "a+")
        except OSError as exc:
            raise ConfigError(f"--out {self.path.parent}: cannot write the lock file ({exc.strerror})") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.seek(0)
            owner = fh.read().strip() or "unknown"
            fh.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"--out {self.path.parent} is in use by another run (pid {owner})") from None
            raise ConfigError(f"--out {self.path.parent}: cannot lock ({exc.strerror})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        """Release the lock (the file stays; its pid is only meaningful while locked)."""
        fh, self._fh = self._fh, None
        if fh is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
