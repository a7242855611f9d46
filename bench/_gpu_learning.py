"""The learning loop on one GPU: ``sparq up`` with the transformers backend on CUDA at b=64, K=16, one
training round (TRL SFTTrainer, LoRA, bf16) and a per-version evaluation on GSM8K test and MATH500,
figures written to one JSON file. Run through ``bench/gpu_learning.sh`` (it checks the machine first).

    python bench/_gpu_learning.py --out gpu-run --json gpu-learning.json [--budget-s 480] [--dry-run]

Figures: wall time, candidates and rollouts scored per second (solver counters over the run),
kept and yield, the model versions with their training time, loss and pass@1 per held-out
set, and whether the mutator and the solver used a new version. On a 135M model the accuracy
figures show the plumbing, not a gain.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparq_stream.orchestrator.up import UpConfig, run_up  # noqa: E402
from sparq_stream.qd.archive_log import read_archive  # noqa: E402


def build_config(out: Path, seeds: Path, budget_s: float, device: str) -> UpConfig:
    """The run: b=64, K=16, training after 64 new examples, evaluation on 100 problems per held-out set."""
    options = {"device": device, "dtype": "bfloat16" if device == "cuda" else "float32", "max_batch_size": 1024}
    return UpConfig(
        seeds=seeds, out=out, steps=6, batch_size=64, k=16, max_tokens=512, backend="transformers",
        backend_options=options, embedder="sentence-transformers", label_seeds=True, seed_limit=512, threads=4,
        timeout_s=budget_s, train_every=64,
        extra={
            "trainer": ["--train-device", device, "--train-max-steps", "60", "--train-batch-size", "16",
                        "--train-max-seq-len", "1024", "--eval-limit", "100", "--eval-max-tokens", "512",
                        *(["--train-bf16"] if device == "cuda" else [])],
            "solver": ["--max-batch", "64"],
        },
    )  # fmt: skip


def main() -> None:
    """Run the loop and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-run"))
    parser.add_argument("--json", type=Path, default=Path("gpu-learning.json"))
    parser.add_argument("--seeds", type=Path, default=Path(__file__).resolve().parents[1] / "examples" / "seeds" / "gsm8k_train_512.jsonl")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop the loop after this long (the script must end in 10 min)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="print the run's settings and exit")
    args = parser.parse_args()
    config = build_config(args.out, args.seeds, args.budget_s, args.device)
    if args.dry_run:
        print(config.model_dump_json(indent=2))
        return
    started = time.perf_counter()
    result = run_up(config)
    wall = time.perf_counter() - started
    stages = result.summary.get("stages", {})
    rows = read_archive(args.out / "archive") if (args.out / "archive").is_dir() else []
    solver = {k.split(".", 1)[1]: v for k, v in stages.items() if k.startswith("solver")}
    figures = {
        "command": "bash bench/gpu_learning.sh",
        "wall_s": wall,
        "stopped": result.reason,
        "b": config.batch_size,
        "k": config.k,
        "scored": result.summary.get("scored", 0),
        "kept": result.summary.get("kept", 0),
        "yield": result.summary.get("yield", 0.0),
        "candidates_per_s": result.summary.get("scored", 0) / wall if wall else 0.0,
        "rollouts_per_s": solver.get("rollouts_used", 0.0) / wall if wall else 0.0,
        "generate_seconds": solver.get("generate_seconds", 0.0),
        "model_versions": result.summary.get("model_versions", []),
        "new_version_used_by_both": any(r.model_version >= 1 and r.solver_version >= 1 for r in rows),
        "audit": result.summary.get("audit", {}),
        "contamination": result.summary.get("contamination", {}),
        "note": "135M model: these figures show the plumbing, not a gain",
    }
    args.json.write_text(json.dumps(figures, indent=2, sort_keys=True, default=str))
    print(json.dumps({k: v for k, v in figures.items() if k not in ("model_versions", "audit")}, indent=2, default=str))


if __name__ == "__main__":
    main()
