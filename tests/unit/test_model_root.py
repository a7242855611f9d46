"""Model paths from the wire load only from inside the models root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sparq_stream.core import Inbound
from sparq_stream.cores.mutator import MutatorConfig, MutatorCore
from sparq_stream.messages import ModelVersion
from sparq_stream.models.model_root import UntrustedModelPath, model_path_inside
from sparq_stream.models.scripted import ScriptedBackend


def test_paths_inside_the_root_resolve_and_others_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "v1" / "model").mkdir(parents=True)
    assert model_path_inside(str(root / "v1" / "model"), root) == (root / "v1" / "model").resolve()
    assert model_path_inside(str(root / "v1" / ".." / "v1"), root) == (root / "v1").resolve()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, root / "link")
    for bad in [str(root / ".." / "elsewhere"), "/etc", str(root / "link"), "models/v1", "", f"{root}/v1\x00"]:
        with pytest.raises(UntrustedModelPath) as err:
            model_path_inside(bad, root)
        assert not err.value.retriable
    with pytest.raises(UntrustedModelPath, match="no models root"):
        model_path_inside(str(root / "v1"), None)
    with pytest.raises(UntrustedModelPath):  # a sibling whose name starts like the root is still outside
        model_path_inside(str(tmp_path / "models-evil" / "m"), root)


def test_the_mutator_refuses_a_version_outside_the_root() -> None:
    core = MutatorCore(MutatorConfig(follow_models=True, models_root="/srv/models"), backend=ScriptedBackend())
    with pytest.raises(UntrustedModelPath):
        core.on_table(Inbound("models", "student", ModelVersion(name="student", number=1, path="/tmp/x")))
    core.on_table(Inbound("models", "student", ModelVersion(name="student", number=2, path="/srv/models/v2")))
    assert core.metrics()["models_refused"] == 1
    unset = MutatorCore(MutatorConfig(follow_models=True), backend=ScriptedBackend())
    with pytest.raises(UntrustedModelPath, match="no models root"):
        unset.on_table(Inbound("models", "student", ModelVersion(name="student", number=1, path="/srv/models/v1")))
