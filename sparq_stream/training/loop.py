"""Training inside ``sparq up``: the flags that make the trainer fine-tune and mutator/solver follow its versions.

``sparq up --train-every N`` turns on the trainer's fine-tuning (TRL ``SFTTrainer``, LoRA)
every N new training examples, per-version evaluation on the held-out GSM8K (in
distribution) and MATH500 (out of distribution) slices (packaged with sparq_stream, plus any
``--heldout`` file), the base model scored once as version 0, and hot reload of
each published version in the mutator and the solver, which load only from the run's
``models/`` folder; a version published after the last step gets up to two more steps, so
the run ends with it in use on both sides. The training defaults are sized for a CPU (a few optimiser steps, short
sequences, a small evaluation slice): on CPU with the 135M model they show the plumbing, not a
gain. Any of them can be overridden with ``--with "trainer --train-max-steps 200"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from sparq_stream.heldout import PACKAGED, eval_sets

__all__ = [
    "CPU_EVAL_DEFAULTS", "CPU_TRAINING_DEFAULTS", "MODEL_NAME", "NEW_MODEL_STEPS", "default_eval_sets", "eval_flags",
    "follower_flags", "trainer_flags",
]

#: The model name the trainer publishes and the followers follow.
MODEL_NAME = "student"
#: Small evaluation settings for a CPU run (flags of ``sparq run trainer``).
CPU_EVAL_DEFAULTS: tuple[str, ...] = ("--eval-limit", "8", "--eval-max-tokens", "192")
#: Small training and evaluation settings for a CPU run (flags of ``sparq run trainer``).
CPU_TRAINING_DEFAULTS: tuple[str, ...] = (
    "--train-max-steps", "4",
    "--train-max-seq-len", "320",
    "--train-batch-size", "4",
    *CPU_EVAL_DEFAULTS,
)  # fmt: skip
#: Steps the mutator may run past ``--steps`` until a trained version is used (see MutatorConfig).
NEW_MODEL_STEPS = 4
#: Held-out sets evaluated per version: name -> packaged file name (sparq_stream/data/heldout).
EVAL_FILES = dict(PACKAGED)


def default_eval_sets(extra: Sequence[str | Path] | None = None) -> dict[str, str]:
    """The held-out sets to evaluate on: the packaged GSM8K test and MATH500, then each extra file by its stem."""
    return eval_sets(list(extra or []))


def trainer_flags(train_every: int, models_dir: Path, config: Any, backend_options: dict[str, Any]) -> list[str]:
    """``sparq run trainer`` flags for training in the loop (``config`` is the run's ``UpConfig``)."""
    flags = ["--train-every", str(train_every), "--model-name", MODEL_NAME, "--models-dir", str(models_dir.resolve())]
    flags += list(CPU_TRAINING_DEFAULTS)
    if config.backend == "transformers" and backend_options.get("model"):
        flags += ["--base-model", str(backend_options["model"])]
    if config.threads:
        flags += ["--train-threads", str(config.threads)]
    return flags + eval_flags(config, backend_options, defaults=False)


def eval_flags(config: Any, backend_options: dict[str, Any], *, defaults: bool = True) -> list[str]:
    """``sparq run trainer`` flags of the evaluation: the sets (packaged + ``--heldout``), base scoring, backend.

    The scripted backend scores with itself (``--eval-backend scripted``, seconds); any other run
    scores each version's model folder with transformers. ``defaults`` adds the small CPU slice.
    """
    flags = list(CPU_EVAL_DEFAULTS) if defaults else []
    flags += ["--eval-sets", json.dumps(default_eval_sets(list(config.heldout)))]
    if config.backend == "scripted":
        flags += ["--eval-backend", "scripted"]
        if backend_options:
            flags += ["--eval-backend-options", json.dumps(backend_options)]
    if config.threads and defaults:
        flags += ["--train-threads", str(config.threads)]
    return flags


def follower_flags(models_dir: Path, service: str) -> list[str]:
    """Mutator / solver flags: hot-reload the trainer's versions, loading only from ``models_dir``.

    The mutator also runs up to :data:`NEW_MODEL_STEPS` steps past its budget while no version is
    published yet or the newest has no scored child, so a run ends with its newest version in use on
    both sides whenever one is trained in time.
    """
    flags = ["--follow-models", "--follow-model-name", MODEL_NAME, "--models-root", str(models_dir.resolve())]
    return flags + (["--new-model-steps", str(NEW_MODEL_STEPS)] if service == "mutator" else [])
