"""Replicas: which member the one-active assignor picks, and ``sparq up --replicas`` names and checks."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sparq_stream.bus.lease import OneActiveAssignor, choose_active
from sparq_stream.errors import ConfigError
from sparq_stream.orchestrator.replicas import replica_names, replica_values
from sparq_stream.orchestrator.up import UpConfig, UpSettings
from sparq_stream.settings import load_settings


class _Cluster:
    def __init__(self, topics: dict[str, int]) -> None:
        self.topics = topics

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.topics[topic])) if topic in self.topics else None


def _member(member_id: str, assignor: OneActiveAssignor, topics: list[str]) -> SimpleNamespace:
    return SimpleNamespace(member_id=member_id, group_instance_id=None, metadata=assignor.metadata(set(topics)))


def _owner(result: dict) -> dict[str, list]:
    return {m: a.partitions() for m, a in result.items() if a.partitions()}


def test_every_partition_goes_to_one_member_the_first_started_and_it_keeps_them() -> None:
    cluster = _Cluster({"solved": 3, "other": 2})
    a, b = OneActiveAssignor("archivist-0", started=10.0), OneActiveAssignor("archivist-1", started=5.0)
    members = [_member("m-a", a, ["solved", "other"]), _member("m-b", b, ["solved", "other"])]
    result = a.assign(cluster, members)
    owners = _owner(result)
    assert list(owners) == ["m-b"] and len(owners["m-b"]) == 5  # started first: a hot standby beats a restarted replica
    for member_id, assignor in (("m-a", a), ("m-b", b)):
        assignor.on_assignment(result[member_id], generation=1)
    assert b.held and not a.held
    c = OneActiveAssignor("archivist-2", started=1.0)  # an older member joins: the holder keeps everything
    members = [_member("m-a", a, ["solved"]), _member("m-b", b, ["solved"]), _member("m-c", c, ["solved"])]
    assert list(_owner(a.assign(cluster, members))) == ["m-b"]
    members = [_member("m-a", a, ["solved"]), _member("m-c", c, ["solved"])]  # the holder died
    assert list(_owner(a.assign(cluster, members))) == ["m-c"]


def test_choose_active_breaks_ties_by_instance_name() -> None:
    same = {"held": False, "started": 7.0}
    assert choose_active([("x", {**same, "instance": "t-1"}), ("y", {**same, "instance": "t-0"})]) == "y"
    assert choose_active([("x", {"held": True, "started": 9.0}), ("y", {"started": 1.0})]) == "x"
    assert choose_active([("x", {}), ("y", json.loads("{}"))]) == "x"
    assert choose_active([]) is None


def _up(*flags: str) -> UpSettings:
    return load_settings(UpSettings, args=["--seeds", "s.jsonl", *flags], read_file=False)


def test_replicas_flag_parses_and_names_the_allowed_values() -> None:
    assert _up("--replicas", "archivist=2", "--replicas", "trainer=3", "--replicas", "solver=4").replicas == {
        "archivist": 2, "trainer": 3, "solver": 4
    }
    assert _up("--replicas", '{"mutator": 2}').replicas == {"mutator": 2}
    with pytest.raises(ConfigError, match="unknown service 'archivst'; allowed: archivist, mutator, novelty, solver, trainer"):
        _up("--replicas", "archivst=2")
    with pytest.raises(ConfigError, match="replicas"):
        _up("--replicas", "archivist=two")
    with pytest.raises(ConfigError, match="N must be >= 1"):
        _up("--replicas", "trainer=0")
    with pytest.raises(ValueError, match="give steps, not max_candidates"):
        UpConfig(seeds=Path("s.jsonl"), out=Path("o"), replicas={"mutator": 2}, max_candidates=10)
    with pytest.raises(ConfigError, match="allowed"):
        UpConfig(seeds=Path("s.jsonl"), out=Path("o"), replicas={"relay": 2})


def test_replica_names_are_stable_and_distinct_and_each_archivist_has_its_own_folder(tmp_path: Path) -> None:
    assert replica_names("archivist", 1) == ["archivist"]  # one process keeps the plain name (and transactional id)
    assert replica_names("archivist", 2) == ["archivist-0", "archivist-1"]
    assert replica_names("solver", 1) == ["solver-0"]
    config = UpConfig(seeds=Path("s.jsonl"), out=tmp_path, solvers=2, replicas={"trainer": 2})
    assert (config.replica_count("solver"), config.replica_count("trainer"), config.replica_count("archivist")) == (2, 2, 1)
    state = tmp_path.resolve() / "state" / "run-1"
    assert replica_values("archivist", 0, "archivist-0", tmp_path, state) == {}
    assert replica_values("archivist", 1, "archivist-1", tmp_path, state) == {"archive_dir": str(tmp_path.resolve() / "replicas" / "archivist-1" / "archive")}
    assert replica_values("trainer", 1, "trainer-1", tmp_path, state) == {}
    assert replica_values("novelty", 0, "novelty-0", tmp_path, state, count=2, partitions=6) == {"route_partitions": 6, "route_planes": 1}
    assert replica_values("novelty", 1, "novelty-1", tmp_path, state, count=3, partitions=6) == {
        "route_partitions": 6, "route_planes": 2, "state_dir": str(state / "novelty-1")
    }
    assert replica_values("novelty", 0, "novelty", tmp_path, state, count=1, partitions=6) == {}
    assert replica_values("mutator", 0, "mutator-0", tmp_path, state, count=2) == {"replica_count": 2, "replica_index": 0}
    assert replica_values("mutator", 1, "mutator-1", tmp_path, state, count=2) == {
        "replica_count": 2, "replica_index": 1, "state_dir": str(state / "mutator-1")
    }
    assert replica_values("mutator", 0, "mutator", tmp_path, state, count=1) == {}
