"""The student side of the loop: export the training set, fine-tune (SFT, full or LoRA), evaluate on held-out data.

- :mod:`.export`: kept problems x correct rollouts -> JSONL + Parquet with provenance.
- :mod:`.sft`: :func:`train_sft` on TRL's SFTTrainer (LoRA via a PEFT LoraConfig by default, or full).
- :mod:`.sweep`: the data-quantity sweep (`sparq eval --sweep`); :mod:`.loop`: training inside `sparq up`.
- :mod:`.evaluate`: :func:`evaluate`, accuracy on held-out problems with the solver's checker.

Importing this package does not import torch; training and evaluation do, when called.
"""

from sparq_stream.training.evaluate import EvalResult, evaluate, load_heldout
from sparq_stream.training.export import (
    EXPORT_SCHEMA,
    ExportInfo,
    build_examples,
    export_from_archive,
    export_training_set,
    read_examples,
    write_examples,
)
from sparq_stream.training.sft import TrainingCancelled, TrainResult, train_sft

__all__ = [
    "EXPORT_SCHEMA",
    "EvalResult",
    "ExportInfo",
    "TrainResult",
    "TrainingCancelled",
    "build_examples",
    "evaluate",
    "export_from_archive",
    "export_training_set",
    "load_heldout",
    "read_examples",
    "train_sft",
    "write_examples",
]
