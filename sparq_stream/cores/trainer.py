"""The trainer core: follows the elites (and optionally the archive), exports the training set, fine-tunes.

Message flow (no input topic; everything arrives as tables, read whole on every start):

- ``elites`` (compacted, key = slot): the working set W. The core keeps the last value per
  slot; a tombstone deletes the slot. ``archive`` (only with ``include_archive``): every
  scored child; those with QUALITY > 0 and correct rollouts join the training set too.
  ``models`` (compacted, key = model name): the latest published version of
  ``model_name``, so version numbers keep increasing across restarts.
- ``tick`` exports the training set (every problem with QUALITY > 0 paired with each of its
  correct rollouts) to ``export_dir`` once ``export_every`` changes have accumulated or
  ``export_every_s`` seconds after the first unexported change, and on close. Exports are
  atomic and deterministic (same state, byte-identical files).
- With ``train_every > 0``, an export holding at least that many examples the latest version
  was not trained on starts a fine-tuning run (in a background thread by default) on a frozen
  snapshot of the export; when it finishes, the core publishes a :class:`ModelVersion` on
  ``models`` keyed by ``model_name``. Version folders are ``models_dir/<name>-vNNNN`` holding
  ``model/`` (a full model folder every backend loads), ``adapter/`` (LoRA), ``data/`` (the
  training set it saw) and ``train_result.json``. A version folder that was finished but not
  published before a crash is published on the next start.

- Evaluation (``eval_sets``, ``eval_path``): every version is scored (pass@1) on each held-out set,
  and so is the base model, once, at start (``eval_base``): version 0, recorded in
  ``models_dir/<name>-v0000/eval.json`` (never published on ``models``: nothing reloads it). Each
  trained version's metrics carry ``eval_<set>_delta_vs_base``, its change against version 0.
  ``eval_backend`` scores with another generation backend (scripted: tests, in seconds).

Idempotent: state is keyed (slot, problem id, version), so a redelivered record changes nothing.

Replicas: the trainer is ``exclusive``: one active replica exports and trains, the others are hot
standbys following the same tables (:mod:`sparq_stream.bus.lease`; the lease is held on the
``models`` topic). A standby that takes over knows the latest published version from the models
table, publishes a version the dead one finished but did not publish (replicas share
``models_dir``), and numbers the next one after it: no version is published twice.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sparq_stream.core import BaseCore, Inbound, Outgoing
from sparq_stream.errors import ConfigError
from sparq_stream.messages import WATERMARK_KEY, Elite, ModelVersion, SolveResult
from sparq_stream.models.model_root import model_path_inside
from sparq_stream.qd.archive_log import solved_at_of
from sparq_stream.training.evaluate import EvalResult, evaluate
from sparq_stream.training.export import ExportInfo, build_examples, read_examples, write_examples
from sparq_stream.training.sft import MODEL_SUBDIR, RESULT_NAME, TrainingCancelled, TrainResult, train_sft

__all__ = ["BASE_VERSION", "EVAL_NAME", "TrainerConfig", "TrainerCore", "build_trainer", "version_dir_name"]

log = logging.getLogger(__name__)

_DATA_SUBDIR = "data"
#: Per-version evaluation results (one entry per held-out set) in the version folder.
EVAL_NAME = "eval.json"
#: The version number of the base model: its evaluation is recorded like a trained version's.
BASE_VERSION = 0


class TrainerConfig(BaseModel):
    """Every setting of the trainer service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    export_dir: Path = Field(Path("sparq-out/export"), description="where the training set (JSONL + Parquet) is written")
    export_every: int = Field(64, ge=1, description="export after this many changes to the training set")
    export_every_s: float = Field(
        30.0, gt=0, description="or this many seconds after the first change not yet exported"
    )
    include_flagged: bool = Field(False, description="also train on problems the validity audit flagged")
    include_archive: bool = Field(
        False, description="also keep every archived child with QUALITY > 0 (reads the archive topic), not only the elites"
    )
    train_every: int = Field(
        0,
        ge=0,
        description="fine-tune when an export holds this many examples the latest version did not see; 0 = never",
    )
    model_name: str = Field(
        "student", min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="published model name (the models topic key)"
    )
    models_dir: Path = Field(Path("sparq-out/models"), description="where model versions are saved")
    base_model: str | None = Field(
        None, description="model to fine-tune: GGUF file or model folder; unset = the packaged SmolLM2-135M-Instruct"
    )
    train_from: Literal["base", "latest"] = Field(
        "base", description="start each version from the base model, or from the latest published version"
    )
    train_method: Literal["lora", "full"] = Field("lora", description="full fine-tuning or LoRA (peft)")
    train_epochs: int = Field(1, ge=1, description="passes over the training set")
    train_lr: float | None = Field(None, gt=0, description="learning rate; unset = 2e-4 for LoRA, 1e-5 for full")
    train_batch_size: int = Field(4, ge=1, description="examples per optimiser step")
    train_max_steps: int | None = Field(None, ge=1, description="cap on optimiser steps per version")
    train_max_seq_len: int = Field(1024, ge=8, description="tokens per example (prompt + target); longer targets are cut")
    train_seed: int = Field(0, description="seed of the data order and the adapter initialisation")
    train_threads: int | None = Field(None, ge=1, description="torch CPU threads for training and evaluation")
    train_bf16: bool = Field(False, description="bfloat16 autocast for training (faster on CPUs with AVX512-BF16)")
    train_device: str = Field("cpu", description="torch device for training and evaluation (cpu, cuda)")
    train_in_background: bool = Field(
        True, description="train in a background thread (the core keeps following and exporting meanwhile)"
    )
    eval_path: Path | None = Field(None, description="held-out JSONL to score each new version on (unset = no eval)")
    eval_sets: dict[str, Path] = Field(
        default_factory=dict,
        description="named held-out JSONL files (e.g. gsm8k: in distribution, math500: out of distribution); "
        "each new version is scored on every one (pass@1)",
    )
    eval_limit: int = Field(50, ge=1, description="held-out problems per evaluation")
    eval_max_tokens: int = Field(512, ge=1, description="max new tokens per evaluation answer")
    eval_base: bool = Field(
        True,
        description="score the base model (version 0) on the eval sets once, at start (recorded in "
        "models_dir/<name>-v0000/eval.json), so every version shows its change against it",
    )
    eval_backend: str | None = Field(
        None, description="generation backend of the evaluation; unset: transformers on each version's model folder "
        "(scripted: the deterministic test backend)",
    )
    eval_backend_options: dict[str, Any] = Field(default_factory=dict, description="eval_backend constructor options (JSON)")


def version_dir_name(model_name: str, version: int) -> str:
    """Return the folder name of one model version, e.g. ``student-v0003``."""
    return f"{model_name}-v{version:04d}"


class TrainerCore(BaseCore):
    """Follows W (and optionally A), exports the training set, and optionally fine-tunes and publishes versions."""

    name = "trainer"
    inputs: tuple[str, ...] = ()
    exclusive = True
    lease_topic = "models"

    def __init__(
        self,
        config: TrainerConfig,
        *,
        train_fn: Callable[..., TrainResult] = train_sft,
        eval_fn: Callable[..., EvalResult] = evaluate,
    ) -> None:
        self.config = config
        self.tables = ("elites", "models") + (("archive",) if config.include_archive else ())
        self._train_fn = train_fn
        self._eval_fn = eval_fn
        self._elites: dict[str, Elite] = {}
        self._archive: dict[str, SolveResult] = {}
        self._archive_at: dict[str, tuple[int, int]] = {}  # archived id -> its solved (partition, offset), for lineage
        self._latest: ModelVersion | None = None
        self._changes = 0
        self._first_change: float | None = None
        self._last_export: ExportInfo | None = None
        self._export_ids: list[str] = []
        self._rows_cache: list[dict[str, Any]] = []
        self._trained_ids: set[str] | None = None
        self._started = False
        self._standby = False
        self._recheck = False
        self._stop = threading.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._job: Future[ModelVersion] | None = None
        self._job_version = 0
        self._counts: Counter[str] = Counter()
        self._base_eval: dict[str, Any] | None = None  # version 0's eval.json, once scored or read back
        self._base_job: Future[None] | None = None
        self._eval_backend: Any = None

    # ------------------------------------------------------------------ tables
    def on_table(self, inbound: Inbound) -> list[Outgoing]:
        """Apply one elites / archive / models record (tombstones delete an elite slot)."""
        if inbound.topic == "elites":
            self._on_elite(inbound)
        elif inbound.topic == "archive":
            self._on_archived(inbound)
        elif inbound.topic == "models":
            self._on_model(inbound)
        else:
            log.warning("ignoring a record of unexpected table topic %r", inbound.topic)
        return []

    def _on_elite(self, inbound: Inbound) -> None:
        message = inbound.message
        if inbound.key == WATERMARK_KEY:
            return  # the archivist's progress marker, not a member of W
        if message is not None and not isinstance(message, Elite):
            self._counts["ignored_records"] += 1
            log.warning("elites topic: ignoring a %s record", type(message).__name__)
            return
        slot = inbound.key if inbound.key is not None else (message.slot if message is not None else None)
        if slot is None:
            self._counts["ignored_records"] += 1
            return
        if message is None:
            self._counts["tombstones_seen"] += 1
            if self._elites.pop(slot, None) is not None:
                self._changed()
            return
        self._counts["elites_seen"] += 1
        if self._elites.get(slot) != message:
            self._elites[slot] = message
            self._changed()

    def _on_archived(self, inbound: Inbound) -> None:
        message = inbound.message
        if not isinstance(message, SolveResult):
            self._counts["ignored_records"] += 1
            return
        self._counts["archive_seen"] += 1
        if message.quality > 0 and message.correct_rollouts and message.id not in self._archive:
            self._archive[message.id] = message
            solved_at = solved_at_of(inbound.headers)
            if solved_at is not None:
                self._archive_at[message.id] = solved_at
            self._changed()

    def _on_model(self, inbound: Inbound) -> None:
        message = inbound.message
        if not isinstance(message, ModelVersion) or message.name != self.config.model_name:
            return
        # a version of ours lies in our models folder: anything else is a foreign record (dead-lettered)
        model_path_inside(message.path, self.config.models_dir)
        if self._latest is None or message.number > self._latest.number:
            self._latest = message
            self._trained_ids = None  # reload lazily from the version's data folder

    def _changed(self) -> None:
        self._changes += 1

    def set_active(self, active: bool) -> None:
        """The wrapper's word on this replica's role: a standby writes nothing, not even on close."""
        self._standby = not active

    # ------------------------------------------------------------------ timers
    def tick(self, now: float) -> list[Outgoing]:
        """Publish a finished version, export when due, and start training when enough is new."""
        outputs: list[Outgoing] = []
        if not self._started:
            self._started = True
            outputs.extend(self._recover_unpublished())
            self._start_base_eval()
        finished = self._collect_job()
        outputs.extend(finished)
        if self._changes and self._first_change is None:
            self._first_change = now
        if self._export_due(now):
            self.export()
            outputs.extend(self._maybe_train())
        elif self._recheck:  # a run just ended: what was exported meanwhile may be enough for the next one
            outputs.extend(self._maybe_train())
        return outputs

    def _export_due(self, now: float) -> bool:
        if not self._changes:
            return False
        if self._changes >= self.config.export_every:
            return True
        return self._first_change is not None and now - self._first_change >= self.config.export_every_s

    def export(self) -> ExportInfo:
        """Write the current training set to ``export_dir`` now (atomic, deterministic)."""
        skipped: Counter[str] = Counter()
        rows = self._rows(skipped)
        source = "elites+archive" if self.config.include_archive else "elites"
        extra = {"filtered": True, "source": source, "run": self._run}
        info = write_examples(rows, self.config.export_dir, skipped=skipped, extra=extra)
        self._rows_cache = rows if self.config.train_every > 0 else []
        self._export_ids = [row["id"] for row in rows]
        self._last_export = info
        self._changes = 0
        self._first_change = None
        self._counts["exports"] += 1
        log.info("exported %d examples of %d problems to %s", info.examples, info.problems, info.out_dir)
        return info

    @property
    def _run(self) -> str:
        """The run the exported examples name: the topic prefix of the service's settings ("" for a bare config)."""
        return str(getattr(self.config, "prefix", "") or "")

    def _rows(self, skipped: Counter[str]) -> list[dict[str, Any]]:
        """The current example rows: elites first (by slot), then archived problems (by id)."""
        flagged, run = self.config.include_flagged, self._run
        rows = build_examples((self._elites[s] for s in sorted(self._elites)), source="elites", skipped=skipped, include_flagged=flagged, run=run)
        if self.config.include_archive:
            in_elites = {e.id for e in self._elites.values()}
            archived = (self._archive[i] for i in sorted(self._archive) if i not in in_elites)
            rows += build_examples(archived, source="archive", skipped=skipped, include_flagged=flagged, run=run, solved_at=self._archive_at)
            rows.sort(key=lambda r: (r["problem_id"], r["rollout_index"]))
        return rows

    # ------------------------------------------------------------------ training
    @property
    def latest_version(self) -> int:
        """The latest published version number of ``model_name`` (0: none yet)."""
        return self._latest.number if self._latest is not None else 0

    @property
    def training(self) -> bool:
        """True from the start of a fine-tuning run until its version is published, and while the base is scored."""
        return self._job is not None or (self._base_job is not None and not self._base_job.done())

    @property
    def settled(self) -> bool:
        """False while training (its version may give the mutator more steps): the end is not passed meanwhile."""
        return not self.training

    def _maybe_train(self) -> list[Outgoing]:
        """Start a fine-tuning run on the last export when ``train_every`` new examples have accumulated."""
        self._recheck = False
        if self.config.train_every <= 0 or self._job is not None or not self._export_ids:
            return []
        trained = self._load_trained_ids()
        new = sum(1 for i in self._export_ids if i not in trained)
        if new < self.config.train_every:
            return []
        version = self.latest_version + 1
        snapshot = self.config.models_dir / f".pending-{version_dir_name(self.config.model_name, version)}"
        if snapshot.exists():
            shutil.rmtree(snapshot)
        write_examples(self._rows_cache, snapshot, extra={"filtered": True, "version": version})
        self._job_version = version
        self._trained_ids = set(self._export_ids)  # what this version sees (also after a failure: no retry loop)
        log.info("training %s version %d on %d examples (%d new)", self.config.model_name, version, len(self._export_ids), new)
        if self.config.train_in_background:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainer")
            self._job = self._executor.submit(self._train_job, version, snapshot, self._latest)
            return []
        done: Future[ModelVersion] = Future()
        try:
            done.set_result(self._train_job(version, snapshot, self._latest))
        except BaseException as exc:  # noqa: BLE001 - reported by _collect_job like a background failure
            done.set_exception(exc)
        self._job = done
        return self._collect_job()

    def _train_job(self, version: int, snapshot: Path, parent: ModelVersion | None) -> ModelVersion:
        """Fine-tune on ``snapshot``, evaluate if configured, and return the version to publish."""
        cfg = self.config
        out = cfg.models_dir / version_dir_name(cfg.model_name, version)
        base: str | None = cfg.base_model
        if cfg.train_from == "latest" and parent is not None:
            base = parent.path
        result = self._train_fn(
            snapshot,
            base,
            out,
            method=cfg.train_method,
            epochs=cfg.train_epochs,
            lr=cfg.train_lr,
            batch_size=cfg.train_batch_size,
            max_steps=cfg.train_max_steps,
            max_seq_len=cfg.train_max_seq_len,
            seed=cfg.train_seed,
            num_threads=cfg.train_threads,
            bf16=cfg.train_bf16,
            device=cfg.train_device,
            overwrite=True,
            should_stop=self._stop.is_set,
        )
        data = out / _DATA_SUBDIR
        if data.exists():
            shutil.rmtree(data)
        os.replace(snapshot, data)
        metrics = _train_metrics(result.to_dict())
        metrics.update(self._evaluate(result.path, out))
        return ModelVersion(
            name=cfg.model_name,
            number=version,
            path=str(Path(result.path).resolve()),
            base_model=base or "SmolLM2-135M-Instruct",
            parent_version=parent.number if parent is not None else None,
            train_examples=result.examples,
            metrics=metrics,
        )

    def _eval_sets(self) -> dict[str, Path]:
        cfg = self.config
        return ({"heldout": cfg.eval_path} if cfg.eval_path is not None else {}) | dict(cfg.eval_sets)

    def _eval_model(self, model_path: str | Path | None) -> Any:
        """What the evaluation scores: the model folder (transformers), or the configured ``eval_backend``."""
        if self.config.eval_backend is None:
            return model_path
        if self._eval_backend is None:
            from sparq_stream.models.registry import make_generation_backend

            self._eval_backend = make_generation_backend(self.config.eval_backend, **self.config.eval_backend_options)
        return self._eval_backend

    def _evaluate(self, model_path: Path | str | None, out: Path) -> dict[str, float]:
        """Score a version on ``eval_path`` and every ``eval_sets`` file; save ``eval.json`` (with the change against v0)."""
        cfg = self.config
        metrics: dict[str, float] = {}
        saved: dict[str, Any] = {}
        base = self._base_eval or {}
        for name, path in self._eval_sets().items():
            if self._stop.is_set():
                raise TrainingCancelled("stopped before the evaluation")
            scored = self._eval_fn(
                self._eval_model(model_path), path, cfg.eval_limit, max_tokens=cfg.eval_max_tokens,
                num_threads=cfg.train_threads, device=cfg.train_device,
            )
            prefix = "eval" if name == "heldout" else f"eval_{name}"
            metrics.update({f"{prefix}_accuracy": scored.accuracy, f"{prefix}_n": float(scored.n), f"{prefix}_seconds": scored.seconds})
            saved[name] = {"path": str(path), "accuracy": scored.accuracy, "n": scored.n, "seconds": scored.seconds}
            if out.name != version_dir_name(cfg.model_name, BASE_VERSION) and isinstance(base.get(name), dict):
                delta = scored.accuracy - float(base[name].get("accuracy", 0.0))
                metrics[f"{prefix}_delta_vs_base"] = delta
                saved[name]["delta_vs_base"] = delta
            log.info("version %s: pass@1 %.3f on %d problems of %s", out.name, scored.accuracy, scored.n, name)
        if saved:
            out.mkdir(parents=True, exist_ok=True)
            tmp = out / f"{EVAL_NAME}.{os.getpid()}.tmp"  # replicas sharing models_dir never share a temp file
            tmp.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, out / EVAL_NAME)
        return metrics

    # ------------------------------------------------------------------ version 0 (the base model)
    def _start_base_eval(self) -> None:
        """Score the base model once (``eval_base``), in the training thread, unless version 0 is recorded already."""
        cfg = self.config
        if not cfg.eval_base or self._standby or not self._eval_sets():
            return
        folder = cfg.models_dir / version_dir_name(cfg.model_name, BASE_VERSION)
        recorded = folder / EVAL_NAME
        if recorded.is_file():
            try:
                self._base_eval = json.loads(recorded.read_text(encoding="utf-8"))
                log.info("the base model's evaluation (version 0) is recorded in %s", recorded)
                return
            except (OSError, ValueError) as exc:
                log.warning("cannot read %s (%s): scoring the base model again", recorded, exc)
        if not cfg.train_in_background:
            self._base_eval_job(folder)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainer")
        self._base_job = self._executor.submit(self._base_eval_job, folder)

    def _base_eval_job(self, folder: Path) -> None:
        """Evaluate the base model into ``folder/eval.json`` (and ``base.json``: which model it was)."""
        cfg = self.config
        try:
            self._evaluate(cfg.base_model, folder)
        except TrainingCancelled:
            log.info("the base model's evaluation was cancelled")
            return
        except Exception:  # noqa: BLE001 - the loop goes on without a base line
            self._counts["eval_failures"] += 1
            log.exception("evaluating the base model (version 0) failed")
            return
        info = {"name": cfg.model_name, "version": BASE_VERSION, "base_model": cfg.base_model or "SmolLM2-135M-Instruct",
                "eval_backend": cfg.eval_backend or "transformers"}
        (folder / "base.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        self._base_eval = json.loads((folder / EVAL_NAME).read_text(encoding="utf-8"))
        log.info("version 0 (the base model) evaluated: %s",
                 ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in sorted(self._base_eval.items())))

    def _collect_job(self) -> list[Outgoing]:
        """Publish the finished run's version (or log its failure)."""
        job = self._job
        if job is None or not job.done():
            return []
        self._job = None
        self._recheck = True
        try:
            version = job.result()
        except TrainingCancelled as exc:
            log.info("training cancelled: %s", exc)
            return []
        except Exception:
            self._counts["train_failures"] += 1
            log.exception("training version %d failed; waiting for %d new examples", self._job_version, self.config.train_every)
            return []
        return [self._publish(version)]

    def _publish(self, version: ModelVersion) -> Outgoing:
        if self._latest is None or version.number > self._latest.number:
            self._latest = version
        self._counts["versions"] += 1
        log.info("publishing %s version %d (%s)", version.name, version.number, version.path)
        return Outgoing("models", version, key=version.name)

    def _load_trained_ids(self) -> set[str]:
        """The example ids the latest version was trained on (empty when unknown)."""
        if self._trained_ids is None:
            self._trained_ids = set()
            if self._latest is not None:
                data = Path(self._latest.path).parent / _DATA_SUBDIR
                try:
                    self._trained_ids = {row["id"] for row in read_examples(data, columns=["id"])}
                except ConfigError:
                    log.info("no training data recorded for %s v%d", self._latest.name, self._latest.number)
        return self._trained_ids

    def _recover_unpublished(self) -> list[Outgoing]:
        """Publish version folders that were finished but not published (a crash between save and publish)."""
        pattern = re.compile(rf"^{re.escape(self.config.model_name)}-v(\d{{4,}})$")
        if not self.config.models_dir.is_dir():
            return []
        for stale in self.config.models_dir.glob(f".pending-{self.config.model_name}-v*"):
            shutil.rmtree(stale, ignore_errors=True)  # the snapshot of a run that never finished
        outputs = []
        for folder in sorted(self.config.models_dir.iterdir()):
            found = pattern.match(folder.name)
            if not found or int(found.group(1)) <= self.latest_version:
                continue
            result_file = folder / RESULT_NAME
            if not result_file.is_file() or not (folder / MODEL_SUBDIR / "config.json").is_file():
                continue
            try:
                result = json.loads(result_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("cannot read %s: %s", result_file, exc)
                continue
            version = ModelVersion(
                name=self.config.model_name,
                number=int(found.group(1)),
                path=str((folder / MODEL_SUBDIR).resolve()),
                base_model=str(result.get("base_model") or ""),
                parent_version=self.latest_version or None,
                train_examples=int(result.get("examples") or 0),
                metrics=_train_metrics(result),
            )
            log.info("publishing %s, finished before a restart", folder)
            outputs.append(self._publish(version))
        return outputs

    # ------------------------------------------------------------------ lifecycle
    def metrics(self) -> dict[str, float]:
        """Counters: elites_seen, examples, exports, versions, and gauges of the current state."""
        last = self._last_export
        return {
            "elites_seen": float(self._counts["elites_seen"]),
            "tombstones_seen": float(self._counts["tombstones_seen"]),
            "archive_seen": float(self._counts["archive_seen"]),
            "elites": float(len(self._elites)),
            "problems": float(last.problems if last else 0),
            "examples": float(last.examples if last else 0),
            "exports": float(self._counts["exports"]),
            "versions": float(self._counts["versions"]),
            "latest_version": float(self.latest_version),
            "training": float(self.training),
            "train_failures": float(self._counts["train_failures"]),
            "pending_changes": float(self._changes),
            "eval_failures": float(self._counts["eval_failures"]),
            **{k: v for k, v in (self._latest.metrics if self._latest else {}).items() if k.startswith("eval_")},
            **{f"base_eval_{k}_accuracy": float(v.get("accuracy", 0.0)) for k, v in (self._base_eval or {}).items() if isinstance(v, dict)},
        }

    def close(self) -> None:
        """Cancel a run in progress (nothing half-saved is published) and write a final export."""
        self._stop.set()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._job = None  # cancelled: nothing of it is published
        closer = getattr(self._eval_backend, "close", None)
        if callable(closer):
            closer()
        self._eval_backend = None
        if self._changes and not self._standby:  # the active replica owns the export
            self.export()


def _train_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numeric training figures published with a version."""
    keys = ("steps", "loss_first", "loss_last", "examples", "tokens", "seconds", "steps_per_s")
    out = {}
    for key in keys:
        value = result.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out["train_" + key if not key.startswith("train") else key] = float(value)
    return out


def build_trainer(config: TrainerConfig, **deps: Any) -> TrainerCore:
    """Build the trainer core from its config (``deps``: optional ``train_fn`` / ``eval_fn`` overrides)."""
    if config.eval_path is not None and not Path(config.eval_path).is_file():
        raise ConfigError(f"eval_path {config.eval_path} does not exist")
    for name, path in config.eval_sets.items():
        if not Path(path).is_file():
            raise ConfigError(f"eval_sets: {name} file {path} does not exist")
    return TrainerCore(config, **deps)
