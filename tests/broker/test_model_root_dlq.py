"""A model version whose path lies outside the models root is dead-lettered by a real solver service."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sparq_stream.bus import ServiceProcess, create_topics, dead_letter_from_record
from sparq_stream.cores.solver import SolverConfig, SolverCore
from sparq_stream.messages import ModelVersion, encode
from sparq_stream.models.scripted import ScriptedBackend
from sparq_stream.settings import ServiceSettings
from sparq_stream.verify.pool import CheckerPool

from ._util import produce, read_all

pytestmark = pytest.mark.broker


class _Reloading(ScriptedBackend):
    """A scripted backend that records reloads."""

    def __init__(self) -> None:
        super().__init__()
        self.reloads: list[str] = []

    def reload(self, model: str, version: int | None = None, name: str | None = None) -> None:
        self.reloads.append(model)
        self.model_version = int(version or 0)


def test_a_model_path_outside_the_root_goes_to_the_dlq(broker: str, prefix: str, group: str, tmp_path: Path) -> None:
    root = tmp_path / "models"
    good = root / "student-v0001" / "model"
    good.mkdir(parents=True)
    outside = ModelVersion(name="student", number=2, path="/etc")
    escape = ModelVersion(name="student", number=3, path=str(root / ".." / "elsewhere"))
    inside = ModelVersion(name="student", number=1, path=str(good))
    settings = ServiceSettings(bootstrap=broker, prefix=prefix, group_id=group)
    create_topics(settings, partitions=1)
    produce(broker, f"{prefix}.models", [(b"student", encode(m)) for m in (outside, escape, inside)])
    backend = _Reloading()
    with CheckerPool(workers=1, timeout_s=5.0) as pool:
        core = SolverCore(backend, pool, SolverConfig(follow_models=True, models_root=str(root)))
        proc = ServiceProcess(core, settings, install_signals=False)
        thread = threading.Thread(target=proc.run, daemon=True)
        thread.start()
        try:
            dlq = read_all(broker, f"{prefix}.dlq", until=lambda r: len(r) >= 2, timeout_s=60)
            for _ in range(100):
                if backend.reloads:
                    break
                threading.Event().wait(0.1)
        finally:
            proc.stop()
            thread.join(30)
    letters = [dead_letter_from_record(r.key, r.value, r.headers) for r in dlq]
    assert {letter.offset for letter in letters} == {0, 1}
    assert all(letter.error_type == "UntrustedModelPath" and "outside the models root" in letter.error for letter in letters)
    assert letters[0].original == encode(outside)  # the original bytes, replayable
    assert backend.reloads == [str(good)] and backend.model_version == 1  # only the version inside the root loads
    assert core.metrics()["models_refused"] == 2
