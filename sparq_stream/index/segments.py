"""Append-only vector segments on disk: the incremental snapshot and the refinement store.

A segment is two files, ``seg-<n>.vec`` (raw float32 or float16 rows) and ``seg-<n>.ids``
(one id per line). Rows are only ever appended; a snapshot records, per segment, how many
rows (and id bytes) it covers, so bytes written after the last snapshot (a crash) are cut
off on restore. Nothing already written is rewritten. Rows are read back with ``pread``
(no mmap, so reading does not grow the process's resident memory).
"""

from __future__ import annotations

import bisect
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

__all__ = ["SegmentStore"]

_NAME = re.compile(r"^seg-(\d{6})\.(vec|ids)$")
_DTYPES = {"float32": np.float32, "float16": np.float16}


class SegmentStore:
    """Vectors and ids appended to segment files under ``folder``; random row reads by pread."""

    def __init__(self, folder: Path, dim: int, segment_rows: int = 1_000_000,
                 entries: Sequence[dict[str, Any]] = ()) -> None:
        """Open ``folder``; ``entries`` (from a manifest) are the covered segments, other files are removed."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.segment_rows = segment_rows
        self.entries: list[dict[str, Any]] = [dict(e) for e in entries]
        keep = {e["name"] for e in self.entries}
        for path in self.folder.iterdir():
            match = _NAME.match(path.name)
            if match and f"seg-{match.group(1)}" not in keep:
                path.unlink()
        for entry in self.entries:  # cut what was written after the snapshot
            vec, ids = self._paths(entry["name"])
            os.truncate(vec, entry["rows"] * self._row_bytes(entry["dtype"]))
            os.truncate(ids, entry["id_bytes"])
        self._starts = self._compute_starts()
        self._readers: dict[str, int] = {}
        self._writer: tuple[Any, Any] | None = None

    def __len__(self) -> int:
        return self._starts[-1] if self._starts else 0

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.vec", self.folder / f"{name}.ids"

    def _row_bytes(self, dtype: str) -> int:
        return self.dim * np.dtype(_DTYPES[dtype]).itemsize

    def _compute_starts(self) -> list[int]:
        starts, total = [], 0
        for entry in self.entries:
            starts.append(total)
            total += entry["rows"]
        return starts + [total]

    def append(self, ids: Sequence[str], vectors: np.ndarray, dtype: str) -> None:
        """Append rows (ids and vectors stored as ``dtype``), opening new segments as needed."""
        done = 0
        while done < len(ids):
            last = self.entries[-1] if self.entries else None
            if last is None or last["dtype"] != dtype or last["rows"] >= self.segment_rows:
                self._open_new(dtype)
                last = self.entries[-1]
            take = min(len(ids) - done, self.segment_rows - last["rows"])
            vec_fh, ids_fh = self._writer_for(last["name"])
            vec_fh.write(np.ascontiguousarray(vectors[done:done + take], dtype=_DTYPES[dtype]).tobytes())
            text = ("\n".join(ids[done:done + take]) + "\n").encode("utf-8")
            ids_fh.write(text)
            last["rows"] += take
            last["id_bytes"] += len(text)
            done += take
        self._starts = self._compute_starts()

    def _open_new(self, dtype: str) -> None:
        self._close_writer()
        number = int(self.entries[-1]["name"][4:]) + 1 if self.entries else 1
        entry = {"name": f"seg-{number:06d}", "rows": 0, "id_bytes": 0, "dtype": dtype}
        for path in self._paths(entry["name"]):
            path.write_bytes(b"")
        self.entries.append(entry)

    def _writer_for(self, name: str) -> tuple[Any, Any]:
        if self._writer is None or self._writer[0].name != str(self._paths(name)[0]):
            self._close_writer()
            vec, ids = self._paths(name)
            self._writer = (open(vec, "ab", buffering=0), open(ids, "ab", buffering=0))  # noqa: SIM115
        return self._writer

    def _close_writer(self) -> None:
        if self._writer is not None:
            for fh in self._writer:
                fh.close()
            self._writer = None

    def sync(self) -> list[dict[str, Any]]:
        """Make every appended row durable; return the manifest entries that cover them."""
        if self._writer is not None:
            for fh in self._writer:
                os.fsync(fh.fileno())
        return [dict(e) for e in self.entries]

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Return the stored vectors of ``rows`` as float32 (one pread per row)."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for i, row in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
            seg = bisect.bisect_right(self._starts, row) - 1
            entry = self.entries[seg]
            size = self._row_bytes(entry["dtype"])
            data = os.pread(self._reader(entry["name"]), size, (row - self._starts[seg]) * size)
            out[i] = np.frombuffer(data, dtype=_DTYPES[entry["dtype"]])
        return out

    def _reader(self, name: str) -> int:
        fd = self._readers.get(name)
        if fd is None:
            fd = self._readers[name] = os.open(self._paths(name)[0], os.O_RDONLY)
        return fd

    def iter_chunks(self, chunk_rows: int = 100_000) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yield (ids, float32 vectors) of every stored row in order, ``chunk_rows`` at a time."""
        for entry in self.entries:
            vec, ids_path = self._paths(entry["name"])
            ids = ids_path.read_bytes()[:entry["id_bytes"]].decode("utf-8").split("\n")[:-1]
            if len(ids) != entry["rows"]:
                raise ValueError(f"{ids_path}: {len(ids)} ids for {entry['rows']} rows")
            size = self._row_bytes(entry["dtype"])
            with open(vec, "rb") as fh:
                for start in range(0, entry["rows"], chunk_rows):
                    count = min(chunk_rows, entry["rows"] - start)
                    data = fh.read(count * size)
                    matrix = np.frombuffer(data, dtype=_DTYPES[entry["dtype"]]).reshape(count, self.dim)
                    yield ids[start:start + count], matrix.astype(np.float32)

    def move_to(self, folder: Path) -> None:
        """Copy the covered bytes of every segment into ``folder`` and continue there."""
        self.sync()
        self._close_writer()
        self.close()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for entry in self.entries:
            for src, size in zip(self._paths(entry["name"]),
                                 (entry["rows"] * self._row_bytes(entry["dtype"]), entry["id_bytes"])):
                with open(src, "rb") as fin, open(folder / src.name, "wb") as fout:
                    remaining = size
                    while remaining:
                        block = fin.read(min(remaining, 1 << 24))
                        if not block:
                            break
                        fout.write(block)
                        remaining -= len(block)
                    fout.flush()
                    os.fsync(fout.fileno())
        self.folder = folder

    def close(self) -> None:
        """Close open files."""
        self._close_writer()
        for fd in self._readers.values():
            os.close(fd)
        self._readers.clear()
