"""Training inside ``sparq up``: the flags that make the trainer fine-tune and mutator/solver follow its versions.

``sparq up --train-every N`` turns on the trainer's fine-tuning (TRL ``SFTTrainer``, LoRA)
every N new training examples, per-version evaluation on the held-out GSM8K (in
distribution) and MATH500 (out of distribution) slices when they are found, and hot reload of
each published version in the mutator and the solver, which load only from the run's
``models/`` folder; a version published after the last step gets up to two more steps, so
the run ends with it in use on both sides. The training defaults are sized for a CPU (a few optimiser steps, short
sequences, a small evaluation slice): on CPU with the 135M model they show the plumbing, not a
gain. Any of them can be overridden with ``--with "trainer --train-max-steps 200"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["CPU_TRAINING_DEFAULTS", "MODEL_NAME", "NEW_MODEL_STEPS", "default_eval_sets", "follower_flags", "trainer_flags"]

#: The model name the trainer publishes and the followers follow.
MODEL_NAME = "student"
#: Small training and evaluation settings for a CPU run (flags of ``sparq run trainer``).
CPU_TRAINING_DEFAULTS: tuple[str, ...] = (
    "--train-max-steps", "4",
    "--train-max-seq-len", "320",
    "--train-batch-size", "4",
    "--eval-limit", "8",
    "--eval-max-tokens", "192",
)  # fmt: skip
#: Steps the mutator may run past ``--steps`` until a trained version is used (see MutatorConfig).
NEW_MODEL_STEPS = 4
#: Held-out sets evaluated per version: name -> file name in the shared data folder.
EVAL_FILES = {"gsm8k": "gsm8k_test.jsonl", "math500": "math500_test.jsonl"}


def default_eval_sets(paths: list[Path] | None = None) -> dict[str, str]:
    """The held-out sets to evaluate on: the given files by stem, else GSM8K and MATH500 from the shared data folder."""
    if paths is not None:
        return {Path(p).stem.removesuffix("_test"): str(Path(p).resolve()) for p in paths}
    from sparq_stream.cores.novelty import default_heldout_paths

    found = {Path(p).name: p for p in default_heldout_paths()}
    return {name: str(found[file].resolve()) for name, file in EVAL_FILES.items() if file in found}


def trainer_flags(train_every: int, models_dir: Path, config: Any, backend_options: dict[str, Any]) -> list[str]:
    """``sparq run trainer`` flags for training in the loop (``config`` is the run's ``UpConfig``)."""
    flags = ["--train-every", str(train_every), "--model-name", MODEL_NAME, "--models-dir", str(models_dir.resolve())]
    flags += list(CPU_TRAINING_DEFAULTS)
    if config.backend == "transformers" and backend_options.get("model"):
        flags += ["--base-model", str(backend_options["model"])]
    if config.threads:
        flags += ["--train-threads", str(config.threads)]
    sets = default_eval_sets(config.contamination)
    if sets:
        flags += ["--eval-sets", json.dumps(sets)]
    return flags


def follower_flags(models_dir: Path, service: str) -> list[str]:
    """Mutator / solver flags: hot-reload the trainer's versions, loading only from ``models_dir``.

    The mutator also runs up to :data:`NEW_MODEL_STEPS` steps past its budget while no version is
    published yet or the newest has no scored child, so a run ends with its newest version in use on
    both sides whenever one is trained in time.
    """
    flags = ["--follow-models", "--follow-model-name", MODEL_NAME, "--models-root", str(models_dir.resolve())]
    return flags + (["--new-model-steps", str(NEW_MODEL_STEPS)] if service == "mutator" else [])
