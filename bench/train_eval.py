"""Training and evaluation speed on the real tiny model (SmolLM2-135M): the plumbing's cost, not a gain.

Training: the same 8 chat examples (GSM8K-style problem + worked answer, ~100 tokens),
batch 4, ``--steps`` optimiser steps, for LoRA fp32 (the reference), LoRA under bf16
autocast, and full fine-tuning fp32; steps/s each (``TrainResult.steps_per_s``: load and
save excluded) and the ratio to LoRA fp32 measured in the same run. Evaluation: greedy
answers to the first ``--eval-problems`` GSM8K test problems with ``--max-tokens`` new
tokens, seconds per problem (generation and checking).

    python bench/train_eval.py [--steps 4] [--threads 2] [--eval-problems 4] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

#: GSM8K training problems shipped with the repository (``--seeds`` takes another file, e.g. the full split).
SEEDS = Path(__file__).resolve().parents[1] / "examples" / "seeds" / "gsm8k_train_512.jsonl"


def _examples(path: Path, n: int = 8, seeds: Path = SEEDS) -> None:
    """Write n chat examples built from GSM8K train problems and their worked answers."""
    rows = []
    with open(seeds, encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            question, answer = obj.get("question") or obj.get("problem"), str(obj.get("answer", ""))
            final = answer.split("####")[-1].strip()
            body = answer.split("####")[0].strip()[:300]
            rows.append({"messages": [
                {"role": "user", "content": f"Solve: {question[:300]}"},
                {"role": "assistant", "content": f"{body}\nThe final answer is \\boxed{{{final}}}."},
            ]})
            if len(rows) == n:
                break
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    """Print steps/s per training mode with ratios to LoRA fp32, and seconds per evaluated problem."""
    from sparq_stream.heldout import packaged_paths
    from sparq_stream.training import evaluate, train_sft

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-problems", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--seeds", type=Path, default=SEEDS, help="GSM8K-style training problems (default: the repository's 512)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="sparq-train-bench-") as tmp:
        data = Path(tmp) / "train.jsonl"
        _examples(data, seeds=args.seeds)
        rates = {}
        for name, method, bf16 in (("LoRA fp32", "lora", False), ("LoRA bf16 autocast", "lora", True), ("full fp32", "full", False)):
            result = train_sft(data, None, Path(tmp) / name.replace(" ", "-"), method=method, batch_size=4,
                               max_steps=args.steps, epochs=100, num_threads=args.threads, bf16=bf16)
            rates[name] = result.steps_per_s
            print(f"{name:<20} {result.steps} steps, {result.steps_per_s:.3f} steps/s, loss {result.loss_first:.3f} -> "
                  f"{result.loss_last:.3f}, x{result.steps_per_s / rates['LoRA fp32']:.2f} LoRA fp32", flush=True)
        ev = evaluate(None, packaged_paths()[0], limit=args.eval_problems, max_tokens=args.max_tokens,
                      num_threads=args.threads, batch_size=1)
        print(f"evaluation: {ev.n} GSM8K test problems, {args.max_tokens} new tokens, greedy: "
              f"{ev.seconds_per_problem:.1f} s per problem, accuracy {ev.accuracy:.3f}")
        print(f"load average {os.getloadavg()[0]:.1f}, {args.threads} threads")


if __name__ == "__main__":
    main()
