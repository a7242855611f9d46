"""Process lifetime of a run: the ``--out`` folder checked, and the lock that makes a run own it."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import IO

from sparq_stream.errors import ConfigError

__all__ = ["RunLock", "check_out_dir"]


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
