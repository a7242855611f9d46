"""``sparq up --train-every N``: the trainer fine-tunes and evaluates, mutator and solver follow versions from the run's models/."""

from __future__ import annotations

import json
from pathlib import Path

from sparq_stream.heldout import PACKAGED, packaged_paths
from sparq_stream.orchestrator.up import UpConfig, run_settings
from sparq_stream.training.loop import MODEL_NAME, NEW_MODEL_STEPS, default_eval_sets


def _parsed(config: UpConfig) -> dict[str, dict]:
    """The settings sparq up gives trainer, mutator and solver that differ from their defaults."""
    settings = run_settings(config, "p", "127.0.0.1:9092")
    return {name: settings[name].model_dump(exclude_defaults=True) for name in ("trainer", "mutator", "solver")}


def test_train_every_turns_on_training_evaluation_and_following(tmp_path: Path) -> None:
    heldout = tmp_path / "gsm8k_test.jsonl"
    heldout.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    config = UpConfig(seeds=tmp_path / "s.jsonl", out=tmp_path / "run", steps=1, train_every=5, heldout=[heldout],
                      backend="transformers", model="/m/base.gguf", extra={"trainer": ["--train-max-steps", "3"]})  # fmt: skip
    flags = _parsed(config)
    models = str((tmp_path / "run" / "models").resolve())
    trainer = flags["trainer"]
    assert trainer["train_every"] == 5 and str(trainer["models_dir"]) == models and trainer.get("model_name", MODEL_NAME) == MODEL_NAME
    assert trainer["train_max_steps"] == 3  # --with flags come last and win over the CPU defaults
    assert trainer["base_model"] == "/m/base.gguf"
    # the packaged sets are always evaluated; a user's --heldout file is added by its stem
    packaged = {name: str(path) for name, path in zip(PACKAGED, packaged_paths())}
    assert {k: str(v) for k, v in trainer["eval_sets"].items()} == {**packaged, "gsm8k_2": str(heldout.resolve())}
    assert "eval_backend" not in trainer and "eval_base" not in trainer  # transformers on each version; v0 scored at start
    for name in ("mutator", "solver"):
        assert flags[name]["follow_models"] is True and flags[name]["models_root"] == models
        assert flags[name]["follow_model_name"] == MODEL_NAME
    assert flags["mutator"]["new_model_steps"] == NEW_MODEL_STEPS and "new_model_steps" not in flags["solver"]


def test_without_train_every_nothing_trains_or_follows(tmp_path: Path) -> None:
    flags = _parsed(UpConfig(seeds=tmp_path / "s.jsonl", out=tmp_path / "run", steps=1))
    assert "train_every" not in flags["trainer"] and "follow_models" not in flags["solver"] and "follow_models" not in flags["mutator"]
    assert "eval_sets" not in flags["trainer"]  # nothing is trained: nothing is evaluated unless --eval-base


def test_eval_base_without_training_scores_version_0_with_the_runs_scripted_backend(tmp_path: Path) -> None:
    config = UpConfig(seeds=tmp_path / "s.jsonl", out=tmp_path / "run", steps=1, backend="scripted", eval_base=True,
                      backend_options={"script": {"seed": 3}})  # fmt: skip
    trainer = _parsed(config)["trainer"]
    assert "train_every" not in trainer and set(trainer["eval_sets"]) == set(PACKAGED)
    assert trainer["eval_backend"] == "scripted" and trainer["eval_backend_options"] == {"script": {"seed": 3}}


def test_default_eval_sets_are_the_packaged_files_plus_a_users_own(tmp_path: Path) -> None:
    assert default_eval_sets() == {"gsm8k": str(packaged_paths()[0]), "math500": str(packaged_paths()[1])}
    own = tmp_path / "algebra_test.jsonl"
    own.write_text(json.dumps({"problem": "x+1=2", "answer": "1"}) + "\n")
    same = tmp_path / "copy.jsonl"
    same.write_bytes(packaged_paths()[1].read_bytes())  # the packaged MATH500 under another name: not evaluated twice
    assert default_eval_sets([own, same]) == {**default_eval_sets(), "algebra": str(own.resolve())}


class _Snapshot:
    """A monitor stand-in: one fixed snapshot."""

    def __init__(self, rows: dict) -> None:
        self.rows = rows

    def snapshot(self) -> dict:
        return self.rows

    def newest_start(self, service: str, instance: str) -> float:
        return 1.0  # every live process has reported since its start

    def last_report(self, service: str, instance: str) -> float:
        import time

        return time.time()  # every report is fresh

    def per_instance(self, service: str, name: str) -> dict[str, float]:
        return {service: self.rows[service]["gauges"].get(name, 0.0)}  # one process per service


class _Live:
    """A supervisor stand-in: one live process per service, started before its reports."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        names = {"mutator": "mutator", "novelty": "novelty", "solver": "solver-0", "archivist": "archivist", "trainer": "trainer"}
        self.services = [SimpleNamespace(service=svc, name=name, gave_up=False, alive=True, started_wall=0.0) for svc, name in names.items()]


def test_with_training_the_run_ends_only_once_the_mutator_has_seen_the_newest_version() -> None:
    """A new version can send the mutator into a step past its budget: a `done` from before it saw the version is stale."""
    from sparq_stream.orchestrator.up import _finished

    idle = {"lag": 0.0, "lag_unknown": 0.0, "training": 0.0}

    def rows(seen: float) -> dict:
        out = {n: {"gauges": dict(idle)} for n in ("novelty", "solver", "archivist")}
        out["trainer"] = {"gauges": {**idle, "latest_version": 2.0}}
        out["mutator"] = {"gauges": {**idle, "done": 1.0, "model_seen": seen}}
        return out

    since: dict[str, float] = {}
    assert not _finished(_Snapshot(rows(1.0)), since, _Live(), training=True) and "mutator" not in since  # v2 not seen yet
    assert not _finished(_Snapshot(rows(2.0)), since, _Live(), training=True) and "mutator" in since  # idle: its 2 s start
    since.clear()
    assert not _finished(_Snapshot(rows(1.0)), since, _Live()) and "mutator" in since  # without training: as before
