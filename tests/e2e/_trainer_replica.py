"""One trainer replica as its own process for the replica test: the real trainer core and process wrapper,
with a stand-in for the fine-tuning run (it takes ``--train-s`` seconds and writes a version folder),
so a ``kill -9`` can land while a version is being trained. Real training is tested in test_train_eval."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from sparq_stream.bus.process import run_service
from sparq_stream.cores.trainer import TrainerConfig, TrainerCore
from sparq_stream.settings import ServiceSettings
from sparq_stream.training.export import read_examples
from sparq_stream.training.sft import MODEL_SUBDIR, RESULT_NAME, TrainingCancelled, TrainResult


def _slow_train(seconds: float) -> Any:
    def train(dataset: Path, base_model: str | None, out_dir: Path, **kw: Any) -> TrainResult:
        examples = len(read_examples(dataset))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if kw["should_stop"]():
                raise TrainingCancelled("stopped")
            time.sleep(0.05)
        out = Path(out_dir)
        (out / MODEL_SUBDIR).mkdir(parents=True, exist_ok=True)
        (out / MODEL_SUBDIR / "config.json").write_text("{}")
        result = TrainResult(out / MODEL_SUBDIR, steps=1, loss_first=1.0, loss_last=0.5, examples=examples)
        (out / RESULT_NAME).write_text(json.dumps(result.to_dict()))
        return result

    return train


def main() -> int:
    """Run one trainer replica until SIGTERM."""
    parser = argparse.ArgumentParser()
    for name in ("--bootstrap", "--prefix", "--instance", "--models-dir", "--export-dir"):
        parser.add_argument(name, required=True)
    parser.add_argument("--train-every", type=int, default=4)
    parser.add_argument("--train-s", type=float, default=3.0)
    args = parser.parse_args()
    config = TrainerConfig(
        export_dir=Path(args.export_dir), models_dir=Path(args.models_dir), export_every=1, export_every_s=0.5,
        train_every=args.train_every,
    )
    settings = ServiceSettings(bootstrap=args.bootstrap, prefix=args.prefix, instance=args.instance, metrics_interval_s=0.5)
    logging.basicConfig(level=logging.INFO)
    return run_service(TrainerCore(config, train_fn=_slow_train(args.train_s)), settings)


if __name__ == "__main__":
    raise SystemExit(main())
