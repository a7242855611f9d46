"""The trainer core with in-memory table records: following W, periodic exports, versions, restarts."""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from sparq_stream.core import Core, Inbound, Outgoing
from sparq_stream.cores.trainer import TrainerConfig, TrainerCore, build_trainer, version_dir_name
from sparq_stream.errors import ConfigError
from sparq_stream.messages import Elite, ModelVersion, SolveResult
from sparq_stream.training.export import JSONL_NAME, MANIFEST_NAME, PARQUET_NAME, read_examples
from sparq_stream.training.sft import MODEL_SUBDIR, RESULT_NAME, TrainingCancelled, TrainResult
from tests._scores import scores

T0 = 1_000_000.0


def _elite(i: int, slot: str | None = None, rollouts: int = 2, quality: float = 0.5) -> Elite:
    return Elite(
        id=f"{i:032x}",
        problem=f"Problem number {i}",
        solution=f"\\boxed{{{i}}}",
        answer=str(i),
        **scores(quality),
        correct_rollouts=[f"r{j} \\boxed{{{i}}}" for j in range(rollouts)],
        slot=slot or f"slot{i}",
        niche="a|b",
        skills=["a", "b"],
        created_at=1.0,
    )


def _archived(i: int, quality: float = 0.5, rollouts: int = 1) -> SolveResult:
    data = _elite(i, rollouts=rollouts, quality=quality).model_dump()
    for name in ("slot", "inserted_step", "solved_partition", "solved_offset"):
        data.pop(name)
    return SolveResult(**data)


def _rec(topic: str, message: Any, key: str | None = None) -> Inbound:
    if key is None and message is not None:
        key = message.kafka_key()
    return Inbound(topic, key, message)


def _version(version: int, path: Path, name: str = "student") -> ModelVersion:
    return ModelVersion(name=name, number=version, path=str(path))


class FakeTrainer:
    """Stands in for train_sft: records its calls and writes a loadable-looking version folder."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.gate = gate
        self.fail = fail

    def __call__(self, dataset_path: Path, base_model: str | None, out_dir: Path, **kw: Any) -> TrainResult:
        self.calls.append({"dataset": read_examples(dataset_path), "base": base_model, "out": Path(out_dir), **kw})
        if self.gate is not None:
            while not self.gate.wait(0.01):
                if kw["should_stop"]():
                    raise TrainingCancelled("stopped")
        if self.fail:
            raise RuntimeError("out of memory")
        out = Path(out_dir)
        (out / MODEL_SUBDIR).mkdir(parents=True, exist_ok=True)
        (out / MODEL_SUBDIR / "config.json").write_text("{}")
        result = TrainResult(out / MODEL_SUBDIR, steps=3, loss_first=2.0, loss_last=1.0, examples=len(self.calls[-1]["dataset"]))
        (out / RESULT_NAME).write_text(json.dumps(result.to_dict()))
        return result


def _core(tmp_path: Path, **overrides: Any) -> TrainerCore:
    settings = {"export_dir": tmp_path / "export", "models_dir": tmp_path / "models", "export_every": 3, "export_every_s": 10.0}
    deps = {k: overrides.pop(k) for k in ("train_fn", "eval_fn") if k in overrides}
    return build_trainer(TrainerConfig(**{**settings, **overrides}), **deps)


def _export_ids(core: TrainerCore) -> list[str]:
    return [row["id"] for row in read_examples(core.config.export_dir / JSONL_NAME)]


def test_it_is_a_core_reading_tables_only(tmp_path: Path) -> None:
    core = _core(tmp_path)
    assert isinstance(core, Core) and core.name == "trainer"
    assert core.inputs == () and core.tables == ("elites", "models")
    assert _core(tmp_path, include_archive=True).tables == ("elites", "models", "archive")


def test_exports_after_export_every_changes_with_last_value_per_slot(tmp_path: Path) -> None:
    core = _core(tmp_path)
    core.on_table(_rec("elites", _elite(1)))
    core.on_table(_rec("elites", _elite(2)))
    assert core.tick(T0) == [] and not (tmp_path / "export").exists()  # 2 changes < export_every
    core.on_table(_rec("elites", _elite(3, slot="slot1")))  # replaces problem 1 in slot1
    assert core.tick(T0 + 1) == []
    assert _export_ids(core) == [f"{2:032x}/0", f"{2:032x}/1", f"{3:032x}/0", f"{3:032x}/1"]
    core.on_table(_rec("elites", None, key="slot2"))  # tombstone: the niche emptied
    core.on_table(_rec("elites", None, key="slot-never-seen"))
    core.on_table(_rec("elites", _elite(4, rollouts=1)))
    core.tick(T0 + 2)  # 2 changes: not yet
    assert core.metrics()["exports"] == 1
    core.tick(T0 + 12)  # export_every_s after the first of them
    assert _export_ids(core) == [f"{3:032x}/0", f"{3:032x}/1", f"{4:032x}/0"]
    metrics = core.metrics()
    assert (metrics["elites_seen"], metrics["tombstones_seen"], metrics["exports"]) == (4, 2, 2)
    assert (metrics["examples"], metrics["problems"], metrics["elites"]) == (3, 2, 2)
    manifest = json.loads((tmp_path / "export" / MANIFEST_NAME).read_text())
    assert manifest["source"] == "elites" and manifest["examples"] == 3


def test_export_every_seconds_flushes_fewer_changes(tmp_path: Path) -> None:
    core = _core(tmp_path)
    core.on_table(_rec("elites", _elite(1)))
    core.tick(T0)
    core.tick(T0 + 9.9)
    assert core.metrics()["exports"] == 0 and core.metrics()["pending_changes"] == 1
    core.tick(T0 + 10.0)
    assert core.metrics()["exports"] == 1 and len(_export_ids(core)) == 2


def test_redelivered_records_change_nothing(tmp_path: Path) -> None:
    core = _core(tmp_path, export_every=1)
    records = [_rec("elites", _elite(i)) for i in range(3)] + [_rec("elites", None, key="slot0")]
    for rec in records:
        core.on_table(rec)
    core.tick(T0)
    before = (tmp_path / "export" / PARQUET_NAME).read_bytes()
    for rec in records[1:]:
        core.on_table(rec)  # at-least-once: the same records again
    core.tick(T0 + 100)
    assert core.metrics()["exports"] == 1 and core.metrics()["pending_changes"] == 0
    assert (tmp_path / "export" / PARQUET_NAME).read_bytes() == before


def test_same_state_in_another_order_exports_byte_identical_files(tmp_path: Path) -> None:
    records = [_rec("elites", _elite(i, slot=f"slot{i % 4}")) for i in range(10)]
    a, b = _core(tmp_path / "a"), _core(tmp_path / "b")
    for rec in records:
        a.on_table(rec)
    # b sees each slot's final value only, in reverse slot order
    for rec in reversed(records[-4:]):
        b.on_table(rec)
    a.close(), b.close()
    for name in (JSONL_NAME, PARQUET_NAME, MANIFEST_NAME):
        assert (tmp_path / "a" / "export" / name).read_bytes() == (tmp_path / "b" / "export" / name).read_bytes()


def test_include_archive_adds_kept_archived_children_once(tmp_path: Path) -> None:
    core = _core(tmp_path, include_archive=True, export_every=100)
    core.on_table(_rec("elites", _elite(1, rollouts=2)))
    for rec in (_archived(1, rollouts=2), _archived(2), _archived(3, quality=0.0), _archived(4, rollouts=0), _archived(2)):
        core.on_table(_rec("archive", rec))
    core.close()
    rows = read_examples(tmp_path / "export")
    assert [(r["id"], r["source"]) for r in rows] == [
        (f"{1:032x}/0", "elites"), (f"{1:032x}/1", "elites"), (f"{2:032x}/0", "archive")
    ]  # fmt: skip
    assert core.metrics()["archive_seen"] == 5


def test_train_every_trains_on_a_snapshot_and_publishes_the_next_version(tmp_path: Path) -> None:
    fake = FakeTrainer()
    core = _core(tmp_path, train_every=4, train_in_background=False, train_fn=fake, base_model="base.gguf")
    core.on_table(_rec("models", _version(4, tmp_path / "models" / "student-v0004" / "model")))
    core.on_table(_rec("models", ModelVersion(name="another-model", number=9, path="x")))  # other names ignored
    for i in range(3):
        core.on_table(_rec("elites", _elite(i)))
    out = core.tick(T0)
    assert len(out) == 1 and len(fake.calls) == 1
    published = out[0]
    assert isinstance(published, Outgoing) and (published.topic, published.key) == ("models", "student")
    version = published.message
    assert isinstance(version, ModelVersion)
    expected_dir = tmp_path / "models" / version_dir_name("student", 5)
    assert (version.name, version.number, version.parent_version, version.train_examples) == ("student", 5, 4, 6)
    assert version.path == str((expected_dir / MODEL_SUBDIR).resolve()) and version.base_model == "base.gguf"
    assert version.metrics["train_steps"] == 3 and version.metrics["train_loss_last"] == 1.0
    call = fake.calls[0]
    assert call["base"] == "base.gguf" and call["out"] == expected_dir and call["method"] == "lora"
    assert [r["id"] for r in call["dataset"]] == _export_ids(core)  # trained on exactly the export
    assert [r["id"] for r in read_examples(expected_dir / "data")] == _export_ids(core)  # kept with the version
    assert not list((tmp_path / "models").glob(".pending-*"))
    assert core.latest_version == 5 and core.metrics()["versions"] == 1

    core.on_table(_rec("models", version))  # our own publication read back: nothing changes
    core.on_table(_rec("elites", _elite(10, rollouts=1)))
    core.on_table(_rec("elites", _elite(11, slot="slot0", rollouts=1)))  # replaces problem 0
    core.on_table(_rec("elites", _elite(12, rollouts=1)))
    assert core.tick(T0 + 1) == [] and len(fake.calls) == 1  # 3 new examples < train_every=4
    core.on_table(_rec("elites", _elite(13, rollouts=1)))
    core.on_table(_rec("elites", _elite(14, rollouts=1)))
    core.on_table(_rec("elites", _elite(15, rollouts=1)))
    second = core.tick(T0 + 2)
    assert len(fake.calls) == 2 and second[0].message.number == 6 and second[0].message.parent_version == 5


def test_restart_reads_the_latest_version_and_does_not_retrain_the_same_data(tmp_path: Path) -> None:
    fake = FakeTrainer()
    first = _core(tmp_path, train_every=2, train_in_background=False, train_fn=fake)
    elites = [_rec("elites", _elite(i)) for i in range(3)]
    for rec in elites:
        first.on_table(rec)
    published = first.tick(T0)[0]
    first.close()

    again = FakeTrainer()
    restarted = _core(tmp_path, train_every=2, train_in_background=False, train_fn=again, train_from="latest")
    for rec in [*elites, _rec("models", published.message)]:  # the tables replayed from the beginning
        restarted.on_table(rec)
    assert restarted.tick(T0 + 50) == [] and again.calls == []  # same data: no new version
    assert restarted.latest_version == 1
    restarted.on_table(_rec("elites", _elite(7)))
    restarted.on_table(_rec("elites", _elite(8)))
    restarted.on_table(_rec("elites", _elite(9)))
    out = restarted.tick(T0 + 60)
    assert out[0].message.number == 2 and again.calls[0]["base"] == published.message.path  # from the latest


def test_a_finished_but_unpublished_version_is_published_on_start(tmp_path: Path) -> None:
    folder = tmp_path / "models" / version_dir_name("student", 3)
    FakeTrainer()(_seed_export(tmp_path), None, folder, should_stop=lambda: False)
    (tmp_path / "models" / ".pending-student-v0004").mkdir()  # a run killed mid-way
    (tmp_path / "models" / version_dir_name("student", 2)).mkdir()  # incomplete: not published
    core = _core(tmp_path)
    core.on_table(_rec("models", _version(1, tmp_path / "models" / "v1")))
    out = core.tick(T0)
    assert [(o.message.number, o.message.parent_version) for o in out] == [(3, 1)]
    assert out[0].message.path == str((folder / MODEL_SUBDIR).resolve()) and out[0].message.train_examples == 1
    assert not (tmp_path / "models" / ".pending-student-v0004").exists()
    assert core.tick(T0 + 1) == []  # once


def _seed_export(tmp_path: Path) -> Path:
    from sparq_stream.training import export_training_set

    return export_training_set([_elite(1, rollouts=1)], tmp_path / "seed-export").out_dir


def test_background_training_keeps_following_and_publishes_when_done(tmp_path: Path) -> None:
    gate = threading.Event()
    fake = FakeTrainer(gate)
    core = _core(tmp_path, train_every=1, train_fn=fake, export_every=1)
    core.on_table(_rec("elites", _elite(1)))
    core.tick(T0 + 100)
    assert core.training and core.metrics()["training"] == 1.0
    core.on_table(_rec("elites", _elite(2)))
    assert core.tick(T0 + 200) == [] and core.metrics()["exports"] == 2  # exports go on meanwhile
    gate.set()
    assert core._job is not None and core._job.result(timeout=30).number == 1
    assert core.metrics()["training"] == 1.0  # finished but not yet published: `sparq up` must not stop here
    for _ in range(500):
        out = core.tick(T0 + 300)
        if out:
            break
        threading.Event().wait(0.01)
    assert [o.message.number for o in out] == [1] and len(fake.calls) == 1
    # problem 2 was exported while version 1 trained: the next tick starts version 2 without new input
    core.tick(T0 + 301)
    for _ in range(500):
        out = core.tick(T0 + 302)
        if out:
            break
        threading.Event().wait(0.01)
    assert [o.message.number for o in out] == [2] and [len(c["dataset"]) for c in fake.calls] == [2, 4]
    assert core.tick(T0 + 303) == [] and len(fake.calls) == 2
    core.close()


def test_a_failed_run_is_counted_and_the_core_goes_on(tmp_path: Path) -> None:
    core = _core(tmp_path, train_every=1, train_in_background=False, train_fn=FakeTrainer(fail=True), export_every=1)
    core.on_table(_rec("elites", _elite(1)))
    assert core.tick(T0) == []
    assert core.metrics()["train_failures"] == 1 and core.latest_version == 0 and not core.training


def test_close_cancels_a_run_and_writes_a_final_export(tmp_path: Path) -> None:
    fake = FakeTrainer(threading.Event())  # never released
    core = _core(tmp_path, train_every=1, train_fn=fake, export_every=1)
    core.on_table(_rec("elites", _elite(1)))
    core.tick(T0)
    core.on_table(_rec("elites", _elite(2)))
    core.close()
    assert len(fake.calls) == 1 and not core.training
    assert len(_export_ids(core)) == 4 and core.metrics()["versions"] == 0
    assert not (tmp_path / "models" / version_dir_name("student", 1)).exists()


def test_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        TrainerConfig(export_every=0)
    with pytest.raises(ValidationError):
        TrainerConfig(train_method="qlora")
    with pytest.raises(ValidationError):
        TrainerConfig(unknown=1)
    with pytest.raises(ConfigError, match="eval_path"):
        build_trainer(TrainerConfig(eval_path=tmp_path / "missing.jsonl"))


def test_real_fine_tuning_and_evaluation_of_a_tiny_model(tmp_path: Path) -> None:
    from sparq_stream.models.transformers_backend import TransformersBackend
    from sparq_stream.training import evaluate
    from tests.unit._tiny_lm import InProcessChecker, make_tiny_lm

    base = make_tiny_lm(tmp_path / "tiny")
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"problem": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(3)))
    in_process = functools.partial(evaluate, checker=InProcessChecker())  # the sandboxed pool is tested elsewhere
    core = _core(
        tmp_path, train_every=1, train_in_background=False, base_model=str(base), train_epochs=3, train_max_steps=2,
        export_every=1, eval_path=heldout, eval_limit=2, eval_max_tokens=4, eval_fn=in_process,
    )  # fmt: skip
    core.on_table(_rec("elites", _elite(1)))
    version = core.tick(T0)[0].message
    assert version.number == 1 and version.train_examples == 2 and version.metrics["train_steps"] == 2
    assert version.metrics["eval_n"] == 2 and 0.0 <= version.metrics["eval_accuracy"] <= 1.0
    backend = TransformersBackend(version.path)
    assert backend.tokenizer is not None
    backend.close()


def test_a_wiped_export_dir_is_rebuilt_from_the_tables_alone(tmp_path: Path) -> None:
    """Elites (with the archivist's watermarks among them), archive and models topics hold all the trainer needs."""
    from sparq_stream.core import FANOUT_HEADER
    from sparq_stream.messages import WATERMARK_KEY, Watermark

    mark = Inbound("elites", WATERMARK_KEY, Watermark(offsets={"0": 5}), headers=((FANOUT_HEADER, b"0/1"),))
    records = [_rec("elites", _elite(i, slot=f"slot{i % 3}")) for i in range(6)] + [mark, _rec("archive", _archived(9))]
    first = _core(tmp_path / "first", include_archive=True)
    for record in records:
        first.on_table(record)
    first.tick(T0)
    files = {p.name: p.read_bytes() for p in first.config.export_dir.iterdir() if p.is_file()}
    assert files and first.metrics().get("ignored_records", 0) == 0  # the watermark is no elite, and no warning
    wiped = _core(tmp_path / "wiped", include_archive=True)  # an empty disk
    for record in records:
        wiped.on_table(record)
    wiped.tick(T0)
    assert {p.name: p.read_bytes() for p in wiped.config.export_dir.iterdir() if p.is_file()} == files


# ---------------------------------------------------------------------- version 0: the base model is evaluated too
class FakeEval:
    """Stands in for evaluate: pass@1 by model (None = the base), recording what it scored."""

    def __init__(self, accuracy: dict[str | None, float]) -> None:
        self.accuracy = accuracy
        self.calls: list[tuple[Any, str]] = []

    def __call__(self, model: Any, path: Path, limit: int, **kw: Any) -> Any:
        from sparq_stream.training.evaluate import EvalResult

        self.calls.append((model if model is None or not isinstance(model, Path) else str(model), Path(path).name))
        key = None if model is None else ("trained" if "student-v" in str(model) else str(model))
        return EvalResult(accuracy=self.accuracy[key], n=limit, seconds=0.01)


def _heldout_file(tmp_path: Path) -> Path:
    path = tmp_path / "sums_test.jsonl"
    path.write_text("".join(json.dumps({"problem": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(3)))
    return path


def test_the_base_model_is_scored_once_as_version_0_and_each_version_shows_its_change(tmp_path: Path) -> None:
    from sparq_stream.cores.trainer import BASE_VERSION, EVAL_NAME
    from sparq_stream.orchestrator.learning_summary import model_versions

    scores = FakeEval({None: 0.25, "trained": 0.5})
    sets = {"sums": _heldout_file(tmp_path)}
    core = _core(tmp_path, train_every=1, train_in_background=False, export_every=1, eval_sets=sets, eval_limit=2,
                 train_fn=FakeTrainer(), eval_fn=scores)  # fmt: skip
    core.on_table(_rec("elites", _elite(1)))
    (published,) = core.tick(T0)
    assert scores.calls == [(None, "sums_test.jsonl"), (str(tmp_path / "models" / "student-v0001" / MODEL_SUBDIR), "sums_test.jsonl")]
    base = json.loads((tmp_path / "models" / version_dir_name("student", BASE_VERSION) / EVAL_NAME).read_text())
    assert base["sums"]["accuracy"] == 0.25 and "delta_vs_base" not in base["sums"]
    assert published.message.number == 1 and published.message.metrics["eval_sums_delta_vs_base"] == pytest.approx(0.25)
    assert core.metrics()["base_eval_sums_accuracy"] == 0.25
    versions = model_versions(tmp_path / "models")
    assert [(v["version"], v["base"]) for v in versions] == [(0, True), (1, False)]
    assert versions[0]["eval"]["sums"]["accuracy"] == 0.25 and versions[0]["delta_vs_base"] == {}
    assert versions[1]["delta_vs_base"] == {"sums": pytest.approx(0.25)}
    again = _core(tmp_path, train_every=1, train_in_background=False, eval_sets=sets, train_fn=FakeTrainer(), eval_fn=scores)
    again.tick(T0)  # a restart reads version 0 back instead of scoring the base again
    assert len(scores.calls) == 2 and again.metrics()["base_eval_sums_accuracy"] == 0.25


def test_the_base_is_scored_in_the_background_at_start_even_before_anything_is_kept(tmp_path: Path) -> None:
    scores = FakeEval({None: 0.0})
    core = _core(tmp_path, eval_sets={"sums": _heldout_file(tmp_path)}, eval_fn=scores)
    core.tick(T0)
    deadline = T0
    while core.training and deadline < T0 + 1000:  # the training gauge covers the base evaluation (sparq up waits for it)
        threading.Event().wait(0.01)
        deadline += 1
    core.close()
    assert scores.calls == [(None, "sums_test.jsonl")] and (tmp_path / "models" / "student-v0000" / "eval.json").is_file()
    quiet = _core(tmp_path / "off", eval_sets={"sums": _heldout_file(tmp_path)}, eval_fn=scores, eval_base=False)
    quiet.tick(T0)
    quiet.close()
    assert len(scores.calls) == 1  # eval_base off: nothing scored


def test_the_scripted_eval_backend_scores_the_base_in_seconds(tmp_path: Path) -> None:
    from sparq_stream.heldout import packaged_paths
    from sparq_stream.training import evaluate
    from tests.unit._tiny_lm import InProcessChecker

    in_process = functools.partial(evaluate, checker=InProcessChecker())
    core = _core(tmp_path, eval_sets={"gsm8k": packaged_paths()[0]}, eval_limit=4, eval_backend="scripted",
                 train_in_background=False, eval_fn=in_process)  # fmt: skip
    core.tick(T0)
    core.close()
    scored = json.loads((tmp_path / "models" / "student-v0000" / "eval.json").read_text())
    assert scored["gsm8k"]["n"] == 4 and 0.0 <= scored["gsm8k"]["accuracy"] <= 1.0


def test_a_models_record_outside_the_models_folder_is_refused(tmp_path: Path) -> None:
    """A foreign models record (a path the trainer never wrote) is an error the wrapper dead-letters, and changes nothing."""
    from sparq_stream.models.model_root import UntrustedModelPath

    fake = FakeTrainer()
    core = _core(tmp_path, train_every=4, train_in_background=False, train_fn=fake)
    with pytest.raises(UntrustedModelPath, match="outside the models root"):
        core.on_table(_rec("models", _version(40, Path("/etc/sparq-foreign"))))
    for i in range(3):
        core.on_table(_rec("elites", _elite(i)))
    out = core.tick(T0)
    assert [o.message.number for o in out] == [1]  # numbered after nothing: the foreign version 40 was not taken
