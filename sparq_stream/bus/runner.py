"""The interface shared by what runs cores: the Kafka process wrapper and the in-memory bus."""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

__all__ = ["Runner"]


@runtime_checkable
class Runner(Protocol):
    """Runs cores, delivering their outputs by the rules of :mod:`sparq_stream.bus.outputs`."""

    def run(self, until: Callable[[], bool] | None = None) -> int:
        """Run until stopped or ``until()`` holds; return the exit code."""
        ...

    def stop(self) -> None:
        """Ask the run to end once the work in flight is done (thread-safe)."""
        ...
