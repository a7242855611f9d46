"""Hot reload: follow the models table and load the newest version between generation chunks."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from sparq_stream.messages import ModelVersion
from sparq_stream.models.model_root import UntrustedModelPath, model_path_inside

__all__ = ["ModelFollower"]

log = logging.getLogger(__name__)


class ModelFollower:
    """Notes the newest :class:`ModelVersion` (of ``name``, when set) and reloads a backend with it on demand.

    A version whose path lies outside ``root`` raises :class:`UntrustedModelPath` (dead-lettered).

    A failed reload keeps the current model (``reload_failures``, never retried for that
    version); a backend without ``reload`` is counted (``reload_unsupported``).
    """

    def __init__(self, enabled: bool, name: str | None, counters: Counter[str], root: str | None = None) -> None:
        """Follow models when ``enabled`` (loading only from inside ``root``); count outcomes into ``counters``."""
        self.enabled = enabled
        self.root = root
        self.name = name
        self.counters = counters
        self._pending: ModelVersion | None = None
        self._current: int | None = None
        self._failed: set[tuple[str, int]] = set()
        self.seen = 0  # the newest version number noted, loaded or not

    @property
    def newest(self) -> int:
        """The newest version loaded or waiting to be loaded (0: none followed yet)."""
        pending = self._pending.number if self._pending is not None else 0
        return max(self._current or 0, pending)

    def note(self, message: ModelVersion) -> None:
        """Remember ``message`` if it is newer than the current and the pending version."""
        if not self.enabled or (self.name is not None and message.name != self.name):
            return
        try:
            model_path_inside(message.path, self.root)
        except UntrustedModelPath:
            self.counters["models_refused"] += 1
            raise  # non-retriable: the wrapper dead-letters the record
        self.seen = max(self.seen, message.number)
        current = self._current if self._current is not None else -1
        pending = self._pending.number if self._pending is not None else -1
        if message.number > max(current, pending):
            self._pending = message

    def apply(self, backend: Any) -> None:
        """Reload ``backend`` with the pending version, if any."""
        message, self._pending = self._pending, None
        if message is None or (message.name, message.number) in self._failed:
            return
        number = message.number
        reload = getattr(backend, "reload", None)
        if not callable(reload):
            self.counters["reload_unsupported"] += 1
            log.warning("model %s v%d published, but the %s backend cannot hot-reload", message.name, number, getattr(backend, "name", "?"))
            return
        try:
            reload(message.path, version=number, name=message.name)
        except Exception as exc:  # noqa: BLE001 - a bad model must not stop generation with the current one
            self._failed.add((message.name, number))
            self.counters["reload_failures"] += 1
            log.error("hot reload of %s v%d from %s failed (%s: %s); keeping the current model", message.name, number, message.path, type(exc).__name__, exc)
            return
        self._current = number
        self.counters["reloads"] += 1
        log.info("generating with %s v%d from %s", message.name, number, message.path)
