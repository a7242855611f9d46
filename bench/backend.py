"""Local backend overhead: each wrapper against the library call it wraps, same model, same run.

(a) generation: ``TransformersBackend.generate`` vs ``model.generate`` called directly on the
    same loaded SmolLM2 (same prompts, batch, n, max_tokens; left padding; tokens/s counts
    generated tokens up to and including EOS, padding excluded);
(b) answer checking: ``bench/_checker_bench.py``'s ``run()`` (skipped if that file is absent);
(c) embedding: ``SentenceTransformerEmbedder.embed`` vs ``SentenceTransformer.encode`` on the
    same loaded model and batch size.

The two sides of each pair run alternately, after one warm-up each; the best of the repeats
is reported (the machine may be shared). With the same seed and row order both generation
paths sample the same tokens; the output says whether their texts matched.
Targets: ratio >= 0.9 for (a) and (c).

    python bench/backend.py                       # defaults: --batch 4 --n 2 --max-tokens 32
    python bench/backend.py --batch 8 --n 2 --max-tokens 32 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET = 0.9
HERE = Path(__file__).resolve().parent


def _questions(count: int) -> list[str]:
    """GSM8K test questions (packaged with sparq_stream), else seeded synthetic ones when more are asked for."""
    from sparq_stream.heldout import packaged_paths

    path = packaged_paths()[0]
    if path.is_file():
        with path.open(encoding="utf-8") as fh:
            rows = [json.loads(line)["question"] for _, line in zip(range(count), fh, strict=False)]
        if len(rows) == count:
            return rows
    rng = random.Random(0)
    return [
        f"{rng.choice(['Ann', 'Bo', 'Cy'])} buys {rng.randint(2, 40)} pens at ${rng.randint(1, 9)} each "
        f"and sells {rng.randint(1, 20)} of them. How much money is left?"
        for _ in range(count)
    ]


def _alternate(a: Callable[[], float], b: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Warm both up, then run them alternately; return each side's best rate (least disturbed run)."""
    a(), b()
    rates_a, rates_b = [], []
    for i in range(repeats):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        r1, r2 = first(), second()
        (rates_a if first is a else rates_b).append(r1)
        (rates_b if first is a else rates_a).append(r2)
    return max(rates_a), max(rates_b)


def _count_tokens(generated: Any, end_ids: set[int]) -> int:
    """Generated tokens per row up to and including the first end token (padding excluded)."""
    import torch

    ends = torch.isin(generated, torch.tensor(sorted(end_ids), dtype=generated.dtype))
    length = generated.shape[1]
    first = torch.where(ends.any(dim=1), ends.int().argmax(dim=1) + 1, torch.tensor(length))
    return int(first.clamp(max=length).sum())


def bench_generation(args: argparse.Namespace) -> dict[str, Any]:
    """Wrapper vs direct ``model.generate`` tokens/s on the packaged SmolLM2."""
    import torch

    from sparq_stream.models.base import SamplingParams
    from sparq_stream.models.transformers_backend import TransformersBackend

    backend = TransformersBackend(num_threads=args.threads, max_batch_size=args.batch * args.n)
    info = backend.load_info
    model, tokenizer = backend.hf_model, backend.tokenizer
    prompts = [[{"role": "user", "content": f"Solve step by step: {q}"}] for q in _questions(args.batch)]
    params = SamplingParams(temperature=0.7, top_p=0.95, max_tokens=args.max_tokens, seed=1234)
    configured = model.generation_config.eos_token_id
    configured = [configured] if isinstance(configured, int) else list(configured or [])
    end_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id, *configured} - {None}
    # The wrapper orders rows by prompt length; give the direct call the same order so that,
    # with the same seed, both sample exactly the same tokens and only the overhead differs.
    texts = sorted(
        (tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts),
        key=lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"]),
    )
    inputs = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    outputs: dict[str, list[str]] = {}

    def wrapper() -> float:
        started = time.perf_counter()
        results = backend.generate(prompts, args.n, params)
        elapsed = time.perf_counter() - started
        outputs["wrapper"] = sorted(c.text for r in results for c in r.completions)
        return sum(c.tokens for r in results for c in r.completions) / elapsed

    def direct() -> float:
        started = time.perf_counter()
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            out = model.generate(
                **inputs,
                do_sample=True,
                temperature=0.7,
                top_p=0.95,
                top_k=0,
                num_return_sequences=args.n,
                max_new_tokens=args.max_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        elapsed = time.perf_counter() - started
        generated = out[:, inputs["input_ids"].shape[1] :]
        outputs["direct"] = sorted(tokenizer.batch_decode(generated, skip_special_tokens=True))
        return _count_tokens(generated, end_ids) / elapsed

    wrapped, raw = _alternate(wrapper, direct, args.repeats)
    backend.close()
    return {
        "first_load_s": round(info.load_seconds, 2),
        "converted": info.converted,
        "wrapper_tok_s": round(wrapped, 1),
        "direct_tok_s": round(raw, 1),
        "ratio": round(wrapped / raw, 3),
        "same_texts": outputs["wrapper"] == outputs["direct"],
    }


def bench_checker(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run bench/_checker_bench.py's run(), or return None when that file is absent."""
    path = HERE / "_checker_bench.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_checker_bench", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = getattr(module, "run", None)
    if run is None:
        return None
    accepted = inspect.signature(run).parameters
    wanted = {"n": args.checks, "repeats": args.repeats}
    try:
        return dict(run(**{k: v for k, v in wanted.items() if k in accepted}))
    except Exception as exc:  # another piece's bench: report, do not abort ours
        return {"error": f"{type(exc).__name__}: {exc}"}


def bench_embedding(args: argparse.Namespace) -> dict[str, Any]:
    """Wrapper vs direct ``SentenceTransformer.encode`` sentences/s."""
    from sparq_stream.models.embeddings import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(batch_size=args.embed_batch, num_threads=args.threads)
    sentences = _questions(args.sentences)

    def wrapper() -> float:
        started = time.perf_counter()
        embedder.embed(sentences)
        return len(sentences) / (time.perf_counter() - started)

    def direct() -> float:
        started = time.perf_counter()
        embedder.model.encode(
            sentences,
            batch_size=args.embed_batch,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return len(sentences) / (time.perf_counter() - started)

    wrapped, raw = _alternate(wrapper, direct, args.repeats)
    return {
        "load_s": round(embedder.load_seconds, 2),
        "wrapper_sent_s": round(wrapped, 1),
        "direct_sent_s": round(raw, 1),
        "ratio": round(wrapped / raw, 3),
    }


def _table(rows: list[tuple[str, str, str, str, str]]) -> str:
    """Format rows as a fixed-width text table."""
    header = ("measure", "wrapper", "direct", "ratio", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements and print a table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="distinct prompts per generate call")
    parser.add_argument("--n", type=int, default=2, help="samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--checks", type=int, default=500, help="answer pairs for the checker bench")
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--embed-batch", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    report: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "json"}}
    rows: list[tuple[str, str, str, str, str]] = []

    gen = bench_generation(args)
    report["generation"] = gen
    rows.append(
        (
            f"generate tok/s (batch {args.batch}, n {args.n}, {args.max_tokens} tok)",
            str(gen["wrapper_tok_s"]),
            str(gen["direct_tok_s"]),
            f"{gen['ratio']:.3f}",
            f">= {TARGET}",
        )
    )

    emb = bench_embedding(args)
    report["embedding"] = emb
    rows.append(
        (
            f"embed sentences/s ({args.sentences}, batch {args.embed_batch})",
            str(emb["wrapper_sent_s"]),
            str(emb["direct_sent_s"]),
            f"{emb['ratio']:.3f}",
            f">= {TARGET}",
        )
    )

    checker = bench_checker(args)
    report["checker"] = checker
    if checker is None:
        checker_line = "checker: skipped (bench/_checker_bench.py with run() not found)"
    elif "error" in checker:
        checker_line = f"checker: failed: {checker['error']}"
    else:
        rows.append(
            (
                f"checks/s ({checker.get('n')} pairs; direct = in-process)",
                f"{checker.get('pool_checks_per_s')} (pool x{checker.get('pool_workers')})",
                str(checker.get("single_checks_per_s")),
                str(checker.get("ratio", checker.get("ratio_pool_vs_single", "-"))),
                "-",
            )
        )
        checker_line = ""

    print(_table(rows))
    print(
        f"model load {gen['first_load_s']}s ({'converted GGUF' if gen['converted'] else 'from cache'});"
        f" wrapper and direct sampled the same texts: {gen['same_texts']}"
    )
    if checker_line:
        print(checker_line)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
