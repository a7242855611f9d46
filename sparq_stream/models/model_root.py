"""Where a model path read from the wire may point: only inside the configured models root.

A :class:`~sparq_stream.messages.ModelVersion` on the models topic names a folder to load.
Anyone who can write to that topic could otherwise make every mutator and solver load (and
run the code paths of) an arbitrary folder, so followers check the path first: it must
resolve (symlinks followed) to the root or below it. Anything else is a
:class:`UntrustedModelPath`, a non-retriable error, so the process wrapper dead-letters it.
"""

from __future__ import annotations

import os
from pathlib import Path

from sparq_stream.errors import FatalError

__all__ = ["UntrustedModelPath", "model_path_inside"]


class UntrustedModelPath(FatalError):
    """A model path from the wire that lies outside the models root (or no root is configured)."""


def model_path_inside(path: str, root: str | os.PathLike[str] | None) -> Path:
    """Return ``path`` resolved when it lies inside ``root``; raise :class:`UntrustedModelPath` otherwise."""
    if root is None or str(root) == "":
        raise UntrustedModelPath(f"model path {path!r} refused: no models root is configured (set models_root)")
    if not path or "\x00" in path:
        raise UntrustedModelPath(f"model path {path!r} refused: empty or holds a NUL byte")
    if not os.path.isabs(path):
        raise UntrustedModelPath(f"model path {path!r} refused: not an absolute path")
    base = Path(os.path.realpath(root))
    resolved = Path(os.path.realpath(path))
    if resolved != base and base not in resolved.parents:
        raise UntrustedModelPath(f"model path {path!r} refused: it lies outside the models root {str(base)!r}")
    return resolved
