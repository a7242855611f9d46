"""`sparq export` and `sparq report` over a synthetic archive of 1M, 5M and 20M rows: peak RSS and time.

The archive: Parquet parts of ``--part-rows`` rows (written with pyarrow, the archivist's
schema) plus a JSONL tail of ``--tail`` rows written after the last part: half of them new
ids, half rewrites of ids already in a part with a different quality (the newest row must
win). Rows are synthetic: 32-hex ids, one-line problems, a skill-set from a 12-skill
vocabulary, step = row // 10,000; ``--kept`` of them have quality > 0 and one correct
rollout (the examples the filtered export writes). The archive of size N holds the first
N / part-rows parts (symbolic links into one folder of parts) and its own tail, so it
stores N + tail rows. (The archivist also keeps a JSONL copy of every row; this synthetic
archive has only the tail in JSONL, the rows past ``parquet.offset`` that the reader reads.)

Each command runs in a FRESH process (``python -m sparq_stream.cli ...``); its peak RSS
is that child's ``ru_maxrss`` from ``os.wait4``, beside the reference: a fresh process that
only imports the CLI (same interpreter, same modules). The script also checks the answers:
the report's ``scored`` and the export's example count against the numbers the generator
wrote, so a fast but wrong reader cannot pass.

    nice -n 10 python bench/archive_scale.py --sizes 1000000 5000000 20000000 --work /tmp/arch
    python bench/archive_scale.py --sizes 100000 --work /tmp/arch-small      # a minute
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sparq_stream.messages import SolveResult
from sparq_stream.qd.archive_log import ARCHIVE_SCHEMA, JSONL_NAME, LINEAGE_COLUMNS, PARTS_DIR, ArchiveLog

SKILLS = ("addition", "subtraction", "multiplication", "division", "fraction", "percentage",
          "ratio", "area", "probability", "counting", "average", "linear equation")
SETS = [[a] for a in SKILLS] + [sorted([a, b]) for i, a in enumerate(SKILLS) for b in SKILLS[i + 1 : i + 3]]


def _ids(start: int, n: int) -> pa.Array:
    """Distinct 32-hex ids spread over the whole hex range (so over every export bucket), built without Python loops."""
    idx = np.arange(start, start + n, dtype=np.uint64)
    words = np.empty((n, 2), dtype=">u8")
    words[:, 0] = (idx * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(0xDEADBEEF)
    words[:, 1] = idx
    text = words.tobytes().hex().encode()
    offsets = pa.py_buffer((np.arange(n + 1, dtype=np.int32) * 32).tobytes())
    return pa.StringArray.from_buffers(n, offsets, pa.py_buffer(text))


def _kept_mask(start: int, n: int, kept: float) -> np.ndarray:
    return np.random.default_rng(start).random(n) < kept


def _const(value: Any, n: int, type_: pa.DataType) -> pa.Array:
    return pa.array([value], type=type_).take(pa.array(np.zeros(n, dtype=np.int64)))


def _part(start: int, n: int, kept: float) -> pa.Table:
    """One Parquet part of synthetic rows ``start .. start + n`` (vectorised: Arrow compute, no row loop)."""
    idx = np.arange(start, start + n, dtype=np.int64)
    keep = _kept_mask(start, n, kept)
    which = pa.array(idx % len(SETS))
    as_text = pc.cast(pa.array(idx), pa.string())
    columns: dict[str, Any] = {
        "id": _ids(start, n),
        "problem": pc.binary_join_element_wise(
            "Synthetic problem ", as_text, ": what is ", pc.cast(pa.array(idx % 97), pa.string()), " + ",
            pc.cast(pa.array(idx % 89), pa.string()), "?", "",
        ),
        "solution": _const("\\boxed{1}", n, pa.string()),
        "answer": pc.cast(pa.array(idx % 97 + idx % 89), pa.string()),
        "parent_ids": _const([], n, pa.list_(pa.string())),
        "step": pa.array(idx // 10_000),
        "created_at": pa.array(1.8e9 + idx * 1e-3),
        "skills": pa.array(SETS, type=pa.list_(pa.string())).take(which),
        "niche": pa.array(["|".join(x) for x in SETS]).take(which),
        "k": _const(8, n, pa.int64()),
        "rollouts_used": _const(8, n, pa.int64()),
        "n_correct": pa.array(np.where(keep, 4, 0)),
        "solve_rate": pa.array(np.where(keep, 0.5, 0.0)),
        "quality": pa.array(np.where(keep, 1.0, 0.0)),
        "correct_rollouts": pa.array([[], ["r: \\boxed{1}"]], type=pa.list_(pa.string())).take(pa.array(keep.astype(np.int64))),
    }
    for field in ARCHIVE_SCHEMA:
        if field.name not in columns:
            default = -1 if field.name in LINEAGE_COLUMNS else SolveResult.model_fields[field.name].default
            columns[field.name] = _const(default, n, field.type)
    return pa.Table.from_pydict({f.name: columns[f.name] for f in ARCHIVE_SCHEMA}, schema=ARCHIVE_SCHEMA)


def build_parts(folder: Path, rows: int, part_rows: int, kept: float) -> int:
    """Write (or reuse) the shared Parquet parts; return how many rows they hold."""
    parts = folder / "all-parts"
    parts.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, rows, part_rows), 1):
        path = parts / f"part-{number:08d}.parquet"
        if not path.exists():
            pq.write_table(_part(start, min(part_rows, rows - start), kept), path.with_suffix(".tmp"))
            os.replace(path.with_suffix(".tmp"), path)
    return rows


def build_archive(folder: Path, shared: Path, rows: int, part_rows: int, tail: int, kept: float) -> dict[str, int]:
    """A run folder whose archive/ links the first parts and holds its own JSONL tail; return the expected answers."""
    archive = folder / "archive"
    (archive / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    n_parts = rows // part_rows
    for number in range(1, n_parts + 1):
        link = archive / PARTS_DIR / f"part-{number:08d}.parquet"
        if not link.exists():
            link.symlink_to(shared / "all-parts" / link.name)
    in_parts = n_parts * part_rows
    fresh, rewrites = tail - tail // 2, tail // 2
    (archive / JSONL_NAME).unlink(missing_ok=True)
    new_rows = _part(in_parts, fresh, kept).to_pylist()
    old = _part(0, rewrites, kept).to_pylist()
    for row in old:  # the newest row of an id wins: flip its quality
        row["quality"] = 0.0 if row["quality"] > 0 else 1.0
        row["n_correct"], row["solve_rate"] = (0, 0.0) if row["quality"] == 0 else (4, 0.5)
        row["correct_rollouts"] = ["r: \\boxed{1}"] if row["quality"] > 0 else []
    with ArchiveLog(archive, formats=["jsonl"], rows_per_part=1 << 30) as log:
        log.extend(SolveResult.model_validate({k: v for k, v in r.items() if k not in LINEAGE_COLUMNS}) for r in new_rows + old)
    kept_parts = sum(int(_kept_mask(s, min(part_rows, in_parts - s), kept).sum()) for s in range(0, in_parts, part_rows))
    kept_old = int(_kept_mask(0, rewrites, kept).sum()) if rewrites <= part_rows else None
    assert kept_old is not None, "--tail must be at most twice --part-rows"
    expected_kept = kept_parts + int(_kept_mask(in_parts, fresh, kept).sum()) - kept_old + (rewrites - kept_old)
    return {"rows_stored": in_parts + tail, "distinct": in_parts + fresh, "kept": expected_kept}


def measure(cmd: Sequence[str]) -> dict[str, Any]:
    """Run a command in a fresh process and return its wall time and peak RSS from os.wait4 (MiB)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    started = time.monotonic()
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"archive-scale-{os.getpid()}.out"
    with open(out_path, "wb") as out, open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=devnull, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = out_path.read_text()
    out_path.unlink(missing_ok=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return {"seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024, "stdout": text}


def main(argv: Sequence[str] | None = None) -> int:
    """Build the archives, run export and report on each in a fresh process, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    p.add_argument("--work", type=Path, required=True, help="folder for the archives and exports (kept: reused on a rerun)")
    p.add_argument("--part-rows", type=int, default=250_000)
    p.add_argument("--tail", type=int, default=10_000, help="JSONL rows after the last part (half rewrite old ids)")
    p.add_argument("--kept", type=float, default=0.1, help="share of rows with quality > 0")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    py = sys.executable
    reference = measure([py, "-c", "import sparq_stream.cli, sparq_stream.training.export, sparq_stream.orchestrator.report"])
    print(f"reference: a fresh process importing the CLI: peak RSS {reference['peak_rss_mib']:.0f} MiB, {reference['seconds']:.1f} s", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} (wall seconds stretch with it; CPU seconds much less)")
    print(f"{'rows':>11} {'command':<8} {'wall s':>8} {'CPU s':>8} {'rows/CPU s':>11} {'peak RSS MiB':>13} {'x reference':>12}  check")
    results = []
    for size in sorted(args.sizes):
        started = time.monotonic()
        in_parts = size // args.part_rows * args.part_rows
        build_parts(args.work, in_parts, args.part_rows, args.kept)
        run = args.work / f"run-{size}"
        expected = build_archive(run, args.work, in_parts, args.part_rows, args.tail, args.kept)
        built = time.monotonic() - started
        export = measure([py, "-m", "sparq_stream.cli", "export", "--archive", str(run / "archive"), "--out", str(run / "export")])
        info = json.loads(export["stdout"].strip().splitlines()[-1])
        report = measure([py, "-m", "sparq_stream.cli", "report", str(run)])
        summary = json.loads((run / "summary.json").read_text())
        checks = {
            "export": info["examples"] == expected["kept"] and info["problems"] == expected["kept"],
            "report": summary["scored"] == expected["distinct"] and summary["kept"] == expected["kept"],
        }
        for name, m in (("export", export), ("report", report)):
            print(f"{expected['rows_stored']:>11,} {name:<8} {m['seconds']:>8.1f} {m['cpu_seconds']:>8.1f} "
                  f"{expected['rows_stored'] / m['cpu_seconds']:>11,.0f} "
                  f"{m['peak_rss_mib']:>13.0f} {m['peak_rss_mib'] / reference['peak_rss_mib']:>12.2f}  "
                  f"{'ok' if checks[name] else 'WRONG'}", flush=True)
        results.append({"rows": expected["rows_stored"], "expected": expected, "build_s": built,
                        "export": {k: v for k, v in export.items() if k != "stdout"}, "export_info": info,
                        "report": {k: v for k, v in report.items() if k != "stdout"},
                        "report_summary": {k: summary[k] for k in ("scored", "kept", "coverage", "steps")}, "checks": checks})
        if args.json:
            args.json.write_text(json.dumps({"reference": reference, "sizes": results}, indent=1, default=str) + "\n")
        if not all(checks.values()):
            print(f"    expected {expected}, export {info['examples']} examples, report scored {summary['scored']} kept {summary['kept']}")
    if args.json:
        args.json.write_text(json.dumps({"reference": reference, "sizes": results}, indent=1, default=str) + "\n")
    return 0 if all(all(r["checks"].values()) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
