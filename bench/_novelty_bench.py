"""Novelty core throughput with the real embedder, and FAISS add+search cost and memory per item.

    python bench/_novelty_bench.py core  [--n 1024] [--batch 64] [--threads 2]
    python bench/_novelty_bench.py index [--sizes 10000 100000] [--kinds flat hnsw-fp16]
    python bench/_novelty_bench.py memory [--sizes 10000 100000 1000000] [--kinds flat flat-fp16]

``core``: the NoveltyCore with the packaged all-MiniLM-L6-v2 embedder and the scripted
skill classifier (the classifier's cost is the generation backend's, measured elsewhere),
its index holding the GSM8K train seeds; candidates are GSM8K test problems with their
numbers changed, alternating with GSM8K train problems with their numbers changed (so about
half of them are near copies of held-out problems, dropped as contamination).
``index``: random unit vectors (384-d); add and 64-query search cost per index kind and
size, and the resident memory each item adds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import time
from pathlib import Path

import numpy as np

#: Seeds: the repository's 512 GSM8K training problems (``--data DIR`` reads DIR/gsm8k_train.jsonl, e.g. the full split).
SEEDS = Path(__file__).resolve().parents[1] / "examples" / "seeds" / "gsm8k_train_512.jsonl"


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _questions(path: Path) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)
        out.append(obj.get("question") or obj.get("problem"))
    return out


def bench_core(n: int, batch: int, threads: int, seeds_file: Path = SEEDS) -> None:
    """Candidates/s through NoveltyCore.handle_batch with the real embedder."""
    import torch

    from sparq_stream.heldout import packaged_paths

    from sparq_stream.core import Inbound
    from sparq_stream.cores.novelty import NoveltyConfig, NoveltyCore, load_heldout
    from sparq_stream.ids import problem_id
    from sparq_stream.messages import Candidate, Seed
    from sparq_stream.models.embeddings import SentenceTransformerEmbedder
    from sparq_stream.models.scripted import ScriptedBackend

    torch.set_num_threads(threads)
    embedder = SentenceTransformerEmbedder(num_threads=threads)
    t0 = time.perf_counter()
    heldout = load_heldout(None, embedder)  # the packaged GSM8K test and MATH500
    t_held = time.perf_counter() - t0
    core = NoveltyCore(NoveltyConfig(), embedder=embedder, backend=ScriptedBackend(), heldout=heldout)
    seeds = _questions(seeds_file)
    t0 = time.perf_counter()
    for i, text in enumerate(seeds):
        core.on_table(Inbound("seeds", None, Seed(id=problem_id(text), problem=text, answer="0"), offset=i))
    core.tick(0.0)
    t_seeds = time.perf_counter() - t0
    seed_vectors = core.index.vectors()
    nearest = np.array([sim for sim, _ in heldout.nearest(seed_vectors)])
    cut = core.config.contamination_threshold
    rng = np.random.default_rng(0)
    test = _questions(packaged_paths()[0])
    pool = [q for pair in zip(test, seeds[-len(test) :]) for q in pair]  # test- and train-derived, alternating
    texts = [re.sub(r"\d+", lambda m: str(int(m.group()) + int(rng.integers(1, 50))), pool[i % len(pool)]) + f" (v{i})" for i in range(n)]
    cands = [Candidate(id=problem_id(t), problem=t, solution="\\boxed{1}", answer="1", step=i) for i, t in enumerate(texts)]
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        chunk = cands[start : start + batch]
        core.handle_batch([Inbound("candidates", c.id, c, offset=start + j) for j, c in enumerate(chunk)])
    dt = time.perf_counter() - t0
    m = core.metrics()
    print(f"embedder all-MiniLM-L6-v2, torch threads={threads}, batch={batch}, load average {os.getloadavg()[0]:.1f}")
    print(f"held-out: {len(heldout)} problems embedded in {t_held:.1f}s ({len(heldout) / t_held:.0f}/s)")
    print(f"seeds: {len(seeds)} indexed in {t_seeds:.1f}s ({len(seeds) / t_seeds:.0f}/s)")
    print(
        f"train seeds whose nearest held-out problem is >= {cut}: {(nearest >= cut).mean():.2%} "
        f"(>= 0.95: {(nearest >= 0.95).mean():.2%}; quantiles 50/99/99.9%: {np.quantile(nearest, [0.5, 0.99, 0.999]).round(3)})"
    )
    print(f"candidates: {n} in {dt:.1f}s = {n / dt:.1f} candidates/s")
    print(
        f"  embed {m['embed_seconds']:.1f}s (incl. seeds), decide+search {m['search_seconds']:.2f}s, classify(scripted) {m['classify_seconds']:.2f}s"
    )
    print(f"  accepted {m['accepted']:.0f}, drops: " + ", ".join(f"{k[8:]}={v:.0f}" for k, v in m.items() if k.startswith("dropped_")))
    print(f"  index {m['index_size']:.0f} items, estimated {m['index_bytes'] / 2**20:.1f} MiB")


def bench_index(sizes: list[int], kinds: list[str], dim: int = 384, queries: int = 64) -> None:
    """Add and search cost, and memory per item, per index kind and size."""
    from sparq_stream.index import VectorIndex, bytes_per_item

    rng = np.random.default_rng(0)
    print(f"dim={dim}, {queries}-query search (k=10), load average {os.getloadavg()[0]:.1f}")
    print(f"{'kind':10} {'items':>9} {'add us/item':>12} {'search ms/query':>16} {'RSS B/item':>11} {'est B/item':>11}")
    for kind in kinds:
        for size in sizes:
            base = _rss_mb()
            index = VectorIndex(dim, kind)
            ids = [f"{i:032x}" for i in range(size)]
            add_s = 0.0
            for start in range(0, size, 50_000):
                block = rng.standard_normal((min(50_000, size - start), dim)).astype(np.float32)
                block /= np.linalg.norm(block, axis=1, keepdims=True)
                t0 = time.perf_counter()
                index.add(ids[start : start + len(block)], block)
                add_s += time.perf_counter() - t0
                del block
            rss = (_rss_mb() - base) * 2**20 / size
            q = rng.standard_normal((queries, dim)).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            t0 = time.perf_counter()
            index.search(q, 10)
            search_s = time.perf_counter() - t0
            print(
                f"{kind:10} {size:>9} {add_s / size * 1e6:>12.1f} {search_s / queries * 1e3:>16.3f} {rss:>11.0f} {bytes_per_item(kind, dim):>11}"
            )
            del index, ids


def hold_index(kind: str, size: int, dim: int = 384) -> None:
    """Child of ``memory``: build an index of ``size`` random unit vectors with 32-hex ids, then print VmHWM (kB)."""
    from sparq_stream.index import VectorIndex

    rng = np.random.default_rng(0)
    index = VectorIndex(dim, kind)
    for start in range(0, size, 20_000):
        block = rng.standard_normal((min(20_000, size - start), dim)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        index.add([f"{i:032x}" for i in range(start, start + len(block))], block)
        del block
    index.search(np.ones((1, dim), np.float32) / dim**0.5, 10)
    hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"kind": kind, "size": len(index), "vm_hwm_kb": int(hwm)}))


def bench_memory(sizes: list[int], kinds: list[str], dim: int = 384) -> None:
    """Peak RSS of a FRESH process holding the index at each size, beside the bytes_per_item formula.

    Each (kind, size) runs in its own child (``hold``): it imports the same modules, builds
    the index from 20,000-vector blocks (the transient block is ~30 MB), searches once and
    reports its VmHWM; the parent also reads the child's ru_maxrss from os.wait4. The
    reference is the same child with 0 items, so (peak - reference) / items is what one
    item costs, measured.
    """
    import subprocess
    import sys

    from sparq_stream.index import bytes_per_item

    def child(kind: str, size: int) -> tuple[float, float]:
        proc = subprocess.Popen([sys.executable, __file__, "hold", "--kind", kind, "--size", str(size)], stdout=subprocess.PIPE)
        out = proc.stdout.read().decode() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"hold {kind} {size} failed")
        return json.loads(out.strip().splitlines()[-1])["vm_hwm_kb"] * 1024.0, usage.ru_maxrss * 1024.0

    print(f"dim={dim}; each row a fresh process; load average {os.getloadavg()[0]:.1f}")
    print(f"{'kind':10} {'items':>10} {'peak RSS MiB':>13} {'reference MiB':>14} {'measured B/item':>16} {'formula B/item':>15} {'ratio':>6}")
    for kind in kinds:
        base, _ = child(kind, 0)
        for size in sizes:
            peak, maxrss = child(kind, size)
            per = (max(peak, maxrss) - base) / size
            formula = bytes_per_item(kind, dim)
            print(f"{kind:10} {size:>10,} {max(peak, maxrss) / 2**20:>13.0f} {base / 2**20:>14.0f} {per:>16.0f} {formula:>15} {per / formula:>6.2f}")


def main() -> None:
    """Run one of the benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    core = sub.add_parser("core")
    core.add_argument("--n", type=int, default=1024)
    core.add_argument("--batch", type=int, default=64)
    core.add_argument("--threads", type=int, default=2)
    core.add_argument("--data", type=Path, default=None, help="folder with gsm8k_train.jsonl (default: the repository's 512 seeds)")
    index = sub.add_parser("index")
    index.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    index.add_argument("--kinds", nargs="+", default=["flat", "flat-fp16", "hnsw", "hnsw-fp16"])
    memory = sub.add_parser("memory", help="peak RSS of a fresh process holding the index, per kind and size")
    memory.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    memory.add_argument("--kinds", nargs="+", default=["flat", "flat-fp16"])
    hold = sub.add_parser("hold", help="(child of memory) build one index and print its VmHWM")
    hold.add_argument("--kind", required=True)
    hold.add_argument("--size", type=int, required=True)
    args = parser.parse_args()
    if args.what == "core":
        bench_core(args.n, args.batch, args.threads, args.data / "gsm8k_train.jsonl" if args.data else SEEDS)
    elif args.what == "memory":
        bench_memory(args.sizes, args.kinds)
    elif args.what == "hold":
        hold_index(args.kind, args.size)
    else:
        bench_index(args.sizes, args.kinds)


if __name__ == "__main__":
    main()
