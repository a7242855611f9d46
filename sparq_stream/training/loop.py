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
The values here are fields of the services' settings objects, not flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from sparq_stream.heldout import PACKAGED, eval_sets

__all__ = [
    "CPU_EVAL_DEFAULTS", "CPU_TRAINING_DEFAULTS", "MODEL_NAME", "NEW_MODEL_STEPS", "default_eval_sets", "eval_values",
    "follower_values", "trainer_values",
]

#: The model name the trainer publishes and the followers follow.
MODEL_NAME = "student"
#: Small evaluation settings for a CPU run (fields of the trainer's settings).
CPU_EVAL_DEFAULTS: dict[str, Any] = {"eval_limit": 8, "eval_max_tokens": 192}
#: Small training and evaluation settings for a CPU run (fields of the trainer's settings).
CPU_TRAINING_DEFAULTS: dict[str, Any] = {
    "train_max_steps": 4, "train_max_seq_len": 320, "train_batch_size": 4, **CPU_EVAL_DEFAULTS,
}
#: Steps the mutator may run past ``--steps`` until a trained version is used (see MutatorConfig).
NEW_MODEL_STEPS = 4
#: Held-out sets evaluated per version: name -> packaged file name (sparq_stream/data/heldout).
EVAL_FILES = dict(PACKAGED)


def default_eval_sets(extra: Sequence[str | Path] | None = None) -> dict[str, str]:
    """The held-out sets to evaluate on: the packaged GSM8K test and MATH500, then each extra file by its stem."""
    return eval_sets(list(extra or []))


def trainer_values(train_every: int, models_dir: Path, config: Any, backend_options: dict[str, Any]) -> dict[str, Any]:
    """The trainer's settings for training in the loop (``config`` is the run's ``UpConfig``)."""
    values: dict[str, Any] = {
        "train_every": train_every, "model_name": MODEL_NAME, "models_dir": models_dir.resolve(), **CPU_TRAINING_DEFAULTS,
    }
    if config.backend == "transformers" and backend_options.get("model"):
        values["base_model"] = str(backend_options["model"])
    if config.threads:
        values["train_threads"] = config.threads
    return {**values, **eval_values(config, backend_options, defaults=False)}


def eval_values(config: Any, backend_options: dict[str, Any], *, defaults: bool = True) -> dict[str, Any]:
    """The trainer's evaluation settings: the sets (packaged + ``--heldout``), base scoring, backend.

    The scripted backend scores with itself (``eval_backend`` scripted, seconds); any other run
    scores each version's model folder with transformers. ``defaults`` adds the small CPU slice.
    """
    values: dict[str, Any] = dict(CPU_EVAL_DEFAULTS) if defaults else {}
    values["eval_sets"] = default_eval_sets(list(config.heldout))
    if config.backend == "scripted":
        values["eval_backend"] = "scripted"
        if backend_options:
            values["eval_backend_options"] = dict(backend_options)
    if config.threads and defaults:
        values["train_threads"] = config.threads
    return values


def follower_values(models_dir: Path, service: str) -> dict[str, Any]:
    """Mutator / solver settings: hot-reload the trainer's versions, loading only from ``models_dir``.

    The mutator also runs up to :data:`NEW_MODEL_STEPS` steps past its budget while no version is
    published yet or the newest has no scored child, so a run ends with its newest version in use on
    both sides whenever one is trained in time.
    """
    values: dict[str, Any] = {"follow_models": True, "follow_model_name": MODEL_NAME, "models_root": str(models_dir.resolve())}
    return {**values, **({"new_model_steps": NEW_MODEL_STEPS} if service == "mutator" else {})}
